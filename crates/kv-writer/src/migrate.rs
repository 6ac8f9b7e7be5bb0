//! `kv-writer migrate-seed-topic`: re-produces a topic the original .NET service sealed
//! (`KV_API_ENCRYPT_DATA_ON_KAFKA=true` there) in this project's format.
//!
//! The original sealed the record key, the value, and each header's name and value with
//! AES-256-CBC and PKCS#7 padding under a random 16-byte IV per field, stored as IV‖ciphertext,
//! without a MAC ([`SeedCipher`]). Kafka header names are strings, so a sealed header name is
//! read as the standard base64 of IV‖ciphertext. The random IV made every version of a key a
//! different record key, on any partition: compaction never removed anything, and the latest
//! value of a key can only be found by reading the whole topic.
//!
//! The command reads the source topic from the beginning to the end offsets it finds at start,
//! keeps the latest record of each key, and produces each key whose latest record is a put,
//! through the writer's producer and record codec (plaintext, or this project's topic encryption
//! when `KV_API_ENCRYPT_DATA_ON_KAFKA` is set). A key whose latest record is a tombstone is not
//! produced: the destination is a topic nobody has written yet, where an absent key is a deleted
//! one. "Latest" is the higher offset within a partition; across partitions, the later record
//! timestamp, a tie going to the higher partition and counted as `ambiguous`.
//!
//! A record that does not decrypt (bad length, bad padding, a header name not base64, a name
//! not UTF-8) is never guessed at: it is counted and listed with its partition and offset. Unless
//! `--skip-undecryptable` is given, any such record makes the command produce nothing and exit 1,
//! since the record it could not read may be a key's latest. Without a MAC, a wrong key is
//! detected by padding alone (about 255 records in 256): a wrong key shows as most records
//! undecryptable.

use std::collections::HashMap;
use std::fmt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use futures::stream::{FuturesUnordered, StreamExt};
use kv_core::kafka::{client_config, ClientRole};
use kv_core::record::{RecordCodec, CORRELATION_ID_HEADER, RESERVED_HEADERS};
use kv_core::secret::Secret;
use kv_core::settings::{aes_key, Env, SettingsError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::ProducerMetrics;
use crate::producer::{KvProducer, Write};
use crate::settings::Settings;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// The writer's own commands, beside the shared `serve`, `check-config` and `healthcheck`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum WriterCommand {
    /// Read a topic the original .NET service encrypted (AES-256-CBC) from its beginning to its
    /// end, and produce the latest value of each key to the destination topic in this project's
    /// format. Prints a summary; exits 1 if a record does not decrypt (nothing is produced then)
    /// unless --skip-undecryptable. The source key: KV_API_SEED_AES_KEY(_LOCATION), else
    /// KV_API_AES_KEY(_LOCATION).
    MigrateSeedTopic(MigrateArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MigrateArgs {
    /// The topic the original service wrote, encrypted.
    #[arg(long, value_name = "TOPIC")]
    pub from: String,
    /// The topic to produce to; KV_API_KAFKA_KEY_VALUE_TOPIC unless given. Must differ from
    /// --from, and should be a new topic (see docs/operations.md).
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Produce the keys that decrypted even though some records did not (they are listed).
    #[arg(long)]
    pub skip_undecryptable: bool,
    /// Give up when the broker sends nothing for this many seconds before the end offsets
    /// are reached.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub idle_timeout: u64,
}

/// What the migration needs: the writer's settings (Kafka, the destination's encryption, the
/// producer's limits) read without auth, and the source topic's key.
#[derive(Debug)]
pub struct MigrateSettings {
    pub writer: Settings,
    pub seed_key: Secret<[u8; 32]>,
}

impl MigrateSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let writer = Settings::from_env_serving_nothing(env)?;
        let seed_key = match aes_key(env, "KV_API_SEED_AES_KEY", "KV_API_SEED_AES_KEY_LOCATION")? {
            Some(key) => key,
            None => {
                aes_key(env, "KV_API_AES_KEY", "KV_API_AES_KEY_LOCATION")?.ok_or_else(|| {
                    SettingsError::new(
                        "KV_API_SEED_AES_KEY",
                        "migrate-seed-topic needs the key the source topic was sealed with: set \
                     KV_API_SEED_AES_KEY (or KV_API_SEED_AES_KEY_LOCATION, or the original's \
                     KV_API_AES_KEY / KV_API_AES_KEY_LOCATION) to its 64 hex characters",
                    )
                })?
            }
        };
        Ok(Self { writer, seed_key })
    }
}

/// Why a field of a seed record does not decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("not an IV and whole AES blocks (length {0})")]
    Length(usize),
    #[error("bad padding (another key, or not sealed)")]
    Padding,
    #[error("a header name is not base64")]
    HeaderNameNotBase64,
    #[error("a header name is not UTF-8 once decrypted")]
    HeaderNameNotUtf8,
    #[error("the record has no key")]
    MissingKey,
}

const IV_LEN: usize = 16;
const BLOCK: usize = 16;

/// The original service's field encryption: AES-256-CBC, PKCS#7, IV‖ciphertext.
pub struct SeedCipher {
    key: Secret<[u8; 32]>,
}

impl fmt::Debug for SeedCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedCipher").finish_non_exhaustive()
    }
}

impl SeedCipher {
    pub fn new(key: Secret<[u8; 32]>) -> Self {
        Self { key }
    }

    /// Opens one sealed field: the first 16 bytes are the IV, the rest whole blocks.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SeedError> {
        if sealed.len() < IV_LEN + BLOCK || !(sealed.len() - IV_LEN).is_multiple_of(BLOCK) {
            return Err(SeedError::Length(sealed.len()));
        }
        let (iv, ciphertext) = sealed.split_at(IV_LEN);
        let mut buffer = ciphertext.to_vec();
        let plain_len = Aes256CbcDec::new(self.key.expose().into(), iv.into())
            .decrypt_padded_mut::<Pkcs7>(&mut buffer)
            .map_err(|_| SeedError::Padding)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }

    /// Opens a sealed header name: base64 of IV‖ciphertext, decrypting to UTF-8.
    pub fn open_header_name(&self, sealed: &str) -> Result<String, SeedError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed.trim())
            .map_err(|_| SeedError::HeaderNameNotBase64)?;
        String::from_utf8(self.open(&raw)?).map_err(|_| SeedError::HeaderNameNotUtf8)
    }
}

/// One record of the source topic, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRecord {
    pub key: Vec<u8>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl SeedCipher {
    /// Decrypts a whole record: its key, its value (a null value stays a tombstone) and its
    /// headers (a header with a null value keeps an empty one).
    pub fn open_record<'h>(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Result<SeedRecord, SeedError> {
        let key = self.open(key.ok_or(SeedError::MissingKey)?)?;
        let value = value.map(|value| self.open(value)).transpose()?;
        let headers = headers
            .into_iter()
            .map(|(name, value)| {
                let name = self.open_header_name(name)?;
                let value = value.map(|v| self.open(v)).transpose()?.unwrap_or_default();
                Ok((name, value))
            })
            .collect::<Result<_, SeedError>>()?;
        Ok(SeedRecord {
            key,
            value,
            headers,
        })
    }
}

/// Where a record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp in milliseconds, or `i64::MIN` when it has none.
    pub timestamp: i64,
}

/// The latest record of every key seen so far, and what the command counts.
#[derive(Debug, Default)]
pub struct Latest {
    keys: HashMap<Vec<u8>, (Position, SeedRecord)>,
    pub read: u64,
    /// Two records of one key on different partitions with the same timestamp.
    pub ambiguous: u64,
    pub undecryptable: Vec<(Position, SeedError)>,
}

impl Latest {
    /// Takes one record; `record` is what decrypting it gave.
    pub fn add(&mut self, at: Position, record: Result<SeedRecord, SeedError>) {
        self.read += 1;
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                self.undecryptable.push((at, error));
                return;
            }
        };
        match self.keys.get_mut(&record.key) {
            None => {
                self.keys.insert(record.key.clone(), (at, record));
            }
            Some((seen, kept)) => {
                let newer = if seen.partition == at.partition {
                    at.offset > seen.offset
                } else if at.timestamp == seen.timestamp {
                    self.ambiguous += 1;
                    at.partition > seen.partition
                } else {
                    at.timestamp > seen.timestamp
                };
                if newer {
                    *seen = at;
                    *kept = record;
                }
            }
        }
    }

    /// The keys whose latest record is a put, and how many ended deleted.
    pub fn into_puts(self) -> (Vec<(Position, SeedRecord)>, u64) {
        let mut deleted = 0;
        let mut puts: Vec<_> = self
            .keys
            .into_values()
            .filter(|(_, record)| {
                let put = record.value.is_some();
                deleted += u64::from(!put);
                put
            })
            .collect();
        // Produced in the source's order, so the destination reads like a replay of it.
        puts.sort_by_key(|(at, _)| (at.timestamp, at.partition, at.offset));
        (puts, deleted)
    }
}

/// Headers the destination gets: the sealed ones decrypted, less those only the writer and the
/// sweeper set (a correlation id becomes the write's own).
fn carried_headers(headers: &[(String, Vec<u8>)]) -> (Option<String>, Vec<(String, Vec<u8>)>) {
    let correlation = headers
        .iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case(CORRELATION_ID_HEADER))
        .and_then(|(_, value)| String::from_utf8(value.clone()).ok());
    let kept = headers
        .iter()
        .filter(|(name, _)| {
            !RESERVED_HEADERS
                .iter()
                .any(|reserved| name.eq_ignore_ascii_case(reserved))
        })
        .cloned()
        .collect();
    (correlation, kept)
}

/// How many writes wait for their acknowledgement at once.
const IN_FLIGHT: usize = 1000;
const POLL: Duration = Duration::from_millis(500);
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the command; prints the summary and returns the exit code.
pub async fn run(settings: MigrateSettings, args: MigrateArgs) -> ExitCode {
    let to = args
        .to
        .clone()
        .unwrap_or_else(|| settings.writer.core.topic.clone());
    if to == args.from {
        eprintln!(
            "migrate-seed-topic: --to is the source topic {to}; produce to another (new) topic"
        );
        return ExitCode::from(2);
    }
    let cipher = SeedCipher::new(settings.seed_key.clone());
    let kafka = settings.writer.core.kafka.clone();
    let (from, idle) = (
        args.from.clone(),
        Duration::from_secs(args.idle_timeout.max(1)),
    );
    let started = Instant::now();
    let read = tokio::task::spawn_blocking(move || read_topic(&kafka, &from, &cipher, idle)).await;
    let latest = match read {
        Ok(Ok(latest)) => latest,
        Ok(Err(error)) => {
            eprintln!("migrate-seed-topic: reading {}: {error}", args.from);
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("migrate-seed-topic: the reading task failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    for (at, error) in &latest.undecryptable {
        println!(
            "undecryptable: partition {} offset {}: {error}",
            at.partition, at.offset
        );
    }
    let (read, ambiguous, undecryptable) = (
        latest.read,
        latest.ambiguous,
        latest.undecryptable.len() as u64,
    );
    let (puts, deleted) = latest.into_puts();
    let refuse = undecryptable > 0 && !args.skip_undecryptable;
    let migrated = if refuse {
        0
    } else {
        match produce(&settings.writer, &to, puts).await {
            Ok(migrated) => migrated,
            Err(error) => {
                eprintln!("migrate-seed-topic: producing to {to}: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "migrate-seed-topic {} -> {to}: read {read}, migrated {migrated}, deleted {deleted}, \
         undecryptable {undecryptable}, ambiguous {ambiguous} ({:.1} s)",
        args.from,
        started.elapsed().as_secs_f64()
    );
    if refuse {
        eprintln!(
            "migrate-seed-topic: {undecryptable} record(s) did not decrypt (listed above); \
             nothing was produced. Check the key, or give --skip-undecryptable to migrate the rest."
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Reads `topic` from the beginning to the end offsets found now. Blocking.
fn read_topic(
    kafka: &kv_core::settings::KafkaProperties,
    topic: &str,
    cipher: &SeedCipher,
    idle: Duration,
) -> Result<Latest, String> {
    let defaults = [
        ("group.id", "kv-writer-migrate-seed-topic"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
    ];
    let consumer: BaseConsumer = client_config(&defaults, kafka, ClientRole::Consumer)
        .create()
        .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| format!("metadata: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist"));
    }
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| format!("end offset of partition {partition}: {e}"))?;
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut latest = Latest::default();
    if ends.is_empty() {
        return Ok(latest);
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut last_message = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                let partition = message.partition();
                let Some(&end) = ends.get(&partition) else {
                    continue;
                };
                if message.offset() < end {
                    let at = Position {
                        partition,
                        offset: message.offset(),
                        timestamp: message.timestamp().to_millis().unwrap_or(i64::MIN),
                    };
                    let headers = message.headers().map(|headers| {
                        headers.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()
                    });
                    let record = cipher.open_record(
                        message.key(),
                        message.payload(),
                        headers.unwrap_or_default(),
                    );
                    latest.add(at, record);
                }
                if message.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            Some(Err(error)) => return Err(error.to_string()),
            None => {
                // Offsets past the last record (transaction markers, compaction) are never
                // delivered; the consumer's position says they were passed.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements_for_topic(topic) {
                        if let Offset::Offset(position) = element.offset() {
                            if ends
                                .get(&element.partition())
                                .is_some_and(|&end| position >= end)
                            {
                                ends.remove(&element.partition());
                            }
                        }
                    }
                }
                if !ends.is_empty() && last_message.elapsed() > idle {
                    let mut waiting: Vec<_> = ends.keys().copied().collect();
                    waiting.sort_unstable();
                    return Err(format!(
                        "nothing received for {} s before the end of partition(s) {waiting:?} \
                         (--idle-timeout)",
                        idle.as_secs()
                    ));
                }
            }
        }
    }
    Ok(latest)
}

/// Produces every put, at most [`IN_FLIGHT`] unacknowledged at once; how many were produced.
async fn produce(
    settings: &Settings,
    topic: &str,
    puts: Vec<(Position, SeedRecord)>,
) -> Result<u64, String> {
    let mut settings = settings.clone();
    settings.core.topic = topic.to_owned();
    let codec = RecordCodec::for_topic(&settings.core.topic_encryption);
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry).map_err(|e| e.to_string())?;
    let producer = KvProducer::new(&settings, codec, metrics).map_err(|e| e.to_string())?;
    producer
        .topic_reachable(METADATA_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut pending = FuturesUnordered::new();
    let mut produced = 0u64;
    for (at, record) in &puts {
        let (correlation, headers) = carried_headers(&record.headers);
        let correlation = correlation
            .unwrap_or_else(|| format!("migrate-seed-topic-{}-{}", at.partition, at.offset));
        let write = Write {
            key: &record.key,
            value: record.value.as_deref(),
            correlation_id: &correlation,
            trace: None,
            headers: &headers,
            expires_at_ms: None,
            partition: None,
        };
        let queued = producer.enqueue(write).await.map_err(|e| e.to_string())?;
        pending.push(queued.acknowledged());
        while pending.len() >= IN_FLIGHT {
            if let Some(result) = pending.next().await {
                result.map_err(|e| e.to_string())?;
                produced += 1;
            }
        }
    }
    while let Some(result) = pending.next().await {
        result.map_err(|e| e.to_string())?;
        produced += 1;
    }
    let flushed = tokio::task::spawn_blocking(move || producer.flush(METADATA_TIMEOUT)).await;
    match flushed {
        Ok(Ok(())) => Ok(produced),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use cbc::cipher::BlockEncryptMut;

    type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

    const KEY: [u8; 32] = [7; 32];

    fn seal(iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        let mut buffer = plain.to_vec();
        buffer.resize((plain.len() / BLOCK + 1) * BLOCK, 0);
        let sealed = Aes256CbcEnc::new(&KEY.into(), &iv.into())
            .encrypt_padded_mut::<Pkcs7>(&mut buffer, plain.len())
            .expect("room for the padding");
        let mut out = iv.to_vec();
        out.extend_from_slice(sealed);
        out
    }

    fn cipher() -> SeedCipher {
        SeedCipher::new(Secret::new(KEY))
    }

    /// NIST SP 800-38A, F.2.5 (CBC-AES256.Decrypt), its first block, with PKCS#7's full padding
    /// block after it: the decryption is AES-256-CBC as the standard defines it.
    #[test]
    fn a_field_decrypts_as_the_standard_cbc_vector_says() {
        let key: [u8; 32] =
            hex_bytes("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .try_into()
                .expect("32 bytes");
        let iv = hex_bytes("000102030405060708090a0b0c0d0e0f");
        let first = hex_bytes("f58c4c04d6e5f1ba779eabfb5f7bfbd6");
        let plain = hex_bytes("6bc1bee22e409f96e93d7e117393172a");
        // The padding block, encrypted by hand: CBC over [16; 16] chained from `first`.
        let mut padding = [16u8; 16];
        for (byte, previous) in padding.iter_mut().zip(&first) {
            *byte ^= previous;
        }
        let mut sealed = iv.clone();
        sealed.extend(&first);
        let encrypted_padding = {
            use cbc::cipher::{BlockEncrypt, KeyInit};
            let aes = aes::Aes256::new(&key.into());
            let mut block = padding.into();
            aes.encrypt_block(&mut block);
            block.to_vec()
        };
        sealed.extend(encrypted_padding);
        assert_eq!(
            SeedCipher::new(Secret::new(key)).open(&sealed),
            Ok(plain.clone())
        );
    }

    fn hex_bytes(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn a_record_opens_with_its_key_value_and_headers() {
        let name = base64::engine::general_purpose::STANDARD.encode(seal([3; 16], b"source"));
        let value = seal([4; 16], b"billing");
        let record = cipher()
            .open_record(
                Some(&seal([1; 16], b"user-1")),
                Some(&seal([2; 16], b"Ada")),
                [(name.as_str(), Some(value.as_slice()))],
            )
            .expect("opens");
        assert_eq!(
            record,
            SeedRecord {
                key: b"user-1".to_vec(),
                value: Some(b"Ada".to_vec()),
                headers: vec![("source".to_owned(), b"billing".to_vec())],
            }
        );
        let tombstone = cipher()
            .open_record(Some(&seal([1; 16], b"user-1")), None, [])
            .expect("opens");
        assert_eq!(tombstone.value, None);
        assert_eq!(cipher().open(&seal([9; 16], b"")), Ok(Vec::new()));
    }

    #[test]
    fn a_field_that_is_not_sealed_or_sealed_with_another_key_is_refused() {
        assert_eq!(cipher().open(b"plain"), Err(SeedError::Length(5)));
        assert_eq!(cipher().open(&[0; 16]), Err(SeedError::Length(16)));
        assert_eq!(cipher().open(&[0; 33]), Err(SeedError::Length(33)));
        let mut tampered = seal([1; 16], b"value");
        *tampered.last_mut().expect("a byte") ^= 0x55;
        assert_eq!(cipher().open(&tampered), Err(SeedError::Padding));
        assert_eq!(
            cipher().open_header_name("not base64!"),
            Err(SeedError::HeaderNameNotBase64)
        );
        assert_eq!(
            cipher().open_record(None, Some(b"v"), []),
            Err(SeedError::MissingKey)
        );
    }

    fn put(key: &str, value: Option<&str>) -> Result<SeedRecord, SeedError> {
        Ok(SeedRecord {
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
        })
    }

    fn at(partition: i32, offset: i64, timestamp: i64) -> Position {
        Position {
            partition,
            offset,
            timestamp,
        }
    }

    #[test]
    fn the_latest_record_of_a_key_wins_and_a_final_tombstone_deletes_it() {
        let mut latest = Latest::default();
        latest.add(at(0, 0, 100), put("a", Some("1")));
        latest.add(at(1, 0, 200), put("a", Some("2")));
        latest.add(at(0, 1, 150), put("a", Some("older by time")));
        latest.add(at(2, 0, 100), put("b", Some("1")));
        latest.add(at(2, 1, 90), put("b", None));
        latest.add(at(0, 2, 300), put("c", Some("1")));
        latest.add(at(1, 1, 300), put("c", Some("2")));
        latest.add(at(1, 2, 400), Err(SeedError::Padding));
        assert_eq!(latest.read, 8);
        assert_eq!(latest.ambiguous, 1);
        assert_eq!(
            latest.undecryptable,
            vec![(at(1, 2, 400), SeedError::Padding)]
        );
        let (puts, deleted) = latest.into_puts();
        assert_eq!(
            deleted, 1,
            "b's last record in its partition is a tombstone"
        );
        let values: Vec<(&[u8], &[u8])> = puts
            .iter()
            .map(|(_, r)| (r.key.as_slice(), r.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(values, vec![(&b"a"[..], &b"2"[..]), (b"c", b"2")]);
    }

    #[test]
    fn reserved_headers_are_not_carried_and_the_correlation_id_is_kept() {
        let (correlation, kept) = carried_headers(&[
            ("x-correlation-id".to_owned(), b"abc".to_vec()),
            ("X-KV-Expires-At".to_owned(), b"1".to_vec()),
            ("source".to_owned(), b"billing".to_vec()),
        ]);
        assert_eq!(correlation.as_deref(), Some("abc"));
        assert_eq!(kept, vec![("source".to_owned(), b"billing".to_vec())]);
    }
}
