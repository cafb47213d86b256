#!/bin/sh
# The upgrade test image's extra layer: an older PostgreSQL major from another Debian suite,
# installed beside the base's own (Debian installs each major under /usr/lib/postgresql/N).
#
#   add-old-postgres.sh MAJOR SUITE        e.g. 15 bookworm (Debian 12's PostgreSQL)
#
# The apt source for SUITE is the base's own (its mirror, components and keyring), with its
# suite names swapped for SUITE's on the suite lines only, so nothing here names a mirror.
# It is pinned low (100): nothing of the base is replaced by SUITE's packages unless asked
# for with `-t SUITE`. The package's own cluster is not created (the base turned that off).
set -eu
major=$1
suite=$2
own=$(. /etc/os-release && echo "$VERSION_CODENAME")
src=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -n "$src" ]; then
    sed -E "/^[[:space:]]*Suites:/ s/\b$own\b/$suite/g" "$src" > "/etc/apt/sources.list.d/$suite.sources"
elif [ -s /etc/apt/sources.list ]; then
    sed -E "/^[[:space:]]*deb(-src)?[[:space:]]/ s/\b$own\b/$suite/g" /etc/apt/sources.list > "/etc/apt/sources.list.d/$suite.list"
else
    echo "add-old-postgres: no apt sources in the base" >&2
    exit 1
fi
printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$suite" > "/etc/apt/preferences.d/$suite"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t "$suite" "postgresql-$major" >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*
# Nothing of the package may run: no cluster, and the binaries are where tandem looks.
test -x "/usr/lib/postgresql/$major/bin/postgres"
test -x "/usr/lib/postgresql/$major/bin/pg_upgrade" || true
ls /usr/lib/postgresql/*/bin/pg_upgrade >/dev/null
