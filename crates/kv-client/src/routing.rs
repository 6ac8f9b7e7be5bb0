//! Which reader a read goes to. Sharded readers listed in shard order are asked by the key's
//! partition, computed the way the writer computes it (`kv_wire::partition`), so the read lands
//! on a shard that holds it; full replicas, or a layout not known yet, are used in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::paths::join;

/// How long a learned layout is used before it is asked again (partitions can be added).
const LAYOUT_TTL: Duration = Duration::from_secs(60);
/// How long after a failed attempt to learn the layout the next one is made.
const LAYOUT_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Routing {
    readers: Vec<Url>,
    by_partition: bool,
    next: AtomicUsize,
    layout: Mutex<Learned>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Learned {
    /// `None` while no reader answered; `Some(None)` when the readers are no shards to route by.
    layout: Option<Option<Layout>>,
    /// When it was last asked for; `None` before the first time.
    at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    shards: u32,
    replicas: u32,
    partitions: u32,
}

/// The part of `/healthz/cluster` routing needs.
#[derive(serde::Deserialize)]
struct ClusterHealth {
    sharded: bool,
    shards: u32,
    replicas: u32,
    partitions: u32,
}

impl Routing {
    pub(crate) fn new(readers: Vec<Url>, by_partition: bool) -> Self {
        Self {
            by_partition: by_partition && readers.len() > 1,
            readers,
            next: AtomicUsize::new(0),
            layout: Mutex::default(),
        }
    }

    /// The readers to ask for `key`, best first: its shard's owners (primary first), then the
    /// others; or, without a key or a layout, every reader starting from the next in turn.
    pub(crate) async fn order(&self, http: &reqwest::Client, key: Option<&[u8]>) -> Vec<Url> {
        let count = self.readers.len();
        let mut order: Vec<usize> = Vec::with_capacity(count);
        let layout = match key {
            Some(_) => self.layout(http).await,
            None => None,
        };
        if let (Some(key), Some(layout)) = (key, layout) {
            let partition = kv_wire::partition::kafka_partition(key, layout.partitions);
            order.extend(
                kv_wire::partition::shard_owners(partition, layout.shards, layout.replicas)
                    .map(|shard| shard as usize),
            );
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            let index = (start + i) % count;
            if !order.contains(&index) {
                order.push(index);
            }
        }
        order.into_iter().map(|i| self.readers[i].clone()).collect()
    }

    /// The sharded layout when the readers given are its shards; learned from `/healthz/cluster`
    /// and kept for [`LAYOUT_TTL`].
    async fn layout(&self, http: &reqwest::Client) -> Option<Layout> {
        if !self.by_partition {
            return None;
        }
        {
            let mut known = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = match (known.at, known.layout) {
                (Some(at), Some(_)) => at.elapsed() < LAYOUT_TTL,
                (Some(at), None) => at.elapsed() < LAYOUT_RETRY,
                (None, _) => false,
            };
            if fresh {
                return known.layout.flatten();
            }
            // Marked before asking, so concurrent reads do not all ask.
            known.at = Some(Instant::now());
        }
        let learned = self.ask(http).await;
        let mut known = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        // A failed attempt keeps what was known before: the shards did not move.
        if learned.is_some() {
            known.layout = learned;
        }
        known.layout.flatten()
    }

    /// `None` when no reader answered.
    async fn ask(&self, http: &reqwest::Client) -> Option<Option<Layout>> {
        for base in &self.readers {
            let request = http
                .get(join(base, "healthz/cluster"))
                .timeout(Duration::from_secs(2));
            let Ok(response) = request.send().await else {
                continue;
            };
            let Ok(health) = response.json::<ClusterHealth>().await else {
                continue;
            };
            // Routing by shard index needs the readers to be exactly the shards, in order.
            let usable = health.sharded
                && health.partitions > 0
                && health.shards as usize == self.readers.len();
            return Some(usable.then_some(Layout {
                shards: health.shards,
                replicas: health.replicas,
                partitions: health.partitions,
            }));
        }
        None
    }
}
