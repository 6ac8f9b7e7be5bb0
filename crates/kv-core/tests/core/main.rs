//! kv-core's integration tests: bearer-token validation against a provider stand-in, the
//! decoder properties, and the docs kept in step with the code. One test binary.

mod auth;
mod decoders;
mod docs;
