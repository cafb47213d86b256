#!/usr/bin/env bash
# Side by side, the same app and base under tandem and under supervisord (the way the
# deployments run today): `docker run` to the API's first 200 on an empty and on an initialised
# volume, `docker stop` time and exit code, PID 1's resident memory.
#
#   images/compare.sh [RUNS]        (default 5; builds the images first, reusing what exists)
#
# Times are from outside, with curl polling every 20 ms, so they include Docker's own start
# and stop work; the benchmark (bench/) measures tandem itself more finely.
set -euo pipefail
runs=${1:-5}
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/images/build.sh" genie supervisord-genie >&2

name=tandem-compare-$$
cleanup() { docker rm -f -v "$name" >/dev/null 2>&1 || true; docker volume rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
wait_api() {
    local addr
    addr=$(docker port "$name" 48886/tcp | head -n 1)
    until curl -sf -o /dev/null "http://$addr/api/v1/health"; do
        [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || { docker logs "$name" >&2; exit 1; }
        sleep 0.02
    done
}

printf '%-32s %12s %12s %10s %5s %10s\n' image first-start restart stop exit pid1-rss
for image in tandem-genie:local tandem-supervisord-genie:local; do
    for _ in $(seq "$runs"); do
        cleanup
        docker volume create "$name" >/dev/null
        t=$(date +%s%N)
        docker run -d --name "$name" -e POSTGRES_PASSWORD=compare -p 127.0.0.1::48886 \
            -v "$name:/var/lib/postgresql/data" "$image" >/dev/null
        wait_api
        first=$(ms "$t")
        rss=$(docker exec "$name" ps -o rss= -p 1 | awk '{ printf "%.1f MiB", $1 / 1024 }')
        docker stop "$name" >/dev/null
        t=$(date +%s%N)
        docker start "$name" >/dev/null
        wait_api
        restart=$(ms "$t")
        t=$(date +%s%N)
        docker stop "$name" >/dev/null
        stop=$(ms "$t")
        code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
        printf '%-32s %9s ms %9s ms %7s ms %5s %10s\n' "$image" "$first" "$restart" "$stop" "$code" "$rss"
    done
done
