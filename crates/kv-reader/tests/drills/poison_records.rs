//! Drill 3 (docs/reliability.md): 10 000 poison records of every kind a reader can meet,
//! interleaved with 10 000 good ones on an encrypted topic whose values carry schema-registry
//! framing, half of them there before the reader starts and half arriving while it runs. The
//! reader must keep serving, never exit, count every poison under its reason, and hold exactly
//! the state the good records define.

use crate::READER;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;

use kv_core::crypto::TopicCipher;
use kv_testkit::{eventually, metric, Broker, Service};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use kv_testkit::reader::{dump, key_path, ready_report, registry_stub};
use kv_testkit::services::reader_env;
use kv_testkit::topic::expected_state;
use kv_testkit::topic::{self, Position, RawRecord};
use kv_testkit::DEADLINE;

const POISONS: usize = 10_000;
const GOOD: usize = 10_000;
const GOOD_KEYS: usize = 2_000;
const PARTITIONS: i32 = 3;
/// The topic key (64 hex digits) the reader is given.
const AES_KEY: [u8; 32] = [0x5a; 32];
/// Keys over the writer's `KV_API_MAX_KEY_BYTES` (16 KiB; the reader sets no limit of its own)
/// ride on one poison in this many of the kinds that carry a key of their own choosing.
const HUGE_KEY_EVERY: usize = 25;
const HUGE_KEY_BYTES: std::ops::Range<usize> = 16 * 1024 + 1..200 * 1024;

/// Tombstones naming a user key in clear instead of its MAC, as a writer without the topic key
/// would produce. Nothing tells the 32-byte ones from deletes of keys never stored, so they are
/// not counted as skipped; they must delete nothing.
const CLEAR_TOMBSTONES: usize = 500;

/// The `n`-th user key of the drill; one in ten is 32 characters long, as long as a record key
/// on an encrypted topic (a hex id).
fn user_key(n: usize) -> Vec<u8> {
    if n.is_multiple_of(10) {
        format!("{:032x}", (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15)).into_bytes()
    } else {
        format!("victim/{n}").into_bytes()
    }
}

/// Every reason the reader counts a skipped record under, with the poisons made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MissingKey,
    EmptyKey,
    NotEncrypted,
    TruncatedEnvelope,
    WrongKey,
    Undecryptable,
    KeyMismatch,
    BadSchemaHeader,
}

const KINDS: [Kind; 8] = [
    Kind::MissingKey,
    Kind::EmptyKey,
    Kind::NotEncrypted,
    Kind::TruncatedEnvelope,
    Kind::WrongKey,
    Kind::Undecryptable,
    Kind::KeyMismatch,
    Kind::BadSchemaHeader,
];

impl Kind {
    /// The `reason` label of `kv_reader_records_skipped_total`.
    fn reason(self) -> &'static str {
        match self {
            Kind::MissingKey => "missing_key",
            Kind::EmptyKey => "empty_key",
            Kind::NotEncrypted => "not_encrypted",
            Kind::TruncatedEnvelope => "truncated_envelope",
            Kind::WrongKey => "wrong_key",
            Kind::Undecryptable => "undecryptable",
            Kind::KeyMismatch => "key_mismatch",
            Kind::BadSchemaHeader => "bad_schema_header",
        }
    }
}

/// Seals `plaintext` as an envelope of format 1 under `key_material`, deriving the value key as
/// docs/wire-format.md says: lets the drill write envelopes that authenticate but whose inside
/// is malformed, which `TopicCipher` never writes.
fn seal_raw(key_material: &[u8; 32], record_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let prk =
        hkdf::Salt::new(hkdf::HKDF_SHA256, b"kafka-kv topic encryption v1").extract(key_material);
    let okm = prk
        .expand(&[b"value encryption key"], &aead::AES_256_GCM)
        .expect("hkdf");
    let key = LessSafeKey::new(UnboundKey::from(okm));
    let nonce: [u8; 12] = rand::rng().random();
    let mut out = vec![0x01, TopicCipher::new(key_material).key_id()];
    out.extend_from_slice(&nonce);
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(record_key),
        &mut sealed,
    )
    .expect("seal");
    out.extend_from_slice(&sealed);
    out
}

/// What the drill writes with: the reader's key and two others, one with another key id and
/// one whose key id collides with the reader's (only authentication tells it apart).
struct Keys {
    ours: TopicCipher,
    other_id: TopicCipher,
    same_id: TopicCipher,
}

impl Keys {
    fn new(rng: &mut StdRng) -> Keys {
        let ours = TopicCipher::new(&AES_KEY);
        let other = |same: bool, rng: &mut StdRng| loop {
            let cipher = TopicCipher::new(&rng.random());
            if (cipher.key_id() == ours.key_id()) == same {
                return cipher;
            }
        };
        let other_id = other(false, rng);
        let same_id = other(true, rng);
        Keys {
            ours,
            other_id,
            same_id,
        }
    }

    /// A good record: the MAC of the user key and its envelope, or a tombstone.
    fn good(&self, user_key: &[u8], value: Option<&[u8]>) -> (Vec<u8>, Option<Vec<u8>>) {
        let record_key = self.ours.record_key(user_key).to_vec();
        let value = value.map(|v| self.ours.seal(&record_key, user_key, v));
        (record_key, value)
    }
}

fn random_bytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    (0..rng.random_range(len)).map(|_| rng.random()).collect()
}

/// Bytes that start with neither the schema-registry magic byte (0) nor the envelope format (1).
fn noise(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = random_bytes(rng, 1..300);
    bytes[0] = rng.random_range(2..=255);
    bytes
}

fn framed(envelope: &[u8]) -> Vec<u8> {
    [b"\x00\x00\x00\x01\x07".as_slice(), envelope].concat()
}

/// The `n`-th poison of its kind. One in `HUGE_KEY_EVERY` of the kinds that choose their own
/// record key gets a key over 16 KiB.
fn poison(kind: Kind, n: usize, keys: &Keys, rng: &mut StdRng) -> RawRecord {
    let user_key = user_key(rng.random_range(0..GOOD_KEYS));
    let (record_key, envelope) = keys.good(&user_key, Some(b"a value that must not land"));
    let envelope = envelope.expect("a put");
    let huge = n.is_multiple_of(HUGE_KEY_EVERY);
    let huge_key = |rng: &mut StdRng| random_bytes(rng, HUGE_KEY_BYTES);
    // Shifted once per huge key, so the huge keys, too, meet every variant.
    let variant = n + n / HUGE_KEY_EVERY;
    let (key, value): (Option<Vec<u8>>, Option<Vec<u8>>) = match kind {
        Kind::MissingKey => match variant % 3 {
            0 => (None, Some(envelope)),
            1 => (None, Some(noise(rng))),
            _ => (None, None),
        },
        Kind::EmptyKey => match variant % 3 {
            0 => (Some(Vec::new()), Some(envelope)),
            1 => (Some(Vec::new()), Some(noise(rng))),
            _ => (Some(Vec::new()), None),
        },
        Kind::NotEncrypted => {
            let value = match variant % 4 {
                0 => noise(rng),
                1 => format!("{{\"plain\":\"json {n}\"}}").into_bytes(),
                // A future envelope format this reader does not know.
                2 => [&[0x02], &envelope[1..]].concat(),
                // A schema-registry header in front of something that is no envelope.
                _ => framed(b"plain text behind a schema header"),
            };
            let key = if huge { huge_key(rng) } else { record_key };
            (Some(key), Some(value))
        }
        Kind::TruncatedEnvelope => {
            let value = match variant % 4 {
                0 => Vec::new(),
                1 => envelope[..rng.random_range(1..34)].to_vec(),
                // Authenticates, but its inner key length runs past the end.
                2 => {
                    let mut inside = 1_000u32.to_be_bytes().to_vec();
                    inside.extend_from_slice(&user_key);
                    seal_raw(&AES_KEY, &record_key, &inside)
                }
                _ => framed(&envelope[..rng.random_range(1..34)]),
            };
            (Some(record_key), Some(value))
        }
        Kind::WrongKey => {
            let value = match variant % 3 {
                0 => {
                    let key = keys.other_id.record_key(&user_key);
                    keys.other_id.seal(&key, &user_key, b"another key's value")
                }
                1 => {
                    let mut value = envelope;
                    value[1] = keys.other_id.key_id();
                    value
                }
                _ => framed(&keys.other_id.seal(&record_key, &user_key, b"framed")),
            };
            (Some(record_key), Some(value))
        }
        Kind::Undecryptable => {
            let key = if huge {
                huge_key(rng)
            } else {
                record_key.clone()
            };
            let value = match variant % 5 {
                0 => keys
                    .same_id
                    .seal(&key, &user_key, b"same key id, other key"),
                1 => {
                    let mut value = envelope;
                    let at = rng.random_range(14..value.len());
                    value[at] ^= 1 << rng.random_range(0..8);
                    value
                }
                // Moved to another key: the associated data no longer matches.
                2 => {
                    let other = keys.ours.record_key(b"someone else");
                    keys.ours.seal(&other, b"someone else", b"moved")
                }
                3 => envelope[..rng.random_range(34..envelope.len())].to_vec(),
                _ => {
                    let mut value = vec![0x01, keys.ours.key_id()];
                    value.extend(random_bytes(rng, 32..200));
                    value
                }
            };
            (Some(key), Some(value))
        }
        Kind::KeyMismatch => {
            // Authenticates under the record key it is found with, but holds another user key.
            let key = match variant % 3 {
                _ if huge => huge_key(rng),
                0 => keys.ours.record_key(b"someone else").to_vec(),
                // A producer that put the user key in clear instead of its MAC.
                1 => user_key.clone(),
                _ => random_bytes(rng, 1..64),
            };
            let value = keys.ours.seal(&key, &user_key, b"mismatched");
            (Some(key), Some(value))
        }
        Kind::BadSchemaHeader => {
            let mut value = vec![0x00];
            value.extend(random_bytes(rng, 0..4));
            (Some(record_key), Some(value))
        }
    };
    RawRecord {
        key,
        value,
        correlation_id: None,
    }
}

/// One record of the drill's log, good or poison.
enum Entry {
    Good {
        user_key: Vec<u8>,
        value: Option<Vec<u8>>,
        record: RawRecord,
    },
    Poison(Kind, RawRecord),
    ClearTombstone(RawRecord),
}

impl Entry {
    fn record(&self) -> &RawRecord {
        match self {
            Entry::Good { record, .. }
            | Entry::Poison(_, record)
            | Entry::ClearTombstone(record) => record,
        }
    }
}

fn entries(keys: &Keys, rng: &mut StdRng) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(GOOD + POISONS);
    for i in 0..GOOD {
        let user_key = user_key(rng.random_range(0..GOOD_KEYS));
        let value = (!rng.random_bool(0.15)).then(|| format!("good value {i}").into_bytes());
        let (record_key, sealed) = keys.good(&user_key, value.as_deref());
        // Some good values carry a schema-registry header, which the reader strips.
        let sealed = sealed.map(|v| if i.is_multiple_of(5) { framed(&v) } else { v });
        // Some carry a correlation id of binary junk longer than the store keeps.
        let correlation_id = i.is_multiple_of(7).then(|| random_bytes(rng, 256..1024));
        let record = RawRecord {
            key: Some(record_key),
            value: sealed,
            correlation_id,
        };
        entries.push(Entry::Good {
            user_key,
            value,
            record,
        });
    }
    for n in 0..POISONS {
        let kind = KINDS[n % KINDS.len()];
        entries.push(Entry::Poison(
            kind,
            poison(kind, n / KINDS.len(), keys, rng),
        ));
    }
    for n in 0..CLEAR_TOMBSTONES {
        // Half of them name one of the 32-character keys.
        let key = user_key(rng.random_range(0..GOOD_KEYS / 10) * 10 + (n % 2) * 3);
        entries.push(Entry::ClearTombstone(RawRecord {
            key: Some(key),
            value: None,
            correlation_id: None,
        }));
    }
    entries.shuffle(rng);
    entries
}

#[tokio::test]
#[ignore = "a drill: make drills runs it"]
async fn drill_poison_records_are_skipped_counted_by_reason_and_never_stop_the_reader() {
    let broker = Broker::start();
    let topic = broker.create_topic("drill-poison", PARTITIONS).await;
    let seed: u64 = rand::rng().random();
    println!("records from seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = Keys::new(&mut rng);
    // The drill's own envelope writer agrees with the reader's codec.
    let probe_key = keys.ours.record_key(b"probe");
    let mut inside = 5u32.to_be_bytes().to_vec();
    inside.extend_from_slice(b"probev");
    assert_eq!(
        keys.ours
            .open(&probe_key, &seal_raw(&AES_KEY, &probe_key, &inside)),
        Ok((b"probe".to_vec(), b"v".to_vec()))
    );
    let entries = entries(&keys, &mut rng);
    let huge_keys = entries
        .iter()
        .filter(|e| e.record().key.as_ref().is_some_and(|k| k.len() > 16 * 1024))
        .count();

    let started = Instant::now();
    let records: Vec<RawRecord> = entries.iter().map(|e| e.record().clone()).collect();
    let (before, after) = records.split_at(records.len() / 2);
    let mut positions = topic::produce_raw(&broker.bootstrap_servers(), &topic, before).await;
    println!("produced the first half in {:.1?}", started.elapsed());

    let registry = registry_stub(vec![(format!("{topic}-value"), vec![0x107])]);
    let mut env = reader_env(&broker, &topic, "drill-poison");
    env.extend([
        ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true".to_owned()),
        (
            "KV_API_AES_KEY",
            AES_KEY.iter().map(|b| format!("{b:02x}")).collect(),
        ),
        ("KAFKA_SCHEMA_REGISTRY_URL", registry),
    ]);
    let mut reader = Service::start(READER, &env);
    let http = reqwest::Client::new();

    // The second half arrives while the reader runs; then one good record after every poison.
    positions.extend(topic::produce_raw(&broker.bootstrap_servers(), &topic, after).await);
    let (last_key, last_value) = (b"after every poison".as_slice(), b"still served".as_slice());
    let (record_key, sealed) = keys.good(last_key, Some(last_value));
    positions.extend(
        topic::produce_raw(
            &broker.bootstrap_servers(),
            &topic,
            &[RawRecord {
                key: Some(record_key),
                value: sealed,
                correlation_id: None,
            }],
        )
        .await,
    );
    println!("produced everything in {:.1?}", started.elapsed());
    let total: i64 = topic::end_offsets(&positions).values().sum();

    // Liveness is checked at every poll while the reader works through the log.
    let not_live = Cell::new(0u32);
    eventually(
        "the good record after every poison",
        DEADLINE * 4,
        || async {
            let live = http.get(reader.url("/healthz/live")).send().await.ok()?;
            if live.status() != 200 {
                not_live.set(not_live.get() + 1);
            }
            let response = http
                .get(reader.url(&key_path(last_key)))
                .send()
                .await
                .ok()?;
            (response.status() == 200)
                .then(|| response.bytes())?
                .await
                .ok()
                .filter(|body| body.as_ref() == last_value)
        },
    )
    .await;
    let report = eventually("every record applied or skipped", DEADLINE, || async {
        let (status, report) = ready_report(&http, &reader).await;
        let applied: i64 = report["partitions"]
            .as_object()?
            .values()
            .filter_map(|p| p["next_offset"].as_i64())
            .sum();
        (status == 200 && applied == total).then_some(report)
    })
    .await;
    println!("through the log in {:.1?}", started.elapsed());

    let metrics = reader.metrics(&http).await;
    let skipped: BTreeMap<&str, u64> = KINDS
        .iter()
        .map(|kind| {
            let count = metric(
                &metrics,
                "kv_reader_records_skipped_total",
                &[("reason", kind.reason())],
            )
            .unwrap_or(-1.0);
            (kind.reason(), count as u64)
        })
        .collect();
    let skipped_total: u64 = skipped.values().sum();
    let mut planted: BTreeMap<&str, u64> = BTreeMap::new();
    for entry in &entries {
        if let Entry::Poison(kind, _) = entry {
            *planted.entry(kind.reason()).or_default() += 1;
        }
    }

    let good_in_log_order =
        topic::log_order(positions.iter().copied().zip(entries.iter()).filter_map(
            |(position, entry): (Position, &Entry)| match entry {
                Entry::Good {
                    user_key, value, ..
                } => Some((position, (user_key.clone(), value.clone()))),
                Entry::Poison(..) | Entry::ClearTombstone(_) => None,
            },
        ));
    let mut expected = expected_state(&good_in_log_order);
    expected.insert(last_key.to_vec(), last_value.to_vec());
    let state = dump(&http, &reader).await;
    let state_diffs = topic::diffs(&state, &expected);
    // The clear tombstones have teeth: they name keys that hold values.
    let aimed_at_live_keys = entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::ClearTombstone(record) => record.key.as_ref(),
            _ => None,
        })
        .filter(|key| expected.contains_key(*key))
        .count();

    let running = reader.is_running();
    let alive = metric(&metrics, "kv_reader_consumer_alive", &[]);
    let crashes = u32::from(!running) + not_live.get() + u32::from(alive != Some(1.0));
    let by_reason: Vec<String> = skipped
        .iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    println!(
        "drill poison records: {POISONS} poisons among {GOOD} good records ({huge_keys} with \
         keys over 16 KiB) and {CLEAR_TOMBSTONES} tombstones naming keys in clear \
         ({aimed_at_live_keys} of them live keys), crashes = {crashes}, skipped = \
         {skipped_total} ({}), state diffs = {state_diffs}",
        by_reason.join(", ")
    );
    assert_eq!(crashes, 0, "the reader exited or its consumer died");
    assert_eq!(skipped_total, POISONS as u64, "{report}");
    assert_eq!(
        skipped, planted,
        "every poison counted under its own reason"
    );
    assert_eq!(report["skipped_records"]["total"], POISONS, "{report}");
    assert_eq!(state_diffs, 0, "a poison changed the state");
    assert!(
        aimed_at_live_keys > 0,
        "the clear tombstones must aim at live keys"
    );
    assert!(reader
        .output()
        .contains("skipping a record that cannot be applied"));
}
