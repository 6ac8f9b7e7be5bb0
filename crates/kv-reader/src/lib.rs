//! kv-reader: a replica of the topic (all of it, or a shard's partitions) in redb, served over
//! HTTP.

pub mod app;
pub mod at_rest;
pub mod bootstrap;
pub mod cluster;
pub mod computed;
pub mod explain;
pub mod fanout;
pub mod feed;
pub mod framing;
pub mod metrics;
pub mod outcome;
pub mod owner;
pub mod progress;
pub mod replica;
pub mod resp;
pub mod routes;
pub mod settings;
pub mod shard;
pub mod snapshot;
pub mod status_page;
pub mod store;
pub mod ttl;
pub mod watch;

pub use app::App;
pub use settings::Settings;
