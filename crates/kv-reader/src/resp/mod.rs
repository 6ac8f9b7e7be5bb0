//! The Redis-protocol (RESP2 and RESP3) read port, `KV_API_RESP_LISTEN`: an existing Redis
//! client reads this replica's store, the snapshot the HTTP routes read, with `GET`, `MGET`,
//! `SCAN` and a few more, and waits for its own writes with `KV.WAIT`. Writes are refused as
//! a Redis replica refuses them. docs/api.md has the commands, limits and errors.
//!
//! `parser` reads requests in place, `commands` runs them (`expiry`: `TTL` and its kin), `reply` writes the answers,
//! `server` holds the listener and the connections.

mod commands;
mod errors;
mod expiry;
pub mod metrics;
mod parser;
mod reply;
mod server;

pub use commands::{metric_labels, Shared};

use std::sync::Arc;

use kv_core::web::http::{bind, ListenError};

/// The port's listener and connections, on a runtime of their own; dropped, they end.
#[derive(Debug)]
pub struct RespServer {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
}

impl RespServer {
    /// Binds `listen` (port 0: a free port, see [`RespServer::port`]) and starts accepting.
    /// `shared` is built for the bound port by `shared_for`.
    pub fn start(
        listen: &str,
        shared_for: impl FnOnce(u16) -> Shared,
    ) -> Result<Self, ListenError> {
        let (listener, address) = bind(listen)?;
        let failed = |source| ListenError {
            address: address.to_string(),
            source,
        };
        listener.set_nonblocking(true).map_err(failed)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("kv-resp")
            .enable_all()
            .build()
            .map_err(failed)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(failed)?
        };
        let shared = Arc::new(shared_for(address.port()));
        runtime.spawn(server::accept(listener, shared));
        tracing::info!(
            "kv-reader Redis-protocol read port listening on redis://{address} (KV_API_RESP_LISTEN)"
        );
        Ok(Self {
            runtime: Some(runtime),
            port: address.port(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RespServer {
    fn drop(&mut self) {
        // Dropped from async code too (the app's shutdown): no waiting for the connections.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
