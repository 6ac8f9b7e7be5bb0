//! librdkafka's in-memory mock broker (`MockCluster`) as a process of its own, for benchmarks
//! where the local Tansu broker is the ceiling. Prints `bootstrap=HOST:PORT` on stdout and runs
//! until it is killed. Records live in memory; it is not a real Kafka.
//!
//! ```text
//! cargo run --release -p kv-core --example mock_cluster -- [brokers]
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
    println!("bootstrap={}", cluster.bootstrap_servers());
    std::io::stdout().flush().ok();
    // The cluster lives as long as this process; the bench script kills it by its pid.
    loop {
        std::thread::park();
    }
}
