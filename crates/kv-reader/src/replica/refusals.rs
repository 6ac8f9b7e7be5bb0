//! Records refused because the reader and the topic disagree on encryption. They are not stepped
//! over like bad records: their offsets are held until a put after them shows they were foreign
//! ones, and a long enough run of them makes the replica report itself misconfigured.

use std::collections::BTreeMap;

use crate::progress::Misconfiguration;

/// The skip reason of a record refused for looking encrypted (`decode::Skip::EncryptedEnvelope`).
pub const ENCRYPTED_ENVELOPE_REASON: &str = "encrypted_envelope";

/// Records refused in a row for a configuration reason, with no put applied between them, that
/// make a replica that did apply puts since it started report itself misconfigured. A few
/// foreign records among good ones never come near it; a writer switched to another key does.
pub const MISCONFIGURED_RUN: u64 = 100;

/// Records refused for a configuration reason since the last put each partition applied.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// Per partition, the offset of the first record refused since its last applied put: the
    /// offset stored for the partition stays there.
    held: BTreeMap<i32, i64>,
    /// Whether the store holds puts: applied since start-up, or found in it at start-up.
    applied_any: bool,
    /// Refused in a row, over all partitions, since the last put applied anywhere.
    run: u64,
    reason: Option<&'static str>,
}

impl Refusals {
    pub(super) fn new(store_holds_entries: bool) -> Self {
        Self {
            applied_any: store_holds_entries,
            ..Self::default()
        }
    }

    pub(super) fn applied_put(&mut self, partition: i32) {
        self.held.remove(&partition);
        self.applied_any = true;
        self.run = 0;
        self.reason = None;
    }

    pub(super) fn refused(&mut self, partition: i32, offset: i64, reason: &'static str) {
        self.held.entry(partition).or_insert(offset);
        self.run += 1;
        self.reason = Some(reason);
    }

    /// The next offsets that may be stored: none past a held record.
    pub(super) fn durable(&self, next_offsets: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        next_offsets
            .iter()
            .map(|(&partition, &next)| {
                let held = self.held.get(&partition).copied();
                (partition, held.map_or(next, |held| held.min(next)))
            })
            .collect()
    }

    /// Misconfigured: records were refused and no put applied since, and either the store holds
    /// no put at all (none found at start-up, none applied since) or the refusals reach
    /// [`MISCONFIGURED_RUN`].
    pub(super) fn misconfiguration(&self) -> Option<Misconfiguration> {
        let reason = self.reason?;
        if self.run == 0 || (self.applied_any && self.run < MISCONFIGURED_RUN) {
            return None;
        }
        let what = match reason {
            "not_encrypted" => {
                "the topic's records are not encrypted, but this reader has \
                 KV_API_ENCRYPT_DATA_ON_KAFKA=true"
            }
            ENCRYPTED_ENVELOPE_REASON => {
                "the topic's records are encrypted, but this reader has no \
                 KV_API_ENCRYPT_DATA_ON_KAFKA (and KV_API_AES_KEY)"
            }
            _ => "the topic's records are encrypted under another key than this reader's KV_API_AES_KEY",
        };
        Some(Misconfiguration {
            reason,
            refused_records: self.run,
            message: format!(
                "{what} ({} records refused as {reason} since the last one applied); their \
                 offsets are not stored, so a restart with the topic's settings applies them",
                self.run
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_refused_records_among_puts_neither_hold_offsets_nor_flag_the_replica() {
        let mut refusals = Refusals::default();
        refusals.applied_put(0);
        refusals.refused(0, 1, "wrong_key");
        refusals.refused(1, 7, "wrong_key");
        refusals.applied_put(0);
        let next = BTreeMap::from([(0, 3), (1, 9)]);
        assert_eq!(
            refusals.durable(&next),
            BTreeMap::from([(0, 3), (1, 7)]),
            "partition 1 holds until a put lands after its refused record"
        );
        assert_eq!(refusals.misconfiguration(), None);
        refusals.applied_put(1);
        assert_eq!(refusals.durable(&next), next);
    }

    #[test]
    fn refusing_everything_since_start_up_is_a_misconfiguration_and_holds_the_offsets() {
        let mut refusals = Refusals::default();
        for offset in 4..7 {
            refusals.refused(0, offset, "wrong_key");
        }
        let misconfiguration = refusals.misconfiguration().expect("misconfigured");
        assert_eq!(misconfiguration.reason, "wrong_key");
        assert_eq!(misconfiguration.refused_records, 3);
        assert!(misconfiguration.message.contains("KV_API_AES_KEY"));
        assert_eq!(
            refusals.durable(&BTreeMap::from([(0, 7)])),
            BTreeMap::from([(0, 4)])
        );
    }

    #[test]
    fn a_refused_record_held_over_a_restart_of_a_store_with_entries_is_a_foreign_one() {
        let mut refusals = Refusals::new(true);
        refusals.refused(2, 40, "wrong_key");
        assert_eq!(refusals.misconfiguration(), None);
        assert_eq!(
            refusals.durable(&BTreeMap::from([(2, 41)])),
            BTreeMap::from([(2, 40)]),
            "still held: a restart reads it again"
        );
        let mut empty = Refusals::new(false);
        empty.refused(2, 40, "wrong_key");
        assert!(empty.misconfiguration().is_some());
    }

    #[test]
    fn a_long_run_of_refusals_after_good_puts_is_a_misconfiguration() {
        let mut refusals = Refusals::default();
        refusals.applied_put(0);
        for offset in 1..MISCONFIGURED_RUN as i64 {
            refusals.refused(0, offset, "not_encrypted");
        }
        assert_eq!(refusals.misconfiguration(), None);
        refusals.refused(0, MISCONFIGURED_RUN as i64, "not_encrypted");
        let misconfiguration = refusals.misconfiguration().expect("misconfigured");
        assert!(misconfiguration
            .message
            .contains("KV_API_ENCRYPT_DATA_ON_KAFKA=true"));
        refusals.applied_put(0);
        assert_eq!(refusals.misconfiguration(), None, "a put clears it");
    }
}
