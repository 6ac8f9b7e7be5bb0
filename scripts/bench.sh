#!/usr/bin/env bash
# `make bench` (full) and `make bench-quick` (CI smoke): the service measured side by side with
# the peers users would pick, in one run, on loopback. Prints one table at the end and writes it
# to target/kv-run/bench/results.md. See docs/benchmarks.md for what each figure means.
#   scripts/bench.sh [full|quick]
# Knobs (environment): BENCH_KEYS (read keys / replay records), BENCH_SECONDS (per wrk run),
# BENCH_RUNS (measured runs per figure; the median is reported), BENCH_WRITES (per write run),
# BENCH_PROBES (freshness probes), BENCH_TTL_KEYS (keys expiring at once), BENCH_ONLY (one
# step alone: resp, conditional, computed, shards), BENCH_FAIR_CACHE_MB (10b's memory reader's
# page cache).
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
# BENCH_PROFILE=dev measures unoptimised binaries: only for a smoke test of this script (CI's,
# which then reuses `make test`'s build instead of making a release one).
profile="${BENCH_PROFILE:-release}"
case "$profile" in
release) profile_dir=release ;;
dev) profile_dir=debug ;;
*)
    echo "BENCH_PROFILE must be release or dev, not $profile" >&2
    exit 2
    ;;
esac
log "building the binaries and examples (profile $profile)"
cargo build --quiet --profile "$profile" --locked --workspace --bins --examples
bin="${CARGO_TARGET_DIR:-target}/$profile_dir"
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

# --- steps: each figure is measured in a step of its own (a subshell with its own processes),
# so that a step that fails marks its rows instead of ending the run. A step on Tansu starts its
# own broker, so its one retry runs on a fresh one: a degraded broker is replaced. -------------
figures="$work/figures.env"
: >"$figures"
fig() { # fig NAME VALUE: a figure, kept for the table even when the step fails later
    printf -v "$1" '%s' "$2"
    printf '%s=%q\n' "$1" "$2" >>"$figures"
}
step_notes=()
# No step may hang the run: one that takes longer than this is stopped, and counts as failed.
step_seconds="${BENCH_STEP_SECONDS:-900}"
kill_tree() { # kill_tree PID: the process and everything it started, children first
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
step() { # step NAME FUNCTION ARGS...: runs the step, retries it once, then marks it failed
    local name=$1 attempt first="" sub dog status
    shift
    for attempt in 1 2; do
        rm -f "$work/step-error"
        (
            pids=()
            trap cleanup EXIT
            die() { log "error: $*"; printf '%s' "$*" >"$work/step-error"; exit 1; }
            "$@"
        ) &
        sub=$!
        (
            sleep "$step_seconds"
            log "error: step $name still running after ${step_seconds} s (BENCH_STEP_SECONDS); stopping it"
            printf 'still running after %s s' "$step_seconds" >"$work/step-error"
            kill_tree "$sub"
        ) &
        dog=$!
        status=0
        wait "$sub" || status=$?
        kill_tree "$dog"
        wait "$dog" 2>/dev/null || true
        if [ "$status" = 0 ]; then
            # shellcheck disable=SC1090
            . "$figures"
            [ -z "$first" ] || step_notes+=("$name: retried once, on a fresh broker; the first try failed: $first")
            return 0
        fi
        first=$(cat "$work/step-error" 2>/dev/null || echo "exit status $status")
        [ "$attempt" = 2 ] || log "step $name failed ($first); retrying it once"
    done
    # shellcheck disable=SC1090
    . "$figures"
    step_notes+=("$name: FAILED twice, its rows are incomplete; last error: $first")
    return 0
}
retried() { # retried NAME: the row's mark for a step that needed its retry
    local note
    for note in "${step_notes[@]}"; do
        case "$note" in "$1: retried"*) printf ' (retried on a fresh broker)' ;; "$1: FAILED"*) printf ' (step FAILED)' ;; esac
    done
}

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

on_free_port() { # on_free_port WHAT FUNCTION: FUNCTION PORT starts WHAT and sets started_pid
    # A port free when probed can be taken before the process binds it (it then exits): retry.
    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        "$2" "$port"
        pids+=($started_pid)
        if listening "$port" "$started_pid"; then
            started_port=$port
            return 0
        fi
        log "$1 did not start on port $port (attempt $attempt)"
    done
    die "$1 did not start; see $work"
}

service_log="warn,kv_reader::app=info,kv_reader::resp=info,kv_writer::app=info"
service_env=(env -i PATH="$PATH" KV_API_DISABLE_API_AUTH=true KV_API_LOG_FORMAT=text RUST_LOG="$service_log")

start_service() { # start_service LOG [VAR=VALUE...] BINARY: the service binds port 0 and its log
    # says which port it got, so no port is picked before it binds; sets svc_pid and svc_port, or
    # svc_error when it fails
    local out=$1
    shift
    "${service_env[@]}" KV_API_LISTEN=127.0.0.1:0 "$@" >"$out" 2>&1 &
    svc_pid=$!
    pids+=($svc_pid)
    for _ in $(seq 1 600); do
        svc_port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$out" | head -1)
        [ -n "$svc_port" ] && return 0
        if ! kill -0 "$svc_pid" 2>/dev/null; then
            svc_error="$(basename "${*: -1}") exited before listening: $(tail -1 "$out")"
            return 1
        fi
        sleep 0.1
    done
    svc_error="$(basename "${*: -1}") did not listen within 60 s; see $out"
    return 1
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
    fig "${2}_rps" "$(grep '^RUN' "$out" | field rps | median)"
    fig "${2}_p50" "$(grep '^RUN' "$out" | field p50 | median)"
    fig "${2}_p99" "$(grep '^RUN' "$out" | field p99 | median)"
}


# --- brokers: librdkafka's MockCluster (fast, in memory) and Tansu (the local test broker) ----
# The conditional step's topics exist from the start: the mock has no CreateTopics, and owner
# candidates need a one-partition lease topic.
"$bin/examples/mock_cluster" 1 cond-mock:3 cond-mock-owners:1 >"$work/mock.out" 2>"$work/mock.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q bootstrap= "$work/mock.out" && break; sleep 0.1; done
mock=$(field bootstrap <"$work/mock.out")
[ -n "$mock" ] || die "mock cluster did not start; see $work/mock.log"
log "MockCluster at $mock"

tansu_seq=0
start_tansu() { # start_tansu: a fresh Tansu with its own sqlite store; sets tansu, tansu_pid
    tansu_seq=$((tansu_seq + 1))
    tansu_dir="$work/tansu-$BASHPID-$tansu_seq"
    mkdir -p "$tansu_dir"
    on_free_port Tansu tansu_on
    tansu_pid=$started_pid
    tansu="127.0.0.1:$started_port"
    log "Tansu at $tansu"
}
tansu_on() {
    (cd "$tansu_dir" && RUST_LOG=warn exec "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
        --storage-engine sqlite://broker.db >>broker.log 2>&1) &
    started_pid=$!
}
fresh_tansu() { # fresh_tansu: replaces this step's Tansu by a fresh one
    [ -z "${tansu_pid:-}" ] || kill "$tansu_pid" 2>/dev/null || true
    start_tansu
}
broker_of() { # broker_of mock|tansu: the step's broker (on Tansu a fresh one); sets broker
    if [ "$1" = tansu ]; then fresh_tansu; broker=$tansu; else broker=$mock; fi
}

# The value every read figure serves, and a redis-server holding such values.
value=$(head -c "$value_bytes" /dev/zero | tr '\0' v)
redis_on() {
    redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        --logfile "$work/redis.log" &
    started_pid=$!
}

# --- 10. the Redis-protocol read port (issue 20): redis-benchmark GET against kv-reader's RESP
# port and against a redis-server holding the same keys, in the same run; GET p99 at half of
# each one's own top rate; the reader's RSS after. Its own Tansu, topic, store and redis-server,
# so the step runs alone too: `BENCH_ONLY=resp scripts/bench.sh quick`.
resp_reads() { # figures resp_{ours,peer}_{rps,p99,p16_rps,p99_half}, resp_rss_after
    local out topic rport hport rpid sport
    start_tansu
    # The keys redis-benchmark -r asks for, key:000000000000 .. , with 100-byte values.
    rm -rf "$work/resp-store"
    mkdir -p "$work/resp-store"
    KV_BENCH_BOOTSTRAP="$tansu" KV_BENCH_STORE_DIR="$work/resp-store" KV_BENCH_KEYS_LIKE=redis-benchmark \
        "$bin/examples/replay_speed" "$keys" 3 disk >"$work/resp-replay.txt" 2>"$work/resp-replay.log" ||
        die "replay_speed for the RESP keys failed: $(tail -1 "$work/resp-replay.log")"
    topic=$(grep BENCH "$work/resp-replay.txt" | tail -1 | field topic)
    start_service "$work/resp-reader.log" KAFKA_BOOTSTRAP_SERVERS="$tansu" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" KAFKA_GROUP_ID=bench-resp \
        KV_API_STATE_STORAGE_DISK_LOCATION="$work/resp-store" KV_API_RESP_LISTEN=127.0.0.1:0 \
        "$bin/kv-reader" || die "$svc_error"
    hport=$svc_port rpid=$svc_pid
    rport=$(sed -n 's|.*listening on redis://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$work/resp-reader.log" | head -1)
    [ -n "$rport" ] || die "kv-reader logged no Redis-protocol port; see $work/resp-reader.log"
    wait_ready "http://127.0.0.1:$hport/healthz/ready"
    on_free_port redis-server redis_on
    sport=$started_port
    resp_topic=$topic resp_redis_port=$sport resp_redis_pid=$started_pid
    awk -v n="$keys" -v v="$value" \
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
    local rps p99
    read -r rps p99 <<<"$(bench_get "$rport" 1)"
    fig resp_ours_rps "$rps"
    fig resp_ours_p99 "$p99"
    read -r rps p99 <<<"$(bench_get "$sport" 1)"
    fig resp_peer_rps "$rps"
    fig resp_peer_p99 "$p99"
    read -r rps _ <<<"$(bench_get "$rport" 16)"
    fig resp_ours_p16_rps "$rps"
    read -r rps _ <<<"$(bench_get "$sport" 16)"
    fig resp_peer_p16_rps "$rps"
    # Half of each one's own top rate (no pipelining), open loop over 16 connections.
    half_rate() { awk -v r="$1" 'BEGIN { printf "%d", r / 2 }'; }
    "$bin/examples/resp_latency" "127.0.0.1:$rport" "$(half_rate "$resp_ours_rps")" "$seconds" 16 "$keys" \
        >"$work/resp-latency-ours.txt"
    "$bin/examples/resp_latency" "127.0.0.1:$sport" "$(half_rate "$resp_peer_rps")" "$seconds" 16 "$keys" \
        >"$work/resp-latency-peer.txt"
    fig resp_ours_p99_half "$(grep BENCH "$work/resp-latency-ours.txt" | field p99_ms)"
    fig resp_peer_p99_half "$(grep BENCH "$work/resp-latency-peer.txt" | field p99_ms)"
    # How late the load generator itself sent: its threads share the two cores with the server.
    fig resp_ours_late_half "$(grep BENCH "$work/resp-latency-ours.txt" | field late_p99_ms)"
    fig resp_peer_late_half "$(grep BENCH "$work/resp-latency-peer.txt" | field late_p99_ms)"
    [ "$(grep BENCH "$work/resp-latency-ours.txt" | field missing)" = 0 ] ||
        die "the RESP port missed keys; see $work/resp-latency-ours.txt"
    fig resp_rss_after "$(rss_mb "$rpid")"
    cat >"$work/resp-figures.txt" <<FIGURES
resp: GET ${resp_ours_rps} req/s (p99 ${resp_ours_p99} ms) vs redis-server ${resp_peer_rps} (p99 ${resp_peer_p99} ms); -P 16 ${resp_ours_p16_rps} vs ${resp_peer_p16_rps}
resp: p99 at half rate ${resp_ours_p99_half} ms vs ${resp_peer_p99_half} ms (the generator's own lateness p99 ${resp_ours_late_half} / ${resp_peer_late_half} ms); reader RSS after ${resp_rss_after} MB
FIGURES
    log "resp figures: $(tr '\n' ';' <"$work/resp-figures.txt")"
    # 10b runs here: a step's processes (this redis-server, this topic's broker) end with it.
    fair_reads
}
# --- 10b. fair peers (issue 34), the end of step 10: the whole store in memory against the
# redis-server holding the same keys: GET/s over RESP, pipelined and not, and over HTTP, and both
# processes' RSS. Beside step 10's bounded-memory figures, which stay.
fair_reads() { # figures fair_{resp_rps,resp_p16_rps,http_rps,rss,redis_rss}
    local hport rport rpid cache=()
    # BENCH_FAIR_CACHE_MB: redb's page cache for this reader (32 MiB unless given), to see what
    # the cache's misses cost a memory store (docs/benchmarks.md, 10b).
    [ -z "${BENCH_FAIR_CACHE_MB:-}" ] || cache=(KV_API_STATE_STORAGE_CACHE_MB="$BENCH_FAIR_CACHE_MB")
    start_service "$work/fair-reader.log" KAFKA_BOOTSTRAP_SERVERS="$tansu" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$resp_topic" KAFKA_GROUP_ID=bench-fair \
        KV_API_STATE_STORAGE_TYPE=memory KV_API_RESP_LISTEN=127.0.0.1:0 "${cache[@]}" \
        "$bin/kv-reader" || die "$svc_error"
    hport=$svc_port rpid=$svc_pid
    rport=$(sed -n 's|.*listening on redis://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$work/fair-reader.log" | head -1)
    [ -n "$rport" ] || die "kv-reader logged no Redis-protocol port; see $work/fair-reader.log"
    wait_ready "http://127.0.0.1:$hport/healthz/ready"
    [ "$(redis-cli -p "$rport" GET key:000000000000)" = "$(redis-cli -p "$resp_redis_port" GET key:000000000000)" ] ||
        die "the memory reader and redis-server answer key:000000000000 differently"
    log "fair peers: a memory reader ($keys keys) against redis-server, RESP and HTTP"
    local rps
    read -r rps _ <<<"$(bench_get "$rport" 1)"
    fig fair_resp_rps "$rps"
    read -r rps _ <<<"$(bench_get "$rport" 16)"
    fig fair_resp_p16_rps "$rps"
    cat >"$work/redis-keys.lua" <<'LUA'
-- GET /v1/kv/key:NNNNNNNNNNNN with a uniformly random key among BENCH_KEYS, as redis-benchmark -r names them.
local keys = tonumber(os.getenv("BENCH_KEYS"))
local thread_seed = 0
setup = function(thread) thread_seed = thread_seed + 1; thread:set("seed", thread_seed) end
init = function() math.randomseed(os.time() * 1000 + (seed or 0)) end
request = function()
    return wrk.format("GET", string.format("/v1/kv/key:%012d", math.random(0, keys - 1)))
end
LUA
    http_reads "$hport" fair_http "$work/redis-keys.lua"
    fig fair_rss "$(rss_mb "$rpid")"
    fig fair_redis_rss "$(rss_mb "$resp_redis_pid")"
    kill "$rpid" 2>/dev/null || true
}
resp_rows() {
    row "10. RESP GET/s, kv-reader vs redis-server$(retried resp) (redis-benchmark, $connections conns; p99 $resp_ours_p99 / $resp_peer_p99 ms)" "$resp_ours_rps" "$resp_peer_rps" 1.0 "req/s"
    row "10. RESP GET/s with -P 16, kv-reader vs redis-server" "$resp_ours_p16_rps" "$resp_peer_p16_rps" 1.0 "req/s"
    limit_row "10. RESP GET p99 at half the top rate, open loop, 16 conns (redis-server: $resp_peer_p99_half ms; the generator's own send lateness p99: $resp_ours_late_half / $resp_peer_late_half ms)" "$resp_ours_p99_half" 1 ms
    limit_row "10. reader RSS after the RESP runs, $keys keys on disk" "$resp_rss_after" 100 MB
    row "10b. whole store in memory: RESP GET/s vs redis-server" "$fair_resp_rps" "$resp_peer_rps" 1.0 "req/s"
    row "10b. whole store in memory: RESP GET/s with -P 16 vs redis-server" "$fair_resp_p16_rps" "$resp_peer_p16_rps" 1.0 "req/s"
    row "10b. whole store in memory: HTTP GET/s (wrk) vs redis-server GET/s (redis-benchmark)" "$fair_http_rps" "$resp_peer_rps" 1.0 "req/s"
    limit_row "10b. RSS, memory reader / redis-server ($fair_rss MB / $fair_redis_rss MB)" "$(ratio "$fair_rss" "$fair_redis_rss")" 1.5 x
}
if [ "${BENCH_ONLY:-}" = resp ]; then
    log "resp: the Redis-protocol port only (BENCH_ONLY=resp), $keys keys"
    step resp resp_reads
    cat "$work/resp-figures.txt"
    echo "fair: memory reader RESP ${fair_resp_rps:-?} (-P 16 ${fair_resp_p16_rps:-?}), HTTP ${fair_http_rps:-?} GET/s; RSS ${fair_rss:-?} MB vs redis-server ${fair_redis_rss:-?} MB"
    exit 0
fi
# --- end of 10. the Redis-protocol read port --------------------------------------------

# --- 11. conditional writes: decided in log order, vs unconditional writes --------------------
# A writer whose KV_API_READERS names two owner candidates; the conditional example writes
# $writes unconditional puts, then as many conditional ones (each connection If-Match-ing its own
# counter, so nothing conflicts), on the same topic of one broker; then kills the first candidate
# and times the next applied conditional write and the survivor owning every partition.
conditional_on() { # conditional_on mock|tansu: sets cond_<broker>_{plain_wps,...}
    local broker topic="cond-$1-$RANDOM" out="$work/conditional-$1.txt" a_port a_pid b_port fetch_wait=() count=$cond_writes
    broker_of "$1"
    if [ "$1" = mock ]; then
        # Made when the mock started (it has no CreateTopics), with its lease topic. The mock,
        # like Tansu, holds a fetch for fetch.wait.max.ms even when records arrive meanwhile;
        # Apache Kafka answers a fetch as soon as a record arrives, which a 5 ms wait stands for.
        topic=cond-mock fetch_wait=(KAFKA_FETCH_WAIT_MAX_MS=5) count=$writes
    else
        KAFKA_BOOTSTRAP_SERVERS="$broker" timeout 15 "$bin/examples/create_topic" "$topic" 3 >/dev/null 2>&1 || true
    fi
    start_service "$work/cond-a-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="cond-a" KV_API_OWNER=true "${fetch_wait[@]}" "$bin/kv-reader" || die "$svc_error"
    a_port=$svc_port a_pid=$svc_pid
    start_service "$work/cond-b-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="cond-b" KV_API_OWNER=true "${fetch_wait[@]}" "$bin/kv-reader" || die "$svc_error"
    b_port=$svc_port
    start_service "$work/cond-writer-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KV_API_READERS="http://127.0.0.1:$a_port,http://127.0.0.1:$b_port" "$bin/kv-writer" || die "$svc_error"
    local wport=$svc_port
    wait_ready "http://127.0.0.1:$a_port/healthz/ready"
    wait_ready "http://127.0.0.1:$b_port/healthz/ready"
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    "$bin/examples/conditional" rates "http://127.0.0.1:$wport" "$count" "$connections" \
        >"$out" 2>"$work/conditional-$1.log" || die "the conditional rates on $1 failed: $(tail -1 "$work/conditional-$1.log")"
    "$bin/examples/conditional" failover "http://127.0.0.1:$wport" "$a_pid" "http://127.0.0.1:$b_port" \
        >>"$out" 2>>"$work/conditional-$1.log" || die "the owner failover on $1 failed: $(tail -1 "$work/conditional-$1.log")"
    local name
    for name in plain_wps plain_p50_ms plain_p99_ms conditional_wps conditional_p50_ms conditional_p99_ms failover_write_ms failover_owner_ms; do
        fig "cond_${1}_${name%_ms}" "$(grep BENCH "$out" | field "$name" | head -1)"
    done
}
# Tansu's sqlite storage slows past some 20 000 records (see 2.): at most 3 000 writes a side.
cond_writes=$((writes < 3000 ? writes : 3000))
if [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = conditional ]; then
    log "conditional writes: $writes unconditional then $writes conditional on the MockCluster"
    step conditional-mock conditional_on mock
    log "conditional writes: $cond_writes unconditional then $cond_writes conditional on a fresh Tansu"
    step conditional-tansu conditional_on tansu
fi
if [ "${BENCH_ONLY:-}" = conditional ]; then
    grep -h BENCH "$work"/conditional-*.txt
    exit 0
fi
# --- end of 11. conditional writes ------------------------------------------------------------

# --- 12. computed state: reports through a majority rule vs a raw consume -> produce loop -------
# One owner candidate and a writer sharing a rules file on a fresh Tansu; the computed example
# sends $comp_reports reports from 5 agents and waits for every computed value, then runs a raw
# rdkafka loop over as many records on two topics of the same broker; then report -> computed
# value readable probes beside plain write -> readable probes, and the lateness of 1 s holds.
computed_on() { # computed_on tansu: sets comp_<broker>_{reports_rps,...}
    local broker topic="comp-$1-$RANDOM" out="$work/computed-$1.txt" rules="$work/computed-rules.yaml"
    broker_of "$1"
    printf '%s\n' "rules:" "  - {prefix: 'site/', reducer: majority}" \
        "  - {prefix: 'held/', reducer: latest, hold_seconds: 1}" >"$rules"
    for t in "$topic" "$topic-raw-in" "$topic-raw-out"; do
        KAFKA_BOOTSTRAP_SERVERS="$broker" timeout 15 "$bin/examples/create_topic" "$t" 3 >/dev/null 2>&1 || true
    done
    start_service "$work/comp-reader-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KAFKA_GROUP_ID="comp" KV_API_OWNER=true KV_API_STATE_RULES="$rules" "$bin/kv-reader" || die "$svc_error"
    local rport=$svc_port
    start_service "$work/comp-writer-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" \
        KV_API_STATE_RULES="$rules" "$bin/kv-writer" || die "$svc_error"
    local wport=$svc_port
    wait_ready "http://127.0.0.1:$rport/healthz/ready"
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    "$bin/examples/computed" "http://127.0.0.1:$wport" "http://127.0.0.1:$rport" "$broker" \
        "$topic-raw-in" "$topic-raw-out" "$comp_reports" "$connections" "$comp_probes" \
        >"$out" 2>"$work/computed-$1.log" || die "the computed-state figures on $1 failed: $(tail -1 "$work/computed-$1.log")"
    local name
    for name in reports_rps raw_rps computed_p50_ms computed_p99_ms fresh_p50_ms fresh_p99_ms hold_late_p50_ms hold_late_p99_ms; do
        fig "comp_${1}_${name%_ms}" "$(grep BENCH "$out" | field "$name" | head -1)"
    done
}
# Tansu slows past some 20 000 records (see 2.): reports and the raw loop share that budget.
comp_reports=$((writes < 5000 ? writes : 5000))
# As the Tansu freshness probes below: at most 100.
comp_probes=$((probes < 100 ? probes : 100))
if [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = computed ]; then
    log "computed state: $comp_reports reports through a majority rule vs a raw consume -> produce loop on a fresh Tansu"
    step computed-tansu computed_on tansu
fi
if [ "${BENCH_ONLY:-}" = computed ]; then
    grep -h BENCH "$work"/computed-*.txt
    exit 0
fi
# --- end of 12. computed state ------------------------------------------------------------------

# --- 4. replay: a fresh reader loading N records vs a raw rdkafka consumer ----------------------
# On Tansu the run's disk store (N keys) is kept for the read figures. The MockCluster keeps only
# about 5 MB per partition (older records are dropped), so it replays at most 100 000 records.
replay() { # replay BROKER RECORDS RUNS LABEL [STORE]
    local out="$work/replay-$4.txt"
    : >"$out"
    for run in $(seq 1 "$3"); do
        rm -rf "$work/store"
        KV_BENCH_BOOTSTRAP="$1" KV_BENCH_STORE_DIR="${5:-}" \
            "$bin/examples/replay_speed" "$2" 3 disk >>"$out" 2>>"$work/replay-$4.log" ||
            die "replay_speed on $4 failed: $(tail -1 "$work/replay-$4.log")"
    done
    fig "replay_${4}_ours" "$(grep BENCH "$out" | field replica_rps | median)"
    fig "replay_${4}_raw" "$(grep BENCH "$out" | field raw_rps | median)"
    fig "replay_${4}_topic" "$(grep BENCH "$out" | tail -1 | field topic)"
}
mock_records=$((keys < 100000 ? keys : 100000))
if [ -z "${BENCH_ONLY:-}" ]; then
    log "replay: $mock_records records on the MockCluster, $runs runs"
    step replay-mock replay "$mock" "$mock_records" "$runs" mock
fi
# The read figures, the shards and the snapshot all use this Tansu, its topic and the store.
start_tansu
log "replay: $keys records on Tansu, 1 run (its store serves the read figures)"
step replay-tansu replay "$tansu" "$keys" 1 tansu "$work/store"
read_topic=${replay_tansu_topic:-}

# --- 5 and 1. a kv-reader process on the store with N keys; its RSS; reads vs Redis and nginx --
# The full replica lives across the steps that read it (reads, shards' peer, snapshot).
reader_port="" reader_error="the replay onto Tansu failed"
if [ -n "$read_topic" ]; then
    if start_service "$work/reader.log" KAFKA_BOOTSTRAP_SERVERS="$tansu" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" KAFKA_GROUP_ID=bench-reader \
        KV_API_STATE_STORAGE_DISK_LOCATION="$work/store" "$bin/kv-reader"; then
        reader_port=$svc_port reader_pid=$svc_pid
    else
        reader_error=$svc_error
    fi
fi
needs_reader() { [ -n "$reader_port" ] || die "no full replica to measure: $reader_error"; }

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

nginx_on() {
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
        listen 127.0.0.1:$1;
        root $work/nginx/www;
        # Every key maps to the one 100-byte file, so wrk sends the same requests as to kv-reader.
        location /v1/kv/ { try_files /value =404; }
    }
}
CONF
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
    started_pid=$!
}

reads_step() {
    needs_reader
    wait_ready "http://127.0.0.1:$reader_port/healthz/ready"
    curl -fsS -o /dev/null "http://127.0.0.1:$reader_port/v1/kv/key-000000000" || die "key-000000000 not served"
    fig rss_ready "$(rss_mb "$reader_pid")"
    fig store_mb "$(du -sm "$work/store" | cut -f1)"
    log "reads: kv-reader ($keys keys on disk), $connections connections, $runs x ${seconds}s"
    http_reads "$reader_port" reader
    fig rss_after "$(rss_mb "$reader_pid")"
    fig rss_peak "$(hwm_mb "$reader_pid")"
    # The same server, middlewares and log span with no store and no key: the HTTP ceiling a
    # read could reach on this box.
    printf 'request = function() return wrk.format("GET", "/healthz/live") end\n' >"$work/live.lua"
    log "reads: kv-reader GET /healthz/live (the HTTP ceiling, no store)"
    http_reads "$reader_port" live "$work/live.lua"
    # One key over and over: a read whose pages are always in the cache.
    printf 'request = function() return wrk.format("GET", "/v1/kv/key-000000001") end\n' >"$work/hot.lua"
    log "reads: kv-reader GET of one key over and over (no page-cache misses)"
    http_reads "$reader_port" hot "$work/hot.lua"

    on_free_port nginx nginx_on
    log "reads: nginx (one static 100-byte file)"
    http_reads "$started_port" nginx

    on_free_port redis-server redis_on
    local redis_port=$started_port
    # redis-benchmark's -r picks keys key:000000000000 .. key:(r-1), zero-padded to 12 digits.
    awk -v n="$keys" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "SET key:%012d %s\r\n", i, v }' |
        redis-cli -p "$redis_port" --pipe >"$work/redis-load.log"
    log "reads: redis-benchmark GET ($keys keys, $value_bytes-byte values)"
    local redis_requests=$((seconds * 100000))
    redis-benchmark -p "$redis_port" -c "$connections" --threads "$threads" -n $((warmup * 100000)) \
        -r "$keys" -d "$value_bytes" -t get -q >/dev/null
    : >"$work/redis-bench.txt"
    for _ in $(seq 1 "$runs"); do
        redis-benchmark -p "$redis_port" -c "$connections" --threads "$threads" -n "$redis_requests" \
            -r "$keys" -d "$value_bytes" -t get --csv | tail -1 >>"$work/redis-bench.txt"
    done
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    fig redis_rps "$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f2 | median)"
    fig redis_p50 "$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f5 | median)"
    fig redis_p99 "$(tr -d '"' <"$work/redis-bench.txt" | cut -d, -f7 | median)"
}
if [ -z "${BENCH_ONLY:-}" ]; then
    step reads reads_step
    log "resp: redis-benchmark GET against the Redis-protocol port and a redis-server, $keys keys"
    step resp resp_reads
fi

# --- 6. shards: the same topic over 3 sharded readers (R=1); their stores and RSS against the
# full replica's, and a GET forwarded one hop against a GET the shard answers itself ----------
shard_ports=() shard_pids=()
start_shards() { # start_shards: the 3 shards on their disk stores; sets shard_ports, shard_pids
    # Each shard must know its peers' ports before any binds; a port taken meanwhile makes that
    # shard exit, and the three start again on new ports.
    local attempt i peers
    for attempt in 1 2 3 4 5; do
        shard_ports=() shard_pids=()
        for i in 0 1 2; do shard_ports+=("$(free_port)"); done
        peers="http://127.0.0.1:${shard_ports[0]},http://127.0.0.1:${shard_ports[1]},http://127.0.0.1:${shard_ports[2]}"
        for i in 0 1 2; do
            mkdir -p "$work/shard-$i"
            "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$tansu" KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" \
                KAFKA_GROUP_ID="bench-shard-$i" KV_API_STATE_STORAGE_DISK_LOCATION="$work/shard-$i" \
                KV_API_SHARD="$i/3" KV_API_SHARD_PEERS="$peers" \
                KV_API_LISTEN="127.0.0.1:${shard_ports[$i]}" "$bin/kv-reader" >>"$work/shard-$i.log" 2>&1 &
            shard_pids+=($!)
            pids+=($!)
        done
        local all=yes
        for i in 0 1 2; do listening "${shard_ports[$i]}" "${shard_pids[$i]}" || all=no; done
        if [ "$all" = yes ]; then
            for i in 0 1 2; do wait_ready "http://127.0.0.1:${shard_ports[$i]}/healthz/ready"; done
            return 0
        fi
        log "a shard did not start on its port (attempt $attempt); starting the three again"
        stop_shards
    done
    die "the shards did not start; see $work/shard-*.log"
}
stop_shards() {
    kill "${shard_pids[@]}" 2>/dev/null || true
    local pid
    for pid in "${shard_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
shards_step() {
    [ -n "$read_topic" ] || die "no topic: the replay onto Tansu failed"
    log "shards: 3 readers replaying their partitions of the $keys keys"
    start_shards
    # RSS like the full replica's: a process that opened its store and caught up, not one that
    # just replayed into it (a replay's fetch queues and write pages are not what a shard keeps).
    stop_shards
    start_shards
    local shard_store=0 shard_rss=0 i
    for i in 0 1 2; do
        shard_store=$(awk -v a="$shard_store" -v b="$(du -sm "$work/shard-$i" | cut -f1)" 'BEGIN { print (b > a) ? b : a }')
        shard_rss=$(awk -v a="$shard_rss" -v b="$(rss_mb "${shard_pids[$i]}")" 'BEGIN { print (b > a) ? b : a }')
    done
    fig shard_store_mb "$shard_store"
    fig shard_rss_mb "$shard_rss"
    # Which keys shard 0 holds: murmur2 of the key, as the writer's partitioner places it.
    local shard_partitions
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
    # Here, not a step of its own: a step's shards end with it.
    client_reads_on_shards
}
client_reads() { # client_reads URLS LABEL: $runs runs of the read_load example; medians into <label>_{rps,p99}
    local out="$work/client-$2.txt" i
    : >"$out"
    for i in $(seq 1 "$runs"); do
        "$bin/examples/read_load" "$1" "$keys" "$seconds" "$connections" >>"$out" 2>>"$work/client-$2.log" ||
            die "read_load failed; see $work/client-$2.log"
    done
    [ "$(grep '^BENCH' "$out" | field errors | sort -n | tail -1)" = 0 ] || die "read_load saw errors; see $out"
    fig "${2}_rps" "$(grep '^BENCH' "$out" | field rps | median)"
    fig "${2}_p99" "$(grep '^BENCH' "$out" | field p99 | median)"
}
# kv-client's partition-aware reads on the shards of step 6: each GET to a shard holding its key,
# no forward; the full replica, through the same client, is the peer.
client_reads_on_shards() {
    needs_reader
    local shard_urls="http://127.0.0.1:${shard_ports[0]},http://127.0.0.1:${shard_ports[1]},http://127.0.0.1:${shard_ports[2]}"
    log "client reads: kv-client GETs routed to the key's shard, then to the full replica, $runs x ${seconds}s"
    client_reads "$shard_urls" client_shards
    client_reads "http://127.0.0.1:$reader_port" client_full
}
step shards shards_step
if [ "${BENCH_ONLY:-}" = shards ]; then
    echo "shards: local ${shard_local_rps:-?} GET/s (p99 ${shard_local_p99:-?}), forwarded ${shard_forwarded_rps:-?} GET/s (p99 ${shard_forwarded_p99:-?}); kv-client routed ${client_shards_rps:-?} vs full replica ${client_full_rps:-?} GET/s"
    exit 0
fi

# --- 7. snapshot bootstrap: a new reader ready from the full replica's snapshot, against one
# replaying the same topic, and the full replica's reads while it serves the snapshot --------
ready_in() { # ready_in LABEL [VAR=VALUE...]: starts a memory reader, prints seconds until ready
    local start
    start=$(date +%s.%N)
    start_service "$work/$1.log" KAFKA_BOOTSTRAP_SERVERS="$tansu" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$read_topic" KAFKA_GROUP_ID="bench-$1" \
        KV_API_STATE_STORAGE_TYPE=memory "${@:2}" "$bin/kv-reader" || die "$svc_error"
    wait_ready "http://127.0.0.1:$svc_port/healthz/ready"
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }'
    curl -fsS "http://127.0.0.1:$svc_port/metrics" | awk '$1 == "kv_reader_bootstrapped_from_snapshot" { print $2 }' >"$work/$1.bootstrapped"
    kill "$svc_pid" 2>/dev/null || true
}
snapshot_step() {
    needs_reader
    log "snapshot: a new reader of $keys keys from a peer's snapshot, then one replaying the topic"
    fig snapshot_ready_s "$(ready_in snapshot-new KV_API_BOOTSTRAP_PEERS="http://127.0.0.1:$reader_port")"
    [ "$(cat "$work/snapshot-new.bootstrapped")" = 1 ] || die "the new reader took no snapshot; see $work/snapshot-new.log"
    fig replay_ready_s "$(ready_in replay-new)"
    log "snapshot: reads on the peer while it serves a snapshot"
    ready_in snapshot-load KV_API_BOOTSTRAP_PEERS="http://127.0.0.1:$reader_port" >/dev/null &
    local snapshot_load=$!
    http_reads "$reader_port" serving
    wait "$snapshot_load" || true
}
step snapshot snapshot_step
[ -z "$reader_port" ] || kill "$reader_pid" 2>/dev/null || true
kill "$tansu_pid" 2>/dev/null || true
# Kept as soon as measured: a later step that fails does not take these figures with it.
cat >"$work/cluster-figures.txt" <<FIGURES
shards: largest store ${shard_store_mb:-?} MB (full replica ${store_mb:-?} MB), largest RSS ready ${shard_rss_mb:-?} MB (full replica ${rss_ready:-?} MB)
forwarded GET ${shard_forwarded_rps:-?} req/s p99 ${shard_forwarded_p99:-?} ms; local GET ${shard_local_rps:-?} req/s p99 ${shard_local_p99:-?} ms
snapshot: ready in ${snapshot_ready_s:-?} s from a snapshot, ${replay_ready_s:-?} s by replay; peer reads ${serving_rps:-?} req/s (p99 ${serving_p99:-?} ms) while serving, ${reader_rps:-?} req/s idle
FIGURES
log "cluster figures: $(tr '\n' ';' <"$work/cluster-figures.txt")"

# --- 2. writes: acked HTTP writes/s at 64 connections vs a raw rdkafka producer ----------------
# The write and freshness figures each run on a fresh Tansu: after a 1M-record replay, or some
# 20 000 writes, Tansu slows down, and its sqlite storage can start failing every request
# (`Storage(UnableToSend)` in its log).
writes_on() { # writes_on LABEL: mock, or tansu (a fresh Tansu for each run)
    local out="$work/writes-$1.txt" run order broker
    : >"$out"
    for run in $(seq 1 "$runs"); do
        broker_of "$1"
        # Alternate which side runs first: a broker may slow as its log grows (Tansu does), and
        # the side that always ran second would pay for it.
        order=raw-first
        [ $((run % 2)) -eq 0 ] && order=http-first
        KV_BENCH_BOOTSTRAP="$broker" "$bin/examples/load" "$writes" "$connections" "$value_bytes" \
            "$order" >>"$out" 2>>"$work/writes-$1.log" || die "the load on $1 failed: $(tail -1 "$work/writes-$1.log")"
    done
    fig "writes_${1}_raw" "$(grep BENCH "$out" | field raw_wps | median)"
    fig "writes_${1}_ours" "$(grep BENCH "$out" | field http_wps | median)"
}
log "writes: $writes per run on the MockCluster, $runs runs"
step writes-mock writes_on mock
log "writes: $writes per run on Tansu, $runs runs, each on a fresh Tansu"
step writes-tansu writes_on tansu

# --- 3. freshness: write 2xx -> readable on a reader, under moderate load ---------------------
pair_on() { # pair_on BROKER LABEL [VAR=VALUE for the reader...]: a writer and a reader on a new
    # topic of BROKER, both ready; sets wport, rport and pair_topic
    local topic="$2-$RANDOM"
    pair_topic=$topic
    # The MockCluster has no CreateTopics: there the writer's first write creates the topic.
    KAFKA_BOOTSTRAP_SERVERS="$1" timeout 15 "$bin/examples/create_topic" "$topic" 3 >/dev/null 2>&1 || true
    start_service "$work/$2-writer.log" KAFKA_BOOTSTRAP_SERVERS="$1" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" "$bin/kv-writer" || die "$svc_error"
    wport=$svc_port
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -X PUT --data-binary first "http://127.0.0.1:$wport/v1/kv/first" && break
        sleep 0.2
    done
    start_service "$work/$2-reader.log" KAFKA_BOOTSTRAP_SERVERS="$1" \
        KV_API_KAFKA_KEY_VALUE_TOPIC="$topic" KAFKA_GROUP_ID="$2" "${@:3}" "$bin/kv-reader" ||
        die "$svc_error"
    rport=$svc_port
    wait_ready "http://127.0.0.1:$wport/healthz/ready"
    wait_ready "http://127.0.0.1:$rport/healthz/ready"
}
# Tansu's sqlite storage stops keeping up some 20 000 records into a run (see 2.): 300 probes
# under 500 writes/s (the full mode's freshness and watch) came near it and lost probes to
# connection resets on fresh brokers, twice in a row. On Tansu those steps take at most 100
# probes (and the watch step 3 000 bulk events), which the table says.
tansu_probes=$((probes < 100 ? probes : 100))
probes_on() { if [ "$1" = tansu ]; then echo "$tansu_probes"; else echo "$probes"; fi; }
freshness_on() { # freshness_on mock|tansu LABEL [VAR=VALUE for the reader]
    local broker wport rport
    broker_of "$1"
    pair_on "$broker" "fresh-$2" "${@:3}"
    "$bin/examples/freshness" "http://127.0.0.1:$wport" "http://127.0.0.1:$rport" "$(probes_on "$1")" 500 \
        >"$work/fresh-$2.txt" || die "the freshness probes on $2 failed"
    fig "fresh_${2}_p50" "$(grep BENCH "$work/fresh-$2.txt" | field p50_ms)"
    fig "fresh_${2}_p99" "$(grep BENCH "$work/fresh-$2.txt" | field p99_ms)"
    fig "fresh_${2}_failed" "$(grep BENCH "$work/fresh-$2.txt" | field failed)"
    # A failed probe is a broker that began refusing or resetting: try again on a fresh one.
    local failed
    failed=$(grep BENCH "$work/fresh-$2.txt" | field failed)
    [ "${failed:-0}" = 0 ] || die "$failed failed probes on $2: the broker degraded"
}
log "freshness: $probes probes under 500 writes/s on the MockCluster"
step fresh-mock freshness_on mock mock
log "freshness: $tansu_probes probes under 500 writes/s on a fresh Tansu"
step fresh-tansu freshness_on tansu tansu
# Both brokers hold a fetch until fetch.wait.max.ms (50 ms by default) instead of answering when
# a record arrives; the same probes with the reader's wait at 5 ms show what that costs.
log "freshness: the same with KAFKA_FETCH_WAIT_MAX_MS=5 on the reader"
step fresh-mock5 freshness_on mock mock5 KAFKA_FETCH_WAIT_MAX_MS=5
step fresh-tansu5 freshness_on tansu tansu5 KAFKA_FETCH_WAIT_MAX_MS=5

# --- 6. watch: write 2xx -> event at 100 watchers, and events/s one watcher takes -------------
# The reader keeps a buffer of changes larger than the throughput run's, so its watcher is served
# from the buffer; the latency goal is the freshness p99 of the same broker plus 5 ms.
watch_writes_tansu=$((writes < 3000 ? writes : 3000))
watch_on() { # watch_on mock|tansu PROBES CHANGES
    local broker wport rport name
    broker_of "$1"
    pair_on "$broker" "watch-$1" KV_API_WATCH_BUFFER_EVENTS=100000 KV_API_WATCH_BUFFER_BYTES=67108864
    "$bin/examples/watch_latency" "http://127.0.0.1:$wport" "http://127.0.0.1:$rport" 100 "$2" \
        "$3" 500 >"$work/watch-$1.txt" || die "the watch probes on $1 failed"
    for name in p50_ms p99_ms failed events_per_s; do
        fig "watch_${1}_${name%_ms}" "$(grep BENCH "$work/watch-$1.txt" | field "$name")"
    done
    [ "$(grep BENCH "$work/watch-$1.txt" | field failed)" = 0 ] || die "failed watch probes on $1"
}
log "watch: $probes probes to 100 watchers under 500 writes/s, then $writes events to one watcher, MockCluster"
step watch-mock watch_on mock "$probes" "$writes"
log "watch: $tansu_probes probes and $watch_writes_tansu events on a fresh Tansu"
step watch-tansu watch_on tansu "$tansu_probes" "$watch_writes_tansu"
watch_goal_mock=$(awk -v f="${fresh_mock_p99:-0}" 'BEGIN { printf "%.1f", f + 5 }')
watch_goal_tansu=$(awk -v f="${fresh_tansu_p99:-0}" 'BEGIN { printf "%.1f", f + 5 }')
# --- end of 6. watch -------------------------------------------------------------------------

# --- 9. TTL: keys expiring in the same second (issue 18) -------------------------------------
# A writer, a reader with KV_API_TTL_SWEEPER=true and a plain reader (memory stores) on one
# topic; the ttl_sweep example writes the keys with TTLs ending in the same second, times the
# 404s on the plain reader and the sweeper's acknowledged tombstones from the start of that
# second, and reads lasting keys from the sweeper meanwhile and after. On the MockCluster with
# the full count; Tansu's sqlite storage slows past some 20 000 records (see 2.), so it gets a
# twentieth.
[ "$mode" = full ] && ttl_keys="${BENCH_TTL_KEYS:-100000}" || ttl_keys="${BENCH_TTL_KEYS:-10000}"
ttl_shard_sweeper() { # ttl_shard_sweeper PORT: the sweeper of ttl_sweep_on mock, on PORT
    "${service_env[@]}" KAFKA_BOOTSTRAP_SERVERS="$broker" KV_API_KAFKA_KEY_VALUE_TOPIC="$pair_topic" \
        KAFKA_GROUP_ID="ttl-sweeper-mock" KV_API_OWNER=true KV_API_SHARD=0/1 \
        KV_API_SHARD_PEERS="http://127.0.0.1:$1" KV_API_LISTEN="127.0.0.1:$1" \
        "$bin/kv-reader" >>"$work/ttl-sweeper-mock.log" 2>&1 &
    started_pid=$!
}
ttl_sweep_on() { # ttl_sweep_on mock|tansu KEYS LASTING: sets ttl_<broker>_{404,tombstones,during,after}
    local broker wport rport pair_topic sport out="$work/ttl-$1.txt"
    broker_of "$1"
    # The sweeper joins the pair's topic: the plain reader and the sweeper read the same records.
    pair_on "$broker" "ttl-$1"
    if [ "$1" = mock ]; then
        # The MockCluster offers no CreateTopics, so no owners' lease topic (KV_API_OWNER_TOPIC):
        # there the sweeper is a shard of one, an owner found through its shard peers instead.
        on_free_port "the TTL sweeper" ttl_shard_sweeper
        sport=$started_port
    else
        start_service "$work/ttl-sweeper-$1.log" KAFKA_BOOTSTRAP_SERVERS="$broker" \
            KV_API_KAFKA_KEY_VALUE_TOPIC="$pair_topic" KAFKA_GROUP_ID="ttl-sweeper-$1" \
            KV_API_TTL_SWEEPER=true "$bin/kv-reader" || die "$svc_error"
        sport=$svc_port
    fi
    wait_ready "http://127.0.0.1:$sport/healthz/ready"
    "$bin/examples/ttl_sweep" "http://127.0.0.1:$wport" "http://127.0.0.1:$sport" \
        "http://127.0.0.1:$rport" "$2" "$3" >"$out" 2>"$work/ttl-$1.log" ||
        die "ttl_sweep on $1 failed; see $work/ttl-$1.log"
    fig "ttl_${1}_404" "$(grep BENCH "$out" | field all_404_ms)"
    fig "ttl_${1}_tombstones" "$(grep BENCH "$out" | field tombstones_ms)"
    fig "ttl_${1}_during" "$(grep BENCH "$out" | field rps_during)"
    fig "ttl_${1}_after" "$(grep BENCH "$out" | field rps_after)"
}
log "ttl: $ttl_keys keys expiring in the same second on the MockCluster"
step ttl-mock ttl_sweep_on mock "$ttl_keys" 10000
log "ttl: $((ttl_keys / 20)) keys expiring in the same second on a fresh Tansu"
step ttl-tansu ttl_sweep_on tansu "$((ttl_keys / 20))" 1000
# --- end of 9. TTL ---------------------------------------------------------------------------
# --- the table -----------------------------------------------------------------------------
# A figure of a failed step is empty: its row says "not measured" and is not met.
set +u
row() { # row FIGURE OURS PEER GOAL-RATIO UNIT: ratio = ours / peer, met if ratio >= goal
    if [ -z "$2" ] || [ -z "$3" ] || [ "$2" = nan ] || [ "$3" = nan ]; then
        printf '| %s | not measured | | | >= %sx | no |\n' "$1" "$4"
        return
    fi
    awk -v f="$1" -v o="$2" -v p="$3" -v g="$4" -v u="$5" 'BEGIN {
        r = (p > 0) ? o / p : 0
        printf "| %s | %.0f %s | %.0f %s | %.2f | >= %.1fx | %s |\n", f, o, u, p, u, r, g, (r >= g) ? "yes" : "no" }'
}
limit_row() { # limit_row FIGURE VALUE LIMIT UNIT: met if value <= limit
    if [ -z "$2" ] || [ "$2" = nan ]; then
        printf '| %s | not measured | | | <= %s %s | no |\n' "$1" "$3" "$4"
        return
    fi
    awk -v f="$1" -v v="$2" -v l="$3" -v u="$4" 'BEGIN {
        printf "| %s | %.1f %s | | | <= %s %s | %s |\n", f, v, u, l, u, (v <= l) ? "yes" : "no" }'
}
ratio() { # ratio A B: A / B to two places, empty when either is missing
    [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }' || true
}
table="$work/results.md"
{
    [ "$profile" = release ] || echo "PROFILE $profile: unoptimised binaries, a smoke test of the script; these are not figures"
    echo "mode $mode: $keys keys/records, $connections connections, $value_bytes-byte values, median of $runs runs"
    echo
    echo "| figure | ours | peer | ratio | goal | met? |"
    echo "|---|---|---|---|---|---|"
    row "1. reads/s, kv-reader vs redis-benchmark GET$(retried reads)" "$reader_rps" "$redis_rps" 1.0 "req/s"
    row "1. reads/s, kv-reader vs nginx static file" "$reader_rps" "$nginx_rps" 0.9 "req/s"
    printf '| 1. the HTTP ceiling: kv-reader GET /healthz/live (same server and middlewares, no store) vs nginx | %s req/s | %s req/s | %s | | |\n' \
        "${live_rps%.*}" "${nginx_rps%.*}" "$(ratio "$live_rps" "$nginx_rps")"
    printf '| 1. random keys vs one key over and over (its pages always cached): what page-cache misses cost | %s req/s | %s req/s | %s | | |\n' \
        "${reader_rps%.*}" "${hot_rps%.*}" "$(ratio "$reader_rps" "$hot_rps")"
    resp_rows
    printf '| 1. read latency p50 / p99 (ms): kv-reader / redis / nginx | %s / %s | %s / %s ; %s / %s | | | |\n' \
        "$reader_p50" "$reader_p99" "$redis_p50" "$redis_p99" "$nginx_p50" "$nginx_p99"
    row "2. acked writes/s vs raw producer, MockCluster$(retried writes-mock)" "$writes_mock_ours" "$writes_mock_raw" 0.9 "w/s"
    row "2. acked writes/s vs raw producer, Tansu$(retried writes-tansu)" "$writes_tansu_ours" "$writes_tansu_raw" 0.8 "w/s"
    limit_row "3. freshness p99, MockCluster$(retried fresh-mock) (p50 $fresh_mock_p50 ms, failed probes $fresh_mock_failed)" "$fresh_mock_p99" 20 ms
    limit_row "3. freshness p99, Tansu$(retried fresh-tansu) ($tansu_probes probes, p50 $fresh_tansu_p50 ms, failed probes $fresh_tansu_failed)" "$fresh_tansu_p99" 20 ms
    limit_row "3. freshness p99, MockCluster, reader KAFKA_FETCH_WAIT_MAX_MS=5$(retried fresh-mock5) (p50 $fresh_mock5_p50 ms, failed probes $fresh_mock5_failed)" "$fresh_mock5_p99" 20 ms
    limit_row "3. freshness p99, Tansu, reader KAFKA_FETCH_WAIT_MAX_MS=5$(retried fresh-tansu5) ($tansu_probes probes, p50 $fresh_tansu5_p50 ms, failed probes $fresh_tansu5_failed)" "$fresh_tansu5_p99" 20 ms
    row "4. replay records/s vs raw consumer, MockCluster ($mock_records)$(retried replay-mock)" "$replay_mock_ours" "$replay_mock_raw" 0.8 "rec/s"
    row "4. replay records/s vs raw consumer, Tansu ($keys)$(retried replay-tansu)" "$replay_tansu_ours" "$replay_tansu_raw" 0.8 "rec/s"
    limit_row "5. reader RSS, $keys keys on disk, after the read runs (ready: $rss_ready MB, peak $rss_peak MB, store $store_mb MB)" "$rss_after" 100 MB
    limit_row "6. largest shard's store / the full replica's, 3 shards R=1 ($shard_store_mb MB / $store_mb MB)$(retried shards)" "$(ratio "$shard_store_mb" "$store_mb")" 0.4 x
    limit_row "6. largest shard's RSS when ready / the full replica's ($shard_rss_mb MB / $rss_ready MB)" "$(ratio "$shard_rss_mb" "$rss_ready")" 0.4 x
    limit_row "7. new reader ready from a snapshot / by replay ($snapshot_ready_s s / $replay_ready_s s)$(retried snapshot)" "$(ratio "$snapshot_ready_s" "$replay_ready_s")" 0.3 x
    row "7. peer reads/s while serving a snapshot vs idle (p99 $serving_p99 ms)" "$serving_rps" "$reader_rps" 0.7 "req/s"
    row "6. forwarded GET/s vs GET the shard answers itself" "$shard_forwarded_rps" "$shard_local_rps" 0.6 "req/s"
    row "6. kv-client GET/s routed to the key's shard (3 shards) vs the full replica" "$client_shards_rps" "$client_full_rps" 0.9 "req/s"
    limit_row "6. forwarded GET p99 / local GET p99 ($shard_forwarded_p99 ms / $shard_local_p99 ms)" "$(ratio "$shard_forwarded_p99" "$shard_local_p99")" 2 x
    limit_row "8. write -> watch event p99, 100 watchers, MockCluster$(retried watch-mock) (p50 $watch_mock_p50 ms, failed probes $watch_mock_failed; goal freshness p99 + 5 ms)" "$watch_mock_p99" "$watch_goal_mock" ms
    limit_row "8. write -> watch event p99, 100 watchers, Tansu$(retried watch-tansu) ($tansu_probes probes, p50 $watch_tansu_p50 ms, failed probes $watch_tansu_failed; goal freshness p99 + 5 ms)" "$watch_tansu_p99" "$watch_goal_tansu" ms
    printf '| 8. events/s one watcher takes from the buffer (%s / %s events): MockCluster / Tansu | %s / %s | | | | |\n' \
        "$writes" "$watch_writes_tansu" "$watch_mock_events_per_s" "$watch_tansu_events_per_s"
    for cond_on in mock tansu; do
        c_plain="cond_${cond_on}_plain_wps" c_cond="cond_${cond_on}_conditional_wps"
        c_pp99="cond_${cond_on}_plain_p99" c_cp99="cond_${cond_on}_conditional_p99"
        c_pp50="cond_${cond_on}_plain_p50" c_cp50="cond_${cond_on}_conditional_p50"
        row "11. conditional writes/s (If-Match, no conflicts) vs unconditional, $cond_on$(retried "conditional-$cond_on")" "${!c_cond}" "${!c_plain}" 0.5 "w/s"
        limit_row "11. conditional write p99 / unconditional p99, $cond_on (${!c_cp99} ms / ${!c_pp99} ms; p50 ${!c_cp50} / ${!c_pp50} ms)" "$(ratio "${!c_cp99}" "${!c_pp99}")" 3 x
        c_fw="cond_${cond_on}_failover_write" c_fo="cond_${cond_on}_failover_owner"
        limit_row "11. owner killed -> next applied conditional write, $cond_on (its partitions owned by the survivor after ${!c_fo} ms)" "${!c_fw}" 10000 ms
    done
    for comp_on in tansu; do
        c_ours="comp_${comp_on}_reports_rps" c_raw="comp_${comp_on}_raw_rps"
        c_p50="comp_${comp_on}_computed_p50" c_p99="comp_${comp_on}_computed_p99"
        c_f50="comp_${comp_on}_fresh_p50" c_f99="comp_${comp_on}_fresh_p99"
        c_l50="comp_${comp_on}_hold_late_p50" c_l99="comp_${comp_on}_hold_late_p99"
        row "12. reports/s through a majority rule (to every value readable) vs a raw consume -> produce loop, $comp_on$(retried "computed-$comp_on")" "${!c_ours}" "${!c_raw}" 0.7 "rec/s"
        limit_row "12. report acked -> computed value readable p99 / write -> readable p99, $comp_on (${!c_p99} ms / ${!c_f99} ms; p50 ${!c_p50} / ${!c_f50} ms)" "$(ratio "${!c_p99}" "${!c_f99}")" 2 x
        printf '| 12. hold lateness (readable - acked - 1 s hold), %s: p50 / p99 | %s / %s ms | | | | |\n' \
            "$comp_on" "${!c_l50}" "${!c_l99}"
    done
    for ttl_on in mock tansu; do
        ttl_n=$ttl_keys
        [ "$ttl_on" = tansu ] && ttl_n=$((ttl_keys / 20))
        ttl_404="ttl_${ttl_on}_404" ttl_tomb="ttl_${ttl_on}_tombstones"
        ttl_during="ttl_${ttl_on}_during" ttl_after="ttl_${ttl_on}_after"
        printf '| 9. TTL, %s, %s keys expiring in one second: all 404 on a replica / all tombstones produced | %s / %s ms | | | | |\n' \
            "$ttl_on" "$ttl_n" "${!ttl_404}" "${!ttl_tomb}"
        row "9. TTL, $ttl_on: reads/s on the sweeper while it sweeps vs after$(retried "ttl-$ttl_on")" "${!ttl_during}" "${!ttl_after}" 0.5 "req/s"
    done
    echo
    if [ ${#step_notes[@]} -gt 0 ]; then
        echo "Steps that needed their retry or failed:"
        for note in "${step_notes[@]}"; do echo "- $note"; done
        echo
    fi
    echo "took $((SECONDS - started)) s; raw output in $work"
} >"$table"
echo
cat "$table"
