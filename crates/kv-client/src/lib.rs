//! The Rust client of kafka-kv: `kv-writer` takes the writes, `kv-reader` replicas serve the
//! reads.
//!
//! What it does for you, beyond sending requests:
//!
//! - **Read-your-writes across calls.** Every write's consistency token is kept, and every read
//!   carries the token of all the writes this client made, so a read never misses one of them,
//!   whichever replica answers ([`ClientBuilder::read_your_writes`] turns it off).
//! - **Conditional writes.** [`Client::put_with`] takes a [`Precondition`] (the [`Version`] a read
//!   answered, "exists", "absent") and always sends an `Idempotency-Key`, so a retry after a lost
//!   answer gets the first answer back instead of a `412` caused by its own success.
//!   [`Client::update`] and [`Client::increment`] are the read-modify-write loop on top.
//! - **Back-off.** A `503` or `429` with `Retry-After` is retried after the time the service
//!   asked for, up to [`ClientBuilder::max_retries`]; a reader that does not answer is skipped
//!   for the next one.
//! - **Reads sent to a key's shard.** With sharded readers listed in shard order (the
//!   `KV_API_SHARD_PEERS` order), a read goes straight to a shard holding the key's partition,
//!   computed the way the writer computes it, instead of costing a forward through another shard.
//! - **A watch that resumes** from the last event it delivered when its stream ends.
//!
//! ```no_run
//! # async fn example() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::builder()
//!     .writer("http://kv-writer:8080")
//!     .readers(["http://kv-reader-0:8080", "http://kv-reader-1:8080"])
//!     .build()?;
//! client.put("users/ada", "Ada Lovelace").await?;
//! // Waits, if need be, until the replica applied the write above.
//! let entry = client.get("users/ada").await?.expect("just written");
//! assert_eq!(entry.value, "Ada Lovelace");
//! let visits = client.increment("visits/ada", 1).await?;
//! # let _ = visits;
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod paths;
mod routing;
mod transport;
mod types;
mod watch;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use kv_wire::consistency::ConsistencyToken;
pub use types::{Change, Entry, Precondition, Version, WriteOptions, Written};
pub use watch::{Watch, WatchEvent};
