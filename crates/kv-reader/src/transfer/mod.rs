//! Moving a whole replica between processes: the snapshot format a peer serves and the
//! bootstrap that takes one in at start-up.

pub mod bootstrap;
pub mod cluster;
pub mod format;
pub mod metrics;
