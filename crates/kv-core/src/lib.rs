//! What kv-writer and kv-reader share: settings, the record codec, the HTTP error contract,
//! read-your-writes tokens and Kafka client set-up.

pub mod auth;
pub mod consistency;
pub mod crypto;
pub mod error;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod record;
pub mod routing;
pub mod secret;
pub mod settings;
pub mod telemetry;

#[cfg(feature = "testkit")]
pub mod testkit;
