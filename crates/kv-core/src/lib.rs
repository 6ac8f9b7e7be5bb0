//! What kv-writer and kv-reader share, by layer: the domain (the record codec, topic encryption,
//! read-your-writes tokens, secrets), settings, Kafka client set-up, and the actix plumbing
//! under `web`.

pub mod cli;
pub mod consistency;
pub mod crypto;
pub mod kafka;
pub mod kafka_stats;
pub mod record;
pub mod secret;
pub mod settings;
pub mod telemetry;
pub mod web;
