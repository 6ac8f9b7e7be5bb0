//! The change feed: what the replica applied, in log order, for watches.

pub mod feed;
pub mod metrics;
