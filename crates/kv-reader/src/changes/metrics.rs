//! What the watches over the change feed count, and the feed's buffer as a scrape reads it.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::changes::feed::ChangeFeed;

/// The events a watch sends: the label values of `kv_reader_watch_events_sent_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    Put,
    Delete,
    Progress,
    Reset,
    Overflow,
    /// The watch ends on an error it states (its token expired).
    Error,
}

impl WatchEvent {
    pub const ALL: [WatchEvent; 6] = [
        WatchEvent::Put,
        WatchEvent::Delete,
        WatchEvent::Progress,
        WatchEvent::Reset,
        WatchEvent::Overflow,
        WatchEvent::Error,
    ];

    /// The SSE event name, and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            WatchEvent::Put => "put",
            WatchEvent::Delete => "delete",
            WatchEvent::Progress => "progress",
            WatchEvent::Reset => "reset",
            WatchEvent::Overflow => "overflow",
            WatchEvent::Error => "error",
        }
    }
}

/// The watches' metrics, counted as events are written.
#[derive(Debug, Clone)]
pub struct WatchMetrics {
    pub open: IntGauge,
    /// By [`WatchEvent`], in the order of [`WatchEvent::ALL`].
    sent: [IntCounter; 6],
    pub overflows: IntCounter,
    pub resets: IntCounter,
}

impl WatchMetrics {
    pub fn register(registry: &Registry, feed: Arc<ChangeFeed>) -> Result<Self, prometheus::Error> {
        let sent = IntCounterVec::new(
            Opts::new(
                "kv_reader_watch_events_sent_total",
                "Events written to watches, by type",
            ),
            &["type"],
        )?;
        let metrics = Self {
            open: IntGauge::new("kv_reader_watches_open", "Watches open right now")?,
            sent: WatchEvent::ALL.map(|event| sent.with_label_values(&[event.name()])),
            overflows: IntCounter::new(
                "kv_reader_watch_overflows_total",
                "Watches ended because they fell behind the buffer of changes",
            )?,
            resets: IntCounter::new(
                "kv_reader_watch_resets_total",
                "Watches that began again from a snapshot: resumed from a position older than \
                 the buffer, or the store was rebuilt",
            )?,
        };
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(sent))?;
        registry.register(Box::new(metrics.overflows.clone()))?;
        registry.register(Box::new(metrics.resets.clone()))?;
        registry.register(Box::new(BufferCollector {
            feed,
            changes: IntGauge::new(
                "kv_reader_watch_buffer_changes",
                "Changes held for watches (at most KV_API_WATCH_BUFFER_EVENTS)",
            )?,
            bytes: IntGauge::new(
                "kv_reader_watch_buffer_bytes",
                "Bytes of the changes held for watches (at most KV_API_WATCH_BUFFER_BYTES, or \
                 the newest change)",
            )?,
        }))?;
        Ok(metrics)
    }

    pub fn count(&self, event: WatchEvent) {
        let index = WatchEvent::ALL
            .iter()
            .position(|e| *e == event)
            .unwrap_or_default();
        self.sent[index].inc();
    }
}

/// The change feed's buffer, read at each scrape.
#[derive(Debug)]
struct BufferCollector {
    feed: Arc<ChangeFeed>,
    changes: IntGauge,
    bytes: IntGauge,
}

impl Collector for BufferCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.changes
            .desc()
            .into_iter()
            .chain(self.bytes.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (changes, bytes) = self.feed.held();
        self.changes.set(i64::try_from(changes).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.changes
            .collect()
            .into_iter()
            .chain(self.bytes.collect())
            .collect()
    }
}
