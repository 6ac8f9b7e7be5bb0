//! The actix plumbing both services share: the JSON error contract, bearer-token auth,
//! correlation ids and body limits, the route table, the request metrics, and the order the
//! middlewares run in.

pub mod auth;
pub mod error;
pub mod http;
pub mod json;
pub mod metrics;
pub mod prefixes;
pub mod routing;
pub mod stack;
