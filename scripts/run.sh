#!/usr/bin/env bash
# `make run`: broker + topic + kv-writer + kv-reader on localhost, auth off (development only).
# Stays in the foreground; Ctrl-C stops everything it started.
#   WRITER_PORT (8080), READER_PORT (8081), KV_BROKER_PORT (19092), KV_TOPIC (key-value-store)
# With KAFKA_BOOTSTRAP_SERVERS set, the services use that cluster (and every other KAFKA_*
# variable of the environment, SASL and TLS included) and no local broker is built or started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

writer_port="${WRITER_PORT:-8080}"
reader_port="${READER_PORT:-8081}"
topic="${KV_TOPIC:-key-value-store}"
export KV_BROKER_PORT="${KV_BROKER_PORT:-19092}"
external="${KAFKA_BOOTSTRAP_SERVERS:-}"
bootstrap="${external:-127.0.0.1:$KV_BROKER_PORT}"
# A replica of another cluster's topic must not resume from the local broker's offsets.
store="$KV_RUN_DIR/reader${external:+-external}"

scripts/install-deps.sh
[ -n "$external" ] || scripts/broker.sh start
log "building kv-writer and kv-reader"
cargo build --quiet --locked --workspace --bins
if [ -n "$external" ]; then
    log "using the cluster at $external (KAFKA_BOOTSTRAP_SERVERS); no local broker"
fi
# Creates the topic unless it exists (compacted, infinite retention: see the script).
KAFKA_BOOTSTRAP_SERVERS="$bootstrap" scripts/create-topic.sh "$topic" 3
if [ -n "$external" ]; then
    KAFKA_BOOTSTRAP_SERVERS="$bootstrap" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID=kv-reader-dev KV_API_DISABLE_API_AUTH=true target/debug/kv-reader check-config ||
        die "the cluster at $external is not usable as configured; see the lines above"
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$external" ] || scripts/broker.sh stop
}
trap cleanup EXIT INT TERM

common=(
    KAFKA_BOOTSTRAP_SERVERS="$bootstrap"
    KV_API_KAFKA_KEY_VALUE_TOPIC="$topic"
    KV_API_DISABLE_API_AUTH=true
)
mkdir -p "$store"
env "${common[@]}" KV_API_LISTEN="127.0.0.1:$writer_port" target/debug/kv-writer &
pids+=($!)
env "${common[@]}" KV_API_LISTEN="127.0.0.1:$reader_port" KAFKA_GROUP_ID=kv-reader-dev \
    KV_API_STATE_STORAGE_DISK_LOCATION="$store" target/debug/kv-reader &
pids+=($!)

for url in "http://127.0.0.1:$writer_port/healthz/ready" "http://127.0.0.1:$reader_port/healthz/ready"; do
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && break
        sleep 0.1
    done
    curl -fsS -o /dev/null "$url" || die "$url is not ready"
done

# A write followed by a read, so a broken set-up shows here and not in the first user call.
token=$(curl -fsS -X PUT --data-binary 'hello from make run' \
    "http://127.0.0.1:$writer_port/v1/kv/greeting" | sed -n 's/.*"consistency_token":"\([^"]*\)".*/\1/p')
value=""
for _ in $(seq 1 100); do
    value=$(curl -fsS -H "X-Consistency-Token: $token" "http://127.0.0.1:$reader_port/v1/kv/greeting" 2>/dev/null || true)
    [ "$value" = "hello from make run" ] && break
    sleep 0.1
done
[ "$value" = "hello from make run" ] || die "smoke test failed: read back '$value'"

cat <<MSG

  kv-writer  http://127.0.0.1:$writer_port   (writes; auth OFF: development only)
  kv-reader  http://127.0.0.1:$reader_port   (reads; replica on disk in $store)
  broker     $bootstrap   topic $topic

  Smoke test passed: wrote and read back key "greeting".

  curl -X PUT --data-binary 'some value' http://127.0.0.1:$writer_port/v1/kv/my-key
  curl http://127.0.0.1:$reader_port/v1/kv/my-key
  curl -X DELETE http://127.0.0.1:$writer_port/v1/kv/my-key
  curl -H 'Content-Type: application/json' -d '{"key":"k","value":"v"}' http://127.0.0.1:$writer_port/store
  curl -H 'Content-Type: application/json' -d '{"key":"k"}' http://127.0.0.1:$reader_port/retrieve

  Ctrl-C stops everything.
MSG
wait
