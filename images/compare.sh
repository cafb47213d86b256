#!/usr/bin/env bash
# Side by side, the genie image with the Hive server under tandem and the same base and server
# under supervisord (the way the deployments run today, images/supervisord/), in one run:
#   - `docker run` (empty volume: initdb) to the API's first 200 and to `healthy`;
#   - `docker start` (initialised volume) to the first 200 and to `healthy`;
#   - `docker stop` time and exit code;
#   - PID 1's resident memory (VmRSS) once the API answers;
#   - the image sizes.
#
#   images/compare.sh [RUNS]        (default 5; builds the images first, reusing what exists)
#   APP=example images/compare.sh   the example API instead of the Hive server
#
# Runs alternate between the two images. Times are from outside: one loop polls curl and
# `docker inspect` in turn (about 20-40 ms a round), so they include Docker's own start and
# stop work; both images get --health-interval=100ms (their own intervals are 5 s and 30 s),
# so `healthy` is when the health check first passes, not when Docker next happens to look.
# The benchmark (bench/) measures tandem itself more finely.
set -euo pipefail
runs=${1:-5}
app=${APP:-hive}
top=$(cd "$(dirname "$0")/.." && pwd)
tag=${TANDEM_IMAGE_TAG:-local}
case $app in
    hive) suffix= ;;
    example) suffix=-example ;;
    *) echo "compare: APP must be hive or example" >&2; exit 2 ;;
esac
"$top/images/build.sh" "genie$suffix" "supervisord-genie$suffix" >&2
images=("tandem-genie$suffix:$tag" "tandem-supervisord-genie$suffix:$tag")
# A run-time key as users give it (the Hive server refuses to start without one).
key=hive_compare_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

name=tandem-compare-$$
cleanup() { docker rm -f -v "$name" >/dev/null 2>&1 || true; docker volume rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
# Sets api_at and healthy_at (ns); fails with the log if the container stops.
wait_up() {
    local addr="" state
    api_at=0 healthy_at=0
    while [ "$api_at" = 0 ] || [ "$healthy_at" = 0 ]; do
        if [ "$api_at" = 0 ]; then
            [ -n "$addr" ] || addr=$(docker port "$name" 48886/tcp 2>/dev/null | head -n 1)
            if [ -n "$addr" ] && curl -sf -o /dev/null --max-time 2 "http://$addr/api/v1/health"; then
                api_at=$(now)
            fi
        fi
        if [ "$healthy_at" = 0 ]; then
            state=$(docker inspect -f '{{.State.Running}} {{.State.Health.Status}}' "$name")
            case $state in
                "true healthy") healthy_at=$(now) ;;
                true*) ;;
                *)
                    local log
                    log=$(mktemp /tmp/tandem-compare-XXXXXX.log)
                    docker logs "$name" >"$log" 2>&1
                    grep -a -E '^(tandem \||[^|]*Traceback|[^|]*Error:)' "$log" | tail -n 30 >&2
                    echo "compare: $name stopped (exit code $(docker inspect -f '{{.State.ExitCode}}' "$name")); its log: $log" >&2
                    exit 1
                    ;;
            esac
        fi
        sleep 0.02
    done
}

declare -A all
record() { all[$1]="${all[$1]:-} $2"; }
# The median of the recorded integers and their range, "median (min-max)", or the one value
# when they agree; divided by $2 when given.
stats() {
    tr ' ' '\n' <<<"${all[$1]:-}" | sed '/^$/d' | sort -n | awk -v div="${2:-1}" -v dec="${2:+1}" '
        { v[NR] = $1 / div }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            f = dec ? "%.1f" : "%.0f"
            lo = sprintf(f, v[1]); hi = sprintf(f, v[NR]); md = sprintf(f, m)
            print (lo == hi ? md : md " (" lo "-" hi ")")
        }'
}

printf '%-36s %9s %9s %9s %9s %8s %4s %9s\n' image run-200 run-hlth start-200 start-hl stop exit pid1-rss
for _ in $(seq "$runs"); do
    for image in "${images[@]}"; do
        cleanup
        docker volume create "$name" >/dev/null
        t=$(now)
        docker run -d --name "$name" -e POSTGRES_PASSWORD=compare -e HIVE_API_KEY="$key" \
            --health-interval=100ms --health-timeout=5s --health-retries=3 \
            -p 127.0.0.1::48886 -v "$name:/var/lib/postgresql/data" "$image" >/dev/null
        wait_up
        run_api=$(ms "$t" "$api_at") run_healthy=$(ms "$t" "$healthy_at")
        rss_kib=$(docker exec "$name" awk '/^VmRSS/ { print $2 }' /proc/1/status)
        rss=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
        docker stop "$name" >/dev/null
        t=$(now)
        docker start "$name" >/dev/null
        wait_up
        start_api=$(ms "$t" "$api_at") start_healthy=$(ms "$t" "$healthy_at")
        t=$(now)
        docker stop "$name" >/dev/null
        stop=$(ms "$t" "$(now)")
        code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
        printf '%-36s %6s ms %6s ms %6s ms %6s ms %5s ms %4s %5s MiB\n' "$image" \
            "$run_api" "$run_healthy" "$start_api" "$start_healthy" "$stop" "$code" "$rss"
        for k in run_api run_healthy start_api start_healthy stop code rss_kib; do
            record "$image.$k" "${!k}"
        done
    done
done

echo
echo "side by side, $runs runs each: median (min-max)"
printf '%-44s %26s %26s\n' "" "${images[0]%%:*}" "${images[1]%%:*}"
row() {
    local label=$1 key=$2 unit=$3 a b
    a=$(stats "${images[0]}.$key") b=$(stats "${images[1]}.$key")
    printf '%-44s %26s %26s\n' "$label" "$a$unit" "$b$unit"
}
row "docker run to first API 200 (empty volume)" run_api " ms"
row "docker run to healthy (empty volume)" run_healthy " ms"
row "docker start to first API 200" start_api " ms"
row "docker start to healthy" start_healthy " ms"
row "docker stop" stop " ms"
row "exit code after docker stop" code ""
printf '%-44s %26s %26s\n' "PID 1 resident memory (VmRSS)" \
    "$(stats "${images[0]}.rss_kib" 1024) MiB" "$(stats "${images[1]}.rss_kib" 1024) MiB"
size() { docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }
printf '%-44s %26s %26s\n' "image size" "$(size "${images[0]}")" "$(size "${images[1]}")"
