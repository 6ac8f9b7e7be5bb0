//! kv-core's integration tests: bearer-token validation against a provider stand-in, and the
//! decoder properties. One test binary.

mod auth;
mod decoders;
