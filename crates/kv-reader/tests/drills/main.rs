//! Fault drills that centre on the reader (docs/reliability.md). Ignored by `cargo test`;
//! `make drills` runs them one at a time and prints each figure.

#[path = "../support/mod.rs"]
mod support;

mod topic;

mod killed_during_replay;
mod poison_records;
