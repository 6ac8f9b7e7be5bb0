//! W3C Trace Context (`traceparent`): a write's trace carried from its HTTP request into the Kafka
//! record, and out again on the reads, watch events and shard forwards that meet the value. The
//! same header name and text on HTTP and on the record, so any W3C-aware consumer of the topic
//! reads it too.
//!
//! Only `traceparent` travels; `tracestate` is vendor data of unbounded use and is not carried.

use std::fmt;

/// The header, on HTTP requests and answers and on Kafka records.
pub const TRACEPARENT: &str = "traceparent";

/// `00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// The text form's length: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;
/// The flag of a trace whose spans are recorded (exported) along its way.
pub const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Parses a `traceparent` value as the W3C recommendation says a receiver must: version
    /// `00` exactly 55 characters; a later version (not `ff`) by its first 55 characters when
    /// the next one is `-`; lower-case hex; neither id all zeros. `None` for anything else,
    /// which a receiver treats as no header at all.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let version = text.get(..2)?;
        let head = match version {
            "00" if text.len() == TRACEPARENT_LEN => text,
            "ff" | "00" => return None,
            _ if text.len() == TRACEPARENT_LEN => text,
            _ if text.len() > TRACEPARENT_LEN && text.as_bytes()[TRACEPARENT_LEN] == b'-' => {
                &text[..TRACEPARENT_LEN]
            }
            _ => return None,
        };
        let bytes = head.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let (version, trace, parent, flags) =
            (&head[..2], &head[3..35], &head[36..52], &head[53..55]);
        if ![version, trace, parent, flags].into_iter().all(lower_hex) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, as a service starts one for a request that came without a valid header:
    /// random ids, not sampled.
    pub fn start() -> Self {
        let mut trace_id = [0u8; 16];
        random_nonzero(&mut trace_id);
        let mut parent_id = [0u8; 8];
        random_nonzero(&mut parent_id);
        Self {
            trace_id,
            parent_id,
            flags: 0,
        }
    }

    /// The same span, marked as recorded: a service that exports spans samples the traces it
    /// starts, so that later services record theirs too.
    pub fn sampled(self) -> Self {
        Self {
            flags: self.flags | SAMPLED,
            ..self
        }
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// This service's span in the same trace: the trace id and flags kept, a new parent id.
    pub fn child(&self) -> Self {
        let mut parent_id = [0u8; 8];
        random_nonzero(&mut parent_id);
        Self { parent_id, ..*self }
    }

    /// The child of the request's header, or a new trace without a valid one.
    pub fn continue_or_start(header: Option<&[u8]>) -> Self {
        header
            .and_then(Self::parse)
            .map_or_else(Self::start, |parent| parent.child())
    }

    /// The trace id as 32 hex digits, for logs.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The binary form a store keeps: trace id, parent id, flags (25 bytes).
    pub fn to_bytes(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[..16].copy_from_slice(&self.trace_id);
        out[16..24].copy_from_slice(&self.parent_id);
        out[24] = self.flags;
        out
    }

    pub fn from_bytes(bytes: &[u8; 25]) -> Self {
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        parent_id.copy_from_slice(&bytes[16..24]);
        Self {
            trace_id,
            parent_id,
            flags: bytes[24],
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

fn random_nonzero(out: &mut [u8]) {
    use ring::rand::{SecureRandom, SystemRandom};
    let rng = SystemRandom::new();
    loop {
        // The system's generator does not fail once the process runs; an all-zero id is
        // invalid and drawn again.
        if rng.fill(out).is_ok() && out.iter().any(|b| *b != 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips_and_a_child_keeps_the_trace() {
        let parsed = TraceParent::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.flags, 1);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_eq!(child.flags, parsed.flags);
        assert_ne!(child.parent_id, parsed.parent_id);
        assert_eq!(TraceParent::from_bytes(&child.to_bytes()), child);
        assert_eq!(
            TraceParent::parse(child.to_string().as_bytes()),
            Some(child)
        );
    }

    #[test]
    fn malformed_values_are_no_trace_and_a_later_version_is_read_by_its_head() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(TraceParent::parse(later.as_bytes()).is_some());
        let started = TraceParent::continue_or_start(Some(b"garbage"));
        assert_eq!(started.flags, 0);
        assert!(TraceParent::parse(started.to_string().as_bytes()).is_some());
    }
}
