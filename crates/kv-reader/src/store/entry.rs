//! The byte layout of a stored entry, written and read only here: the write transaction, the
//! reads, the sweep and the bootstrap export all meet an entry, and must agree on its bytes.

use kv_core::trace_context::TraceParent;

use crate::store::at_rest::StoreCipher;
use crate::store::StoreError;

const ENTRY_FORMAT: u8 = 1;
/// The format of an entry that expires: the expiry after the offset.
const ENTRY_FORMAT_EXPIRING: u8 = 2;
/// Set on either format when the write's `traceparent` follows the offset (and expiry): a flag
/// rather than two more formats, so that entries without one keep the bytes they always had.
const TRACED: u8 = 0x10;
const ENTRY_HEADER_LEN: usize = 1 + 4 + 8 + 1;
/// The binary `traceparent` ([`TraceParent::to_bytes`]).
const TRACE_LEN: usize = 25;

/// A value as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub partition: i32,
    pub offset: i64,
    pub correlation_id: Option<String>,
    /// The span of the write that stored the value, from the record's `traceparent` header.
    pub traceparent: Option<TraceParent>,
    pub value: Vec<u8>,
    /// When the value expires, in milliseconds since the Unix epoch; reads never see it after.
    pub expires_at_ms: Option<u64>,
}

impl StoredEntry {
    /// Whether the entry is there for a read at `now_ms`: it has no expiry, or a later one.
    pub fn is_live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }
}

/// Whether an entry expiring at `expires_at_ms` (if ever) is there for a read at `now_ms`.
fn live_at(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|at| at > now_ms)
}

/// Where a stored value came from besides its partition and offset: what the record's headers
/// said of the write.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WriteOrigin<'a> {
    pub correlation_id: Option<&'a [u8]>,
    pub traceparent: Option<TraceParent>,
}

/// `[format][partition BE][offset BE][correlation id length][correlation id][value]`, or for an
/// entry that expires `[format 2][partition BE][offset BE][expires at BE][correlation id
/// length][correlation id][value]`: entries without an expiry keep the first format, so stores
/// written before TTLs existed read as they were. A write's trace sets [`TRACED`] in the format
/// byte and puts its 25 bytes right before the correlation id's length; entries without one
/// are the bytes they were before traces were kept.
pub(super) fn encode_entry(
    out: &mut Vec<u8>,
    partition: i32,
    offset: i64,
    origin: WriteOrigin<'_>,
    value: &[u8],
    expires_at_ms: Option<u64>,
) {
    let WriteOrigin {
        correlation_id,
        traceparent,
    } = origin;
    // Ids longer than a byte's worth are cut; they are for tracing, not identity.
    let correlation_id = correlation_id.unwrap_or_default();
    let correlation_id = &correlation_id[..correlation_id.len().min(u8::MAX as usize)];
    out.clear();
    out.reserve(ENTRY_HEADER_LEN + 8 + TRACE_LEN + correlation_id.len() + value.len());
    let format = if expires_at_ms.is_some() {
        ENTRY_FORMAT_EXPIRING
    } else {
        ENTRY_FORMAT
    };
    out.push(if traceparent.is_some() {
        format | TRACED
    } else {
        format
    });
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    if let Some(expires_at) = expires_at_ms {
        out.extend_from_slice(&expires_at.to_be_bytes());
    }
    if let Some(traceparent) = traceparent {
        out.extend_from_slice(&traceparent.to_bytes());
    }
    out.push(correlation_id.len() as u8);
    out.extend_from_slice(correlation_id);
    out.extend_from_slice(value);
}

/// An entry's expiry, read from its first bytes without decoding the rest.
pub(super) fn entry_expiry(raw: &[u8]) -> Result<Option<u64>, StoreError> {
    match raw.first().map(|format| format & !TRACED) {
        Some(ENTRY_FORMAT) => Ok(None),
        Some(ENTRY_FORMAT_EXPIRING) => raw
            .get(13..21)
            .and_then(|bytes| bytes.try_into().ok())
            .map(|bytes| Some(u64::from_be_bytes(bytes)))
            .ok_or(StoreError::CorruptEntry),
        _ => Err(StoreError::CorruptEntry),
    }
}

/// Whether a stored entry is live at `now_ms`; a corrupt one is listed, and its read reports it.
pub(super) fn entry_is_live(raw: &[u8], now_ms: u64) -> bool {
    entry_expiry(raw).map_or(true, |at| live_at(at, now_ms))
}

/// A stored entry as it lies in the store's page: the layout's one reader.
pub(super) struct EntryView<'a> {
    partition: i32,
    offset: i64,
    correlation_id: &'a [u8],
    traceparent: Option<TraceParent>,
    pub(super) value: &'a [u8],
    expires_at_ms: Option<u64>,
}

impl<'a> EntryView<'a> {
    pub(super) fn of(raw: &'a [u8]) -> Result<EntryView<'a>, StoreError> {
        let expires_at_ms = entry_expiry(raw)?;
        let expiry_len = if expires_at_ms.is_some() { 8 } else { 0 };
        let traced = raw[0] & TRACED != 0;
        let trace_len = if traced { TRACE_LEN } else { 0 };
        let header_len = ENTRY_HEADER_LEN + expiry_len + trace_len;
        if raw.len() < header_len {
            return Err(StoreError::CorruptEntry);
        }
        let trace_at = ENTRY_HEADER_LEN - 1 + expiry_len;
        let traceparent = match raw[trace_at..trace_at + trace_len].try_into() {
            Ok(bytes) if traced => Some(TraceParent::from_bytes(bytes)),
            _ => None,
        };
        let partition =
            i32::from_be_bytes(raw[1..5].try_into().map_err(|_| StoreError::CorruptEntry)?);
        let offset = i64::from_be_bytes(
            raw[5..13]
                .try_into()
                .map_err(|_| StoreError::CorruptEntry)?,
        );
        let id_len = raw[header_len - 1] as usize;
        let rest = &raw[header_len..];
        if rest.len() < id_len {
            return Err(StoreError::CorruptEntry);
        }
        let (correlation_id, value) = rest.split_at(id_len);
        Ok(EntryView {
            partition,
            offset,
            correlation_id,
            traceparent,
            value,
            expires_at_ms,
        })
    }

    pub(super) fn is_live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }
}

pub(super) fn decode_entry(raw: &[u8]) -> Result<StoredEntry, StoreError> {
    let view = EntryView::of(raw)?;
    Ok(StoredEntry {
        partition: view.partition,
        offset: view.offset,
        correlation_id: (!view.correlation_id.is_empty())
            .then(|| String::from_utf8_lossy(view.correlation_id).into_owned()),
        traceparent: view.traceparent,
        value: view.value.to_vec(),
        expires_at_ms: view.expires_at_ms,
    })
}

/// Seals an entry with its user key under the key's index, as [`open_entry`] reads it: the
/// index is the associated data, so a sealed entry cannot be moved to another key.
pub(super) fn seal_entry(
    cipher: &StoreCipher,
    index: &[u8],
    user_key: &[u8],
    encoded: &[u8],
) -> Vec<u8> {
    let key_len = (user_key.len() as u32).to_be_bytes();
    cipher.seal(index, &[&key_len, user_key, encoded])
}

/// Opens a sealed entry into its user key and its plaintext entry bytes.
pub(super) fn open_entry(
    cipher: &StoreCipher,
    index: &[u8],
    sealed: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let plain = cipher
        .open(index, sealed)
        .map_err(|_| StoreError::CorruptEntry)?;
    let (len, rest) = plain.split_at_checked(4).ok_or(StoreError::CorruptEntry)?;
    let key_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (key, entry) = rest
        .split_at_checked(key_len)
        .ok_or(StoreError::CorruptEntry)?;
    Ok((key.to_vec(), entry.to_vec()))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const CORRELATION: WriteOrigin<'static> = WriteOrigin {
        correlation_id: Some(b"corr-1"),
        traceparent: None,
    };

    #[test]
    fn an_entry_reads_back_as_written_with_or_without_an_expiry_or_a_trace() {
        let trace = TraceParent::start();
        let mut out = Vec::new();
        for expires_at_ms in [None, Some(1_767_225_600_000)] {
            for traceparent in [None, Some(trace)] {
                let origin = WriteOrigin {
                    traceparent,
                    ..CORRELATION
                };
                encode_entry(&mut out, 3, 41, origin, b"value", expires_at_ms);
                assert_eq!(entry_expiry(&out).expect("expiry"), expires_at_ms);
                assert!(entry_is_live(&out, 0));
                assert_eq!(
                    decode_entry(&out).expect("entry"),
                    StoredEntry {
                        partition: 3,
                        offset: 41,
                        correlation_id: Some("corr-1".to_owned()),
                        traceparent,
                        value: b"value".to_vec(),
                        expires_at_ms,
                    }
                );
                assert!(matches!(
                    decode_entry(&out[..ENTRY_HEADER_LEN + 3]),
                    Err(StoreError::CorruptEntry)
                ));
            }
        }
        encode_entry(&mut out, 0, 0, WriteOrigin::default(), b"", None);
        assert_eq!(decode_entry(&out).expect("entry").correlation_id, None);
        assert!(matches!(
            decode_entry(&out[..out.len() - 1]),
            Err(StoreError::CorruptEntry)
        ));
    }

    /// Stores written before traces were kept hold these bytes: they must read as they did,
    /// and an entry without a trace is still written byte for byte the same.
    #[test]
    fn an_entry_without_a_trace_keeps_the_bytes_stores_were_written_with() {
        let mut plain = vec![1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 41, 6];
        plain.extend_from_slice(b"corr-1value");
        let mut expiring = vec![2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 41];
        expiring.extend_from_slice(&1_767_225_600_000u64.to_be_bytes());
        expiring.push(6);
        expiring.extend_from_slice(b"corr-1value");
        let mut out = Vec::new();
        for (bytes, expires_at_ms) in [(plain, None), (expiring, Some(1_767_225_600_000))] {
            let entry = decode_entry(&bytes).expect("an entry of the earlier format");
            assert_eq!(
                (
                    entry.traceparent,
                    entry.expires_at_ms,
                    entry.value.as_slice()
                ),
                (None, expires_at_ms, &b"value"[..])
            );
            encode_entry(&mut out, 3, 41, CORRELATION, b"value", expires_at_ms);
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn a_sealed_entry_opens_only_under_its_own_index() {
        let cipher = StoreCipher::derive("pw", b"0123456789abcdef", NonZeroU32::MIN);
        let sealed = seal_entry(&cipher, b"index-a", b"user/1", b"entry bytes");
        assert_eq!(
            open_entry(&cipher, b"index-a", &sealed).expect("open"),
            (b"user/1".to_vec(), b"entry bytes".to_vec())
        );
        assert!(matches!(
            open_entry(&cipher, b"index-b", &sealed),
            Err(StoreError::CorruptEntry)
        ));
    }
}
