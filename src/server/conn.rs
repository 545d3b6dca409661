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

/// `Option<CloseReason>` in 4 bytes (the enum takes 6, which kept `Conn` at
/// 64 bytes instead of 56): variant, protocol error kind, 16-bit payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reason(u32);

impl Reason {
    fn pack(r: CloseReason) -> u32 {
        use crate::protocol::ProtocolError as P;
        let (variant, kind, payload): (u32, u32, u16) = match r {
            CloseReason::Client(None) => (1, 0, 0),
            CloseReason::Client(Some(code)) => (2, 0, code),
            CloseReason::Server(code) => (3, 0, code),
            CloseReason::Protocol(e) => {
                let (kind, payload) = match e {
                    P::UnmaskedFrame => (0, 0),
                    P::MaskedFrame => (1, 0),
                    P::ReservedBits => (2, 0),
                    P::ReservedOpcode(op) => (3, u16::from(op)),
                    P::ControlFrameTooLong => (4, 0),
                    P::FragmentedControlFrame => (5, 0),
                    P::UnexpectedContinuation => (6, 0),
                    P::ExpectedContinuation => (7, 0),
                    P::LengthOverflow => (8, 0),
                    P::FrameTooLarge => (9, 0),
                    P::MessageTooLarge => (10, 0),
                    P::InvalidUtf8 => (11, 0),
                    P::CloseLengthOne => (12, 0),
                    P::InvalidCloseCode(code) => (13, code),
                    P::InvalidCompressedData => (14, 0),
                };
                (4, kind, payload)
            }
            CloseReason::SlowConsumer => (5, 0, 0),
            CloseReason::IdleTimeout => (6, 0, 0),
            CloseReason::Shutdown => (7, 0, 0),
            CloseReason::Abnormal => (8, 0, 0),
        };
        variant | kind << 8 | u32::from(payload) << 16
    }

    /// The reason, if one was set.
    pub fn get(self) -> Option<CloseReason> {
        use crate::protocol::ProtocolError as P;
        let payload = (self.0 >> 16) as u16;
        Some(match self.0 & 0xff {
            1 => CloseReason::Client(None),
            2 => CloseReason::Client(Some(payload)),
            3 => CloseReason::Server(payload),
            4 => CloseReason::Protocol(match (self.0 >> 8) & 0xff {
                0 => P::UnmaskedFrame,
                1 => P::MaskedFrame,
                2 => P::ReservedBits,
                3 => P::ReservedOpcode(payload as u8),
                4 => P::ControlFrameTooLong,
                5 => P::FragmentedControlFrame,
                6 => P::UnexpectedContinuation,
                7 => P::ExpectedContinuation,
                8 => P::LengthOverflow,
                9 => P::FrameTooLarge,
                10 => P::MessageTooLarge,
                11 => P::InvalidUtf8,
                12 => P::CloseLengthOne,
                13 => P::InvalidCloseCode(payload),
                _ => P::InvalidCompressedData,
            }),
            5 => CloseReason::SlowConsumer,
            6 => CloseReason::IdleTimeout,
            7 => CloseReason::Shutdown,
            8 => CloseReason::Abnormal,
            _ => return None,
        })
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Set it unless it is already set (the first reason wins).
    pub fn get_or_insert(&mut self, r: CloseReason) {
        if self.is_none() {
            self.0 = Self::pack(r);
        }
    }

    pub fn set(&mut self, r: Option<CloseReason>) {
        self.0 = r.map_or(0, Self::pack);
    }
}

/// A connection owned by a worker's slab.
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub generation: u32,
    pub phase: Phase,
    pub flags: u8,
    pub close_reason: Reason,
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
            close_reason: Reason::default(),
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
    fn a_packed_close_reason_comes_back_unchanged() {
        use crate::protocol::ProtocolError as P;
        let mut all = vec![
            CloseReason::Client(None),
            CloseReason::Client(Some(1000)),
            CloseReason::Client(Some(u16::MAX)),
            CloseReason::Server(4999),
            CloseReason::SlowConsumer,
            CloseReason::IdleTimeout,
            CloseReason::Shutdown,
            CloseReason::Abnormal,
        ];
        for e in [
            P::UnmaskedFrame,
            P::MaskedFrame,
            P::ReservedBits,
            P::ReservedOpcode(0xb),
            P::ControlFrameTooLong,
            P::FragmentedControlFrame,
            P::UnexpectedContinuation,
            P::ExpectedContinuation,
            P::LengthOverflow,
            P::FrameTooLarge,
            P::MessageTooLarge,
            P::InvalidUtf8,
            P::CloseLengthOne,
            P::InvalidCloseCode(1005),
            P::InvalidCompressedData,
        ] {
            all.push(CloseReason::Protocol(e));
        }
        for r in all {
            let mut p = Reason::default();
            assert_eq!(p.get(), None);
            p.get_or_insert(r);
            assert_eq!(p.get(), Some(r));
            p.get_or_insert(CloseReason::Abnormal);
            assert_eq!(p.get(), Some(r), "the first reason stays");
            p.set(None);
            assert!(p.is_none());
        }
    }

    #[test]
    fn idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        let dec = std::mem::size_of::<Decoder>();
        let out = std::mem::size_of::<OutQueue>();
        eprintln!("Conn {size} B (decoder {dec} B, out queue {out} B)");
        // Every idle connection holds one (in the worker's slab).
        assert!(size <= 56, "Conn grew to {size} bytes");
    }
}
