//! Fault drills that centre on the reader (docs/reliability.md). Ignored by `cargo test`;
//! `make drills` runs them one at a time and prints each figure.

mod batch_get_attack;
mod computed_failover;
mod disk_full;
mod killed_during_replay;
mod owner_failover;
mod poison_records;
mod resp_flood;
mod shard_kills;
mod soak;
mod traversal;
mod watch_token_expiry;

/// The binary under test, as cargo built it for this test.
pub const READER: &str = env!("CARGO_BIN_EXE_kv-reader");
