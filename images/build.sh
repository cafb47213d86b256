#!/usr/bin/env bash
# Build the images the container tests and the benchmark use, on a machine that reaches a
# Debian mirror but no image registry:
#
#   images/build.sh genie|agent|supervisord-genie|supervisord-agent|base ...
#
#   genie, agent        tandem-genie:local, tandem-agent:local from Dockerfile.genie/.agent,
#                       with the tandem binary built here (cargo build --release)
#   supervisord-*       tandem-supervisord-genie:local, ...-agent:local (images/supervisord/)
#   base                only the base image
#
# Everything builds on the local base image (images/build-base.sh, tandem-base:local, reused
# while its recipe is unchanged); BASE_IMAGE=postgres:16-bookworm builds on the official image
# instead when it is at hand. Docker's layer cache makes a repeated build take about a second.
# TANDEM_BIN=path (inside the repository) uses that binary and skips cargo.
set -euo pipefail

usage() {
    echo "usage: images/build.sh genie|agent|supervisord-genie|supervisord-agent|base ..." >&2
    exit 2
}
[ $# -gt 0 ] || usage

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
base=${BASE_IMAGE:-tandem-base:local}
# The Dockerfiles keep to what the legacy builder understands; use it, as CI does.
export DOCKER_BUILDKIT=0

if [ "$base" = tandem-base:local ]; then
    images/build-base.sh "$base"
fi

tandem_bin() {
    if [ -z "${TANDEM_BIN:-}" ]; then
        # The binary travels in the build context, which holds the repository only.
        if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "$(realpath -m "$CARGO_TARGET_DIR")" != "$top/target" ]; then
            echo "build.sh: CARGO_TARGET_DIR is outside the repository; set TANDEM_BIN to a copy inside it" >&2
            exit 1
        fi
        echo "build.sh: cargo build --release" >&2
        cargo build --release --quiet --bin tandem
        TANDEM_BIN=target/release/tandem
    fi
    echo "$TANDEM_BIN"
}

build() {
    local tag=$1
    shift
    local start=$SECONDS
    # Quiet on success (the legacy builder's deprecation notice included); the whole story
    # on failure.
    local log
    log=$(mktemp)
    if ! docker build --force-rm --build-arg BASE_IMAGE="$base" -t "$tag" "$@" . >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "build.sh: building $tag failed" >&2
        exit 1
    fi
    rm -f "$log"
    local size
    size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')
    echo "build.sh: $tag built in $(( SECONDS - start )) s, $size"
}

for target in "$@"; do
    case $target in
        genie | agent)
            bin=$(tandem_bin)
            TANDEM_BIN=$bin
            build "tandem-$target:local" -f "Dockerfile.$target" \
                --build-arg TANDEM_BUILDER="$base" --build-arg TANDEM_BIN="$bin"
            ;;
        supervisord-genie)
            build tandem-supervisord-genie:local -f images/supervisord/Dockerfile \
                --build-arg API_PORT=48886 --build-arg POSTGRES_USER=genie --build-arg POSTGRES_DB=hive_genie
            ;;
        supervisord-agent)
            build tandem-supervisord-agent:local -f images/supervisord/Dockerfile \
                --build-arg API_PORT=35532 --build-arg POSTGRES_USER=agent --build-arg POSTGRES_DB=hive_agent
            ;;
        base) ;;
        *) usage ;;
    esac
done
