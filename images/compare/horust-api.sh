#!/bin/sh
# The API's horust service in bench/compare.sh's horust container: horust starts it once the
# postgres service is healthy (`start-after` with a pg_isready health command), so there is
# no wait loop; only the database URL is put together here.
set -eu
export DATABASE_URL="postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@127.0.0.1:5432/${POSTGRES_DB}"
exec "$@"
