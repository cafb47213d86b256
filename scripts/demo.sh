#!/usr/bin/env bash
# Runs the main job on this machine, no container: tandem supervising the embedded
# PostgreSQL and the example Hive app (FastAPI on 127.0.0.1:48886), as the genie image does.
# Installs what it needs on Debian 12 as root. Ctrl-C stops the app, then PostgreSQL, cleanly.
# Data stays in /var/tmp/tandem-demo (the second run skips initialisation).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
for mod in fastapi uvicorn psycopg; do
    /usr/bin/python3 -c "import $mod" 2>/dev/null || need+=("python3-$mod")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "demo: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --quiet

demo=/var/tmp/tandem-demo
mkdir -p "$demo" && chmod 755 "$demo"
export PGDATA="$demo/data" PGPORT="${PGPORT:-55432}"
export POSTGRES_USER=genie POSTGRES_PASSWORD=genie POSTGRES_DB=hive_genie
export TANDEM_PG_SOCKET_DIR="$demo" TANDEM_SOCKET="$demo/tandem.sock"
export TANDEM_APP_HEALTH_URL=http://127.0.0.1:48886/api/v1/health
export TANDEM_HTTP="${TANDEM_HTTP:-127.0.0.1:9188}" TANDEM_APP_RESTART=on-failure
echo "demo: API on http://127.0.0.1:48886/api/v1/health; in another shell:"
echo "demo:   TANDEM_SOCKET=$TANDEM_SOCKET target/release/tandem events   (or status)"
echo "demo:   curl -s http://$TANDEM_HTTP/readyz; curl -s http://$TANDEM_HTTP/metrics"
exec target/release/tandem -- /usr/bin/python3 -m uvicorn app.main:app \
    --app-dir "$PWD/examples/hive" --host 127.0.0.1 --port 48886
