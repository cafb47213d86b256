#!/bin/sh
# Stage "app" of Dockerfile.genie and Dockerfile.agent, first step: the Hive server's virtual
# environment, owned by root (the server runs as `hive` and cannot change its own code).
#
#   hive-venv.sh APP HIVE_VERSION VENV
#
# APP=hive: python3 -m venv VENV, then pip install automagik-hive==HIVE_VERSION with the pins
# of constraints-HIVE_VERSION.txt beside this script (images/hive/). Python 3.12 or newer is
# needed; python3 and its venv module come from Debian's apt when the base lacks them (the
# official postgres images have no Python). The package installs top-level modules named
# api, lib, cli, common and ai, hence a virtual environment of its own.
# APP=example: nothing to install (the example app runs on Debian's packages); VENV's parent
# is created empty for the final stage to copy.
#
# Environment (build arguments, all optional, for pip only, never kept in the image):
#   PIP_CERT_FILE   a CA bundle beside this script that pip is to trust (images/build.sh
#                   passes the host's where HTTPS goes through an intercepting proxy)
#   PIP_INDEX_URL   pip's index, read by pip itself
set -eu
app=$1
version=$2
venv=$3
here=$(cd "$(dirname "$0")" && pwd)

case $app in
    example)
        mkdir -p "$(dirname "$venv")"
        exit 0
        ;;
    hive) ;;
    *)
        echo "hive-venv: APP must be hive or example, not '$app'" >&2
        exit 1
        ;;
esac

constraints=$here/constraints-$version.txt
if [ ! -f "$constraints" ]; then
    echo "hive-venv: no $(basename "$constraints") in images/hive/ for HIVE_VERSION=$version" >&2
    exit 1
fi

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    echo "hive-venv: automagik-hive needs Python 3.12 or newer; the base has $(python3 --version 2>&1) (build FROM a Debian 13 base such as pgvector/pgvector:pg17-trixie)" >&2
    exit 1
fi

if [ -n "${PIP_CERT_FILE:-}" ]; then
    PIP_CERT=$here/$PIP_CERT_FILE
    [ -f "$PIP_CERT" ] || { echo "hive-venv: PIP_CERT_FILE=$PIP_CERT_FILE is not in images/hive/" >&2; exit 1; }
    export PIP_CERT
fi
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL

python3 -m venv "$venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --no-cache-dir --quiet \
    -c "$constraints" "automagik-hive==$version"
# What breaks first with other pins: agno's MCP tools import mcp's streamable HTTP client,
# which mcp 2.x removed (the server itself needs its settings to import; the tests boot it).
"$venv/bin/python" -c 'import agno.tools.mcp, fastapi, uvicorn'
echo "hive-venv: automagik-hive $version in $venv ($(du -sh "$venv" | cut -f1))"
