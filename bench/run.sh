#!/bin/sh
# tandem lifecycle benchmark: installs what it needs, builds the release binary, then runs
# bench/lifecycle.py, which measures start/stop against the bare critical path, tandem's
# memory, `tandem healthcheck` and (with --idle-cpu SECONDS) idle probe CPU, in one run.
#
#   bench/run.sh                 # N=10 pairs
#   bench/run.sh -n 20 --idle-cpu 600
#   bench/run.sh --help          # every option
#
# Must run as root (PostgreSQL is started as the postgres user). Leaves nothing running.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
tandem="$repo/target/release/tandem"

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: run as root (PostgreSQL is started as the postgres user)" >&2
    exit 1
fi

# Debian's packages, for Debian's python3 (/usr/bin/python3, not a pyenv one on PATH).
pkgs="python3-psycopg python3-fastapi python3-uvicorn postgresql-15 procps curl"
missing=
for p in $pkgs; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bench: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing >&2 || {
        apt-get update >&2
        # shellcheck disable=SC2086
        apt-get install -y --no-install-recommends $missing >&2
    }
fi

# The release binary: cargo rebuilds only when it is stale. Others may be mid-edit, so a
# failed build is retried after a minute; after three failures an existing binary is used
# (and the report names the commit it was built from and its build time).
attempt=1
until (cd "$repo" && cargo build --release --quiet) >&2; do
    if [ "$attempt" -ge 3 ]; then
        if [ -x "$tandem" ]; then
            echo "bench: cargo build --release failed $attempt times; using the existing $tandem" >&2
            break
        fi
        echo "bench: cargo build --release failed $attempt times and there is no binary" >&2
        exit 1
    fi
    echo "bench: cargo build --release failed (attempt $attempt); retrying in 60 s" >&2
    sleep 60
    attempt=$((attempt + 1))
done

exec /usr/bin/python3 "$here/lifecycle.py" --tandem "$tandem" "$@"
