//! Encryption at rest of a disk replica (KV_API_STATE_STORAGE_PASSWORD).
//!
//! PBKDF2-HMAC-SHA256 turns the password and a random per-store salt (kept in the store) into
//! key material; HKDF splits it into an index key, a value key and a check key. Entries are
//! stored under `HMAC(index key, user key)`, so lookups stay one B-tree probe without the key in
//! clear, and their contents (user key and entry) are sealed with AES-256-GCM, the index as
//! associated data so a sealed entry cannot be moved to another key. The check value proves a
//! password right before anything is read, so a wrong one fails at start-up instead of
//! serving garbage.

use std::num::NonZeroU32;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac, pbkdf2};

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256; costs a fraction of a second once per start.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
pub const SALT_LEN: usize = 16;
pub const INDEX_LEN: usize = 32;
const TAG_LEN: usize = 16;

const HKDF_SALT: &[u8] = b"kafka-kv store encryption v1";
const CHECK_MESSAGE: &[u8] = b"kafka-kv store password check v1";

/// A sealed value that does not open: a corrupt file, or a bug; never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an encrypted entry failed authentication")]
pub struct Unsealable;

pub struct StoreCipher {
    index_key: hmac::Key,
    value_key: LessSafeKey,
    check: [u8; 32],
    random: SystemRandom,
}

impl std::fmt::Debug for StoreCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCipher([redacted])")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl StoreCipher {
    pub fn derive(password: &str, salt: &[u8], iterations: NonZeroU32) -> Self {
        let mut material = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password.as_bytes(),
            &mut material,
        );
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&material);
        let expand = |info: &[u8]| {
            let mut out = [0u8; 32];
            // Cannot fail: 32 bytes is far below HKDF-SHA256's output limit.
            if let Ok(okm) = prk.expand(&[info], Len(32)) {
                okm.fill(&mut out).ok();
            }
            out
        };
        let value_key = UnboundKey::new(&aead::AES_256_GCM, &expand(b"value key"))
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key"));
        let check_key = hmac::Key::new(hmac::HMAC_SHA256, &expand(b"check key"));
        let mut check = [0u8; 32];
        check.copy_from_slice(hmac::sign(&check_key, CHECK_MESSAGE).as_ref());
        Self {
            index_key: hmac::Key::new(hmac::HMAC_SHA256, &expand(b"index key")),
            value_key,
            check,
            random: SystemRandom::new(),
        }
    }

    /// A fresh random salt for a new store.
    pub fn new_salt() -> [u8; SALT_LEN] {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .unwrap_or_else(|_| panic!("the system random number generator failed"));
        salt
    }

    /// A value derived from the password alone, stored to recognise the right password.
    pub fn check_value(&self) -> &[u8; 32] {
        &self.check
    }

    /// The table key a plaintext key is stored under.
    pub fn index(&self, key: &[u8]) -> [u8; INDEX_LEN] {
        let mut out = [0u8; INDEX_LEN];
        out.copy_from_slice(hmac::sign(&self.index_key, key).as_ref());
        out
    }

    /// `nonce ‖ ciphertext ‖ tag` of `parts` concatenated, bound to `aad`.
    pub fn seal(&self, aad: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .unwrap_or_else(|_| panic!("the system random number generator failed"));
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(NONCE_LEN + len + TAG_LEN);
        out.extend_from_slice(&nonce);
        for part in parts {
            out.extend_from_slice(part);
        }
        let tag = self
            .value_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM sealing fails only past 64 GiB"));
        out.extend_from_slice(tag.as_ref());
        out
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Unsealable);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buffer = sealed[NONCE_LEN..].to_vec();
        let plain_len = self
            .value_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buffer,
            )
            .map_err(|_| Unsealable)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(password: &str) -> StoreCipher {
        StoreCipher::derive(password, b"0123456789abcdef", NonZeroU32::MIN)
    }

    #[test]
    fn the_same_password_and_salt_give_the_same_check_and_index() {
        let (a, b) = (cipher("pw"), cipher("pw"));
        assert_eq!(a.check_value(), b.check_value());
        assert_eq!(a.index(b"k"), b.index(b"k"));
        assert_ne!(a.check_value(), cipher("other").check_value());
        assert_ne!(
            a.check_value(),
            StoreCipher::derive("pw", b"another salt 16b", NonZeroU32::MIN).check_value()
        );
    }

    #[test]
    fn sealed_parts_open_only_with_the_same_key_and_aad() {
        let a = cipher("pw");
        let sealed = a.seal(b"aad", &[b"secret ", b"value"]);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(a.open(b"aad", &sealed).as_deref(), Ok(&b"secret value"[..]));
        assert_eq!(a.open(b"other aad", &sealed), Err(Unsealable));
        assert_eq!(cipher("other").open(b"aad", &sealed), Err(Unsealable));
        assert_eq!(a.open(b"aad", &sealed[..10]), Err(Unsealable));
    }
}
