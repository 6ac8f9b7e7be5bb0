//! One per port, so what outlives a connection (scan cursors, client ids) is kept here.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use actix_web::web;
use kv_core::web::auth::AuthGate;

use super::scan::Cursors;
use crate::http::ReaderState;
use crate::metrics::RespMetrics;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    pub state: web::Data<ReaderState>,
    pub auth: web::Data<AuthGate>,
    pub metrics: RespMetrics,
    pub port: u16,
    pub max_connections: usize,
    pub(super) cursors: Cursors,
    pub(super) started: Instant,
    pub(super) next_client: AtomicU64,
}

impl Shared {
    pub fn new(
        state: web::Data<ReaderState>,
        auth: web::Data<AuthGate>,
        metrics: RespMetrics,
        port: u16,
        max_connections: usize,
    ) -> Self {
        Self {
            state,
            auth,
            metrics,
            port,
            max_connections,
            cursors: Cursors::new(),
            started: Instant::now(),
            next_client: AtomicU64::new(0),
        }
    }

    /// Why this shard does not answer `key` itself; `None` on a full replica. Forwarding is the
    /// HTTP port's: a Redis client expects its server to hold what it asks for.
    pub(super) fn shard_refusal(&self, key: &[u8]) -> Option<String> {
        let cluster = self.state.cluster.as_ref()?;
        let Some(count) = cluster.partitions() else {
            return Some(
                "TRYAGAIN this shard has not read the topic's partitions from the broker yet; \
                 retry"
                    .to_owned(),
            );
        };
        let partition = cluster.partition_of(key, count);
        (!cluster.holds(partition)).then(|| {
            format!(
                "ERR key not held by this shard (partition {partition} is another shard's); \
                 read it over the HTTP port, which forwards it"
            )
        })
    }
}
