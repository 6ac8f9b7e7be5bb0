//! Fault and abuse drills that centre on the writer (docs/reliability.md). Ignored by
//! `cargo test`; `make drills` runs them one at a time and prints each figure.

mod batch_restart;
mod broker_outage;
mod hardening;
mod http_abuse;
mod network_faults;
mod token_attacks;

/// The binary under test, as cargo built it for this test.
pub const WRITER: &str = env!("CARGO_BIN_EXE_kv-writer");

/// The reader the drills read back through, built on first use when only this package is tested.
pub fn reader() -> &'static str {
    kv_testkit::workspace_binary("kv-reader")
}
