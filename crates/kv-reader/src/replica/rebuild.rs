//! When a store cannot continue the log and is rebuilt from scratch: built another way (topic
//! key, schema framing, shard layout), offsets outside the log, or away from the broker for
//! longer than compaction keeps deletes. Each reason is worded for the operator, since a rebuild
//! replays the whole topic and the log line is all that says why.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_core::record::RecordCodec;

use crate::cluster::shard::ShardSpec;
use crate::replica::retention::RETENTION_WAIT;
use crate::replica::schema_registry::SchemaFraming;
use crate::replica::worker::{LoopError, Worker};
use kv_core::record::now_ms;

/// What the topic key's fingerprint in the store is the MAC of. A keyed MAC names the key
/// without revealing it; it is also the record key a user key of these bytes would get, which
/// is no secret either: record keys are on the topic.
const KEY_FINGERPRINT_LABEL: &[u8] = b"kv-store-key-id";

/// Why a store that heard from the broker at `last_contact_ms` cannot be trusted at `now_ms`:
/// compaction removes a tombstone `delete.retention.ms` after it was written, so a replica away
/// for longer may hold a key whose delete it never saw.
fn offline_too_long(
    last_contact_ms: Option<u64>,
    now_ms: u64,
    delete_retention: Option<Duration>,
) -> Option<String> {
    let (last, retention) = (last_contact_ms?, delete_retention?);
    let away = now_ms.saturating_sub(last);
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    (away > retention_ms).then(|| {
        format!(
            "this replica last heard from the broker {} s ago, longer than the topic's \
             delete.retention.ms ({retention_ms} ms): compaction may have removed deletes it \
             never saw",
            away / 1000
        )
    })
}

impl Worker {
    /// The offsets to resume from: the store's, or none once the store was reset because it is
    /// new or must be rebuilt (told to, or for one of the reasons below).
    pub(super) fn resume_offsets(
        &self,
        rebuild: Option<String>,
        watermarks: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeMap<i32, i64>, LoopError> {
        let mut stored = self.store.next_offsets()?;
        let rebuild = match (rebuild, self.store.topic()?) {
            (Some(reason), _) => Some(reason),
            (None, None) => {
                self.store.reset(&self.topic, &self.format)?;
                stored.clear();
                None
            }
            (None, Some(stored_topic)) => {
                let stored_format = self.store.source_format()?;
                (stored_topic == self.topic)
                    .then(|| format_change(stored_format.as_deref(), &self.format))
                    .flatten()
                    .or_else(|| rebuild_reason(&self.topic, &stored_topic, &stored, watermarks))
                    .or_else(|| {
                        let last = self.store.last_broker_contact_ms().ok().flatten();
                        // Only a resuming replica has a contact to compare, and waits for it.
                        last.and_then(|_| {
                            offline_too_long(
                                last,
                                now_ms(),
                                self.delete_retention.wait(RETENTION_WAIT),
                            )
                        })
                    })
            }
        };
        if let Some(reason) = rebuild {
            tracing::warn!(topic = %self.topic, "rebuilding the replica from scratch: {reason}");
            self.store.reset(&self.topic, &self.format)?;
            stored.clear();
            self.progress.count_rebuild();
        }
        Ok(stored)
    }

    /// Writes down when a broker last sent the consumer anything (librdkafka's statistics), so
    /// a restart can tell how long the replica was away. No request of its own: the consumer's
    /// connection is not to be held up by one.
    pub(super) fn note_contact(&self) -> Result<(), LoopError> {
        if let Some(at) = self.progress.broker_answered_ms() {
            self.store.note_broker_contact(at)?;
        }
        Ok(())
    }
}

/// How this reader reads records, as the store remembers it: the topic encryption and a keyed
/// fingerprint of its key (never the key), and which parts carry schema-registry framing.
/// A sharded store also names its layout: another layout holds other partitions.
pub(crate) fn source_format(
    codec: &RecordCodec,
    framing: &SchemaFraming,
    shard: Option<&ShardSpec>,
) -> String {
    let encryption = match codec {
        RecordCodec::Plaintext => "off".to_owned(),
        RecordCodec::Encrypted(cipher) => {
            let fingerprint = cipher.record_key(KEY_FINGERPRINT_LABEL);
            let hex: String = fingerprint[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("aes-256-gcm/{hex}")
        }
    };
    let framing = match (framing.key.is_some(), framing.value.is_some()) {
        (false, false) => "none",
        (true, false) => "key",
        (false, true) => "value",
        (true, true) => "key+value",
    };
    match shard {
        None => format!("encryption={encryption} schema_framing={framing}"),
        Some(shard) => format!(
            "encryption={encryption} schema_framing={framing} shard={}",
            shard.layout()
        ),
    }
}

/// Why a store built under `stored` cannot serve a reader reading records as `current`.
fn format_change(stored: Option<&str>, current: &str) -> Option<String> {
    let Some(stored) = stored else {
        return Some(
            "the store does not say which topic encryption and schema framing it was built \
             under (an older kv-reader wrote it)"
                .to_owned(),
        );
    };
    if stored == current {
        return None;
    }
    let field = |format: &str, name: &str| -> String {
        format
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("unknown")
            .to_owned()
    };
    let (was, now) = (field(stored, "encryption"), field(current, "encryption"));
    let key = |encryption: &str| encryption.split_once('/').map(|(_, f)| f.to_owned());
    if was != now {
        return Some(match (key(&was), key(&now)) {
            (Some(was), Some(now)) => format!(
                "the store was built under another topic key (fingerprint {was}) than \
                 KV_API_AES_KEY now gives (fingerprint {now})"
            ),
            (None, Some(_)) => "the store was built from plaintext records, and this reader \
                                now decrypts them (KV_API_ENCRYPT_DATA_ON_KAFKA=true)"
                .to_owned(),
            (Some(was), None) => format!(
                "the store was built under topic encryption (key fingerprint {was}), and this \
                 reader now reads plaintext (no KV_API_ENCRYPT_DATA_ON_KAFKA)"
            ),
            (None, None) => format!("the store was built with encryption {was}, now {now}"),
        });
    }
    let layout = |format: &str| match field(format, "shard") {
        unknown if unknown == "unknown" => "none (a full replica)".to_owned(),
        layout => layout,
    };
    let (was, now) = (layout(stored), layout(current));
    if was != now {
        return Some(format!(
            "the store was built for shard layout {was} (index/shards x replicas), this reader \
             is {now} (KV_API_SHARD, KV_API_SHARD_REPLICAS): it holds other partitions"
        ));
    }
    Some(format!(
        "the store was built with schema-registry framing stripped from {}, now from {} \
         (the registry's subjects for the topic changed)",
        field(stored, "schema_framing"),
        field(current, "schema_framing")
    ))
}

/// Why stored offsets cannot continue the log, if they cannot.
fn rebuild_reason(
    topic: &str,
    stored_topic: &str,
    stored: &BTreeMap<i32, i64>,
    watermarks: &BTreeMap<i32, (i64, i64)>,
) -> Option<String> {
    if stored_topic != topic {
        return Some(format!("the store held topic {stored_topic}, not {topic}"));
    }
    stored
        .iter()
        .find_map(|(partition, &next)| match watermarks.get(partition) {
            Some(&(low, _)) if next < low => Some(format!(
                "partition {partition} now starts at {low}, past the stored offset {next} \
                 (retention removed records)"
            )),
            Some(&(_, high)) if next > high => Some(format!(
                "partition {partition} ends at {high}, before the stored offset {next} \
                 (the topic was recreated)"
            )),
            None => Some(format!(
                "partition {partition} no longer exists (the topic was recreated)"
            )),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::schema_registry::SchemaIds;
    use std::sync::Arc;

    #[test]
    fn stored_offsets_inside_the_log_resume() {
        let stored = BTreeMap::from([(0, 5), (1, 0)]);
        let watermarks = BTreeMap::from([(0, (0, 9)), (1, (0, 0)), (2, (0, 3))]);
        assert_eq!(rebuild_reason("t", "t", &stored, &watermarks), None);
    }

    #[test]
    fn a_replica_away_for_longer_than_delete_retention_is_rebuilt() {
        let day = Duration::from_secs(86_400);
        let now = 10 * 86_400_000;
        assert!(offline_too_long(Some(now - 86_400_001), now, Some(day)).is_some());
        assert_eq!(
            offline_too_long(Some(now - 86_399_000), now, Some(day)),
            None
        );
        assert_eq!(offline_too_long(None, now, Some(day)), None, "a new store");
        assert_eq!(
            offline_too_long(Some(0), now, None),
            None,
            "no compaction, or nothing reported"
        );
    }

    #[test]
    fn offsets_outside_the_log_or_another_topic_rebuild() {
        let watermarks = BTreeMap::from([(0, (4, 9))]);
        for stored in [BTreeMap::from([(0, 3)]), BTreeMap::from([(0, 10)])] {
            assert!(rebuild_reason("t", "t", &stored, &watermarks).is_some());
        }
        assert!(rebuild_reason("t", "t", &BTreeMap::from([(1, 0)]), &watermarks).is_some());
        assert!(rebuild_reason("t", "u", &BTreeMap::new(), &watermarks).is_some());
    }

    #[test]
    fn the_store_format_names_the_key_by_fingerprint_never_the_key() {
        let key = [0x42u8; 32];
        let encrypted = RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&key)));
        let format = source_format(&encrypted, &SchemaFraming::default(), None);
        let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format.contains(&key_hex[..8]), "{format}");
        assert!(format.starts_with("encryption=aes-256-gcm/"), "{format}");
        assert_eq!(
            format,
            source_format(&encrypted, &SchemaFraming::default(), None)
        );
        let other = RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[7; 32])));
        assert_ne!(
            format,
            source_format(&other, &SchemaFraming::default(), None)
        );
        assert_eq!(
            source_format(
                &RecordCodec::Plaintext,
                &SchemaFraming::of_parts(None, Some(SchemaIds::default())),
                None
            ),
            "encryption=off schema_framing=value"
        );
    }

    #[test]
    fn a_store_built_under_another_key_encryption_or_framing_is_rebuilt_with_the_reason() {
        let plain = source_format(&RecordCodec::Plaintext, &SchemaFraming::default(), None);
        let a = source_format(
            &RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[1; 32]))),
            &SchemaFraming::default(),
            None,
        );
        let b = source_format(
            &RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[2; 32]))),
            &SchemaFraming::default(),
            None,
        );
        assert_eq!(format_change(Some(&a), &a), None);
        let reason = format_change(Some(&a), &b).expect("another key");
        assert!(reason.contains("another topic key"), "{reason}");
        let reason = format_change(Some(&plain), &a).expect("now encrypted");
        assert!(reason.contains("plaintext"), "{reason}");
        let reason = format_change(Some(&a), &plain).expect("now plaintext");
        assert!(reason.contains("now reads plaintext"), "{reason}");
        let framed = source_format(
            &RecordCodec::Plaintext,
            &SchemaFraming::of_parts(Some(SchemaIds::default()), Some(SchemaIds::default())),
            None,
        );
        let reason = format_change(Some(&plain), &framed).expect("framing");
        assert!(reason.contains("schema-registry framing"), "{reason}");
        assert!(format_change(None, &plain).is_some(), "an older store");
        let shard = ShardSpec::parse("1/3", 2).expect("spec");
        let sharded = source_format(
            &RecordCodec::Plaintext,
            &SchemaFraming::default(),
            Some(&shard),
        );
        let reason = format_change(Some(&plain), &sharded).expect("now sharded");
        assert!(reason.contains("full replica"), "{reason}");
        assert!(reason.contains("1/3x2"), "{reason}");
    }
}
