//! What serving snapshots to other readers counts.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Snapshots this reader served (`GET /admin/v1/snapshot`).
#[derive(Debug, Clone)]
pub struct SnapshotMetrics {
    pub served: IntCounterVec,
    pub bytes_sent: IntCounter,
}

impl SnapshotMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            served: IntCounterVec::new(
                Opts::new(
                    "kv_reader_snapshots_served_total",
                    "Snapshots served to other readers, by outcome (complete, cut: the receiver \
                     left or the store failed)",
                ),
                &["outcome"],
            )?,
            bytes_sent: IntCounter::new(
                "kv_reader_snapshot_bytes_sent_total",
                "Bytes of snapshots sent to other readers",
            )?,
        };
        for outcome in ["complete", "cut"] {
            metrics.served.with_label_values(&[outcome]);
        }
        registry.register(Box::new(metrics.served.clone()))?;
        registry.register(Box::new(metrics.bytes_sent.clone()))?;
        Ok(metrics)
    }
}
