//! GET latency on a Redis-protocol port (kv-reader's, or a redis-server) at a fixed rate, for
//! `scripts/bench.sh`: `redis-benchmark` 7.0 has no rate option, and a closed loop at full
//! speed measures queueing, not the latency a client sees at a given load.
//!
//! ```text
//! cargo run --release -p kv-reader --example resp_latency -- HOST:PORT RATE SECONDS [connections] [keys]
//! ```
//!
//! Open loop, as wrk2 measures: each connection (a thread of its own, blocking socket) has a
//! schedule of `RATE / connections` GETs a second of random keys `key:000000000000` ..
//! `key:(keys-1)` (the names `redis-benchmark -r` uses), and each GET's latency runs from the
//! moment it was due, not from when it was sent, so a stall counts for every request it held
//! back. `late_p99_ms` is how late this tool itself sent (its thread was not running when a GET
//! was due): the part of the latency the box's scheduler, not the server, adds. Prints
//! `BENCH rate= sent= p50_ms= p99_ms= max_ms= late_p99_ms= missing= errors=`. RESP by hand over
//! its own sockets: kv-client speaks HTTP only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(index: usize, default: T) -> T {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default)]
struct Outcome {
    /// Microseconds from due to answered, one per GET.
    latencies: Vec<u32>,
    /// Microseconds from due to sent, one per GET: this tool's own lateness (its thread was not
    /// running when the GET was due), which the latency includes.
    late: Vec<u32>,
    missing: u64,
    errors: u64,
}

/// One connection's share of the schedule: a GET every `interval` from `start` until `end`.
fn connection(
    address: &str,
    interval: Duration,
    start: Instant,
    end: Instant,
    keys: u64,
    seed: u64,
) -> Outcome {
    let stream = TcpStream::connect(address).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut outcome = Outcome::default();
    let mut state = seed | 1;
    let mut line = String::new();
    let mut value = Vec::new();
    for n in 0u32.. {
        let due = start + interval * n;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // xorshift: a key spread over the whole range at no cost.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = format!("key:{:012}", state % keys);
        let request = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        outcome.late.push(micros(due.elapsed()));
        writer.write_all(request.as_bytes()).expect("send");
        line.clear();
        reader.read_line(&mut line).expect("answer");
        match line.as_bytes().first() {
            Some(b'$') => {
                let len: i64 = line[1..].trim().parse().expect("bulk length");
                if len < 0 {
                    outcome.missing += 1;
                } else {
                    value.resize(len as usize + 2, 0);
                    reader.read_exact(&mut value).expect("value");
                }
            }
            _ => outcome.errors += 1,
        }
        outcome.latencies.push(micros(due.elapsed()));
    }
    outcome
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let address: String = arg(1, "127.0.0.1:6379".to_owned());
    let rate: f64 = arg(2, 10_000.0);
    let seconds: f64 = arg(3, 5.0);
    let connections: u32 = arg(4, 16);
    let keys: u64 = arg(5, 1_000_000);
    let interval = Duration::from_secs_f64(f64::from(connections) / rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let address = address.clone();
            // Staggered, so the connections' GETs spread over each interval.
            let start = start + interval * i / connections;
            std::thread::spawn(move || {
                connection(
                    &address,
                    interval,
                    start,
                    end,
                    keys,
                    0x9E37_79B9 * u64::from(i + 1),
                )
            })
        })
        .collect();
    let mut all = Outcome::default();
    for thread in threads {
        let outcome = thread.join().expect("connection thread");
        all.latencies.extend(outcome.latencies);
        all.late.extend(outcome.late);
        all.missing += outcome.missing;
        all.errors += outcome.errors;
    }
    all.latencies.sort_unstable();
    all.late.sort_unstable();
    println!(
        "BENCH rate={rate:.0} sent={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} late_p99_ms={:.3} missing={} errors={}",
        all.latencies.len(),
        percentile_ms(&all.latencies, 50.0),
        percentile_ms(&all.latencies, 99.0),
        percentile_ms(&all.latencies, 100.0),
        percentile_ms(&all.late, 99.0),
        all.missing,
        all.errors
    );
}
