//! Snapshots: a ready reader streams its replica, record by record, to a new one, which then
//! consumes Kafka from the snapshot's offsets instead of replaying the whole topic.
//!
//! The stream (docs/wire-format.md, "Snapshots"):
//!
//! ```text
//! magic "KVSNAP\0\x01" | header length u32 | header JSON
//! { 0x01 | record key len u32 | record key | value len u32 | value | correlation id len u8 |
//!   correlation id | partition i32 | offset i64 | expires at u64 (ms, 0: never)
//!   [format 2: | trace len u8 (0 or 25) | the write's traceparent, binary] }*
//! 0x00 | entries u64 | SHA-256 of every byte before it
//! ```
//!
//! (integers big-endian). Records travel as they are on the topic: the record key (a MAC under
//! topic encryption) and the value sealed in the topic's envelope, so a receiver decodes them
//! with its own codec exactly as it would consume them, whatever its at-rest password, and an
//! observer without the topic key learns nothing it could not read on the topic.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_core::record::{now_ms, DecodedRecord, RecordCodec};
use kv_core::trace_context::TraceParent;
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::cluster::shard::ShardSpec;
use crate::store::{Change, ComputedRow, ExportHeader, Store, StoreError};

pub const MAGIC: &[u8; 8] = b"KVSNAP\0\x01";
pub const FORMAT_VERSION: u32 = 1;
/// Format 1 with each entry's write trace after its expiry. Sent only to a receiver that asks
/// for it ([`FORMAT_REQUEST_HEADER`]): a receiver of an older release refuses any format but 1.
pub const TRACED_FORMAT: u32 = 2;
/// The request header by which a receiver names the newest format it reads; a peer of an older
/// release ignores it and sends format 1, which every receiver reads.
pub const FORMAT_REQUEST_HEADER: &str = "x-kv-snapshot-format";
pub const CONTENT_TYPE: &str = "application/vnd.kafka-kv.snapshot";
const ENTRY: u8 = 1;
/// A computed-state row (`store::ComputedRow`), after the entries; its kind follows.
const COMPUTED: u8 = 2;
const REPORT_ROW: u8 = 1;
const RULED_ROW: u8 = 2;
const SINK_ROW: u8 = 3;
const END: u8 = 0;
/// The length of an entry's trace in [`TRACED_FORMAT`] ([`TraceParent::to_bytes`]).
const TRACE_LEN: u8 = 25;
/// Bytes buffered before a chunk goes to the HTTP body.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the store's read and the socket: the memory a transfer may hold.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// The largest header and record a receiver accepts: no value a writer takes is larger.
const MAX_HEADER: usize = 1024 * 1024;
const MAX_FIELD: usize = 256 * 1024 * 1024;
/// What a field's buffer starts with before its bytes arrive.
const TAKE_AHEAD: usize = 64 * 1024;
/// One import transaction: entries and their bytes.
const IMPORT_BATCH: usize = 10_000;
const IMPORT_BATCH_BYTES: usize = 32 * 1024 * 1024;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a snapshot says of itself before its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format: u32,
    pub topic: String,
    /// How the peer read the records (topic encryption and its key's fingerprint, schema
    /// framing): a receiver reading them otherwise refuses the snapshot.
    pub source_format: String,
    pub partitions: Vec<i32>,
    /// Per partition, the offset of the next record after the snapshot.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Entries in the peer's store; those of the partitions asked are at most this many.
    pub entries_at_most: u64,
    /// When the peer took it, ms since the Unix epoch (absent from older peers).
    #[serde(default)]
    pub taken_at_ms: Option<u64>,
    /// When the peer's replica last heard from the broker: its records are the topic as of
    /// then (absent from older peers, or before any contact).
    #[serde(default)]
    pub broker_contact_ms: Option<u64>,
    /// The Kafka cluster the peer reads (its brokers' cluster id): a receiver of another
    /// cluster refuses the snapshot, even of a topic of the same name. Absent from older peers,
    /// or when the peer's broker named none.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

/// The source format without the shard layout: a full replica may serve a shard and the
/// reverse, as long as both read records the same way.
pub fn reading(source_format: &str) -> String {
    source_format
        .split_whitespace()
        .filter(|part| !part.starts_with("shard="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The format a receiver that names `asked` (its [`FORMAT_REQUEST_HEADER`], if any) is sent.
pub fn format_for(asked: Option<&str>) -> u32 {
    match asked.and_then(|asked| asked.trim().parse::<u32>().ok()) {
        Some(asked) if asked >= TRACED_FORMAT => TRACED_FORMAT,
        _ => FORMAT_VERSION,
    }
}

/// Streams `store`'s entries of `partitions` into `send` in `format`, chunk by chunk, from one
/// read transaction; `send` returning false (the receiver left) ends it. Runs on a blocking
/// thread.
pub fn write_snapshot(
    store: &Store,
    codec: &RecordCodec,
    (topic, cluster_id): (&str, Option<&str>),
    (partitions, format): (&[i32], u32),
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<u64, StoreError> {
    // Both the header and the entries write to it, one after the other.
    let out = std::cell::RefCell::new(Output {
        buf: Vec::with_capacity(CHUNK + 1024),
        hash: Context::new(&SHA256),
        open: true,
        sent: 0,
        send: &mut send,
    });
    let mut entries = 0u64;
    let held: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let broker_contact_ms = store.last_broker_contact_ms()?;
    store.export(
        |partition| held.contains(&partition),
        |ExportHeader {
             source_format,
             next_offsets,
             entries: total,
             ..
         }| {
            let header = SnapshotHeader {
                format,
                topic: topic.to_owned(),
                source_format: source_format.unwrap_or_default(),
                partitions: partitions.to_vec(),
                next_offsets,
                entries_at_most: total,
                taken_at_ms: Some(now_ms()),
                broker_contact_ms,
                cluster_id: cluster_id.map(str::to_owned),
            };
            let json = serde_json::to_vec(&header).unwrap_or_default();
            let mut out = out.borrow_mut();
            out.push(MAGIC);
            out.push(&(json.len() as u32).to_be_bytes());
            out.push(&json);
            out.open
        },
        |user_key, entry| {
            let record_key = codec.record_key(user_key);
            let value = codec.encode_expiring_value(
                &record_key,
                user_key,
                &entry.value,
                entry.expires_at_ms,
            );
            let id = entry
                .correlation_id
                .as_deref()
                .unwrap_or_default()
                .as_bytes();
            let id = &id[..id.len().min(u8::MAX as usize)];
            let mut out = out.borrow_mut();
            out.push(&[ENTRY]);
            out.push(&(record_key.len() as u32).to_be_bytes());
            out.push(&record_key);
            out.push(&(value.len() as u32).to_be_bytes());
            out.push(&value);
            out.push(&[id.len() as u8]);
            out.push(id);
            out.push(&entry.partition.to_be_bytes());
            out.push(&entry.offset.to_be_bytes());
            out.push(&entry.expires_at_ms.unwrap_or(0).to_be_bytes());
            if format >= TRACED_FORMAT {
                match entry.traceparent {
                    Some(trace) => {
                        out.push(&[TRACE_LEN]);
                        out.push(&trace.to_bytes());
                    }
                    None => out.push(&[0]),
                }
            }
            entries += 1;
            out.open
        },
        |row| {
            let mut out = out.borrow_mut();
            out.push(&[COMPUTED]);
            match row {
                ComputedRow::Report {
                    key,
                    agent,
                    partition,
                    at_ms,
                    offset,
                    value,
                } => {
                    out.push(&[REPORT_ROW]);
                    out.field(&key);
                    out.field(&agent);
                    out.push(&partition.to_be_bytes());
                    out.push(&at_ms.to_be_bytes());
                    out.push(&offset.to_be_bytes());
                    out.field(&value);
                }
                ComputedRow::Ruled {
                    key,
                    partition,
                    due_ms,
                    candidate,
                } => {
                    out.push(&[RULED_ROW]);
                    out.field(&key);
                    out.push(&partition.to_be_bytes());
                    out.push(&due_ms.to_be_bytes());
                    match candidate {
                        None => out.push(&[0]),
                        Some((value, since)) => {
                            out.push(&[1]);
                            out.field(&value);
                            out.push(&since.to_be_bytes());
                        }
                    }
                }
                ComputedRow::Sink {
                    partition,
                    offset,
                    topic,
                    key,
                    value,
                } => {
                    out.push(&[SINK_ROW]);
                    out.push(&partition.to_be_bytes());
                    out.push(&offset.to_be_bytes());
                    out.field(&topic);
                    out.field(&key);
                    out.field(&value);
                }
            }
            out.open
        },
    )?;
    let mut out = out.into_inner();
    out.push(&[END]);
    out.push(&entries.to_be_bytes());
    out.flush();
    let digest = out.hash.clone().finish();
    if out.open {
        (out.send)(Bytes::copy_from_slice(digest.as_ref()));
    }
    Ok(out.sent)
}

struct Output<'a, F: FnMut(Bytes) -> bool> {
    buf: Vec<u8>,
    hash: Context,
    open: bool,
    sent: u64,
    send: &'a mut F,
}

impl<F: FnMut(Bytes) -> bool> Output<'_, F> {
    /// A length-prefixed field (u32 length, then the bytes).
    fn field(&mut self, bytes: &[u8]) {
        self.push(&(bytes.len() as u32).to_be_bytes());
        self.push(bytes);
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || !self.open {
            self.buf.clear();
            return;
        }
        self.hash.update(&self.buf);
        self.sent += self.buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK + 1024),
        ));
        self.open = (self.send)(chunk);
    }
}

/// Why a snapshot was not taken; the receiver then replays the topic.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the transfer broke off: {0}")]
    Transfer(#[from] std::io::Error),
    #[error("the stream is not a snapshot of this format: {0}")]
    Malformed(String),
    #[error("the snapshot's SHA-256 does not match its bytes (a byte changed in transit)")]
    Digest,
    #[error("the snapshot is of topic {peer}, not {ours}")]
    OtherTopic { peer: String, ours: String },
    #[error(
        "the peer read its records as \"{peer}\", this reader as \"{ours}\" (another topic key, \
         or another encryption or schema framing)"
    )]
    OtherFormat { peer: String, ours: String },
    #[error(
        "the peer last heard from the broker {away_s} s ago, longer than the topic's \
         delete.retention.ms ({retention_s} s): compaction may have removed deletes its \
         snapshot never saw"
    )]
    Stale { away_s: u64, retention_s: u64 },
    #[error(
        "the snapshot is of Kafka cluster {peer:?}, this reader reads cluster {ours:?}: a topic \
         of the same name on another cluster holds other records"
    )]
    OtherCluster { peer: String, ours: String },
    #[error("the snapshot holds partition {partition}, which shard {shard} does not hold")]
    NotOurs { partition: i32, shard: String },
    #[error("a record of the snapshot does not decode: {0}")]
    Record(String),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
}

/// What an import took in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub header: SnapshotHeader,
    pub entries: u64,
    pub bytes: u64,
}

/// What the receiver expects of a snapshot.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub topic: &'a str,
    pub source_format: &'a str,
    /// A shard asking: every partition of the snapshot must be one of its own. `None`: a
    /// full replica takes whatever the peer holds (partitions it lacks are read from the start).
    pub shard: Option<ShardSpec>,
    /// The topic's `delete.retention.ms`, when compacted: a peer that last heard from the
    /// broker longer ago may hold keys whose deletes compaction removed since.
    pub delete_retention: Option<Duration>,
    /// This reader's Kafka cluster id, when its broker named one.
    pub cluster_id: Option<&'a str>,
}

/// Reads a snapshot from `body` into `store` (emptied first), in bounded transactions, checks
/// its digest and only then records its offsets and topic. On any error the store is emptied
/// again, so the replica then replays the topic from scratch.
pub fn import(
    body: &mut dyn Read,
    store: &Store,
    codec: &RecordCodec,
    expected: &Expected<'_>,
    progress: &ImportProgress,
) -> Result<Imported, ImportError> {
    store.clear()?;
    let result = import_into(body, store, codec, expected, progress);
    if result.is_err() {
        store.clear()?;
    }
    result
}

fn import_into(
    body: &mut dyn Read,
    store: &Store,
    codec: &RecordCodec,
    expected: &Expected<'_>,
    progress: &ImportProgress,
) -> Result<Imported, ImportError> {
    let mut input = Input {
        body,
        hash: Context::new(&SHA256),
        bytes: 0,
    };
    let magic = input.take(MAGIC.len())?;
    if magic != MAGIC {
        return Err(ImportError::Malformed(
            "it does not start with the snapshot magic".into(),
        ));
    }
    let header_len = u32::from_be_bytes(input.array()?) as usize;
    if header_len > MAX_HEADER {
        return Err(ImportError::Malformed(format!(
            "a {header_len}-byte header"
        )));
    }
    let header: SnapshotHeader = serde_json::from_slice(&input.take(header_len)?)
        .map_err(|e| ImportError::Malformed(format!("its header: {e}")))?;
    if !(FORMAT_VERSION..=TRACED_FORMAT).contains(&header.format) {
        return Err(ImportError::Malformed(format!(
            "format {}, this reader reads {FORMAT_VERSION} to {TRACED_FORMAT}",
            header.format
        )));
    }
    if header.topic != expected.topic {
        return Err(ImportError::OtherTopic {
            peer: header.topic,
            ours: expected.topic.to_owned(),
        });
    }
    if let (Some(peer), Some(ours)) = (header.cluster_id.as_deref(), expected.cluster_id) {
        if peer != ours {
            return Err(ImportError::OtherCluster {
                peer: peer.to_owned(),
                ours: ours.to_owned(),
            });
        }
    }
    if reading(&header.source_format) != reading(expected.source_format) {
        return Err(ImportError::OtherFormat {
            peer: header.source_format,
            ours: expected.source_format.to_owned(),
        });
    }
    if let (Some(contact), Some(retention)) = (header.broker_contact_ms, expected.delete_retention)
    {
        let away = now_ms().saturating_sub(contact);
        if u128::from(away) > retention.as_millis() {
            return Err(ImportError::Stale {
                away_s: away / 1000,
                retention_s: retention.as_secs(),
            });
        }
    }
    if let Some(shard) = expected.shard {
        if let Some(&partition) = header.partitions.iter().find(|&&p| !shard.holds(p)) {
            return Err(ImportError::NotOurs {
                partition,
                shard: shard.layout(),
            });
        }
    }
    if let Some(partition) = header
        .next_offsets
        .keys()
        .find(|p| !header.partitions.contains(p))
    {
        return Err(ImportError::Malformed(format!(
            "an offset of partition {partition}, which its header does not list"
        )));
    }
    progress.start(header.entries_at_most);
    let mut batch: Vec<Frame> = Vec::with_capacity(IMPORT_BATCH);
    let mut computed: Vec<ComputedRow> = Vec::new();
    let mut computed_bytes = 0usize;
    let mut batch_bytes = 0usize;
    let mut entries = 0u64;
    loop {
        let [tag] = input.array::<1>()?;
        match tag {
            ENTRY => {
                let key_len = u32::from_be_bytes(input.array()?) as usize;
                let record_key = input.field(key_len)?;
                let value_len = u32::from_be_bytes(input.array()?) as usize;
                let value = input.field(value_len)?;
                let [id_len] = input.array::<1>()?;
                let id = input.take(id_len as usize)?;
                let partition = i32::from_be_bytes(input.array()?);
                // The header's partitions are the ones checked against this replica's: an
                // entry of any other would land where no consumer of this replica reads.
                if !header.partitions.contains(&partition) {
                    return Err(ImportError::Malformed(format!(
                        "an entry of partition {partition}, which its header does not list"
                    )));
                }
                let offset = i64::from_be_bytes(input.array()?);
                let expires_at_ms = match u64::from_be_bytes(input.array()?) {
                    0 => None,
                    at => Some(at),
                };
                let traceparent = match header.format {
                    TRACED_FORMAT => match input.array::<1>()? {
                        [0] => None,
                        [TRACE_LEN] => Some(TraceParent::from_bytes(&input.array()?)),
                        [other] => {
                            return Err(ImportError::Malformed(format!(
                                "an entry's trace of {other} bytes"
                            )))
                        }
                    },
                    _ => None,
                };
                batch_bytes += record_key.len() + value.len();
                batch.push(Frame {
                    record_key,
                    value,
                    correlation_id: (!id.is_empty()).then_some(id),
                    traceparent,
                    partition,
                    offset,
                    expires_at_ms,
                });
                entries += 1;
                if batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES {
                    apply(store, codec, &batch)?;
                    batch.clear();
                    batch_bytes = 0;
                    progress.advance(entries, input.bytes);
                }
            }
            COMPUTED => {
                let before = input.bytes;
                computed.push(computed_row(&mut input)?);
                computed_bytes += (input.bytes - before) as usize;
                if computed.len() >= IMPORT_BATCH || computed_bytes >= IMPORT_BATCH_BYTES {
                    store.import_computed(&computed)?;
                    computed.clear();
                    computed_bytes = 0;
                }
            }
            END => {
                let counted = u64::from_be_bytes(input.array()?);
                if counted != entries {
                    return Err(ImportError::Malformed(format!(
                        "it ends saying {counted} entries after {entries}"
                    )));
                }
                break;
            }
            other => return Err(ImportError::Malformed(format!("a frame tagged {other}"))),
        }
    }
    apply(store, codec, &batch)?;
    store.import_computed(&computed)?;
    let digest = input.hash.clone().finish();
    let mut trailer = [0u8; 32];
    input.body.read_exact(&mut trailer)?;
    if trailer != digest.as_ref() {
        return Err(ImportError::Digest);
    }
    let bytes = input.bytes + 32;
    store.finish_import(expected.topic, expected.source_format, &header.next_offsets)?;
    progress.advance(entries, bytes);
    Ok(Imported {
        header,
        entries,
        bytes,
    })
}

/// A [`COMPUTED`] frame's row, its tag read.
fn computed_row(input: &mut Input<'_>) -> Result<ComputedRow, ImportError> {
    let field = |input: &mut Input<'_>| {
        let len = u32::from_be_bytes(input.array()?) as usize;
        input.field(len)
    };
    let [kind] = input.array::<1>()?;
    Ok(match kind {
        REPORT_ROW => ComputedRow::Report {
            key: field(input)?,
            agent: field(input)?,
            partition: i32::from_be_bytes(input.array()?),
            at_ms: u64::from_be_bytes(input.array()?),
            offset: i64::from_be_bytes(input.array()?),
            value: field(input)?,
        },
        RULED_ROW => {
            let key = field(input)?;
            let partition = i32::from_be_bytes(input.array()?);
            let due_ms = u64::from_be_bytes(input.array()?);
            let candidate = match input.array::<1>()? {
                [0] => None,
                [1] => {
                    let value = field(input)?;
                    Some((value, u64::from_be_bytes(input.array()?)))
                }
                [other] => {
                    return Err(ImportError::Malformed(format!(
                        "a computed row's candidate flag {other}"
                    )))
                }
            };
            ComputedRow::Ruled {
                key,
                partition,
                due_ms,
                candidate,
            }
        }
        SINK_ROW => ComputedRow::Sink {
            partition: i32::from_be_bytes(input.array()?),
            offset: i64::from_be_bytes(input.array()?),
            topic: field(input)?,
            key: field(input)?,
            value: field(input)?,
        },
        other => {
            return Err(ImportError::Malformed(format!(
                "a computed row of kind {other}"
            )))
        }
    })
}

struct Frame {
    record_key: Vec<u8>,
    value: Vec<u8>,
    correlation_id: Option<Vec<u8>>,
    traceparent: Option<TraceParent>,
    partition: i32,
    offset: i64,
    expires_at_ms: Option<u64>,
}

fn apply(store: &Store, codec: &RecordCodec, frames: &[Frame]) -> Result<(), ImportError> {
    let mut changes = Vec::with_capacity(frames.len());
    for frame in frames {
        match codec.decode_expiring(
            Some(&frame.record_key),
            Some(&frame.value),
            frame.expires_at_ms,
        ) {
            Ok(DecodedRecord::Put {
                record_key,
                user_key,
                value,
            }) => changes.push(Change::Put {
                record_key,
                user_key,
                partition: frame.partition,
                offset: frame.offset,
                correlation_id: frame.correlation_id.as_deref(),
                traceparent: frame.traceparent,
                value,
                // An entry already expired applies as a delete, as on a replay.
                expires_at_ms: frame.expires_at_ms,
                precondition: None,
                decided: None,
            }),
            Ok(DecodedRecord::Delete { .. }) => {
                return Err(ImportError::Record("a snapshot holds no deletes".into()))
            }
            Err(error) => return Err(ImportError::Record(error.to_string())),
        }
    }
    // An import sweeps no partition: an entry already expired is dropped, not kept for a tombstone.
    store.apply_at(&changes, &BTreeMap::new(), now_ms(), &|_| false)?;
    Ok(())
}

/// The bytes read so far, hashed as they are read.
struct Input<'a> {
    body: &'a mut dyn Read,
    hash: Context,
    bytes: u64,
}

impl Input<'_> {
    /// `len` bytes, the buffer growing as they arrive: a length a peer declares is never
    /// allocated before its bytes come.
    fn take(&mut self, len: usize) -> Result<Vec<u8>, ImportError> {
        let mut bytes = Vec::with_capacity(len.min(TAKE_AHEAD));
        Read::take(&mut *self.body, len as u64).read_to_end(&mut bytes)?;
        if bytes.len() < len {
            return Err(ImportError::Transfer(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        self.hash.update(&bytes);
        self.bytes += len as u64;
        Ok(bytes)
    }

    fn field(&mut self, len: usize) -> Result<Vec<u8>, ImportError> {
        if len > MAX_FIELD {
            return Err(ImportError::Malformed(format!("a {len}-byte record field")));
        }
        self.take(len)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ImportError> {
        let mut bytes = [0u8; N];
        self.body.read_exact(&mut bytes)?;
        self.hash.update(&bytes);
        self.bytes += N as u64;
        Ok(bytes)
    }
}

/// An import's progress, for the log and the metrics.
#[derive(Debug, Default)]
pub struct ImportProgress {
    state: std::sync::Mutex<ProgressState>,
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    /// 1 once a snapshot was taken in whole, 0 otherwise (no peers, or it failed).
    pub taken: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct ProgressState {
    started: Option<Instant>,
    last_log: Option<Instant>,
    expected: u64,
}

impl ImportProgress {
    pub fn finished(&self, taken: bool) {
        self.taken
            .store(taken, std::sync::atomic::Ordering::Relaxed);
    }

    fn start(&self, expected: u64) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.started = Some(Instant::now());
        state.last_log = Some(Instant::now());
        state.expected = expected;
    }

    fn advance(&self, entries: u64, bytes: u64) {
        use std::sync::atomic::Ordering;
        self.entries.store(entries, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (Some(started), Some(last)) = (state.started, state.last_log) else {
            return;
        };
        if last.elapsed() < PROGRESS_EVERY {
            return;
        }
        state.last_log = Some(Instant::now());
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let rate = entries as f64 / seconds;
        let eta = (state.expected.saturating_sub(entries) as f64 / rate.max(1.0)).round();
        tracing::info!(
            entries,
            bytes,
            entries_per_second = rate.round(),
            eta_seconds_at_most = eta,
            "taking the snapshot in"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Storage;
    use std::borrow::Cow;

    fn store_with(entries: &[(&[u8], i32, i64, &[u8])]) -> Store {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .reset("t", "encryption=off schema_framing=none")
            .expect("reset");
        let changes: Vec<Change<'_>> = entries
            .iter()
            .map(|(key, partition, offset, value)| Change::Put {
                record_key: key,
                user_key: Cow::Borrowed(key),
                partition: *partition,
                offset: *offset,
                correlation_id: Some(b"c"),
                traceparent: (*offset == 3).then_some(WRITE_TRACE),
                value: Cow::Borrowed(value),
                expires_at_ms: None,
                precondition: None,
                decided: None,
            })
            .collect();
        store
            .apply_now_sweeping_nothing(&changes, &BTreeMap::from([(0, 10), (1, 20)]))
            .expect("apply");
        store
    }

    /// The trace of the write of every entry at offset 3 in [`store_with`].
    const WRITE_TRACE: TraceParent = TraceParent {
        trace_id: [7; 16],
        parent_id: [9; 8],
        flags: 1,
    };

    fn snapshot_of(store: &Store, partitions: &[i32]) -> Vec<u8> {
        snapshot_in(store, partitions, TRACED_FORMAT)
    }

    fn snapshot_in(store: &Store, partitions: &[i32], format: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_snapshot(
            store,
            &RecordCodec::Plaintext,
            ("t", Some("c1")),
            (partitions, format),
            |chunk| {
                bytes.extend_from_slice(&chunk);
                true
            },
        )
        .expect("snapshot");
        bytes
    }

    fn expected(shard: Option<ShardSpec>) -> Expected<'static> {
        Expected {
            topic: "t",
            source_format: "encryption=off schema_framing=none",
            shard,
            delete_retention: Some(Duration::from_secs(86_400)),
            cluster_id: Some("c1"),
        }
    }

    #[test]
    fn a_snapshot_carries_the_entries_of_the_partitions_asked_and_their_offsets() {
        let source = store_with(&[(b"a", 0, 3, b"1"), (b"b", 1, 7, b"2"), (b"c", 0, 9, b"")]);
        let bytes = snapshot_of(&source, &[0]);
        let target = Store::open(&Storage::Memory, None).expect("store");
        let imported = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(Some(ShardSpec::parse("0/2", 1).expect("spec"))),
            &ImportProgress::default(),
        )
        .expect("import");
        assert_eq!(imported.entries, 2);
        assert_eq!(
            target.next_offsets().expect("offsets"),
            BTreeMap::from([(0, 10)])
        );
        assert_eq!(target.get(b"a").expect("get").expect("a").offset, 3);
        assert_eq!(target.get(b"c").expect("get").expect("c").value, b"");
        assert_eq!(target.get(b"b").expect("get"), None);
        assert_eq!(target.topic().expect("topic").as_deref(), Some("t"));
        let error = import(
            &mut snapshot_of(&source, &[0, 1]).as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(Some(ShardSpec::parse("0/2", 1).expect("spec"))),
            &ImportProgress::default(),
        )
        .expect_err("partition 1 is not shard 0's");
        assert!(
            matches!(error, ImportError::NotOurs { partition: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_receiver_that_asks_for_traces_takes_them_and_reads_an_older_peers_snapshot_without() {
        assert_eq!(format_for(Some("2")), TRACED_FORMAT);
        assert_eq!(format_for(Some("3")), TRACED_FORMAT);
        assert_eq!(format_for(None), FORMAT_VERSION);
        assert_eq!(format_for(Some("x")), FORMAT_VERSION);
        let source = store_with(&[(b"a", 0, 3, b"1"), (b"c", 0, 9, b"")]);
        for (format, trace) in [(TRACED_FORMAT, Some(WRITE_TRACE)), (FORMAT_VERSION, None)] {
            let target = Store::open(&Storage::Memory, None).expect("store");
            let imported = import(
                &mut snapshot_in(&source, &[0], format).as_slice(),
                &target,
                &RecordCodec::Plaintext,
                &expected(None),
                &ImportProgress::default(),
            )
            .expect("import");
            assert_eq!(imported.header.format, format);
            let entry = |key: &[u8]| target.get(key).expect("get").expect("present");
            assert_eq!(entry(b"a").traceparent, trace, "format {format}");
            assert_eq!(entry(b"c").traceparent, None);
            assert_eq!(entry(b"a").correlation_id.as_deref(), Some("c"));
        }
    }

    #[test]
    fn any_changed_byte_or_a_cut_leaves_an_empty_store_without_a_topic() {
        let source = store_with(&[(b"a", 0, 3, b"value"), (b"b", 1, 7, b"other")]);
        let bytes = snapshot_of(&source, &[0, 1]);
        for at in [9, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
            let mut tampered = bytes.clone();
            tampered[at] ^= 0x20;
            let target = Store::open(&Storage::Memory, None).expect("store");
            let result = import(
                &mut tampered.as_slice(),
                &target,
                &RecordCodec::Plaintext,
                &expected(None),
                &ImportProgress::default(),
            );
            assert!(result.is_err(), "byte {at} changed");
            assert_eq!(target.key_count().expect("count"), 0);
            assert_eq!(target.topic().expect("topic"), None);
        }
        let cut = &bytes[..bytes.len() - 10];
        let target = Store::open(&Storage::Memory, None).expect("store");
        let error = import(
            &mut &cut[..],
            &target,
            &RecordCodec::Plaintext,
            &expected(None),
            &ImportProgress::default(),
        )
        .expect_err("cut");
        assert!(matches!(error, ImportError::Transfer(_)), "{error}");
    }

    #[test]
    fn a_snapshot_of_a_peer_cut_off_from_the_broker_past_delete_retention_is_refused() {
        let source = store_with(&[(b"a", 0, 3, b"v")]);
        let day = 86_400_000;
        source
            .note_broker_contact(now_ms() - 2 * day)
            .expect("contact");
        let bytes = snapshot_of(&source, &[0]);
        let target = Store::open(&Storage::Memory, None).expect("store");
        let error = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(None),
            &ImportProgress::default(),
        )
        .expect_err("two days cut off, a day of retention");
        assert!(matches!(error, ImportError::Stale { .. }), "{error}");
        assert_eq!(target.key_count().expect("count"), 0);

        source
            .note_broker_contact(now_ms() - 1_000)
            .expect("contact");
        let bytes = snapshot_of(&source, &[0]);
        let imported = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(None),
            &ImportProgress::default(),
        )
        .expect("a peer in touch");
        assert!(imported.header.taken_at_ms.is_some());
    }

    #[test]
    fn an_entry_of_a_partition_its_header_does_not_list_is_refused() {
        let source = store_with(&[(b"a", 0, 3, b"v"), (b"b", 1, 7, b"w")]);
        let bytes = snapshot_of(&source, &[0, 1]);
        // The same stream, its header claiming partition 0 only, its digest made good again.
        let header_len = u32::from_be_bytes(bytes[8..12].try_into().expect("length")) as usize;
        let mut header: SnapshotHeader =
            serde_json::from_slice(&bytes[12..12 + header_len]).expect("header");
        header.partitions = vec![0];
        header.next_offsets.remove(&1);
        let json = serde_json::to_vec(&header).expect("json");
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&(json.len() as u32).to_be_bytes());
        forged.extend_from_slice(&json);
        forged.extend_from_slice(&bytes[12 + header_len..bytes.len() - 32]);
        let digest = ring::digest::digest(&SHA256, &forged);
        forged.extend_from_slice(digest.as_ref());
        let target = Store::open(&Storage::Memory, None).expect("store");
        let error = import(
            &mut forged.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(None),
            &ImportProgress::default(),
        )
        .expect_err("an entry of partition 1");
        assert!(error.to_string().contains("partition 1"), "{error}");
        assert_eq!(target.key_count().expect("count"), 0);
    }

    #[test]
    fn a_declared_field_longer_than_what_follows_is_refused_as_cut() {
        let source = store_with(&[(b"a", 0, 3, b"v")]);
        let bytes = snapshot_of(&source, &[0]);
        let header_len = u32::from_be_bytes(bytes[8..12].try_into().expect("length")) as usize;
        // An entry whose key says it is 255 MiB long, and then the stream ends.
        let mut cut = bytes[..12 + header_len].to_vec();
        cut.push(ENTRY);
        cut.extend_from_slice(&(255u32 * 1024 * 1024).to_be_bytes());
        cut.extend_from_slice(b"abc");
        let target = Store::open(&Storage::Memory, None).expect("store");
        let error = import(
            &mut cut.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &expected(None),
            &ImportProgress::default(),
        )
        .expect_err("cut");
        assert!(matches!(error, ImportError::Transfer(_)), "{error}");
    }

    #[test]
    fn a_snapshot_of_another_topic_format_or_kafka_cluster_is_refused() {
        let source = store_with(&[(b"a", 0, 3, b"v")]);
        let bytes = snapshot_of(&source, &[0, 1]);
        let target = Store::open(&Storage::Memory, None).expect("store");
        let other_topic = Expected {
            topic: "u",
            ..expected(None)
        };
        let error = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &other_topic,
            &ImportProgress::default(),
        )
        .expect_err("topic");
        assert!(matches!(error, ImportError::OtherTopic { .. }), "{error}");
        let other_key = Expected {
            source_format: "encryption=aes-256-gcm/00ff schema_framing=none",
            ..expected(None)
        };
        let error = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &other_key,
            &ImportProgress::default(),
        )
        .expect_err("format");
        assert!(matches!(error, ImportError::OtherFormat { .. }), "{error}");
        let other_cluster = Expected {
            cluster_id: Some("c2"),
            ..expected(None)
        };
        let error = import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &other_cluster,
            &ImportProgress::default(),
        )
        .expect_err("cluster");
        assert!(matches!(error, ImportError::OtherCluster { .. }), "{error}");
        // A reader whose brokers named no cluster compares nothing.
        let unknown = Expected {
            cluster_id: None,
            ..expected(None)
        };
        import(
            &mut bytes.as_slice(),
            &target,
            &RecordCodec::Plaintext,
            &unknown,
            &ImportProgress::default(),
        )
        .expect("taken");
        assert_eq!(
            reading("encryption=off schema_framing=none shard=0/3x1"),
            "encryption=off schema_framing=none"
        );
    }
}
