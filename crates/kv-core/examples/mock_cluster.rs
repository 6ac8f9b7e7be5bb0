//! librdkafka's in-memory mock broker (`MockCluster`) as a process of its own, for benchmarks
//! where the local Tansu broker is the ceiling. Prints `bootstrap=HOST:PORT` on stdout and runs
//! until it is killed. Records live in memory; it is not a real Kafka.
//!
//! Topics named after the broker count (`NAME:PARTITIONS`) are created before it answers: the
//! mock offers no CreateTopics, and a topic it creates on a first produce has the mock's default
//! partition count, while an owners' lease topic must have exactly one.
//!
//! ```text
//! cargo run --release -p kv-core --example mock_cluster -- [brokers] [NAME:PARTITIONS ...]
//! ```

use std::io::Write;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

fn main() {
    let brokers: i32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(brokers).expect("mock cluster");
    for spec in std::env::args().skip(2) {
        let (name, partitions) = spec
            .rsplit_once(':')
            .and_then(|(name, count)| Some((name, count.parse::<i32>().ok()?)))
            .unwrap_or_else(|| panic!("a topic is NAME:PARTITIONS, not {spec}"));
        cluster
            .create_topic(name, partitions, brokers.min(3))
            .unwrap_or_else(|e| panic!("cannot create topic {name}: {e}"));
    }
    println!("bootstrap={}", cluster.bootstrap_servers());
    std::io::stdout().flush().ok();
    // The cluster lives as long as this process; the bench script kills it by its pid.
    loop {
        std::thread::park();
    }
}
