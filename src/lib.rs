//! wspush: a WebSocket real-time push server.
//!
//! - [`protocol`]: the sans-IO RFC 6455 core (HTTP parser, handshake, frames).
//! - [`server`]: the runtime: mio workers, fan-out hub, the embedding API.
//! - [`daemon`]: the `wspush` daemon: flags, endpoints, signals.

#![warn(missing_docs)]

pub mod daemon;
pub mod protocol;
pub mod server;
