#!/usr/bin/env bash
# Build the images the container tests and the benchmark use, on a machine that reaches a
# Debian mirror and PyPI but no image registry:
#
#   images/build.sh TARGET ...
#
#   genie, agent            tandem-genie:TAG, tandem-agent:TAG from Dockerfile.genie/.agent:
#                           the Hive server (APP=hive), the tandem binary built here
#   genie-example, agent-example
#                           tandem-genie-example:TAG, ...: the same Dockerfiles with
#                           APP=example (the small API of examples/hive; seconds to build)
#   supervisord-genie, supervisord-agent, supervisord-genie-example, supervisord-agent-example
#                           tandem-supervisord-genie:TAG, ... (images/supervisord/): the same
#                           app and base under supervisord, for the comparison
#   upgrade                 tandem-upgrade:TAG: genie-example built on tandem-upgrade-base:TAG,
#                           the base with Debian 12's PostgreSQL 15 beside its 17
#                           (images/upgrade/), for tests/upgrade.rs and bench/upgrade.sh
#   bare-genie-example, tini-genie-example, horust-genie-example
#                           tandem-bare-genie-example:TAG, ... (images/compare/): the example
#                           API and base with no init, under tini, under horust, for
#                           bench/compare.sh; horust's needs HORUST_BIN=path (a built horust)
#   base                    only the base image
#
# TAG is TANDEM_IMAGE_TAG (default `local`): two checkouts sharing one engine keep apart by
# giving each its own. Everything builds on the local base image (images/build-base.sh,
# tandem-base-trixie:local, reused while its recipe is unchanged); BASE_IMAGE=... builds on
# another (e.g. pgvector/pgvector:pg17-trixie) when it is at hand. Docker's layer cache makes
# a repeated build take seconds; the Hive server's pip layer (a minute or two) is built once
# and shared by every Hive image.
#
# pip inside the build trusts the CA bundle this machine's pip trusts (PIP_CERT, pip's
# `global.cert`, else /etc/ssl/certs/ca-certificates.crt): copied to images/hive/.pip-ca.crt
# for the build's first stage only (never the image) and removed afterwards. pip's index is
# this machine's (PIP_INDEX_URL, pip's `global.index-url`) if it names one.
# TANDEM_BIN=path (inside the repository) uses that binary and skips cargo.
set -euo pipefail

usage() {
    echo "usage: images/build.sh genie|agent|genie-example|agent-example|upgrade|supervisord-genie|supervisord-agent|supervisord-genie-example|supervisord-agent-example|bare-genie-example|tini-genie-example|horust-genie-example|base ..." >&2
    exit 2
}
[ $# -gt 0 ] || usage

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tag=${TANDEM_IMAGE_TAG:-local}
local_base=tandem-base-trixie:local
base=${BASE_IMAGE:-$local_base}
# The Dockerfiles keep to what the legacy builder understands; use it, as CI does.
export DOCKER_BUILDKIT=0

if [ "$base" = "$local_base" ]; then
    images/build-base.sh "$base"
fi

# Files copied into the build context for one build, removed on the way out.
trap 'rm -f "$top/images/hive/.pip-ca.crt" "$top/images/compare/.horust-bin"' EXIT

host_pip() { python3 -m pip config get "$1" 2>/dev/null || true; }
pip_args=()
ca=${PIP_CERT:-$(host_pip global.cert)}
[ -n "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    # A fixed name, so that Docker's cache sees the same file from one build to the next.
    cp "$ca" images/hive/.pip-ca.crt
    pip_args+=(--build-arg PIP_CERT_FILE=.pip-ca.crt)
fi
index=${PIP_INDEX_URL:-$(host_pip global.index-url)}
if [ -n "$index" ]; then
    pip_args+=(--build-arg PIP_INDEX_URL="$index")
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
    local image=$1
    shift
    local start=$SECONDS
    # Quiet on success (the legacy builder's deprecation notice included); the whole story
    # on failure.
    local log
    log=$(mktemp)
    if ! docker build --force-rm --build-arg BASE_IMAGE="$base" "${pip_args[@]}" -t "$image" "$@" . >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "build.sh: building $image failed" >&2
        exit 1
    fi
    rm -f "$log"
    local size
    size=$(docker image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')
    echo "build.sh: $image built in $(( SECONDS - start )) s, $size"
}

for target in "$@"; do
    app=hive
    case $target in
        *-example) app=example ;;
    esac
    case $target in
        genie | agent | genie-example | agent-example)
            flavor=${target%-example}
            bin=$(tandem_bin)
            TANDEM_BIN=$bin
            build "tandem-$target:$tag" -f "Dockerfile.$flavor" --build-arg APP="$app" \
                --build-arg TANDEM_BUILDER="$base" --build-arg TANDEM_BIN="$bin"
            ;;
        supervisord-genie | supervisord-genie-example)
            build "tandem-$target:$tag" -f images/supervisord/Dockerfile --build-arg APP="$app" \
                --build-arg API_PORT=48886 --build-arg POSTGRES_USER=genie --build-arg POSTGRES_DB=hive_genie
            ;;
        supervisord-agent | supervisord-agent-example)
            build "tandem-$target:$tag" -f images/supervisord/Dockerfile --build-arg APP="$app" \
                --build-arg API_PORT=35532 --build-arg POSTGRES_USER=agent --build-arg POSTGRES_DB=hive_agent
            ;;
        upgrade)
            build "tandem-upgrade-base:$tag" -f images/upgrade/Dockerfile
            bin=$(tandem_bin)
            TANDEM_BIN=$bin
            saved=$base
            base="tandem-upgrade-base:$tag"
            build "tandem-upgrade:$tag" -f Dockerfile.genie --build-arg APP=example \
                --build-arg TANDEM_BUILDER="$base" --build-arg TANDEM_BIN="$bin"
            base=$saved
            ;;
        bare-genie-example | tini-genie-example)
            build "tandem-$target:$tag" -f images/compare/Dockerfile --target "${target%%-*}" \
                --build-arg APP="$app"
            ;;
        horust-genie-example)
            if [ -z "${HORUST_BIN:-}" ] || [ ! -x "$HORUST_BIN" ]; then
                echo "build.sh: $target needs HORUST_BIN=path to a horust binary (bench/compare.sh builds one)" >&2
                exit 1
            fi
            cp "$HORUST_BIN" images/compare/.horust-bin
            build "tandem-$target:$tag" -f images/compare/Dockerfile --target horust \
                --build-arg APP="$app"
            rm -f images/compare/.horust-bin
            ;;
        base) ;;
        *) usage ;;
    esac
done
