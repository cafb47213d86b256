#!/usr/bin/env bash
# Make a Docker engine answer on this machine: install what the image builds and container
# tests need (docker.io for the engine, mmdebstrap and a keyring with Debian 13's keys for the
# local base image, docker-compose for the compose example) when missing, then start dockerd
# in the background unless `docker info` already answers. Idempotent; meant for a fresh
# Debian 12 machine as root. Packages come from the machine's own apt sources; nothing here
# names a mirror.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# The local base image is Debian 13 (trixie): mmdebstrap checks its mirror's signatures with
# this machine's archive keyring, which has trixie's keys from Debian 12's 2023.3+deb12u1 on.
[ -e /usr/share/keyrings/debian-archive-trixie-automatic.gpg ] || need+=(debian-archive-keyring)
# docker.io brings its own client; an existing one (e.g. /usr/local/bin/docker) is kept.
if [ ${#need[@]} -gt 0 ]; then
    echo "install-docker: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

# A dockerd that runs but does not answer yet (just started by someone else) is waited for.
if ! { [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    echo "install-docker: starting dockerd (log: /var/log/dockerd.log)"
    # setsid: the engine must outlive this script and the shell (or test) that ran it.
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
fi

# The first start creates its storage and networks; a few seconds is normal.
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        echo "install-docker: engine up ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 0.5
done
echo "install-docker: dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
