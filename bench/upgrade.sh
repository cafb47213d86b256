#!/usr/bin/env bash
# Upgrade benchmark: a PostgreSQL 15 volume of about SIZE_MB (default 1024) upgraded to 17 by
# tandem in the upgrade test image, once with hard links and once with a copy
# (TANDEM_PG_UPGRADE_MODE=copy), each on a fresh copy of the same volume.
#
#   bench/upgrade.sh            # 1 GB
#   bench/upgrade.sh 256        # a quicker look
#
# Prints, for each mode: tandem's own figure (from the journal's start to the swap done),
# pg_upgrade's part of it, and `docker run` to PostgreSQL 17 ready. Needs the Docker engine
# (images/install-docker.sh) and builds the image with images/build.sh upgrade (tag
# TANDEM_IMAGE_TAG, default local). Removes every container and volume it made.
set -euo pipefail
size_mb=${1:-1024}
top=$(cd "$(dirname "$0")/.." && pwd)
tag=${TANDEM_IMAGE_TAG:-local}
image=tandem-upgrade:$tag
run=bench-upgrade-$$

"$top/images/build.sh" upgrade >&2

cleanup() {
    docker rm -f "$run-init" "$run-link" "$run-copy" >/dev/null 2>&1 || true
    docker volume rm -f "$run-15" "$run-v-link" "$run-v-copy" >/dev/null 2>&1 || true
}
trap cleanup EXIT

env=(-e "POSTGRES_USER=bench" -e "POSTGRES_PASSWORD=bench" -e "POSTGRES_DB=bench")

wait_log() { # container, text
    until docker logs "$1" 2>&1 | grep -qF "$2"; do
        if [ "$(docker inspect -f '{{.State.Running}}' "$1")" != true ]; then
            docker logs "$1" >&2
            echo "bench: $1 exited before \"$2\"" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# The old volume: rows of about 300 bytes and an index on them, written by PostgreSQL 15.
docker volume create "$run-15" >/dev/null
docker run -d --name "$run-init" -v "$run-15:/var/lib/postgresql/data" "${env[@]}" \
    -e PG_BINDIR=/usr/lib/postgresql/15/bin "$image" -- >/dev/null
wait_log "$run-init" "postgres is ready after"
rows=$(( size_mb * 1024 * 1024 / 330 ))
echo "bench: writing $rows rows with PostgreSQL 15 ..." >&2
docker exec "$run-init" psql -X -q -U bench -d bench -c \
    "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, $rows) g;
     CREATE INDEX big_id ON big (id);" >&2
db_size=$(docker exec "$run-init" psql -X -At -U bench -d bench -c "SELECT pg_size_pretty(pg_database_size('bench'))")
docker stop "$run-init" >/dev/null

for mode in link copy; do
    docker volume create "$run-v-$mode" >/dev/null
    docker run --rm -v "$run-15:/from:ro" -v "$run-v-$mode:/to" --entrypoint cp "$image" -a /from/. /to/
    sync
    t0=$(date +%s.%N)
    docker run -d --name "$run-$mode" -v "$run-v-$mode:/var/lib/postgresql/data" "${env[@]}" \
        -e TANDEM_PG_UPGRADE=auto -e TANDEM_PG_UPGRADE_MODE="$mode" "$image" -- >/dev/null
    wait_log "$run-$mode" "postgres is ready after"
    t1=$(date +%s.%N)
    logs=$(docker logs "$run-$mode" 2>&1)
    upgraded=$(grep -o "from PostgreSQL 15 to 17 in [0-9.]* s" <<<"$logs" | grep -o "[0-9.]* s" || true)
    pg_upgrade=$(grep -o "pg_upgrade --$mode done in [0-9]* ms" <<<"$logs" | grep -o "[0-9]* ms" || true)
    rows_after=$(docker exec "$run-$mode" psql -X -At -U bench -d bench -c "SELECT count(*) FROM big")
    [ "$rows_after" = "$rows" ] || { echo "bench: $rows_after rows after the upgrade, not $rows" >&2; exit 1; }
    printf 'upgrade --%s of a %s database (%s rows): tandem %s (pg_upgrade %s), docker run to ready %.1f s\n' \
        "$mode" "$db_size" "$rows" "$upgraded" "$pg_upgrade" "$(echo "$t1 - $t0" | bc)"
    docker rm -f "$run-$mode" >/dev/null
    docker volume rm -f "$run-v-$mode" >/dev/null
done
