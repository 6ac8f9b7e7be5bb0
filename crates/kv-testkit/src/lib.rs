//! The end-to-end test kit (dev-only, never shipped): a real broker process per test, the
//! project's binaries as child processes, a real OpenID provider, topic helpers, the OpenAPI
//! conformance check, Prometheus text parsing, a stand-in OTLP collector, and polling with a
//! deadline instead of sleeps.

pub mod broker;
pub mod computed;
pub mod conditional;
pub mod decoders;
pub mod gateway;
pub mod netns;
pub mod oidc;
pub mod openapi;
pub mod otlp;
pub mod poll;
pub mod procfs;
pub mod prometheus;
pub mod proxy;
pub mod reader;
pub mod resp;
pub mod services;
pub mod stub_reader;
pub mod tmpfs;
pub mod tools;
pub mod topic;

use std::net::TcpListener;

pub use broker::{Broker, BrokerUnderTest};
pub use oidc::{token_expiry, OidcProvider, OIDC_AUDIENCE};
pub use poll::{eventually, within, DEADLINE};
pub use prometheus::{metric, scrape};
pub use services::{run_to_exit, service_env, workspace_binary, Service, Shards};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
