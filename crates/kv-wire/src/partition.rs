//! The key-to-partition rule of the writer (librdkafka's `murmur2_random`, the Java client's
//! default partitioner) and the shards that hold a partition: a reader routes a key by them, and
//! a partition-aware client asks an owner directly by the very same rule.

/// Kafka's murmur2 hash as the Java client computes it for a record key.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a keyed record lands on under the Java client's default partitioner and
/// librdkafka's `murmur2_random` (the writer's): what a sharded reader routes a key by.
pub fn kafka_partition(record_key: &[u8], partitions: u32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(record_key) & 0x7fff_ffff) % partitions.max(1)) as i32
}

/// The shards holding `partition` when there are `shards` of them, each partition held
/// `replicas` times (`KV_API_SHARD=i/N`, `KV_API_SHARD_REPLICAS=R`): the R shards
/// `(p + k) mod N` for `k` in `0..R`, the first of them its primary. No coordination: every
/// shard and every client given N and R computes the same owners.
pub fn shard_owners(partition: i32, shards: u32, replicas: u32) -> impl Iterator<Item = u32> {
    let shards = shards.max(1);
    let first = partition.unsigned_abs() % shards;
    (0..replicas.clamp(1, shards)).map(move |k| (first + k) % shards)
}

#[cfg(test)]
mod tests {
    #[test]
    fn murmur2_matches_kafkas_published_vectors() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(super::murmur2(b"21") as i32, -973_932_308);
        assert_eq!(super::murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(
            super::murmur2(b"a-little-bit-long-string") as i32,
            -985_981_536
        );
        assert_eq!(
            super::murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            super::murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
    }

    #[test]
    fn each_partition_has_r_owners_starting_at_its_primary() {
        assert_eq!(super::shard_owners(0, 3, 2).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(super::shard_owners(2, 3, 2).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(super::shard_owners(4, 3, 1).collect::<Vec<_>>(), [1]);
    }
}
