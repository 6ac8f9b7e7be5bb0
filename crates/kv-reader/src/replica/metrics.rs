//! The replica's own metrics, read from [`Progress`] and the store when `/metrics` is scraped,
//! so the consumer loop does no extra work for them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use kv_core::record::{BadTtlHeader, DecodeError};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::progress::Progress;
use crate::replica::schema_registry::BadSchemaHeader;
use crate::replica::{
    CONDITION_HEADER_REASON, CONFIGURATION_REASONS, CONTROL_RECORD_REASON,
    ENCRYPTED_ENVELOPE_REASON,
};
use crate::store::Store;
use crate::transfer::format::ImportProgress;

/// A collector that refreshes its metrics from the replica's state at each scrape.
#[derive(Debug)]
pub struct ReplicaCollector {
    progress: Arc<Progress>,
    import: Arc<ImportProgress>,
    bootstrap_entries: IntGauge,
    bootstrap_bytes: IntGauge,
    bootstrapped: IntGauge,
    store: Arc<Store>,
    applied_offset: IntGaugeVec,
    end_offset: IntGaugeVec,
    lag: IntGaugeVec,
    records_applied: IntCounter,
    tombstones_applied: IntCounter,
    skipped: IntCounterVec,
    rebuilds: IntCounter,
    store_keys: IntGauge,
    store_file_size: IntGauge,
    store_writable: IntGauge,
    store_full_stops: IntCounter,
    consumer_alive: IntGauge,
    ready: IntGauge,
    misconfigured: IntGaugeVec,
    read_your_writes_waiters: IntGauge,
    owned_partitions: IntGauge,
    misrouted: IntCounter,
    replay_remaining: IntGauge,
    replay_eta: Gauge,
    ready_after: Gauge,
    /// Counters are brought up to the replica's totals by adding the difference; two scrapes at
    /// once must not both add it.
    refresh: Mutex<()>,
}

impl ReplicaCollector {
    /// Registers the collector; the registry owns it from then on, and it reads `store`,
    /// `progress` and `import` at each scrape.
    pub fn register(
        registry: &Registry,
        store: Arc<Store>,
        progress: Arc<Progress>,
        import: Arc<ImportProgress>,
    ) -> Result<(), prometheus::Error> {
        registry.register(Box::new(Self::new(store, progress, import)?))
    }

    fn new(
        store: Arc<Store>,
        progress: Arc<Progress>,
        import: Arc<ImportProgress>,
    ) -> Result<Self, prometheus::Error> {
        let partition =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["partition"]);
        let collector = Self {
            progress,
            import,
            bootstrap_entries: IntGauge::new(
                "kv_reader_bootstrap_entries",
                "Entries taken in from a peer's snapshot at start-up (KV_API_BOOTSTRAP_PEERS), so far",
            )?,
            bootstrap_bytes: IntGauge::new(
                "kv_reader_bootstrap_bytes",
                "Bytes of a peer's snapshot read at start-up, so far",
            )?,
            bootstrapped: IntGauge::new(
                "kv_reader_bootstrapped_from_snapshot",
                "1 when this replica started from a peer's snapshot, 0 when it replayed the topic",
            )?,
            store,
            applied_offset: partition(
                "kv_reader_partition_applied_offset",
                "Highest offset of the partition applied to the store; -1 before any",
            )?,
            end_offset: partition(
                "kv_reader_partition_end_offset",
                "The partition's end offset, as last heard from the broker",
            )?,
            lag: partition(
                "kv_reader_partition_lag_records",
                "Records in the partition not applied to the store yet",
            )?,
            records_applied: IntCounter::new(
                "kv_reader_records_applied_total",
                "Records consumed and committed to the store since the process started, \
                 tombstones and skipped records included",
            )?,
            tombstones_applied: IntCounter::new(
                "kv_reader_tombstones_applied_total",
                "Tombstones (deletes) applied since the process started",
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "kv_reader_records_skipped_total",
                    "Records that could not be applied and were skipped, by reason",
                ),
                &["reason"],
            )?,
            rebuilds: IntCounter::new(
                "kv_reader_rebuilds_total",
                "Times the replica was rebuilt from the start of the topic since the process \
                 started",
            )?,
            store_keys: IntGauge::new("kv_reader_store_keys", "Keys held in the replica's store")?,
            store_file_size: IntGauge::new(
                "kv_reader_store_file_size_bytes",
                "Size of the replica's store file (disk storage only)",
            )?,
            store_writable: IntGauge::new(
                "kv_reader_store_writable",
                "1 while the store has room for what the replica applies; 0 while a disk \
                 replica stopped applying because its file system has less free space than \
                 the next batch needs plus KV_API_STATE_STORAGE_MIN_FREE_MB",
            )?,
            store_full_stops: IntCounter::new(
                "kv_reader_store_full_stops_total",
                "Times the replica stopped applying for want of room in its store",
            )?,
            consumer_alive: IntGauge::new(
                "kv_reader_consumer_alive",
                "1 while the consumer loop runs; 0 once it died (liveness then fails)",
            )?,
            ready: IntGauge::new(
                "kv_reader_ready",
                "1 once every partition reached the end offset seen at start-up, records \
                 are not all refused for a configuration reason and the store has room",
            )?,
            misconfigured: IntGaugeVec::new(
                Opts::new(
                    "kv_reader_misconfigured",
                    "1 while the replica refuses the records it reads for this configuration \
                     reason (another key, plaintext on an encrypted topic, or the reverse); it \
                     is not ready then and its stored offsets stay before those records",
                ),
                &["reason"],
            )?,
            read_your_writes_waiters: IntGauge::new(
                "kv_reader_read_your_writes_waiters",
                "Reads waiting for their consistency token",
            )?,
            owned_partitions: IntGauge::new(
                "kv_reader_owned_partitions",
                "Partitions of the topic this replica holds: all of them, or its shard's",
            )?,
            misrouted: IntCounter::new(
                "kv_reader_misrouted_records_total",
                "Records on another partition than murmur2 of their key gives (a producer with \
                 another partitioner): sharded readers cannot route their keys",
            )?,
            replay_remaining: IntGauge::new(
                "kv_reader_replay_remaining_records",
                "Records left to replay before the replica is ready (up to the end offsets seen \
                 at start-up); 0 once ready",
            )?,
            replay_eta: Gauge::new(
                "kv_reader_replay_eta_seconds",
                "Seconds the replay should still take at its rate so far; 0 once ready",
            )?,
            ready_after: Gauge::new(
                "kv_reader_ready_after_seconds",
                "How long the replay since the last start or rebuild took to be ready; 0 before",
            )?,
            refresh: Mutex::new(()),
        };
        let reasons = DecodeError::ALL.map(DecodeError::reason);
        for reason in reasons.iter().chain([
            &BadSchemaHeader::REASON,
            &ENCRYPTED_ENVELOPE_REASON,
            &BadTtlHeader::REASON,
            &CONDITION_HEADER_REASON,
            &CONTROL_RECORD_REASON,
        ]) {
            // Present at zero from the start, so an alert on its increase sees the first skip.
            collector.skipped.with_label_values(&[*reason]);
        }
        for reason in CONFIGURATION_REASONS {
            collector.misconfigured.with_label_values(&[reason]);
        }
        Ok(collector)
    }

    /// Every metric but the store file's size, which exists only on disk.
    fn metrics(&self) -> [&dyn Collector; 22] {
        [
            &self.store_writable,
            &self.store_full_stops,
            &self.applied_offset,
            &self.end_offset,
            &self.lag,
            &self.records_applied,
            &self.tombstones_applied,
            &self.skipped,
            &self.rebuilds,
            &self.store_keys,
            &self.consumer_alive,
            &self.ready,
            &self.misconfigured,
            &self.read_your_writes_waiters,
            &self.owned_partitions,
            &self.misrouted,
            &self.bootstrap_entries,
            &self.bootstrap_bytes,
            &self.bootstrapped,
            &self.replay_remaining,
            &self.replay_eta,
            &self.ready_after,
        ]
    }

    fn refresh(&self) {
        let report = self.progress.report();
        for gauge in [&self.applied_offset, &self.end_offset, &self.lag] {
            // Partitions can vanish (a rebuild after the topic was recreated).
            gauge.reset();
        }
        for (partition, progress) in &report.partitions {
            let label = partition.to_string();
            let label = [label.as_str()];
            self.applied_offset
                .with_label_values(&label)
                .set(progress.next_offset - 1);
            self.end_offset
                .with_label_values(&label)
                .set(progress.end_offset);
            self.lag
                .with_label_values(&label)
                .set((progress.end_offset - progress.next_offset).max(0));
        }
        catch_up(&self.records_applied, report.records_applied);
        catch_up(&self.tombstones_applied, report.tombstones_applied);
        catch_up(&self.rebuilds, report.rebuilds);
        catch_up(&self.misrouted, report.misrouted_records);
        catch_up(&self.store_full_stops, report.store_full_stops);
        self.store_writable
            .set(i64::from(report.store_full.is_none()));
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.bootstrap_entries
            .set(as_gauge(self.import.entries.load(Ordering::Relaxed)));
        self.bootstrap_bytes
            .set(as_gauge(self.import.bytes.load(Ordering::Relaxed)));
        self.bootstrapped
            .set(i64::from(self.import.taken.load(Ordering::Relaxed)));
        self.owned_partitions
            .set(i64::try_from(report.partitions.len()).unwrap_or(i64::MAX));
        for (reason, &count) in &report.skipped_records.by_reason {
            catch_up(&self.skipped.with_label_values(&[reason]), count);
        }
        let replay = self.progress.replay();
        self.replay_remaining.set(as_gauge(replay.remaining));
        let eta = match replay.ready_after {
            Some(_) => 0.0,
            None => replay.eta.map_or(0.0, |eta| eta.as_secs_f64()),
        };
        self.replay_eta.set(eta);
        self.ready_after
            .set(replay.ready_after.map_or(0.0, |after| after.as_secs_f64()));
        self.consumer_alive.set(i64::from(report.alive));
        self.ready.set(i64::from(report.ready));
        for reason in CONFIGURATION_REASONS {
            let refusing = report
                .misconfiguration
                .as_ref()
                .is_some_and(|m| m.reason == reason);
            self.misconfigured
                .with_label_values(&[reason])
                .set(i64::from(refusing));
        }
        self.read_your_writes_waiters
            .set(i64::try_from(self.progress.waiters()).unwrap_or(i64::MAX));
        match self.store.key_count() {
            Ok(keys) => self.store_keys.set(i64::try_from(keys).unwrap_or(i64::MAX)),
            Err(error) => tracing::warn!(%error, "cannot count the store's keys for /metrics"),
        }
        if let Some(path) = self.store.path() {
            match std::fs::metadata(path) {
                Ok(metadata) => self
                    .store_file_size
                    .set(i64::try_from(metadata.len()).unwrap_or(i64::MAX)),
                Err(error) => tracing::warn!(%error, "cannot read the store file's size"),
            }
        }
    }
}

/// Raises a counter to `total`; the replica's totals only grow.
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Collector for ReplicaCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.metrics()
            .into_iter()
            .chain([&self.store_file_size as &dyn Collector])
            .flat_map(|metric| metric.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh();
        let mut families: Vec<MetricFamily> = self
            .metrics()
            .into_iter()
            .flat_map(|metric| metric.collect())
            .collect();
        if self.store.path().is_some() {
            families.extend(self.store_file_size.collect());
        }
        families
    }
}
