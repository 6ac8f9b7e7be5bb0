//! kv-writer end to end: the real binary against a real broker process, and in-process against
//! librdkafka's MockCluster for injected faults. One test binary, so actix and rdkafka link once.

mod cli;
mod conditional;
mod injected_faults;
mod migrate;
mod openapi;
mod outage;
mod routes;
mod ttl;

/// The binary under test, as cargo built it for this test.
pub const WRITER: &str = env!("CARGO_BIN_EXE_kv-writer");
