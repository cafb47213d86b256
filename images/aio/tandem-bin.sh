#!/bin/sh
# Stage 1 of Dockerfile.genie and Dockerfile.agent: leave the tandem binary at $2.
#   $1 (TANDEM_BIN) set:   a binary built on the host, taken from the build context
#                          (images/build.sh does this; .dockerignore lets target/release/tandem in);
#   $1 empty (default):    build it from source here, with the stage's cargo (rust:1-bookworm).
set -eu
bin=$1
out=$2

if [ -n "$bin" ]; then
    if [ ! -f "$bin" ]; then
        echo "tandem-bin: TANDEM_BIN=$bin is not in the build context (build it first: cargo build --release)" >&2
        exit 1
    fi
    install -m 0755 "$bin" "$out"
else
    cargo build --release --bin tandem
    install -m 0755 target/release/tandem "$out"
fi
