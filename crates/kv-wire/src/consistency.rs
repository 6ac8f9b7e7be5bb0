//! Read-your-writes: a writer hands out a token naming where its writes landed; a reader given
//! the token waits until it has applied those offsets before answering.
//!
//! The token is opaque to clients. Its text form is `partition:offset` pairs joined by commas
//! (`0:42,3:17`), which needs no escaping in a header or a query string.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Query parameter that carries a token, for clients that cannot set headers.
pub const CONSISTENCY_TOKEN_PARAM: &str = "consistency_token";

/// Upper bound on pairs in a token, so a hostile token cannot make a reader allocate much.
const MAX_PARTITIONS: usize = 10_000;

/// Where Kafka stored one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsistencyToken {
    /// For each partition, the highest offset written; a replica must have applied it.
    offsets: BTreeMap<i32, i64>,
}

impl ConsistencyToken {
    pub fn from_positions(positions: impl IntoIterator<Item = RecordPosition>) -> Self {
        let mut offsets = BTreeMap::new();
        for RecordPosition { partition, offset } in positions {
            let highest = offsets.entry(partition).or_insert(offset);
            *highest = (*highest).max(offset);
        }
        Self { offsets }
    }

    /// Raises `position`'s partition to its offset if that is higher: a client's token of every
    /// write it made.
    pub fn include(&mut self, position: RecordPosition) {
        let highest = self
            .offsets
            .entry(position.partition)
            .or_insert(position.offset);
        *highest = (*highest).max(position.offset);
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// `(partition, offset)` pairs, in partition order.
    pub fn offsets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.offsets.iter().map(|(p, o)| (*p, *o))
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, offset)) in self.offsets().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}:{offset}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consistency token {0:?}: expected the token a kv-writer returned")]
pub struct InvalidToken(pub String);

impl FromStr for ConsistencyToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidToken(text.chars().take(64).collect());
        let mut positions = Vec::new();
        for pair in text.split(',') {
            let (partition, offset) = pair.split_once(':').ok_or_else(invalid)?;
            let partition: i32 = partition.parse().map_err(|_| invalid())?;
            let offset: i64 = offset.parse().map_err(|_| invalid())?;
            if partition < 0 || offset < 0 || positions.len() >= MAX_PARTITIONS {
                return Err(invalid());
            }
            positions.push(RecordPosition { partition, offset });
        }
        Ok(Self::from_positions(positions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_keeps_the_highest_offset_per_partition_and_round_trips() {
        let token = ConsistencyToken::from_positions([
            RecordPosition {
                partition: 3,
                offset: 17,
            },
            RecordPosition {
                partition: 0,
                offset: 42,
            },
            RecordPosition {
                partition: 3,
                offset: 9,
            },
        ]);
        assert_eq!(token.to_string(), "0:42,3:17");
        assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "", "0", "0:", ":1", "a:b", "0:1,", "-1:5", "0:-5", "0:1;2:3",
        ] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad:?} parsed");
        }
    }
}
