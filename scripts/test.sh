#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine as root, installing what it needs:
# PostgreSQL 15 for the integration tests, the compressors the init scripts use, Prometheus
# (promtool and a server the metrics test scrapes with), a Docker
# engine (started in the background) and mmdebstrap for the container tests.
# Formatting and lints first, then every test: unit, integration (tandem as a real PID 1
# in its own PID namespace), container (images built locally, run in a real engine).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
for tool in gzip xz zstd unshare promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    # Tool names that differ from their package names.
    pkgs=$(printf '%s\n' "${need[@]}" | sed -e 's/^xz$/xz-utils/' -e 's/^unshare$/util-linux/' \
        -e 's/^promtool$/prometheus/' | sort -u)
    echo "test: installing $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
# Debian's postgresql package starts a cluster of its own on 5432; the tests bring their own.
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
        pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
fi
bash images/install-docker.sh

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --release
# The integration tests run the test app as a program: build it as one (under
# --all-targets cargo would build examples only as test harnesses).
cargo build --examples
# The fault suite (tests/faults.rs) appends one line per scenario of what it survived; shown
# at the end, whether the run passed or not.
faults_summary="${CARGO_TARGET_DIR:-target}/tmp/faults-summary.txt"
rm -f "$faults_summary"
trap 'if [ -s "$faults_summary" ]; then echo "test: what the fault suite survived:"; cat "$faults_summary"; fi' EXIT
cargo test "$@"
