//! What a client and the services must compute the same way, kept apart from the services'
//! heavy dependencies (librdkafka, actix) so that `kv-client` can share it: a client that
//! routed a key by another rule than the writer's would ask the wrong shard, and one that read
//! errors otherwise would miss their codes.

pub mod consistency;
pub mod errors;
pub mod headers;
pub mod partition;
pub mod paths;
