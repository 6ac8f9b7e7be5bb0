#!/usr/bin/env bash
# Creates a topic unless it exists, using the KAFKA_* variables the services use.
#   KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 scripts/create-topic.sh key-value-store 3
# Extra topic configs may follow: scripts/create-topic.sh NAME 3 cleanup.policy=compact
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 NAME [PARTITIONS] [config=value ...]" >&2; exit 2; }
: "${KAFKA_BOOTSTRAP_SERVERS:=127.0.0.1:${KV_BROKER_PORT:-19092}}"
export KAFKA_BOOTSTRAP_SERVERS
exec cargo run --quiet --locked -p kv-core --example create_topic -- "$@"
