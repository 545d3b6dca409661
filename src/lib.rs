//! wspush: a WebSocket real-time push server.
//!
//! - [`protocol`]: the sans-IO RFC 6455 core (HTTP parser, handshake, frames).
//! - [`broker`]: channel order, sequence numbers, epochs, history.
//! - [`server`]: the runtime: mio workers, the hub, the embedding API.
//! - `push` (feature `push`): the push service: channels, the client
//!   protocol, the HTTP API, auth, metrics.
//! - `daemon` (feature `daemon`, default): the `wspush` daemon: flags,
//!   signals, drain.
//!
//! With `default-features = false` the crate is the protocol core, the
//! runtime and the broker on mio, slab, sha1, base64, crossbeam-channel,
//! log, socket2 and libc only.

#![warn(missing_docs)]

pub mod broker;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod protocol;
#[cfg(feature = "push")]
pub mod push;
#[cfg(feature = "push")]
pub mod pusher;
pub mod server;

/// The README's Rust example, compiled by `cargo test` so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
