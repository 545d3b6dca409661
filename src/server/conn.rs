//! One connection's state inside a worker.

use mio::net::TcpStream;

use super::handler::CloseReason;
use super::outbuf::OutQueue;
use super::topics::NO_SUBS;
use crate::protocol::{Decoder, RequestParser};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading an HTTP request (an upgrade, or plain requests on keep-alive).
    Http,
    /// An open WebSocket.
    Open,
    /// We sent a close frame and wait for the peer's (up to the close timeout).
    Closing,
    /// Our last bytes are queued or sent; after the flush we shut down our
    /// side and discard input until the peer closes (or the close timeout).
    Lingering,
    /// Gone: waiting to be removed at the end of the turn.
    Dead,
}

/// Bytes and parser state while the connection speaks HTTP; dropped on upgrade.
#[derive(Debug)]
pub(crate) struct HttpState {
    pub parser: RequestParser,
    pub buf: Vec<u8>,
    /// The current request head must be complete by then (worker clock, ms).
    pub deadline: u32,
    /// The peer's address, as `accept` gave it (no `getpeername` per request).
    pub peer: std::net::SocketAddr,
    /// The handler has seen the head of the current request while its body
    /// is still arriving ([`Handler::on_request_head`](super::Handler::on_request_head)).
    pub head_checked: bool,
    /// Accepted over `max_connections` from the small HTTP reserve: plain
    /// requests are served, an upgrade gets 503. Released when dropped.
    pub reserve: Option<super::hub::ReserveSlot>,
    /// A request whose answer the handler deferred: `(keep-alive, HEAD)`.
    /// Nothing more is read or served until it comes.
    pub awaiting: Option<(bool, bool)>,
}

/// Flag: queued output waits for the end-of-turn flush.
pub(crate) const DIRTY: u8 = 1;
/// Flag: registered for WRITABLE (only while output is pending).
pub(crate) const WRITE_INTEREST: u8 = 2;
/// Flag: after the flush, shut down our side and linger.
pub(crate) const CLOSE_AFTER_FLUSH: u8 = 4;
/// Flag: over `max_buffered`; to be closed as a slow consumer.
pub(crate) const SLOW: u8 = 8;
/// Flag: the handler holds state for it (it was upgraded).
pub(crate) const UPGRADED: u8 = 16;
/// Flag: counted against `max_connections`.
pub(crate) const COUNTED: u8 = 32;
/// Flag: both close frames were exchanged; after the flush, close the socket
/// at once (RFC 6455 §7.1.1: the server closes the TCP connection first).
pub(crate) const CLOSE_DONE: u8 = 64;
/// Flag: over `max_buffered` by its own replies; not read from until its
/// queue drains below half the limit.
pub(crate) const PAUSED: u8 = 128;

/// A connection owned by a worker's slab.
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub generation: u32,
    pub phase: Phase,
    pub flags: u8,
    pub close_reason: Option<CloseReason>,
    /// permessage-deflate state (0: not negotiated; see `compress::conn_bits`).
    pub deflate: u8,
    /// When the peer last sent anything (worker clock, milliseconds, wrapping).
    pub last_rx: u32,
    pub decoder: Decoder,
    pub out: OutQueue,
    pub http: Option<Box<HttpState>>,
    /// Its subscriptions: a handle into the worker's
    /// [`SubLists`](super::topics::SubLists), `NO_SUBS` when it has none.
    pub subs: u32,
    /// TLS state, when the server has a certificate.
    #[cfg(feature = "tls")]
    pub tls: Option<Box<rustls::ServerConnection>>,
}

impl Conn {
    pub fn new(stream: TcpStream, generation: u32) -> Self {
        Conn {
            stream,
            generation,
            phase: Phase::Http,
            flags: 0,
            close_reason: None,
            deflate: 0,
            last_rx: 0,
            decoder: Decoder::new(),
            out: OutQueue::default(),
            http: None,
            subs: NO_SUBS,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        let dec = std::mem::size_of::<Decoder>();
        let out = std::mem::size_of::<OutQueue>();
        eprintln!("Conn {size} B (decoder {dec} B, out queue {out} B)");
        // Every idle connection holds one (in the worker's slab).
        assert!(size <= 64, "Conn grew to {size} bytes");
    }
}
