#!/usr/bin/env bash
# `make bench` (full) and `make bench-quick` (CI smoke): the service measured side by side with
# the peers users would pick, in one run, on loopback. Prints one table at the end and writes it
# to target/kv-run/bench/results.md. See docs/benchmarks.md for what each figure means.
#   scripts/bench.sh [full|quick]
# Knobs (environment): BENCH_KEYS (read keys / replay records), BENCH_SECONDS (per wrk run),
# BENCH_RUNS (measured runs per figure; the median is reported), BENCH_WRITES (per write run),
# BENCH_PROBES (freshness probes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

mode="${1:-full}"
case "$mode" in
full)
    keys="${BENCH_KEYS:-1000000}" seconds="${BENCH_SECONDS:-10}" runs="${BENCH_RUNS:-3}"
    writes="${BENCH_WRITES:-20000}" probes="${BENCH_PROBES:-300}" warmup=3
    ;;
quick)
    keys="${BENCH_KEYS:-20000}" seconds="${BENCH_SECONDS:-2}" runs="${BENCH_RUNS:-3}"
    writes="${BENCH_WRITES:-3000}" probes="${BENCH_PROBES:-50}" warmup=1
    ;;
*)
    echo "usage: $0 full|quick" >&2
    exit 2
    ;;
esac
connections=64
threads=2
value_bytes=100
started=$SECONDS

scripts/install-bench-deps.sh
log "building the binaries and examples with --release"
cargo build --quiet --release --locked --workspace --bins --examples
bin="${CARGO_TARGET_DIR:-target}/release"
bin="$(cd "$bin" && pwd)"

work="$KV_RUN_DIR/bench"
rm -rf "$work"
mkdir -p "$work"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    # A reader whose broker is already gone can take long to stop; do not leave it behind.
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

listening() { # listening PORT PID: waits up to 30 s for PORT; fails if PID exits first
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

wait_port() { # wait_port PORT PID WHAT
    listening "$1" "$2" || die "$3 did not listen on $1; see $work"
}

wait_ready() { # wait_ready URL
    for _ in $(seq 1 6000); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 not ready after 10 minutes"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -n "s/\\(^\\|.* \\)$1=\\([^ ]*\\).*/\\2/p"; } # field NAME < "BENCH a=1 b=2"
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

service_env=(env -i PATH="$PATH" KV_API_DISABLE_API_AUTH=true KV_API_LOG_FORMAT=text RUST_LOG=warn)

# --- brokers: librdkafka's MockCluster (fast, in memory) and Tansu (the local test broker) ----
"$bin/examples/mock_cluster" >"$work/mock.out" 2>"$work/mock.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q bootstrap= "$work/mock.out" && break; sleep 0.1; done
mock=$(field bootstrap <"$work/mock.out")
[ -n "$mock" ] || die "mock cluster did not start; see $work/mock.log"
log "MockCluster at $mock"

start_tansu() { # start_tansu NAME: a fresh Tansu with its own sqlite store; sets tansu, tansu_pid
    local port attempt
    mkdir -p "$work/$1"
    # A port free when probed can be taken before Tansu binds it (it then exits at once): retry.
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        (cd "$work/$1" && RUST_LOG=warn exec "$TANSU_BIN" broker \
            --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine sqlite://broker.db >"broker-$attempt.log" 2>&1) &
        tansu_pid=$!
        pids+=($tansu_pid)
        if listening "$port" "$tansu_pid"; then
            tansu="127.0.0.1:$port"
            log "Tansu at $tansu"
            return 0
        fi
        log "Tansu did not start on port $port (attempt $attempt); see $work/$1/broker-$attempt.log"
    done
    die "Tansu did not start; see $work/$1"
}
start_tansu tansu

# --- 10. the Redis-protocol read port (issue 20): redis-benchmark GET against kv-reader's RESP
# port and against a redis-server holding the same keys, in the same run; GET p99 at half of
# each one's own top rate; the reader's RSS after. Its own Tansu, topic, store and redis-server,
# so the step runs alone too: `BENCH_ONLY=resp scripts/bench.sh quick`.
resp_reads() { # sets resp_{ours,peer}_{rps,p16_rps}, resp_{ours,peer}_p99_half, resp_rss_after
    local saved_tansu="$tansu" saved_tansu_pid="$tansu_pid" rport hport rpid spid sport out
    start_tansu tansu-resp
    # The keys redis-benchmark -r asks for, key:000000000000 .. , with 100-byte values.
    rm -rf "$work/resp-store"
    mkdir -p "$work/resp-store"
    KV_BENCH_BOOTSTRAP="$tansu" KV_BENCH_STORE_DIR="$work/resp-store" KV_BENCH_KEYS_LIKE=redis-benchmark \
        "$bin/examples/replay_speed" "$keys" 3 disk >"$work/resp-replay.txt" 2>"$work/resp-replay.log"
    local topic
    topic=$(grep BENCH "$work/resp-replay.txt" | tail -1 | field topic)
    rport=$(free_port)
    hport=$(free_port)
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$tansu" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID=bench-resp KV_API_STATE_STORAGE_DISK_LOCATION="$work/resp-store" \
        KV_API_LISTEN="127.0.0.1:$hport" KV_API_RESP_LISTEN="127.0.0.1:$rport" \
        "$bin/kv-reader" >"$work/resp-reader.log" 2>&1 &
    rpid=$!
    pids+=($rpid)
    wait_port "$rport" "$rpid" "kv-reader's RESP port"
    wait_ready "http://127.0.0.1:$hport/healthz/ready"
    sport=$(free_port)
    redis-server --port "$sport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        --logfile "$work/resp-redis.log" &
    spid=$!
    pids+=($spid)
    wait_port "$sport" "$spid" "redis-server"
    awk -v n="$keys" -v v="$(head -c "$value_bytes" /dev/zero | tr '\0' v)" \
        'BEGIN { for (i = 0; i < n; i++) printf "SET key:%012d %s\r\n", i, v }' |
        redis-cli -p "$sport" --pipe >"$work/resp-redis-load.log"
    [ "$(redis-cli -p "$rport" GET key:000000000000)" = "$(redis-cli -p "$sport" GET key:000000000000)" ] ||
        die "the RESP port and redis-server answer key:000000000000 differently"
    # bench_get PORT PIPELINE: medians of $runs redis-benchmark runs, "rps p99"
    bench_get() {
        local requests=$((seconds * (${2} > 1 ? 400000 : 100000))) run
        out="$work/resp-bench-$1-P$2.txt"
        redis-benchmark -p "$1" -c "$connections" --threads "$threads" -P "$2" -n $((requests / 4)) \
            -r "$keys" -d "$value_bytes" -t get -q >/dev/null
        : >"$out"
        for run in $(seq 1 "$runs"); do
            redis-benchmark -p "$1" -c "$connections" --threads "$threads" -P "$2" -n "$requests" \
                -r "$keys" -d "$value_bytes" -t get --csv | tail -1 >>"$out"
        done
        echo "$(tr -d '"' <"$out" | cut -d, -f2 | median) $(tr -d '"' <"$out" | cut -d, -f7 | median)"
    }
    read -r resp_ours_rps resp_ours_p99 <<<"$(bench_get "$rport" 1)"
    read -r resp_peer_rps resp_peer_p99 <<<"$(bench_get "$sport" 1)"
    read -r resp_ours_p16_rps _ <<<"$(bench_get "$rport" 16)"
    read -r resp_peer_p16_rps _ <<<"$(bench_get "$sport" 16)"
    # Half of each one's own top rate (no pipelining), open loop over 16 connections.
    half_rate() { awk -v r="$1" 'BEGIN { printf "%d", r / 2 }'; }
    "$bin/examples/resp_latency" "127.0.0.1:$rport" "$(half_rate "$resp_ours_rps")" "$seconds" 16 "$keys" \
        >"$work/resp-latency-ours.txt"
    "$bin/examples/resp_latency" "127.0.0.1:$sport" "$(half_rate "$resp_peer_rps")" "$seconds" 16 "$keys" \
        >"$work/resp-latency-peer.txt"
    resp_ours_p99_half=$(grep BENCH "$work/resp-latency-ours.txt" | field p99_ms)
    resp_peer_p99_half=$(grep BENCH "$work/resp-latency-peer.txt" | field p99_ms)
    [ "$(grep BENCH "$work/resp-latency-ours.txt" | field missing)" = 0 ] ||
        die "the RESP port missed keys; see $work/resp-latency-ours.txt"
    resp_rss_after=$(rss_mb "$rpid")
    kill "$rpid" "$spid" "$tansu_pid" 2>/dev/null || true
    tansu="$saved_tansu" tansu_pid="$saved_tansu_pid"
    cat >"$work/resp-figures.txt" <<FIGURES
resp: GET ${resp_ours_rps} req/s (p99 ${resp_ours_p99} ms) vs redis-server ${resp_peer_rps} (p99 ${resp_peer_p99} ms); -P 16 ${resp_ours_p16_rps} vs ${resp_peer_p16_rps}
resp: p99 at half rate ${resp_ours_p99_half} ms vs ${resp_peer_p99_half} ms; reader RSS after ${resp_rss_after} MB
FIGURES
    log "resp figures: $(tr '\n' ';' <"$work/resp-figures.txt")"
}
resp_rows() {
    row "10. RESP GET/s, kv-reader vs redis-server (redis-benchmark, $connections conns; p99 $resp_ours_p99 / $resp_peer_p99 ms)" "$resp_ours_rps" "$resp_peer_rps" 1.0 "req/s"
    row "10. RESP GET/s with -P 16, kv-reader vs redis-server" "$resp_ours_p16_rps" "$resp_peer_p16_rps" 1.0 "req/s"
    limit_row "10. RESP GET p99 at half the top rate, open loop, 16 conns (redis-server: $resp_peer_p99_half ms)" "$resp_ours_p99_half" 1 ms
    limit_row "10. reader RSS after the RESP runs, $keys keys on disk" "$resp_rss_after" 100 MB
}
if [ "${BENCH_ONLY:-}" = resp ]; then
    log "resp: the Redis-protocol port only (BENCH_ONLY=resp), $keys keys"
    resp_reads
    cat "$work/resp-figures.txt"
    exit 0
fi
# --- end of 10. the Redis-protocol read port --------------------------------------------

# --- 4. replay: a fresh reader loading N records vs a raw rdkafka consumer ----------------------
# On Tansu the run's disk store (N keys) is kept for the read figures. The MockCluster keeps only
# about 5 MB per partition (older records are dropped), so it replays at most 100 000 records.
replay() { # replay BROKER RECORDS RUNS LABEL [STORE]
    local out="$work/replay-$4.txt"
    : >"$out"
    for run in $(seq 1 "$3"); do
        rm -rf "$work/store"
        KV_BENCH_BOOTSTRAP="$1" KV_BENCH_STORE_DIR="${5:-}" \
            "$bin/examples/replay_speed" "$2" 3 disk >>"$out" 2>>"$work/replay-$4.log"
    done
}
mock_records=$((keys < 100000 ? keys : 100000))
log "replay: $mock_records records on the MockCluster, $runs runs"
replay "$mock" "$mock_records" "$runs" mock
replay_mock_ours=$(grep BENCH "$work/replay-mock.txt" | field replica_rps | median)
replay_mock_raw=$(grep BENCH "$work/replay-mock.txt" | field raw_rps | median)
log "replay: $keys records on Tansu, 1 run (its store serves the read figures)"
replay "$tansu" "$keys" 1 tansu "$work/store"
read_topic=$(grep BENCH "$work/replay-tansu.txt" | tail -1 | field topic)
replay_tansu_ours=$(grep BENCH "$work/replay-tansu.txt" | field replica_rps | median)
replay_tansu_raw=$(grep BENCH "$work/replay-tansu.txt" | field raw_rps | median)

# --- 5 and 1. a kv-reader process on the store with N keys; its RSS; reads vs Redis and nginx --
reader_port=$(free_port)
"${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$tansu" KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" \
    KAFKA_GROUP_ID=bench-reader KV_API_STATE_STORAGE_DISK_LOCATION="$work/store" \
    KV_API_LISTEN="127.0.0.1:$reader_port" "$bin/kv-reader" >"$work/reader.log" 2>&1 &
reader_pid=$!
pids+=($reader_pid)
wait_port "$reader_port" "$reader_pid" "kv-reader"
wait_ready "http://127.0.0.1:$reader_port/healthz/ready"
curl -fsS -o /dev/null "http://127.0.0.1:$reader_port/v1/kv/key-000000000" || die "key-000000000 not served"
rss_ready=$(rss_mb "$reader_pid")
store_mb=$(du -sm "$work/store" | cut -f1)

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
redis_pid=$!
pids+=($redis_pid)
wait_port "$redis_port" "$redis_pid" "redis-server"
value=$(head -c "$value_bytes" /dev/zero | tr '\0' v)
# redis-benchmark's -r picks keys key:000000000000 .. key:(r-1), zero-padded to 12 digits.
awk -v n="$keys" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "SET key:%012d %s\r\n", i, v }' |
    redis-cli -p "$redis_port" --pipe >"$work/redis-load.log"

nginx_port=$(free_port)
mkdir -p "$work/nginx/www" "$work/nginx/tmp"
printf '%s' "$value" >"$work/nginx/www/value"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp;
    scgi_temp_path $work/nginx/tmp;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$nginx_port;
        root $work/nginx/www;
        # Every key maps to the one 100-byte file, so wrk sends the same requests as to kv-reader.
        location /v1/kv/ { try_files /value =404; }
    }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!
pids+=($nginx_pid)
wait_port "$nginx_port" "$nginx_pid" "nginx"

cat >"$work/random.lua" <<'LUA'
-- GET /v1/kv/key-NNNNNNNNN with a uniformly random key among BENCH_KEYS.
local keys = tonumber(os.getenv("BENCH_KEYS"))
local thread_seed = 0
setup = function(thread) thread_seed = thread_seed + 1; thread:set("seed", thread_seed) end
init = function() math.randomseed(os.time() * 1000 + (seed or 0)) end
request = function()
    return wrk.format("GET", string.format("/v1/kv/key-%09d", math.random(0, keys - 1)))
end
LUA

to_ms() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.3f\n", v }'; }

http_reads() { # http_reads PORT LABEL [SCRIPT]: warm-up, then $runs runs; medians into <label>_{rps,p50,p99}
    local out="$work/wrk-$2.txt" script="${3:-$work/random.lua}"
    : >"$out"
    BENCH_KEYS="$keys" wrk -t"$threads" -c"$connections" -d"${warmup}s" -s "$script" \
        "http://127.0.0.1:$1" >/dev/null
    for _ in $(seq 1 "$runs"); do
        BENCH_KEYS="$keys" wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency \
            -s "$script" "http://127.0.0.1:$1" >"$work/wrk-run.txt"
        cat "$work/wrk-run.txt" >>"$out"
        if grep -q "Non-2xx" "$work/wrk-run.txt"; then die "$2 answered non-2xx; see $out"; fi
        printf 'RUN rps=%s p50=%s p99=%s\n' \
            "$(awk '/Requests\/sec/ { print $2 }' "$work/wrk-run.txt")" \
            "$(awk '$1 == "50%" { print $2 }' "$work/wrk-run.txt" | to_ms)" \
            "$(awk '$1 == "99%" { print $2 }' "$work/wrk-run.txt" | to_ms)" >>"$out"
    done
    printf -v "${2}_rps" '%s' "$(grep '^RUN' "$out" | field rps | median)"
    printf -v "${2}_p50" '%s' "$(grep '^RUN' "$out" | field p50 | median)"
    printf -v "${2}_p99" '%s' "$(grep '^RUN' "$out" | field p99 | median)"
}

log "reads: kv-reader ($keys keys on disk), $connections connections, $runs x ${seconds}s"
http_reads "$reader_port" reader
rss_after=$(rss_mb "$reader_pid")
rss_peak=$(hwm_mb "$reader_pid")
log "reads: nginx (one static 100-byte file)"
http_reads "$nginx_port" nginx

log "reads: redis-benchmark GET ($keys keys, $value_bytes-byte values)"
redis_requests=$((seconds * 100000))
redis-benchmark -p "$redis_port" -c "$connections" --threads "$threads" -n $((warmup * 100000)) \
    -r "$keys" -d "$value_bytes" -t get -q >/dev/null
: >"$work/redis-bench.txt"
for _ in $(seq 1 "$runs"); do
    redis-benchmark -p "$redis_port" -c "$connections" --threads "$threads" -n "$redis_requests" \
        -r "$keys" -d "$value_bytes" -t get --csv | tail -1 >>"$work/redis-bench.txt"
done
# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
redis_rps=$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f2 | median)
redis_p50=$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f5 | median)
redis_p99=$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f7 | median)
kill "$nginx_pid" "$redis_pid" 2>/dev/null || true
log "resp: redis-benchmark GET against the Redis-protocol port and a redis-server, $keys keys"
resp_reads

# --- 6. shards: the same topic over 3 sharded readers (R=1); their stores and RSS against the
# full replica's, and a GET forwarded one hop against a GET the shard answers itself ----------
shard_ports=() shard_pids=()
for i in 0 1 2; do shard_ports+=("$(free_port)"); done
shard_peers="http://127.0.0.1:${shard_ports[0]},http://127.0.0.1:${shard_ports[1]},http://127.0.0.1:${shard_ports[2]}"
start_shards() { # start_shards: the 3 shards on their disk stores; sets shard_pids
    shard_pids=()
    for i in 0 1 2; do
        mkdir -p "$work/shard-$i"
        "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$tansu" KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" \
            KAFKA_GROUP_ID="bench-shard-$i" KV_API_STATE_STORAGE_DISK_LOCATION="$work/shard-$i" \
            KV_API_SHARD="$i/3" KV_API_SHARD_PEERS="$shard_peers" \
            KV_API_LISTEN="127.0.0.1:${shard_ports[$i]}" "$bin/kv-reader" >>"$work/shard-$i.log" 2>&1 &
        shard_pids+=($!)
        pids+=($!)
    done
    for i in 0 1 2; do
        wait_port "${shard_ports[$i]}" "${shard_pids[$i]}" "shard $i"
        wait_ready "http://127.0.0.1:${shard_ports[$i]}/healthz/ready"
    done
}
log "shards: 3 readers replaying their partitions of the $keys keys"
start_shards
# RSS like the full replica's: a process that opened its store and caught up, not one that just
# replayed into it (a replay's fetch queues and write pages are not what a shard keeps).
kill "${shard_pids[@]}" 2>/dev/null || true
for pid in "${shard_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
start_shards
shard_store_mb=0 shard_rss_mb=0
for i in 0 1 2; do
    shard_store_mb=$(awk -v a="$shard_store_mb" -v b="$(du -sm "$work/shard-$i" | cut -f1)" 'BEGIN { print (b > a) ? b : a }')
    shard_rss_mb=$(awk -v a="$shard_rss_mb" -v b="$(rss_mb "${shard_pids[$i]}")" 'BEGIN { print (b > a) ? b : a }')
done
# Which keys shard 0 holds: murmur2 of the key, as the writer's partitioner places it.
shard_partitions=$(curl -fsS "http://127.0.0.1:${shard_ports[0]}/healthz/cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"])')
python3 - "$keys" "$shard_partitions" "$work" <<'PY'
import sys
keys, partitions, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def murmur2(data):
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF; k ^= k >> 24; k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[n:]
    if len(tail) >= 3: h ^= tail[2] << 16
    if len(tail) >= 2: h ^= tail[1] << 8
    if tail: h ^= tail[0]; h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13; h = (h * m) & 0xFFFFFFFF; h ^= h >> 15
    return h
step = max(1, keys // 200000)
with open(f"{work}/local.paths", "w") as local, open(f"{work}/forwarded.paths", "w") as forwarded:
    for i in range(0, keys, step):
        key = f"key-{i:09d}"
        shard = ((murmur2(key.encode()) & 0x7FFFFFFF) % partitions) % 3
        (local if shard == 0 else forwarded).write(f"/v1/kv/{key}\n")
PY
cat >"$work/paths.lua" <<'LUA'
-- GET a uniformly random path of the file BENCH_PATHS names.
local paths = {}
local thread_seed = 0
setup = function(thread) thread_seed = thread_seed + 1; thread:set("seed", thread_seed) end
init = function()
    math.randomseed(os.time() * 1000 + (seed or 0))
    for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
end
request = function() return wrk.format("GET", paths[math.random(1, #paths)]) end
LUA
log "shards: GET of keys shard 0 holds, then of keys it forwards, $runs x ${seconds}s"
BENCH_PATHS="$work/local.paths" http_reads "${shard_ports[0]}" shard_local "$work/paths.lua"
BENCH_PATHS="$work/forwarded.paths" http_reads "${shard_ports[0]}" shard_forwarded "$work/paths.lua"
kill "${shard_pids[@]}" 2>/dev/null || true

# --- 7. snapshot bootstrap: a new reader ready from the full replica's snapshot, against one
# replaying the same topic, and the full replica's reads while it serves the snapshot --------
ready_in() { # ready_in LABEL [VAR=VALUE...]: starts a memory reader, prints seconds until ready
    local port pid start
    port=$(free_port)
    start=$(date +%s.%N)
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$tansu" KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" \
        KAFKA_GROUP_ID="bench-$1" KV_API_STATE_STORAGE_TYPE=memory KV_API_LISTEN="127.0.0.1:$port" \
        "${@:2}" "$bin/kv-reader" >"$work/$1.log" 2>&1 &
    pid=$!
    pids+=($pid)
    wait_port "$port" "$pid" "$1"
    wait_ready "http://127.0.0.1:$port/healthz/ready"
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }'
    curl -fsS "http://127.0.0.1:$port/metrics" | awk '$1 == "kv_reader_bootstrapped_from_snapshot" { print $2 }' >"$work/$1.bootstrapped"
    kill "$pid" 2>/dev/null || true
}
log "snapshot: a new reader of $keys keys from a peer's snapshot, then one replaying the topic"
snapshot_ready_s=$(ready_in snapshot-new KV_API_BOOTSTRAP_PEERS="http://127.0.0.1:$reader_port")
[ "$(cat "$work/snapshot-new.bootstrapped")" = 1 ] || die "the new reader took no snapshot; see $work/snapshot-new.log"
replay_ready_s=$(ready_in replay-new)
log "snapshot: reads on the peer while it serves a snapshot"
ready_in snapshot-load KV_API_BOOTSTRAP_PEERS="http://127.0.0.1:$reader_port" >/dev/null &
snapshot_load=$!
http_reads "$reader_port" serving
wait "$snapshot_load" || true
kill "$reader_pid" 2>/dev/null || true
# Kept as soon as measured: a later step that fails does not take these figures with it.
cat >"$work/cluster-figures.txt" <<FIGURES
shards: largest store ${shard_store_mb} MB (full replica ${store_mb} MB), largest RSS ready ${shard_rss_mb} MB (full replica ${rss_ready} MB)
forwarded GET ${shard_forwarded_rps} req/s p99 ${shard_forwarded_p99} ms; local GET ${shard_local_rps} req/s p99 ${shard_local_p99} ms
snapshot: ready in ${snapshot_ready_s} s from a snapshot, ${replay_ready_s} s by replay; peer reads ${serving_rps} req/s (p99 ${serving_p99} ms) while serving, ${reader_rps} req/s idle
FIGURES
log "cluster figures: $(tr '\n' ';' <"$work/cluster-figures.txt")"

# --- 2. writes: acked HTTP writes/s at 64 connections vs a raw rdkafka producer ----------------
# The write and freshness figures each run on a fresh Tansu: after a 1M-record replay, or some
# 20 000 writes, Tansu slows down, and its sqlite storage can start failing every request
# (`Storage(UnableToSend)` in its log).
fresh_tansu() { # fresh_tansu NAME
    kill "$tansu_pid" 2>/dev/null || true
    start_tansu "$1"
}
writes_on() { # writes_on LABEL: mock, or tansu (a fresh Tansu for each run)
    local out="$work/writes-$1.txt" broker run order
    : >"$out"
    for run in $(seq 1 "$runs"); do
        broker="$mock"
        if [ "$1" = tansu ]; then
            fresh_tansu "tansu-writes-$run"
            broker="$tansu"
        fi
        # Alternate which side runs first: a broker may slow as its log grows (Tansu does), and
        # the side that always ran second would pay for it.
        order=raw-first
        [ $((run % 2)) -eq 0 ] && order=http-first
        KV_BENCH_BOOTSTRAP="$broker" "$bin/examples/load" "$writes" "$connections" "$value_bytes" \
            "$order" >>"$out" 2>>"$work/writes-$1.log"
    done
    printf -v "writes_${1}_raw" '%s' "$(grep BENCH "$out" | field raw_wps | median)"
    printf -v "writes_${1}_ours" '%s' "$(grep BENCH "$out" | field http_wps | median)"
}
log "writes: $writes per run on the MockCluster, $runs runs"
writes_on mock
log "writes: $writes per run on Tansu, $runs runs, each on a fresh Tansu"
writes_on tansu

# --- 3. freshness: write 2xx -> readable on a reader, under moderate load ---------------------
freshness_on() { # freshness_on BROKER LABEL [VAR=VALUE for the reader]
    local topic="fresh-$2-$RANDOM" wport rport wpid rpid extra=("${@:3}")
    # The MockCluster has no CreateTopics: there the writer's first write creates the topic.
    KAFKA_BOOTSTRAP_SERVERS="$1" timeout 15 "$bin/examples/create_topic" "$topic" 3 >/dev/null 2>&1 || true
    wport=$(free_port)
    rport=$(free_port)
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KV_API_LISTEN="127.0.0.1:$wport" "$bin/kv-writer" >"$work/fresh-writer-$2.log" 2>&1 &
    wpid=$!
    pids+=($wpid)
    wait_port "$wport" "$wpid" "kv-writer"
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -X PUT --data-binary first "http://127.0.0.1:$wport/v1/kv/first" && break
        sleep 0.2
    done
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="fresh-$2" KV_API_LISTEN="127.0.0.1:$rport" "${extra[@]}" "$bin/kv-reader" \
        >"$work/fresh-reader-$2.log" 2>&1 &
    rpid=$!
    pids+=($rpid)
    wait_port "$rport" "$rpid" "kv-reader"
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    wait_ready "http://127.0.0.1:$rport/healthz/ready"
    "$bin/examples/freshness" "http://127.0.0.1:$wport" "http://127.0.0.1:$rport" "$probes" 500 \
        >"$work/fresh-$2.txt"
    kill "$wpid" "$rpid" 2>/dev/null || true
    printf -v "fresh_${2}_p50" '%s' "$(grep BENCH "$work/fresh-$2.txt" | field p50_ms)"
    printf -v "fresh_${2}_p99" '%s' "$(grep BENCH "$work/fresh-$2.txt" | field p99_ms)"
    printf -v "fresh_${2}_failed" '%s' "$(grep BENCH "$work/fresh-$2.txt" | field failed)"
}
log "freshness: $probes probes under 500 writes/s on the MockCluster"
freshness_on "$mock" mock
log "freshness: $probes probes under 500 writes/s on Tansu"
fresh_tansu tansu-fresh
freshness_on "$tansu" tansu
# Both brokers hold a fetch until fetch.wait.max.ms (50 ms by default) instead of answering when
# a record arrives; the same probes with the reader's wait at 5 ms show what that costs.
log "freshness: the same with KAFKA_FETCH_WAIT_MAX_MS=5 on the reader"
freshness_on "$mock" mock5 KAFKA_FETCH_WAIT_MAX_MS=5
fresh_tansu tansu-fresh5
freshness_on "$tansu" tansu5 KAFKA_FETCH_WAIT_MAX_MS=5

# --- 6. watch: write 2xx -> event at 100 watchers, and events/s one watcher takes -------------
# The reader keeps a buffer of changes larger than the throughput run's, so its watcher is served
# from the buffer; the latency goal is the freshness p99 of the same broker plus 5 ms.
watch_on() { # watch_on BROKER LABEL
    local topic="watch-$2-$RANDOM" wport rport wpid rpid
    KAFKA_BOOTSTRAP_SERVERS="$1" timeout 15 "$bin/examples/create_topic" "$topic" 3 >/dev/null 2>&1 || true
    wport=$(free_port)
    rport=$(free_port)
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KV_API_LISTEN="127.0.0.1:$wport" "$bin/kv-writer" >"$work/watch-writer-$2.log" 2>&1 &
    wpid=$!
    pids+=($wpid)
    wait_port "$wport" "$wpid" "kv-writer"
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -X PUT --data-binary first "http://127.0.0.1:$wport/v1/kv/first" && break
        sleep 0.2
    done
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="watch-$2" KV_API_LISTEN="127.0.0.1:$rport" \
        KV_API_WATCH_BUFFER_EVENTS=100000 KV_API_WATCH_BUFFER_BYTES=67108864 "$bin/kv-reader" \
        >"$work/watch-reader-$2.log" 2>&1 &
    rpid=$!
    pids+=($rpid)
    wait_port "$rport" "$rpid" "kv-reader"
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    wait_ready "http://127.0.0.1:$rport/healthz/ready"
    "$bin/examples/watch_latency" "http://127.0.0.1:$wport" "http://127.0.0.1:$rport" 100 "$probes" \
        "$writes" 500 >"$work/watch-$2.txt"
    kill "$wpid" "$rpid" 2>/dev/null || true
    local name
    for name in p50_ms p99_ms failed events_per_s; do
        printf -v "watch_${2}_${name%_ms}" '%s' "$(grep BENCH "$work/watch-$2.txt" | field "$name")"
    done
}
log "watch: $probes probes to 100 watchers under 500 writes/s, then $writes events to one watcher, MockCluster"
watch_on "$mock" mock
log "watch: the same on Tansu"
fresh_tansu tansu-watch
watch_on "$tansu" tansu
watch_goal_mock=$(awk -v f="$fresh_mock_p99" 'BEGIN { printf "%.1f", f + 5 }')
watch_goal_tansu=$(awk -v f="$fresh_tansu_p99" 'BEGIN { printf "%.1f", f + 5 }')
# --- end of 6. watch -------------------------------------------------------------------------

# --- 9. TTL: keys expiring in the same second (issue 18) -------------------------------------
# A writer, a reader with KV_API_TTL_SWEEPER=true and a plain reader (memory stores) on one
# topic; the ttl_sweep example writes the keys with TTLs ending in the same second, times the
# 404s on the plain reader and the sweeper's acknowledged tombstones from the start of that
# second, and reads lasting keys from the sweeper meanwhile and after. On the MockCluster with
# the full count; Tansu's sqlite storage slows past some 20 000 records (see 2.), so it gets a
# twentieth.
[ "$mode" = full ] && ttl_keys="${BENCH_TTL_KEYS:-100000}" || ttl_keys="${BENCH_TTL_KEYS:-10000}"
ttl_sweep_on() { # ttl_sweep_on BROKER LABEL KEYS LASTING: sets ttl_<label>_{404,tombstones,during,after}
    local topic="ttl-$2-$RANDOM" wport sport rport wpid spid rpid out="$work/ttl-$2.txt"
    # The MockCluster has no CreateTopics: there the first write creates the topic.
    KAFKA_BOOTSTRAP_SERVERS="$1" timeout 15 "$bin/examples/create_topic" "$topic" 3 >/dev/null 2>&1 || true
    wport=$(free_port)
    sport=$(free_port)
    rport=$(free_port)
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KV_API_LISTEN="127.0.0.1:$wport" "$bin/kv-writer" >"$work/ttl-writer-$2.log" 2>&1 &
    wpid=$!
    pids+=($wpid)
    wait_port "$wport" "$wpid" "kv-writer"
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -X PUT --data-binary first "http://127.0.0.1:$wport/v1/kv/first" && break
        sleep 0.2
    done
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="ttl-sweeper-$2" KV_API_TTL_SWEEPER=true KV_API_LISTEN="127.0.0.1:$sport" \
        "$bin/kv-reader" >"$work/ttl-sweeper-$2.log" 2>&1 &
    spid=$!
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$1" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="ttl-reader-$2" KV_API_LISTEN="127.0.0.1:$rport" \
        "$bin/kv-reader" >"$work/ttl-reader-$2.log" 2>&1 &
    rpid=$!
    pids+=($spid $rpid)
    wait_port "$sport" "$spid" "kv-reader (sweeper)"
    wait_port "$rport" "$rpid" "kv-reader"
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    wait_ready "http://127.0.0.1:$sport/healthz/ready"
    wait_ready "http://127.0.0.1:$rport/healthz/ready"
    "$bin/examples/ttl_sweep" "http://127.0.0.1:$wport" "http://127.0.0.1:$sport" \
        "http://127.0.0.1:$rport" "$3" "$4" >"$out" 2>"$work/ttl-$2.log" ||
        die "ttl_sweep on $2 failed; see $work/ttl-$2.log"
    kill "$wpid" "$spid" "$rpid" 2>/dev/null || true
    printf -v "ttl_${2}_404" '%s' "$(grep BENCH "$out" | field all_404_ms)"
    printf -v "ttl_${2}_tombstones" '%s' "$(grep BENCH "$out" | field tombstones_ms)"
    printf -v "ttl_${2}_during" '%s' "$(grep BENCH "$out" | field rps_during)"
    printf -v "ttl_${2}_after" '%s' "$(grep BENCH "$out" | field rps_after)"
}
log "ttl: $ttl_keys keys expiring in the same second on the MockCluster"
ttl_sweep_on "$mock" mock "$ttl_keys" 10000
log "ttl: $((ttl_keys / 20)) keys expiring in the same second on a fresh Tansu"
fresh_tansu tansu-ttl
ttl_sweep_on "$tansu" tansu "$((ttl_keys / 20))" 1000
# --- end of 9. TTL ---------------------------------------------------------------------------

# --- the table -----------------------------------------------------------------------------
row() { # row FIGURE OURS PEER GOAL-RATIO UNIT: ratio = ours / peer, met if ratio >= goal
    awk -v f="$1" -v o="$2" -v p="$3" -v g="$4" -v u="$5" 'BEGIN {
        r = (p > 0) ? o / p : 0
        printf "| %s | %.0f %s | %.0f %s | %.2f | >= %.1fx | %s |\n", f, o, u, p, u, r, g, (r >= g) ? "yes" : "no" }'
}
limit_row() { # limit_row FIGURE VALUE LIMIT UNIT: met if value <= limit
    awk -v f="$1" -v v="$2" -v l="$3" -v u="$4" 'BEGIN {
        printf "| %s | %.1f %s | | | <= %s %s | %s |\n", f, v, u, l, u, (v <= l) ? "yes" : "no" }'
}
table="$work/results.md"
{
    echo "mode $mode: $keys keys/records, $connections connections, $value_bytes-byte values, median of $runs runs"
    echo
    echo "| figure | ours | peer | ratio | goal | met? |"
    echo "|---|---|---|---|---|---|"
    row "1. reads/s, kv-reader vs redis-benchmark GET" "$reader_rps" "$redis_rps" 1.0 "req/s"
    row "1. reads/s, kv-reader vs nginx static file" "$reader_rps" "$nginx_rps" 0.9 "req/s"
    resp_rows
    printf '| 1. read latency p50 / p99 (ms): kv-reader / redis / nginx | %s / %s | %s / %s ; %s / %s | | | |\n' \
        "$reader_p50" "$reader_p99" "$redis_p50" "$redis_p99" "$nginx_p50" "$nginx_p99"
    row "2. acked writes/s vs raw producer, MockCluster" "$writes_mock_ours" "$writes_mock_raw" 0.8 "w/s"
    row "2. acked writes/s vs raw producer, Tansu" "$writes_tansu_ours" "$writes_tansu_raw" 0.8 "w/s"
    limit_row "3. freshness p99, MockCluster (p50 $fresh_mock_p50 ms, failed probes $fresh_mock_failed)" "$fresh_mock_p99" 20 ms
    limit_row "3. freshness p99, Tansu (p50 $fresh_tansu_p50 ms, failed probes $fresh_tansu_failed)" "$fresh_tansu_p99" 20 ms
    limit_row "3. freshness p99, MockCluster, reader KAFKA_FETCH_WAIT_MAX_MS=5 (p50 $fresh_mock5_p50 ms, failed probes $fresh_mock5_failed)" "$fresh_mock5_p99" 20 ms
    limit_row "3. freshness p99, Tansu, reader KAFKA_FETCH_WAIT_MAX_MS=5 (p50 $fresh_tansu5_p50 ms, failed probes $fresh_tansu5_failed)" "$fresh_tansu5_p99" 20 ms
    row "4. replay records/s vs raw consumer, MockCluster ($mock_records)" "$replay_mock_ours" "$replay_mock_raw" 0.8 "rec/s"
    row "4. replay records/s vs raw consumer, Tansu ($keys)" "$replay_tansu_ours" "$replay_tansu_raw" 0.8 "rec/s"
    limit_row "5. reader RSS, $keys keys on disk, after the read runs (ready: $rss_ready MB, peak $rss_peak MB, store $store_mb MB)" "$rss_after" 100 MB
    limit_row "6. largest shard's store / the full replica's, 3 shards R=1 ($shard_store_mb MB / $store_mb MB)" "$(awk -v a="$shard_store_mb" -v b="$store_mb" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" 0.4 x
    limit_row "6. largest shard's RSS when ready / the full replica's ($shard_rss_mb MB / $rss_ready MB)" "$(awk -v a="$shard_rss_mb" -v b="$rss_ready" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" 0.4 x
    limit_row "7. new reader ready from a snapshot / by replay ($snapshot_ready_s s / $replay_ready_s s)" "$(awk -v a="$snapshot_ready_s" -v b="$replay_ready_s" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" 0.3 x
    row "7. peer reads/s while serving a snapshot vs idle (p99 $serving_p99 ms)" "$serving_rps" "$reader_rps" 0.7 "req/s"
    row "6. forwarded GET/s vs GET the shard answers itself" "$shard_forwarded_rps" "$shard_local_rps" 0.6 "req/s"
    limit_row "6. forwarded GET p99 / local GET p99 ($shard_forwarded_p99 ms / $shard_local_p99 ms)" "$(awk -v a="$shard_forwarded_p99" -v b="$shard_local_p99" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" 2 x
    limit_row "8. write -> watch event p99, 100 watchers, MockCluster (p50 $watch_mock_p50 ms, failed probes $watch_mock_failed; goal freshness p99 + 5 ms)" "$watch_mock_p99" "$watch_goal_mock" ms
    limit_row "8. write -> watch event p99, 100 watchers, Tansu (p50 $watch_tansu_p50 ms, failed probes $watch_tansu_failed; goal freshness p99 + 5 ms)" "$watch_tansu_p99" "$watch_goal_tansu" ms
    printf '| 8. events/s one watcher takes from the buffer (%s events): MockCluster / Tansu | %s / %s | | | | |\n' \
        "$writes" "$watch_mock_events_per_s" "$watch_tansu_events_per_s"
    for ttl_on in mock tansu; do
        ttl_n=$ttl_keys
        [ "$ttl_on" = tansu ] && ttl_n=$((ttl_keys / 20))
        ttl_404="ttl_${ttl_on}_404" ttl_tomb="ttl_${ttl_on}_tombstones"
        ttl_during="ttl_${ttl_on}_during" ttl_after="ttl_${ttl_on}_after"
        printf '| 9. TTL, %s, %s keys expiring in one second: all 404 on a replica / all tombstones produced | %s / %s ms | | | | |\n' \
            "$ttl_on" "$ttl_n" "${!ttl_404}" "${!ttl_tomb}"
        row "9. TTL, $ttl_on: reads/s on the sweeper while it sweeps vs after" "${!ttl_during}" "${!ttl_after}" 0.5 "req/s"
    done
    echo
    echo "took $((SECONDS - started)) s; raw output in $work"
} >"$table"
echo
cat "$table"
