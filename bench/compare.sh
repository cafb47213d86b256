#!/usr/bin/env bash
# One command for the side-by-side figures: tandem against the bare critical path (no
# supervisor), supervisord the seed's way (a `pg_isready` wait loop; Debian's supervisor),
# horust (crates.io) and tini (Debian's) with a shell wait script, in one run on this machine:
#   - start to app-healthy and SIGTERM to all-exited, as processes (each init PID 1 of its own
#     PID namespace) and as containers (images built by images/build.sh on the local base);
#   - first boot with initdb: tandem against the official entrypoint's steps done by hand;
#   - steady RSS and CPU of each supervisor over --duration seconds with 1 s probes;
#   - `tandem healthcheck` against `pg_isready && curl` (the seed's HEALTHCHECK);
#   - 10 000 orphans reaped; stripped binary sizes and image size overhead.
# Prints one table (every figure a median with min and max over --runs rounds, the
# contenders' order rotated each round) and the command that made it.
#
#   bench/compare.sh                   5 rounds, 600 s steady phase (about 20 minutes)
#   bench/compare.sh --runs 7 --duration 900
#   bench/compare.sh --quick           a smoke run: 2 rounds, 20 s steady, 2000 orphans
#   bench/compare.sh --no-containers   processes only (no Docker engine needed)
#
# Options: --runs N (5), --warmup N (1), --duration SECONDS (600), --hc-runs N (100),
# --orphans N (10000), --orphan-timeout SECONDS (30), --only PHASE,... (processes,
# containers, firstboot, steady, healthcheck, orphans, sizes), --no-containers, --quick.
#
# Must run as root; installs what it needs (Debian packages, Docker via images/install-docker.sh)
# and builds tandem, the test app, horust (`cargo install horust --locked`, cached in
# $TANDEM_BENCH_CACHE, default /var/cache/tandem-bench; when it does not build the table says
# so) and the images (tag $TANDEM_IMAGE_TAG, default compare). Not part of the test suite.
# Leaves nothing running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
command_line="bench/compare.sh${*:+ $*}"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

runs=5 warmup=1 duration=600 hc_runs=100 n_orphans=10000 orphan_timeout=30
only=processes,containers,firstboot,steady,healthcheck,orphans,sizes
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --duration) duration=${2:?--duration needs seconds}; shift ;;
        --hc-runs) hc_runs=${2:?--hc-runs needs a number}; shift ;;
        --orphans) n_orphans=${2:?--orphans needs a number}; shift ;;
        --orphan-timeout) orphan_timeout=${2:?--orphan-timeout needs seconds}; shift ;;
        --only) only=${2:?--only needs a list of phases}; shift ;;
        --no-containers) only=$(tr ',' '\n' <<<"$only" | grep -vx containers | paste -sd, -) ;;
        --quick) runs=2 warmup=1 duration=20 hc_runs=20 n_orphans=2000 orphan_timeout=10 ;;
        *) echo "bench/compare.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
    esac
    shift
done
for v in "$runs" "$warmup" "$duration" "$hc_runs" "$n_orphans" "$orphan_timeout"; do
    [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench/compare.sh: '$v' is not a number" >&2; exit 2; }
done

if [ "$(id -u)" != 0 ]; then
    echo "bench/compare.sh: run as root (PostgreSQL runs as the postgres user; namespaces, Docker)" >&2
    exit 1
fi
phase() { [[ ,$only, == *,$1,* ]]; }

# Debian's packages, for Debian's python3 (/usr/bin/python3, not a pyenv one on PATH).
pkgs=(python3-psycopg python3-fastapi python3-uvicorn postgresql-15 procps curl util-linux
      supervisor tini binutils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 || {
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    }
fi

# tandem and the test app (orphans). Others may be mid-edit: retried after a minute, then
# an existing binary is used (the table names the commit).
attempt=1
until (cd "$top" && cargo build --release --quiet --bin tandem --example testapp) >&2; do
    if [ "$attempt" -ge 3 ]; then
        if [ -x "$top/target/release/tandem" ] && [ -x "$top/target/release/examples/testapp" ]; then
            echo "compare: cargo build --release failed $attempt times; using the existing binaries" >&2
            break
        fi
        echo "compare: cargo build --release failed $attempt times and there are no binaries" >&2
        exit 1
    fi
    echo "compare: cargo build --release failed (attempt $attempt); retrying in 60 s" >&2
    sleep 60
    attempt=$((attempt + 1))
done

# horust from crates.io, built once and kept between runs.
cache=${TANDEM_BENCH_CACHE:-/var/cache/tandem-bench}
horust=$cache/horust/bin/horust
horust_missing=
if [ ! -x "$horust" ]; then
    mkdir -p "$cache/horust"
    echo "compare: cargo install horust --locked (once; log in $cache/horust-build.log)" >&2
    if ! nice cargo install horust --locked --root "$cache/horust" >"$cache/horust-build.log" 2>&1; then
        horust_missing="cargo install horust --locked failed: $(grep -m1 -E '^error' "$cache/horust-build.log" || tail -n 1 "$cache/horust-build.log")"
        echo "compare: $horust_missing; going on without horust" >&2
        horust=
    fi
fi

if phase containers; then
    bash "$top/images/install-docker.sh" >&2
    export TANDEM_IMAGE_TAG=${TANDEM_IMAGE_TAG:-compare}
    TANDEM_BIN=target/release/tandem "$top/images/build.sh" genie-example supervisord-genie-example \
        bare-genie-example tini-genie-example >&2
    if [ -n "$horust" ]; then
        HORUST_BIN=$horust "$top/images/build.sh" horust-genie-example >&2 ||
            echo "compare: the horust image did not build; the table has no horust container column" >&2
    fi
fi

exec /usr/bin/python3 "$here/compare.py" --tandem "$top/target/release/tandem" \
    --testapp "$top/target/release/examples/testapp" --horust "$horust" --horust-missing "$horust_missing" \
    --image-tag "${TANDEM_IMAGE_TAG:-compare}" --command "$command_line" \
    --runs "$runs" --warmup "$warmup" --duration "$duration" --hc-runs "$hc_runs" \
    --orphans "$n_orphans" --orphan-timeout "$orphan_timeout" --only "$only"
