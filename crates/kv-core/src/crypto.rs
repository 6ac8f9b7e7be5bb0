//! Encryption of records on the topic (KV_API_ENCRYPT_DATA_ON_KAFKA=true).
//!
//! From the configured 256-bit key, HKDF-SHA256 derives three things: an AES-256-GCM key for
//! values, an HMAC-SHA256 key for record keys, and a one-byte key id. The record key on Kafka is
//! the HMAC of the user key: deterministic, so every version of a key lands in the same
//! partition and compaction and tombstones work (the .NET service encrypted record keys with a
//! random IV, which broke both). The record value is an envelope:
//!
//! ```text
//! [format = 0x01][key id][12-byte random nonce][AES-256-GCM(key_len u32 BE ‖ user key ‖ value) ‖ 16-byte tag]
//! ```
//!
//! with the record key as associated data, so an envelope cannot be moved to another key. A put
//! that expires carries its expiry in a header (`X-KV-Expires-At`) and in the associated data
//! too, so nobody without the key can extend, shorten, add or strip a TTL.
//! docs/wire-format.md specifies it for other clients, with test vectors.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// The envelope format this code writes and reads.
pub const ENVELOPE_FORMAT: u8 = 0x01;
const HEADER_LEN: usize = 2 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Length of a record key on an encrypted topic (HMAC-SHA256).
pub const RECORD_KEY_LEN: usize = 32;

const HKDF_SALT: &[u8] = b"kafka-kv topic encryption v1";
const INFO_VALUE_KEY: &[u8] = b"value encryption key";
const INFO_RECORD_KEY: &[u8] = b"record key mac key";
const INFO_KEY_ID: &[u8] = b"key id";
/// Separates the expiry from the record key in the associated data of an expiring envelope.
const AAD_EXPIRY_LABEL: &[u8] = b"X-KV-Expires-At";

/// Why an envelope could not be opened; each is a reason readers count skipped records by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the value is not an encrypted envelope (unknown format byte)")]
    NotEncrypted,
    #[error("the envelope is truncated")]
    Truncated,
    #[error("the envelope was written with another key (key id differs)")]
    WrongKey,
    #[error("the envelope failed authentication (tampered, or another key)")]
    Undecryptable,
    #[error("the record key does not match the key inside the envelope")]
    KeyMismatch,
}

/// The keys derived from one configured topic key.
pub struct TopicCipher {
    value_key: LessSafeKey,
    record_key_mac: hmac::Key,
    key_id: u8,
    random: SystemRandom,
}

impl std::fmt::Debug for TopicCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCipher")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TopicCipher {
    pub fn new(key_material: &[u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(key_material);
        let expand = |info: &[u8], len: usize| {
            let mut out = vec![0u8; len];
            // Cannot fail: every requested length is far below HKDF-SHA256's 8160-byte limit.
            if let Ok(okm) = prk.expand(&[info], Len(len)) {
                okm.fill(&mut out).ok();
            }
            out
        };
        let value_key = UnboundKey::new(&aead::AES_256_GCM, &expand(INFO_VALUE_KEY, 32))
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key"));
        Self {
            value_key,
            record_key_mac: hmac::Key::new(hmac::HMAC_SHA256, &expand(INFO_RECORD_KEY, 32)),
            key_id: expand(INFO_KEY_ID, 1)[0],
            random: SystemRandom::new(),
        }
    }

    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The record key for a user key: HMAC-SHA256, the same every time.
    pub fn record_key(&self, user_key: &[u8]) -> [u8; RECORD_KEY_LEN] {
        let tag = hmac::sign(&self.record_key_mac, user_key);
        let mut out = [0u8; RECORD_KEY_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Seals `(user_key, value)` under a fresh random nonce.
    pub fn seal(&self, record_key: &[u8], user_key: &[u8], value: &[u8]) -> Vec<u8> {
        self.seal_expiring(record_key, user_key, value, None)
    }

    /// As [`TopicCipher::seal`], the expiry (milliseconds since the Unix epoch) authenticated
    /// with it: the envelope opens only beside the same expiry.
    pub fn seal_expiring(
        &self,
        record_key: &[u8],
        user_key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source failing is not recoverable; refusing to write is right.
        self.random
            .fill(&mut nonce)
            .unwrap_or_else(|_| panic!("the system random number generator failed"));
        self.seal_with_nonce(nonce, record_key, user_key, value, expires_at_ms)
    }

    /// Sealing with a given nonce, for test vectors; never reuse a nonce with one key.
    pub fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        record_key: &[u8],
        user_key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Vec<u8> {
        let key_len = u32::try_from(user_key.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(HEADER_LEN + 4 + user_key.len() + value.len() + TAG_LEN);
        out.push(ENVELOPE_FORMAT);
        out.push(self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(user_key);
        out.extend_from_slice(value);
        let tag = self
            .value_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(record_key, expires_at_ms)),
                &mut out[HEADER_LEN..],
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM sealing fails only past 64 GiB"));
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens an envelope found under `record_key`: the user key and the value.
    pub fn open(
        &self,
        record_key: &[u8],
        envelope: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
        self.open_expiring(record_key, envelope, None)
    }

    /// As [`TopicCipher::open`] for a record carrying `expires_at_ms`: an envelope sealed with
    /// another expiry, or with none, fails authentication.
    pub fn open_expiring(
        &self,
        record_key: &[u8],
        envelope: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
        let Some(&format) = envelope.first() else {
            return Err(EnvelopeError::Truncated);
        };
        if format != ENVELOPE_FORMAT {
            return Err(EnvelopeError::NotEncrypted);
        }
        if envelope.len() < HEADER_LEN + 4 + TAG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        if envelope[1] != self.key_id {
            return Err(EnvelopeError::WrongKey);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&envelope[2..HEADER_LEN]);
        let mut sealed = envelope[HEADER_LEN..].to_vec();
        let plain = self
            .value_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(record_key, expires_at_ms)),
                &mut sealed,
            )
            .map_err(|_| EnvelopeError::Undecryptable)?;
        let (len, rest) = plain.split_at(4);
        let key_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < key_len {
            return Err(EnvelopeError::Truncated);
        }
        let (user_key, value) = rest.split_at(key_len);
        // The associated data already binds the envelope to the record key; this also proves
        // the record key was derived from the key inside, so lookups by user key find it.
        if self.record_key(user_key).as_slice() != record_key {
            return Err(EnvelopeError::KeyMismatch);
        }
        Ok((user_key.to_vec(), value.to_vec()))
    }
}

/// The GCM associated data: the record key, then for an expiring put the label and the expiry
/// as 8 bytes big-endian. An envelope without an expiry keeps the record key alone, as before
/// TTLs existed.
fn associated_data(record_key: &[u8], expires_at_ms: Option<u64>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(record_key.len() + AAD_EXPIRY_LABEL.len() + 8);
    aad.extend_from_slice(record_key);
    if let Some(expires_at) = expires_at_ms {
        aad.extend_from_slice(AAD_EXPIRY_LABEL);
        aad.extend_from_slice(&expires_at.to_be_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];

    #[test]
    fn the_same_user_key_always_gives_the_same_record_key() {
        let cipher = TopicCipher::new(&KEY);
        assert_eq!(
            cipher.record_key(b"user-1"),
            TopicCipher::new(&KEY).record_key(b"user-1")
        );
        assert_ne!(cipher.record_key(b"user-1"), cipher.record_key(b"user-2"));
        assert_ne!(
            cipher.record_key(b"user-1"),
            TopicCipher::new(&[0x43; 32]).record_key(b"user-1")
        );
    }

    #[test]
    fn an_envelope_opens_to_the_key_and_value_and_hides_both() {
        let cipher = TopicCipher::new(&KEY);
        let record_key = cipher.record_key(b"secret-key");
        let envelope = cipher.seal(&record_key, b"secret-key", b"secret-value");
        assert!(!envelope.windows(10).any(|w| w == b"secret-key"));
        assert!(!envelope.windows(12).any(|w| w == b"secret-value"));
        assert_eq!(
            cipher.open(&record_key, &envelope),
            Ok((b"secret-key".to_vec(), b"secret-value".to_vec()))
        );
    }

    #[test]
    fn two_seals_of_the_same_value_differ() {
        let cipher = TopicCipher::new(&KEY);
        let record_key = cipher.record_key(b"k");
        assert_ne!(
            cipher.seal(&record_key, b"k", b"v"),
            cipher.seal(&record_key, b"k", b"v")
        );
    }

    #[test]
    fn an_empty_value_encrypts_and_stays_empty() {
        let cipher = TopicCipher::new(&KEY);
        let record_key = cipher.record_key(b"k");
        let envelope = cipher.seal(&record_key, b"k", b"");
        assert_eq!(
            cipher.open(&record_key, &envelope),
            Ok((b"k".to_vec(), Vec::new()))
        );
    }

    #[test]
    fn another_key_is_detected_by_key_id_or_authentication() {
        let writer = TopicCipher::new(&KEY);
        let reader = TopicCipher::new(&[7; 32]);
        let record_key = writer.record_key(b"k");
        let envelope = writer.seal(&record_key, b"k", b"v");
        let error = reader.open(&record_key, &envelope).expect_err("must fail");
        assert!(matches!(
            error,
            EnvelopeError::WrongKey | EnvelopeError::Undecryptable
        ));
    }

    #[test]
    fn tampering_truncation_and_moving_are_refused() {
        let cipher = TopicCipher::new(&KEY);
        let record_key = cipher.record_key(b"k");
        let envelope = cipher.seal(&record_key, b"k", b"value");
        let mut tampered = envelope.clone();
        *tampered.last_mut().expect("tag") ^= 1;
        assert_eq!(
            cipher.open(&record_key, &tampered),
            Err(EnvelopeError::Undecryptable)
        );
        assert_eq!(
            cipher.open(&record_key, &envelope[..10]),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(cipher.open(&record_key, &[]), Err(EnvelopeError::Truncated));
        let other_record_key = cipher.record_key(b"other");
        assert_eq!(
            cipher.open(&other_record_key, &envelope),
            Err(EnvelopeError::Undecryptable)
        );
        assert_eq!(
            cipher.open(&record_key, b"plain text"),
            Err(EnvelopeError::NotEncrypted)
        );
    }

    #[test]
    fn an_expiry_opens_only_beside_the_expiry_it_was_sealed_with() {
        let cipher = TopicCipher::new(&KEY);
        let record_key = cipher.record_key(b"k");
        let expiring = cipher.seal_expiring(&record_key, b"k", b"v", Some(1_700_000_000_000));
        assert_eq!(
            cipher.open_expiring(&record_key, &expiring, Some(1_700_000_000_000)),
            Ok((b"k".to_vec(), b"v".to_vec()))
        );
        for other in [None, Some(1_700_000_000_001), Some(u64::MAX)] {
            assert_eq!(
                cipher.open_expiring(&record_key, &expiring, other),
                Err(EnvelopeError::Undecryptable),
                "extended, shortened or stripped: {other:?}"
            );
        }
        let lasting = cipher.seal(&record_key, b"k", b"v");
        assert_eq!(
            cipher.open_expiring(&record_key, &lasting, Some(1)),
            Err(EnvelopeError::Undecryptable),
            "an expiry added to a lasting value"
        );
    }
}

/// The vectors published in docs/wire-format.md, checked against an independent implementation
/// (Python's hmac/hashlib and the `cryptography` package) when they were written.
#[cfg(test)]
mod vectors {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_documented_test_vectors_hold() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce: [u8; 12] = std::array::from_fn(|i| i as u8);
        let cipher = TopicCipher::new(&key);
        assert_eq!(cipher.key_id(), 0xbe);
        let cases: [(&[u8], &[u8], &str, &str); 2] = [
            (
                b"user-1",
                b"Ada",
                "dbdce21b2d7a6fc2f005e9bd30c576ff9b7afa8cb1cb0282cf0b312ebe40167c",
                "01be000102030405060708090a0b59462d15fa457b0400bc2860314d9026626083a3f1d9e16a47dc6e3323",
            ),
            (
                b"empty",
                b"",
                "599346cf2627d67c118d413229020316a39dfabd8013e5355dc192bb319d7350",
                "01be000102030405060708090a0b59462d16ea5b6e0254f746a3c99f5cdee634cb98f8098a5035",
            ),
        ];
        for (user_key, value, record_key, envelope) in cases {
            let rk = cipher.record_key(user_key);
            assert_eq!(hex(&rk), record_key);
            let sealed = cipher.seal_with_nonce(nonce, &rk, user_key, value, None);
            assert_eq!(hex(&sealed), envelope);
            assert_eq!(
                cipher.open(&rk, &sealed),
                Ok((user_key.to_vec(), value.to_vec()))
            );
        }
    }

    #[test]
    fn the_documented_expiring_test_vector_holds() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce: [u8; 12] = std::array::from_fn(|i| i as u8);
        let cipher = TopicCipher::new(&key);
        let rk = cipher.record_key(b"user-1");
        let sealed = cipher.seal_with_nonce(nonce, &rk, b"user-1", b"Ada", Some(1_767_225_600_000));
        assert_eq!(hex(&sealed), EXPIRING_VECTOR);
        assert_eq!(
            cipher.open_expiring(&rk, &sealed, Some(1_767_225_600_000)),
            Ok((b"user-1".to_vec(), b"Ada".to_vec()))
        );
    }

    /// `user-1` = `Ada` expiring at 1767225600000 (2026-01-01T00:00:00Z), as docs/wire-format.md
    /// publishes it.
    const EXPIRING_VECTOR: &str =
        "01be000102030405060708090a0b59462d15fa457b0400bc28603125c04f6991d8fe5fd01b01aba777af65";
}
