//! The sans-IO RFC 6455 core: no sockets, no threads, no clocks.
//!
//! Everything here takes bytes in any split and answers "need more", a
//! result, or an error that says which HTTP status or close code to send.
//! The worker loop, the load generator, the tests, the fuzzers and the
//! benches all drive this same code.
//!
//! - [`http`]: incremental HTTP/1.1 request parser and response writer.
//! - [`handshake`]: the WebSocket upgrade (RFC 6455 §4.2).
//! - [`frame`]: frame header layout and opcodes.
//! - [`decode`]: incremental frame/message decoder (either role).
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation and codec.
//! - [`encode`]: frame encoder, including shared once-encoded frames.
//! - [`mask`]: word-at-a-time masking.
//! - [`utf8`]: incremental UTF-8 validation across frames.
//! - [`close`]: close codes and close-frame payloads.
//! - [`error`]: the error enums, carrying the status or close code to send.

pub mod close;
pub mod decode;
pub mod deflate;
pub mod encode;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod mask;
pub mod utf8;

pub use close::CloseFrame;
pub use decode::{Decoded, Decoder, DecoderConfig, Message, Role};
pub use error::{Error, HttpError, ProtocolError};
pub use frame::{FrameHeader, OpCode};
pub use handshake::{Accepted, HandshakeConfig};
pub use http::{HttpLimits, Request, RequestParser};
