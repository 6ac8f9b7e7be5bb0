//! Fault and abuse drills that centre on the writer (docs/reliability.md). Ignored by
//! `cargo test`; `make drills` runs them one at a time and prints each figure.

#[path = "../common/mod.rs"]
mod common;

mod broker_outage;
mod http_abuse;
mod token_attacks;
