//! Whether records on the topic are encrypted, and the key.

use super::env::{read_first_line, Env, SettingsError};
use crate::secret::Secret;

/// Whether records on the topic are encrypted, and with which 256-bit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEncryption {
    Off,
    On { key: Secret<[u8; 32]> },
}

impl TopicEncryption {
    pub(super) fn from_env(env: &Env, notices: &mut Vec<String>) -> Result<Self, SettingsError> {
        if !env.bool("KV_API_ENCRYPT_DATA_ON_KAFKA", false)? {
            if env.string("KV_API_AES_KEY").is_some()
                || env.string("KV_API_AES_KEY_LOCATION").is_some()
            {
                notices.push(
                    "an AES key is configured but KV_API_ENCRYPT_DATA_ON_KAFKA is not true: \
                     records on the topic are plaintext"
                        .to_owned(),
                );
            }
            return Ok(Self::Off);
        }
        let key = aes_key(env, "KV_API_AES_KEY", "KV_API_AES_KEY_LOCATION")?.ok_or_else(|| {
            SettingsError::new(
                "KV_API_AES_KEY",
                "KV_API_ENCRYPT_DATA_ON_KAFKA is true, so KV_API_AES_KEY or \
                 KV_API_AES_KEY_LOCATION must give a 256-bit key as 64 hex characters",
            )
        })?;
        Ok(Self::On { key })
    }
}

/// A 256-bit key given as 64 hex characters in `var`, or on the first line of the file
/// `location_var` names, as the original service took its AES key: the variable wins over the
/// file when both are set. `None` when neither is set.
pub fn aes_key(
    env: &Env,
    var: &str,
    location_var: &str,
) -> Result<Option<Secret<[u8; 32]>>, SettingsError> {
    let (var, hex) = match env.string(var) {
        Some(hex) => (var, Secret::new(hex)),
        None => match env.string(location_var) {
            Some(path) => (location_var, read_first_line(location_var, &path)?),
            None => return Ok(None),
        },
    };
    let key = decode_hex_key(hex.expose().trim()).ok_or_else(|| {
        SettingsError::new(
            var,
            "expected 64 hex characters (0-9, a-f, A-F), a 256-bit key",
        )
    })?;
    Ok(Some(Secret::new(key)))
}

fn decode_hex_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    // The hex crate takes exactly two hex digits per byte: no sign, no spaces, no prefix.
    hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::decode_hex_key;

    #[test]
    fn a_key_is_exactly_sixty_four_hex_digits() {
        let key = decode_hex_key(&"0f".repeat(32)).expect("a valid key");
        assert_eq!(key, [0x0f; 32]);
        assert_eq!(decode_hex_key(&"0F".repeat(32)), Some([0x0f; 32]));
        for bad in [
            "+f".repeat(32),
            "-f".repeat(32),
            " f".repeat(32),
            "0f".repeat(31),
            "0f".repeat(33),
        ] {
            assert_eq!(decode_hex_key(&bad), None, "{bad:?}");
        }
    }
}
