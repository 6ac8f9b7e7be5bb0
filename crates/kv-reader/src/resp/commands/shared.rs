//! One per port, so what outlives a connection (scan cursors, client ids) is kept here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use kv_core::web::auth::AuthGate;

use super::scan::Cursors;
use crate::read::{ReadCore, ReadError};
use crate::resp::errors::refusal;
use crate::resp::metrics::RespMetrics;
use crate::settings::RespSettings;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Shared with the HTTP port: the same rules, limits and listing slots.
    pub read: Arc<ReadCore>,
    pub auth: Arc<AuthGate>,
    pub metrics: RespMetrics,
    pub port: u16,
    /// The port's limits: connections, the time to authenticate and to send a request.
    pub settings: RespSettings,
    pub(super) cursors: Cursors,
    pub(super) started: Instant,
    pub(super) next_client: AtomicU64,
}

impl Shared {
    pub fn new(
        read: Arc<ReadCore>,
        auth: Arc<AuthGate>,
        metrics: RespMetrics,
        port: u16,
        settings: RespSettings,
    ) -> Self {
        Self {
            read,
            auth,
            metrics,
            port,
            settings,
            cursors: Cursors::new(),
            started: Instant::now(),
            next_client: AtomicU64::new(0),
        }
    }

    /// Why this shard does not answer `key` itself; `None` on a full replica. Forwarding is the
    /// HTTP port's: a Redis client expects its server to hold what it asks for.
    pub(super) fn shard_refusal(&self, key: &[u8]) -> Option<String> {
        self.read.held_here(key).err().map(|e| refusal(&e))
    }

    /// A refusal of the read core as this port's error reply.
    pub(super) fn refused(&self, error: &ReadError) -> String {
        refusal(error)
    }
}
