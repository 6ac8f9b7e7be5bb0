//! What one process does for a partition it acts on: the owner election, the TTL sweep and the
//! computed-state actions (publications, ticks, the sink).

pub mod computed;
pub mod owner;
pub mod ttl;
