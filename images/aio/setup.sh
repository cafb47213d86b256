#!/bin/sh
# The part of Dockerfile.genie and Dockerfile.agent they share, run as root in the final
# stage on top of BASE_IMAGE: pgvector/pgvector:pg17-trixie in production, the local
# tandem-base-trixie:local here.
#
#   setup.sh APP        (hive or example)
#
# It leaves
#   - the app's runtime from Debian: python3 (the interpreter of the Hive server's virtual
#     environment, which the next step copies in) and, for APP=example, fastapi, uvicorn (and
#     its command) and psycopg 3; procps for `ps` (all preinstalled in the local base; from
#     Debian's apt otherwise);
#   - the pgvector extension (the Hive server creates it at boot): postgresql-$PG_MAJOR-pgvector
#     from apt when the base lacks it (the official postgres image's apt sources have it);
#   - the app's user `hive`, uid 1000 (created unless the base has one);
# and checks that the base brings PostgreSQL.
set -eu
app=${1:-hive}

need=""
case $app in
    hive)
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null || need="$need python3"
        ;;
    example)
        if ! python3 -c 'import fastapi, uvicorn, psycopg' 2>/dev/null || ! command -v uvicorn >/dev/null; then
            need="$need python3 python3-fastapi python3-uvicorn uvicorn python3-psycopg"
        fi
        ;;
    *)
        echo "setup.sh: APP must be hive or example, not '$app'" >&2
        exit 1
        ;;
esac
command -v ps >/dev/null || need="$need procps"
if ! ls /usr/share/postgresql/*/extension/vector.control >/dev/null 2>&1; then
    need="$need postgresql-${PG_MAJOR:?the base sets no PG_MAJOR}-pgvector"
fi
if [ -n "$need" ]; then
    apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need
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
    echo "setup.sh: the base image has no PostgreSQL or no postgres user; build FROM pgvector/pgvector:pg17-trixie or tandem-base-trixie:local (images/build-base.sh)" >&2
    exit 1
fi
