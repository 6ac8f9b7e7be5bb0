//! kv-reader: a replica of the topic (all of it, or a shard's partitions) in redb, served over
//! HTTP and the Redis protocol.

pub mod acting;
pub mod app;
pub mod changes;
pub mod cluster;
pub mod http;
pub mod progress;
pub mod read;
pub mod replica;
pub mod resp;
pub mod settings;
pub mod store;
pub mod transfer;

pub use app::App;
pub use settings::Settings;
