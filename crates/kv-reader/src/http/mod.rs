//! The HTTP port of a read replica: each route parses its request once, asks the read core
//! ([`crate::read`]), and answers in the error contract every service of the project shares.
//! Every read may carry a consistency token (read-your-writes) and every read answer, found or
//! not, says how fresh the replica was when it read (see [`freshness`]).
//!
//! Nothing outside this folder sees an actix type: the read core, the cluster and the store
//! are the same for the Redis port.

pub mod batch_get;
pub mod cluster_view;
pub mod entry;
pub mod errors;
pub mod explain;
pub mod forward;
pub mod freshness;
pub mod get;
pub mod health;
pub mod list;
pub mod outcome;
pub mod request;
pub mod routes;
pub mod state;
pub mod status_page;
pub mod transfer;
pub mod watch;
pub mod watch_merge;

pub use freshness::freshness_middleware;
pub use routes::{endpoints, OPENAPI};
pub use state::{HttpState, PeerClient};
