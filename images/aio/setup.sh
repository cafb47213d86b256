#!/bin/sh
# The part of Dockerfile.genie and Dockerfile.agent they share, run as root in the final
# stage on top of BASE_IMAGE: the official postgres:16-bookworm in production, the local
# tandem-base:local here. It leaves
#   - the example app's runtime: python3 with fastapi, uvicorn (and its command) and psycopg 3,
#     plus procps for `ps` (preinstalled in the local base; from Debian's apt otherwise);
#   - the app's user `hive`, uid 1000 (created unless the base has one);
# and checks that the base brings PostgreSQL.
set -eu

if ! python3 -c 'import fastapi, uvicorn, psycopg' 2>/dev/null \
    || ! command -v uvicorn >/dev/null || ! command -v ps >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-fastapi python3-uvicorn uvicorn python3-psycopg procps
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi

if ! id hive >/dev/null 2>&1; then
    useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin hive
fi

# The base must bring PostgreSQL and its `postgres` user (the official image and the local base
# do): fail the build here rather than the container at its first start. tandem finds the
# binaries itself (PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin, PATH) and creates PGDATA.
if ! id postgres >/dev/null 2>&1 \
    || ! { ls /usr/lib/postgresql/*/bin/postgres || command -v postgres; } >/dev/null 2>&1; then
    echo "setup.sh: the base image has no PostgreSQL or no postgres user; build FROM postgres:16-bookworm or tandem-base:local (images/build-base.sh)" >&2
    exit 1
fi
