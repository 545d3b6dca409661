//! wspush: a WebSocket real-time push server.
//!
//! - [`protocol`]: the sans-IO RFC 6455 core (HTTP parser, handshake, frames).
//! - [`server`]: the runtime: mio workers, fan-out hub, the embedding API.
//! - [`push`]: the push service: channels, the client protocol, the HTTP API, auth, metrics.
//! - [`daemon`]: the `wspush` daemon: flags, signals, drain.

#![warn(missing_docs)]

pub mod broker;
pub mod daemon;
pub mod protocol;
pub mod push;
pub mod server;

/// The README's Rust example, compiled by `cargo test` so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
