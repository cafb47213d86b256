#!/usr/bin/env bash
# The API's supervisord program: wait for PostgreSQL the usual way, then run the server with
# its database URL put together here (the Hive server reads HIVE_DATABASE_URL, the example
# API DATABASE_URL), as the seed deployments do.
until pg_isready -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" -q; do
    sleep 1
done
export DATABASE_URL="postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@127.0.0.1:5432/${POSTGRES_DB}"
export HIVE_DATABASE_URL="postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@127.0.0.1:5432/${POSTGRES_DB}"
exec uvicorn api.serve:app --factory --host 0.0.0.0 --port "$API_PORT"
