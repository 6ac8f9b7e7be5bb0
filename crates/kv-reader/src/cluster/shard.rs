//! Which partitions a shard holds, and which shards hold a partition.
//!
//! With `KV_API_SHARD=i/N` and `KV_API_SHARD_REPLICAS=R`, partition `p` is held by the R shards
//! `(p + k) mod N` for `k` in `0..R`; the first of them, `p mod N`, is its primary. The rule is
//! `kv_wire::partition::shard_owners`, which partition-aware clients share; the partition count
//! comes from the topic's metadata.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kv_core::kafka::kafka_partition;
use kv_core::record::RecordCodec;
use kv_core::settings::SettingsError;

/// This process's place among the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
    pub replicas: u32,
}

/// Most shards a topic may be spread over: metric labels and peer tables stay small.
pub const MAX_SHARDS: u32 = 256;

impl ShardSpec {
    /// `KV_API_SHARD` (`i/N`) and `KV_API_SHARD_REPLICAS` (R, 1 ≤ R ≤ N).
    pub fn parse(shard: &str, replicas: u32) -> Result<Self, SettingsError> {
        const VAR: &str = "KV_API_SHARD";
        let bad = || {
            SettingsError::new(
                VAR,
                format!(
                    "expected i/N, this shard's index from 0 and the number of shards \
                     (e.g. 0/3), got {shard:?}"
                ),
            )
        };
        let (index, count) = shard.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS {
            return Err(SettingsError::new(
                VAR,
                format!("the number of shards must be from 1 to {MAX_SHARDS}, got {count}"),
            ));
        }
        if index >= count {
            return Err(SettingsError::new(
                VAR,
                format!(
                    "the shard index must be below the number of shards ({count}), got {index}"
                ),
            ));
        }
        if replicas == 0 || replicas > count {
            return Err(SettingsError::new(
                "KV_API_SHARD_REPLICAS",
                format!(
                    "must be from 1 to the number of shards in KV_API_SHARD ({count}), got {replicas}"
                ),
            ));
        }
        Ok(Self {
            index,
            count,
            replicas,
        })
    }

    /// The shards holding `partition`, its primary first.
    pub fn owners(&self, partition: i32) -> impl Iterator<Item = u32> + '_ {
        kv_wire::partition::shard_owners(partition, self.count, self.replicas)
    }

    pub fn primary(&self, partition: i32) -> u32 {
        kv_wire::partition::shard_owners(partition, self.count, 1)
            .next()
            .unwrap_or(0)
    }

    pub fn holds(&self, partition: i32) -> bool {
        self.owners(partition).any(|shard| shard == self.index)
    }

    pub fn is_owner(&self, shard: u32, partition: i32) -> bool {
        self.owners(partition).any(|s| s == shard)
    }

    /// How the store records the layout it was built under: a store of another layout holds
    /// other partitions and is rebuilt.
    pub fn layout(&self) -> String {
        format!("{}/{}x{}", self.index, self.count, self.replicas)
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `KV_API_SHARD_PEERS`: a template with `{i}` in it, or a comma list of one URL per shard.
pub fn peer_urls(text: &str, count: u32) -> Result<Vec<String>, SettingsError> {
    const VAR: &str = "KV_API_SHARD_PEERS";
    let urls: Vec<String> = if text.contains("{i}") {
        (0..count)
            .map(|i| text.trim().replace("{i}", &i.to_string()))
            .collect()
    } else {
        text.split(',').map(|u| u.trim().to_owned()).collect()
    };
    if urls.len() != count as usize {
        return Err(SettingsError::new(
            VAR,
            format!(
                "lists {} URLs, but KV_API_SHARD names {count} shards: give one URL per shard, \
                 or a template with {{i}} in it",
                urls.len()
            ),
        ));
    }
    urls.into_iter()
        .enumerate()
        .map(|(i, url)| {
            let parsed = reqwest::Url::parse(&url).map_err(|e| {
                SettingsError::new(
                    VAR,
                    format!("the URL of shard {i}, {url:?}, is invalid: {e}"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
                || parsed.fragment().is_some()
            {
                return Err(SettingsError::new(
                    VAR,
                    format!(
                        "the URL of shard {i}, {url:?}, must be http:// or https:// with a host \
                         and no query"
                    ),
                ));
            }
            Ok(url.trim_end_matches('/').to_owned())
        })
        .collect()
}

/// The topic's partition count as the consumer last read it from metadata; 0 until then.
#[derive(Debug, Default)]
pub struct Topology {
    partitions: AtomicU32,
}

impl Topology {
    pub fn set_partitions(&self, partitions: u32) {
        self.partitions.store(partitions, Ordering::Relaxed);
    }

    pub fn partitions(&self) -> Option<u32> {
        match self.partitions.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// The partition the writer put `user_key` on: murmur2 of the record key, which is the key
/// itself, or its keyed MAC under topic encryption.
pub fn partition_of(codec: &RecordCodec, user_key: &[u8], partitions: u32) -> i32 {
    kafka_partition(&codec.record_key(user_key), partitions)
}

/// A sharded reader's place and its peers.
#[derive(Debug, Clone)]
pub struct Sharding {
    pub spec: ShardSpec,
    /// Base URL of every shard, this one's included, by index.
    pub peers: Vec<String>,
    /// Longest a forwarded read may take, waiting for its consistency token on the owner
    /// included.
    pub forward_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_has_r_owners_starting_at_its_primary() {
        let spec = ShardSpec::parse("1/3", 2).expect("spec");
        assert_eq!(spec.owners(0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(spec.owners(2).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(spec.owners(4).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(spec.primary(5), 2);
        let held: Vec<i32> = (0..6).filter(|&p| spec.holds(p)).collect();
        assert_eq!(held, [0, 1, 3, 4]);
    }

    #[test]
    fn with_one_replica_the_shards_split_the_partitions() {
        let shards: Vec<ShardSpec> = (0..3)
            .map(|i| ShardSpec::parse(&format!("{i}/3"), 1).expect("spec"))
            .collect();
        for partition in 0..12 {
            let holders = shards.iter().filter(|s| s.holds(partition)).count();
            assert_eq!(holders, 1, "partition {partition}");
        }
    }

    #[test]
    fn a_bad_shard_setting_names_its_variable() {
        for (shard, replicas, var) in [
            ("3/3", 1, "KV_API_SHARD"),
            ("1", 1, "KV_API_SHARD"),
            ("0/0", 1, "KV_API_SHARD"),
            ("a/3", 1, "KV_API_SHARD"),
            ("0/3", 4, "KV_API_SHARD_REPLICAS"),
            ("0/3", 0, "KV_API_SHARD_REPLICAS"),
        ] {
            let error = ShardSpec::parse(shard, replicas).expect_err(shard);
            assert_eq!(error.var, var, "{shard} R={replicas}");
        }
    }

    #[test]
    fn peers_come_from_a_template_or_one_url_per_shard() {
        assert_eq!(
            peer_urls("http://kv-reader-{i}.kv-reader-headless:8081/", 2).expect("template"),
            [
                "http://kv-reader-0.kv-reader-headless:8081",
                "http://kv-reader-1.kv-reader-headless:8081"
            ]
        );
        assert_eq!(
            peer_urls("http://a:1, http://b:2", 2).expect("list"),
            ["http://a:1", "http://b:2"]
        );
        for bad in ["http://a:1", "ftp://a,ftp://b", "http://a?x=1,http://b"] {
            assert_eq!(peer_urls(bad, 2).expect_err(bad).var, "KV_API_SHARD_PEERS");
        }
    }
}
