#!/usr/bin/env bash
# Build the local stand-in for `pgvector/pgvector:pg17-trixie` (the official postgres image
# with pgvector): a Debian 13 (trixie) root file system made with mmdebstrap from the Debian
# mirror this machine's own apt sources name, loaded with `docker import`, for machines that
# reach a Debian mirror but no image registry.
#
# It lays out what the official image promises and tandem relies on:
#   - the `postgres` user and group, uid/gid 999 (as in the official image, so a data volume
#     moves between the two without a chown);
#   - PostgreSQL 17 from Debian with pgvector (postgresql-17-pgvector), binaries on PATH
#     (/usr/lib/postgresql/17/bin), no cluster left behind by the package;
#   - PGDATA=/var/lib/postgresql/data, /var/run/postgresql (3777), /docker-entrypoint-initdb.d;
# plus Python 3.13 with venv (the Hive server's virtual environment), the example app's Debian
# packages (fastapi, uvicorn and its command, psycopg 3) and procps (ps).
#
# Usage: images/build-base.sh [TAG]      (default tandem-base-trixie:local; FORCE=1 rebuilds)
# An image with that tag whose label carries this recipe's hash is reused as it is.
set -euo pipefail

suite=trixie
tag=${1:-tandem-base-$suite:local}
pg_major=17
packages=(
    "postgresql-$pg_major" "postgresql-$pg_major-pgvector"
    python3 python3-venv ca-certificates
    python3-fastapi python3-uvicorn uvicorn python3-psycopg
    procps
)

here=$(cd "$(dirname "$0")" && pwd)
recipe=$( { cat "$here/build-base.sh"; echo "${packages[*]}"; } | sha256sum | cut -c1-16)

old_id=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
current=$(docker image inspect --format '{{ index .Config.Labels "tandem.base.recipe" }}' "$tag" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ "$current" = "$recipe" ]; then
    echo "build-base: reusing $tag (recipe $recipe)"
    exit 0
fi

# The mirror comes from this machine's apt configuration; nothing in the repository names one.
if [ -s /etc/apt/sources.list.d/debian.sources ]; then
    sources=/etc/apt/sources.list.d/debian.sources
elif [ -s /etc/apt/sources.list ]; then
    sources=/etc/apt/sources.list
else
    echo "build-base: no apt sources (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)" >&2
    exit 1
fi
command -v mmdebstrap >/dev/null || { echo "build-base: mmdebstrap missing; run images/install-docker.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The same mirror, another release: the machine's own suite names (its codename, and
# CODENAME-updates, CODENAME-security) become the image's, on the suite lines only: `Suites:`
# of deb822 .sources files and `deb ...` lines of a sources.list.
host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$host_suite" ] || { echo "build-base: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
sed -E "/^[[:space:]]*(Suites:|deb(-src)?[[:space:]])/ s/\b$host_suite\b/$suite/g" \
    "$sources" > "$work/sources"
grep -Eq "(^|[[:space:]])$suite([[:space:]]|$)" "$work/sources" || {
    echo "build-base: no '$host_suite' suite to swap for '$suite' in $sources" >&2
    exit 1
}

# Hooks run on the host with the chroot as "$1" (hence the single quotes: mmdebstrap's shell
# expands it). Each is one line: mmdebstrap first tries a hook as a file name and warns about
# one that spans lines.
#
# essential-hook: the postgres account must exist before postgresql-common's postinst creates
# one with whatever system uid is free; useradd may not be installed yet, so write the entries
# directly (the passwd package's postinst adds the shadow entry later).
# shellcheck disable=SC2016
essential_hook='grep -q "^postgres:" "$1/etc/group" || echo "postgres:x:999:" >> "$1/etc/group"; '\
'grep -q "^postgres:" "$1/etc/passwd" || echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >> "$1/etc/passwd"'
# customize-hook: drop the cluster the Debian package creates (tandem initialises PGDATA the
# way the official entrypoint does), keep later installs from creating one, lay out the paths,
# and empty /run but for the socket directory (mmdebstrap's own /run cleanup is skipped so
# that the directory survives).
# shellcheck disable=SC2016
customize_hook="set -e; chroot \"\$1\" pg_dropcluster $pg_major main; "\
'sed -ri "s/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/" "$1/etc/postgresql-common/createcluster.conf"; '\
'find "$1/run" -mindepth 1 -maxdepth 1 ! -name postgresql -exec rm -rf {} +; '\
'mkdir -p "$1/var/lib/postgresql/data" "$1/run/postgresql" "$1/docker-entrypoint-initdb.d"; '\
'chroot "$1" chown -R postgres:postgres /var/lib/postgresql /run/postgresql; '\
'chmod 1777 "$1/var/lib/postgresql/data"; chmod 3777 "$1/run/postgresql"'

echo "build-base: mmdebstrap $suite (${packages[*]}) from the mirrors of $sources"
start=$(date +%s)
mmdebstrap --variant=minbase --quiet \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --essential-hook="$essential_hook" \
    --customize-hook="$customize_hook" \
    --skip=cleanup/run \
    "$suite" "$work/rootfs.tar" - < "$work/sources"

# PATH and PGDATA as the official image sets them (its PATH ends with the server's bin dir).
docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/$pg_major/bin" \
    --change "ENV PG_MAJOR=$pg_major" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL tandem.base.recipe=$recipe" \
    --change 'CMD ["bash"]' \
    "$work/rootfs.tar" "$tag" >/dev/null
# The replaced image goes too, unless something still uses it.
if [ -n "$old_id" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')
echo "build-base: built $tag in $(( $(date +%s) - start )) s, $size"
