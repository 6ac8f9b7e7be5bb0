//! What kv-writer and kv-reader share, by layer: the domain (the record codec, topic encryption,
//! read-your-writes tokens, secrets), settings, Kafka client set-up, and the actix plumbing
//! under `web`.

pub mod cli;
pub mod computed;
/// Read-your-writes tokens: defined in `kv-wire`, which clients share.
pub use kv_wire::consistency;
pub mod conditional;
pub mod crypto;
pub mod kafka;
pub mod kafka_stats;
pub mod lane;
pub mod otlp;
pub mod record;
pub mod secret;
pub mod settings;
pub mod telemetry;
pub mod trace_context;
pub mod web;

/// Every binary linking kv-core allocates with jemalloc. glibc's malloc gives each thread that
/// allocates an arena of its own and keeps what is freed in that arena: a replica's threads
/// (HTTP workers, the Redis-protocol runtime, the consumer) allocating and freeing redb's page
/// buffers left a third of its resident memory in them. With 1M keys, after the bench's
/// Redis-protocol runs: glibc 103 MB resident, glibc with `MALLOC_ARENA_MAX=2` 70 MB, mimalloc
/// 91–94 MB, jemalloc 71 MB, at the same throughput (docs/benchmarks.md, "Memory"). Capping
/// glibc's arenas would need an environment variable set before the process starts, or an
/// unsafe `mallopt` call; jemalloc needs neither.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
