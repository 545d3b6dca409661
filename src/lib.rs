//! wspush: a WebSocket real-time push server.
//!
//! - [`protocol`]: the sans-IO RFC 6455 core (HTTP parser, handshake, frames).

#![warn(missing_docs)]

pub mod protocol;
