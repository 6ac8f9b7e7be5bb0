//! kv-reader end to end: the real binary against a real broker process (and, where a test
//! writes, the real kv-writer beside it). One test binary, so actix and rdkafka link once.

mod at_rest;
mod auth;
mod cli;
mod computed;
mod conditional;
mod gateway;
mod metrics;
mod openapi;
mod prefixes;
mod read_routes;
mod replication;
mod resp;
mod resp_clients;
mod resp_slots;
mod shard_limits;
mod shard_paths;
mod shards;
mod snapshot;
mod status_page;
mod topic_compatibility;
mod topic_encryption;
mod topic_safety;
mod ttl;
mod watch;
mod write_then_read;
mod write_trace;

/// The binary under test, as cargo built it for this test.
pub const READER: &str = env!("CARGO_BIN_EXE_kv-reader");

/// The writer beside it, built on first use when only this package is tested.
pub fn writer() -> &'static str {
    kv_testkit::workspace_binary("kv-writer")
}
