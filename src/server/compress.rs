//! permessage-deflate in a worker (RFC 7692; negotiation and codec in
//! [`crate::protocol::deflate`]).
//!
//! Per connection: one byte in [`Conn`](super::conn::Conn) (`deflate`, 0 when
//! not negotiated) and nothing else, except in `dedicated` mode a compressor
//! created on its first compressed message and kept (with context takeover)
//! until it closes. Per worker: one inflater (every client message is a
//! fresh deflate stream: the server always answers
//! `client_no_context_takeover`), one no-context compressor for messages
//! compressed for a single recipient in `shared` mode (replies, sends),
//! and the buffer messages are inflated into. Publications and broadcasts
//! are deflated once for the whole process (see
//! [`Publication::deflated_with`](crate::broker::Publication)).

use super::config::Config;
use crate::protocol::deflate::{Compression, DeflateConfig, Params};
use crate::protocol::{DecoderConfig, Request};

/// `Conn::deflate` bit: permessage-deflate was negotiated.
pub(crate) const NEGOTIATED: u8 = 1;
/// `Conn::deflate` bit: a dedicated compressor (dedicated mode).
pub(crate) const DEDICATED: u8 = 2;
/// `Conn::deflate` bit: the client asked for `server_no_context_takeover`.
pub(crate) const NO_TAKEOVER: u8 = 4;

/// The connection's `deflate` byte for agreed parameters: the bits above,
/// and the server window bits in the high nibble.
pub(crate) fn conn_bits(p: &Params, mode: Compression) -> u8 {
    let mut b = NEGOTIATED | (p.server_window_bits() << 4);
    if mode == Compression::Dedicated {
        b |= DEDICATED;
        if p.server_no_context_takeover {
            b |= NO_TAKEOVER;
        }
    }
    b
}

/// A worker's permessage-deflate state.
pub(crate) struct Worker {
    pub(crate) cfg: DeflateConfig,
    /// The worker's decoder configuration with RSV1 allowed.
    pub(crate) dec_cfg: DecoderConfig,
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    max_message: usize,
    #[cfg(feature = "deflate")]
    codec: codec::Codec,
}

impl Worker {
    pub(crate) fn new(cfg: &Config, dec_cfg: &DecoderConfig) -> Worker {
        Worker {
            cfg: cfg.compression.clone(),
            dec_cfg: DecoderConfig {
                allowed_rsv: dec_cfg.allowed_rsv | crate::protocol::decode::RSV1,
                ..dec_cfg.clone()
            },
            max_message: cfg.max_message_size,
            #[cfg(feature = "deflate")]
            codec: Default::default(),
        }
    }

    /// The agreed parameters for an upgrade request and the connection's
    /// `deflate` byte, or `None` (not offered, off, or built without the
    /// `deflate` feature).
    pub(crate) fn negotiate(&self, req: &Request<'_>) -> Option<(Params, u8)> {
        if !cfg!(feature = "deflate") {
            return None;
        }
        let p = crate::protocol::deflate::negotiate(req, &self.cfg)?;
        Some((p, conn_bits(&p, self.cfg.mode)))
    }

    /// Whether a payload of `len` bytes is worth compressing.
    #[inline]
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.cfg.min_size
    }

    /// A connection went away: drop its dedicated compressor.
    pub(crate) fn forget(&mut self, key: usize) {
        // Most workers hold none: no hashing per closed connection then.
        #[cfg(feature = "deflate")]
        if !self.codec.dedicated.is_empty() {
            self.codec.dedicated.remove(&key);
        }
        let _ = key;
    }

    /// Dedicated compressors held (for tests and logs).
    #[allow(dead_code)]
    pub(crate) fn dedicated_count(&self) -> usize {
        #[cfg(feature = "deflate")]
        return self.codec.dedicated.len();
        #[cfg(not(feature = "deflate"))]
        0
    }
}

#[cfg(feature = "deflate")]
mod codec {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{Worker, DEDICATED, NO_TAKEOVER};
    use crate::protocol::deflate::{Deflater, InflateError, Inflater};
    use crate::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
    use crate::protocol::{encode, ProtocolError};

    #[derive(Default)]
    pub(super) struct Codec {
        inflater: Option<Box<Inflater>>,
        /// No context takeover, 32 KiB window: one message at a time.
        oneshot: Option<Box<Deflater>>,
        pub(super) dedicated: HashMap<usize, Box<Deflater>>,
        scratch: Vec<u8>,
        inflated: Vec<u8>,
    }

    /// Write a frame header (FIN, RSV1 when `compressed`) into `out`.
    fn header_into(out: &mut Vec<u8>, opcode: OpCode, compressed: bool, len: usize) {
        let rsv = if compressed {
            crate::protocol::decode::RSV1
        } else {
            0
        };
        encode::frame_header_rsv_into(out, true, rsv, opcode, len);
    }

    /// The opcode and payload of an unmasked frame we encoded.
    /// `None` unless `frame` is exactly one whole unmasked data or control
    /// frame (FIN, no RSV bits): an embedder's pre-encoded bytes
    /// ([`Frame::from_encoded`](crate::server::Frame::from_encoded)) may hold
    /// fragments or several frames, which are then sent as they are.
    pub(crate) fn split_frame(frame: &[u8]) -> Option<(OpCode, &[u8])> {
        let (h, n) = FrameHeader::parse(frame, 0).ok()??;
        if !h.fin || h.mask.is_some() || h.opcode == OpCode::Continuation {
            return None;
        }
        if (frame.len() - n) as u64 != h.len {
            return None;
        }
        Some((h.opcode, &frame[n..]))
    }

    impl Worker {
        /// Deflate `payload` without context (window 15) into a new shared
        /// frame with RSV1; `None` if compressing does not make it smaller.
        pub(crate) fn shared_frame(&mut self, plain: &[u8]) -> Option<Arc<[u8]>> {
            let (op, payload) = split_frame(plain)?;
            if op.is_control() || !self.wants(payload.len()) {
                return None;
            }
            let c = &mut self.codec;
            let z = c
                .oneshot
                .get_or_insert_with(|| Box::new(Deflater::new(15, true)));
            c.scratch.clear();
            z.compress(payload, &mut c.scratch);
            if c.scratch.len() >= payload.len() {
                return None;
            }
            let mut v = Vec::with_capacity(c.scratch.len() + MAX_HEADER_LEN);
            header_into(&mut v, op, true, c.scratch.len());
            v.extend_from_slice(&c.scratch);
            let frame = Arc::from(v);
            if c.scratch.capacity() > 256 << 10 {
                c.scratch = Vec::new();
            }
            Some(frame)
        }

        /// Encode a message for one recipient whose `deflate` byte is `ext`
        /// (non-zero) into `out`: compressed with its dedicated compressor,
        /// or (shared mode) the worker's one-shot one, when big enough.
        pub(crate) fn frame_for(
            &mut self,
            key: usize,
            ext: u8,
            op: OpCode,
            payload: &[u8],
            out: &mut Vec<u8>,
        ) {
            if op.is_control() || !self.wants(payload.len()) {
                return encode::frame_into(out, op, payload);
            }
            let c = &mut self.codec;
            let bits = ext >> 4;
            let z = if ext & DEDICATED != 0 {
                c.dedicated
                    .entry(key)
                    .or_insert_with(|| Box::new(Deflater::new(bits, ext & NO_TAKEOVER != 0)))
            } else {
                c.oneshot
                    .get_or_insert_with(|| Box::new(Deflater::new(15, true)))
            };
            c.scratch.clear();
            z.compress(payload, &mut c.scratch);
            // With context takeover the bytes must be sent even when they are
            // not smaller: the compressor's window already holds them.
            if c.scratch.len() >= payload.len() && ext & DEDICATED == 0 {
                return encode::frame_into(out, op, payload);
            }
            header_into(out, op, true, c.scratch.len());
            out.extend_from_slice(&c.scratch);
            if c.scratch.capacity() > 256 << 10 {
                c.scratch = Vec::new();
            }
        }

        /// Inflate a compressed message into the worker's buffer, which is
        /// lent out (give it back with [`Worker::give_back`]).
        pub(crate) fn inflate(&mut self, raw: &[u8]) -> Result<Vec<u8>, ProtocolError> {
            let c = &mut self.codec;
            let inf = c.inflater.get_or_insert_with(Default::default);
            let mut out = std::mem::take(&mut c.inflated);
            match inf.inflate(raw, self.max_message, &mut out) {
                Ok(()) => Ok(out),
                Err(e) => {
                    self.give_back(out);
                    Err(match e {
                        InflateError::TooBig => ProtocolError::MessageTooLarge,
                        InflateError::Invalid => ProtocolError::InvalidCompressedData,
                    })
                }
            }
        }

        /// Return the buffer [`Worker::inflate`] lent (kept up to 256 KiB).
        pub(crate) fn give_back(&mut self, mut v: Vec<u8>) {
            if v.capacity() <= 256 << 10 {
                v.clear();
                self.codec.inflated = v;
            }
        }
    }
}

#[cfg(feature = "deflate")]
pub(crate) use codec::split_frame;

#[cfg(not(feature = "deflate"))]
impl Worker {
    /// Without the `deflate` feature nothing is ever compressed.
    pub(crate) fn shared_frame(&mut self, _plain: &[u8]) -> Option<std::sync::Arc<[u8]>> {
        None
    }
}

/// The compressed form of one frame being delivered to many connections:
/// built on the first recipient that wants it (`None` inside: compression
/// did not help, send the plain frame).
#[derive(Default)]
pub(crate) struct Lazy(Option<Option<LocalFrame>>);

use super::conn::Conn;
#[cfg(feature = "deflate")]
use super::conn::{Phase, SLOW};
#[cfg(feature = "deflate")]
use super::core::{admit, Cause};
use super::core::{push_frame, Queued, Queues};
use super::outbuf::LocalFrame;

/// Queue a push (publication, broadcast) on a connection that negotiated
/// permessage-deflate: the shared compressed frame (built once by `make`),
/// or in dedicated mode its own compression of the plain frame.
#[inline(never)]
pub(crate) fn push_deflated(
    c: &mut Conn,
    key: usize,
    plain: &LocalFrame,
    z: &mut Lazy,
    dz: &mut Worker,
    make: impl FnOnce(&mut Worker) -> Option<std::sync::Arc<[u8]>>,
    q: &mut Queues<'_>,
) -> Queued {
    #[cfg(feature = "deflate")]
    if c.deflate & DEDICATED != 0 {
        if c.phase != Phase::Open || c.has(SLOW) {
            return Queued::Dropped;
        }
        if let Some((op, payload)) = split_frame(plain) {
            q.stats.messages_out_total += 1;
            return push_one(c, key, op, payload, Cause::Push, dz, q);
        }
    }
    let zf = z.0.get_or_insert_with(|| make(dz).map(std::rc::Rc::new));
    push_frame(c, key, zf.as_ref().unwrap_or(plain), q)
}

/// Queue one message compressed for this connection alone (a reply, a
/// send, or a push in dedicated mode) under the policy for `cause`.
#[cfg(feature = "deflate")]
pub(crate) fn push_one(
    c: &mut Conn,
    key: usize,
    op: crate::protocol::OpCode,
    payload: &[u8],
    cause: Cause,
    dz: &mut Worker,
    q: &mut Queues<'_>,
) -> Queued {
    let ext = c.deflate;
    c.out
        .push_owned(q.pool, |v| dz.frame_for(key, ext, op, payload, v));
    admit(c, key, cause, q)
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::split_frame;
    use crate::protocol::{encode, OpCode};

    #[test]
    fn only_whole_single_frames_are_recompressed() {
        let mut f = Vec::new();
        encode::frame_into(&mut f, OpCode::Text, b"hello");
        assert_eq!(split_frame(&f), Some((OpCode::Text, &b"hello"[..])));
        // A fragment, two frames in one buffer, a truncated frame: sent as they are.
        let mut frag = Vec::new();
        encode::frame_header_into(&mut frag, false, OpCode::Text, 2);
        frag.extend_from_slice(b"he");
        assert_eq!(split_frame(&frag), None);
        let two = [f.clone(), f.clone()].concat();
        assert_eq!(split_frame(&two), None);
        assert_eq!(split_frame(&f[..4]), None);
        let mut cont = Vec::new();
        encode::frame_into(&mut cont, OpCode::Continuation, b"x");
        assert_eq!(split_frame(&cont), None);
    }
}
