//! kv-reader: a full replica of the topic in redb, served over HTTP.

pub mod app;
pub mod at_rest;
pub mod framing;
pub mod metrics;
pub mod progress;
pub mod replica;
pub mod routes;
pub mod settings;
pub mod store;
pub mod ttl;

pub use app::App;
pub use settings::Settings;
