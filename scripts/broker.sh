#!/usr/bin/env bash
# Starts or stops the local development broker (Tansu, sqlite storage) in the background.
#   scripts/broker.sh start   # idempotent; data kept under target/kv-run/broker
#   scripts/broker.sh stop
#   scripts/broker.sh status
# KV_BROKER_PORT (default 19092) picks the port.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

port="${KV_BROKER_PORT:-19092}"
dir="$KV_RUN_DIR/broker"
pidfile="$dir/broker.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
start)
    if running; then
        log "broker already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
        exit 0
    fi
    scripts/install-broker.sh
    mkdir -p "$dir"
    url="tcp://127.0.0.1:$port"
    # A relative sqlite URL is resolved against the working directory.
    (cd "$dir" && exec "$TANSU_BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine sqlite://broker.db >>broker.log 2>&1) &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            log "broker listening on 127.0.0.1:$port (log: $dir/broker.log)"
            exit 0
        fi
        running || die "broker exited; see $dir/broker.log"
        sleep 0.1
    done
    die "broker did not listen on $port within 10 s; see $dir/broker.log"
    ;;
stop)
    if running; then
        kill "$(cat "$pidfile")"
        log "broker stopped"
    fi
    rm -f "$pidfile"
    ;;
status)
    if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "stopped"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
