//! Incremental frame and message decoder (RFC 6455 §5), sans-IO.
//!
//! Feed it bytes in any split. Payloads are unmasked in place in the
//! caller's buffer. A message whose single frame lies whole in the input is
//! returned as a slice of that input (no copy); fragmented or split messages
//! are assembled in a buffer the decoder allocates only while such a message
//! is in progress. Limits are checked from the frame header, before any
//! payload is buffered. The decoder itself is one pointer (8 bytes): all the
//! state of a partially received frame or message lives in a box that exists
//! only while one is in progress, so an idle connection costs almost nothing.

use super::close::{self, CloseFrame};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Which side of the connection decodes: servers require masked frames,
/// clients require unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decode client-to-server frames (must be masked).
    Server,
    /// Decode server-to-client frames (must not be masked).
    Client,
}

/// Limits and role, shared by all the decoders of a worker (kept out of the
/// per-connection [`Decoder`] to keep connections small).
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Which side decodes.
    pub role: Role,
    /// Largest accepted frame payload; larger → 1009.
    pub max_frame_size: u64,
    /// Largest accepted message (sum of its fragments); larger → 1009.
    pub max_message_size: u64,
    /// RSV bits a negotiated extension allows (0b100 = RSV1); others → 1002.
    /// RSV1 is permessage-deflate's "compressed" bit (RFC 7692): a message
    /// whose first frame has it is reported in [`Decoded::compressed`], and
    /// RSV1 on a control or continuation frame is an error.
    pub allowed_rsv: u8,
}

/// Default frame and message limit: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            role: Role::Server,
            max_frame_size: DEFAULT_MAX_MESSAGE,
            max_message_size: DEFAULT_MAX_MESSAGE,
            allowed_rsv: 0,
        }
    }
}

impl DecoderConfig {
    /// Defaults for the given role.
    pub fn for_role(role: Role) -> Self {
        DecoderConfig {
            role,
            ..Default::default()
        }
    }
}

/// A complete message or control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message (validated UTF-8).
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame (already checked: valid code, UTF-8 reason), or `None`
    /// when it carried no payload.
    Close(Option<CloseFrame<'a>>),
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Input bytes consumed. When `message` is `None` this is all of the input.
    pub consumed: usize,
    /// The message completed by these bytes, if any.
    pub message: Option<Message<'a>>,
    /// `Some(Text | Binary)`: the message had RSV1 set (permessage-deflate,
    /// RFC 7692) and `message` is `Message::Binary` holding its still
    /// compressed payload; the opcode says what it inflates to (text is
    /// validated only after inflating). Only with `allowed_rsv` RSV1.
    pub compressed: Option<OpCode>,
}

/// RSV1: the "Per-Message Compressed" bit of permessage-deflate.
pub const RSV1: u8 = 0b100;

/// Per-connection decoder state: a single pointer (8 bytes).
///
/// A whole single-frame message (or control frame) in the input is decoded
/// without touching any state. Everything a partially received frame or
/// message needs (the split header, the payload position and mask, the
/// assembly buffers, the UTF-8 validator) lives in one box, allocated when
/// the first split arrives and freed by [`Decoder::release_buffers`] once
/// the decoder is idle again.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<Box<Partial>>,
}

/// The state of a frame or message received in parts. When it is idle
/// (`!in_payload && hdr_len == 0 && msg.is_none()`) none of its fields
/// matter to the next byte, so it may be dropped.
#[derive(Debug, Default)]
struct Partial {
    /// Assembly of a data message that is fragmented or split across inputs.
    buf: Vec<u8>,
    /// Assembly of a control payload split across inputs.
    ctrl: Vec<u8>,
    /// Payload bytes still to come for the current frame. Frame lengths are
    /// up to 2^63 - 1 and the limits are `u64`, so this stays 64-bit.
    remaining: u64,
    /// Announced length of the data message so far.
    msg_len: u64,
    /// Header bytes received so far when a header is split.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// Inside a frame's payload (header done).
    in_payload: bool,
    frame_control: Option<OpCode>,
    frame_fin: bool,
    mask: Option<[u8; 4]>,
    mask_pos: u8,
    /// Text or Binary while a data message is in progress.
    msg: Option<OpCode>,
    /// The message in progress has RSV1 (its payload is deflated: no UTF-8
    /// check until it is inflated).
    compressed: bool,
    utf8: Utf8Validator,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no frame or message is partially received: the decoder holds
    /// nothing that the next byte depends on beyond its fixed fields.
    pub fn is_idle(&self) -> bool {
        self.partial.as_deref().is_none_or(Partial::is_idle)
    }

    /// Free the assembly buffers if no message needs them, and all of the
    /// partial-receive state when idle (call when a connection goes idle so
    /// it holds no heap memory).
    pub fn release_buffers(&mut self) {
        let Some(p) = self.partial.as_deref_mut() else {
            return;
        };
        if p.is_idle() {
            self.partial = None;
            return;
        }
        if p.msg.is_none() {
            p.buf = Vec::new();
        }
        if !(p.in_payload && p.frame_control.is_some()) {
            p.ctrl = Vec::new();
        }
    }

    /// Heap bytes held by the assembly buffers (not counting the fixed-size
    /// box that holds them while something is partially received).
    pub fn buffered_capacity(&self) -> usize {
        self.partial
            .as_deref()
            .map_or(0, |p| p.buf.capacity() + p.ctrl.capacity())
    }

    /// The partial-receive state, allocated on first need.
    #[inline]
    fn state(&mut self) -> &mut Partial {
        self.partial.get_or_insert_with(new_partial)
    }

    /// Decode from `input`, unmasking it in place, up to the end of the first
    /// complete message. Call again with the rest (`&mut input[consumed..]`)
    /// until it is empty. After an error the stream is unusable: send the
    /// error's close code and close.
    pub fn decode<'a>(
        &'a mut self,
        cfg: &DecoderConfig,
        input: &'a mut [u8],
    ) -> Result<Decoded<'a>, ProtocolError> {
        let mut pos = 0usize;
        loop {
            if pos == input.len() {
                return Ok(Decoded {
                    consumed: pos,
                    message: None,
                    compressed: None,
                });
            }
            let mut hdr_len = 0;
            if let Some(p) = self.partial.as_deref_mut() {
                if p.in_payload {
                    let avail = input.len() - pos;
                    let take = (p.remaining.min(avail as u64)) as usize;
                    let chunk = &mut input[pos..pos + take];
                    if let Some(key) = p.mask {
                        p.mask_pos = apply_mask(chunk, key, p.mask_pos as usize) as u8;
                    }
                    pos += take;
                    p.remaining -= take as u64;
                    if p.frame_control.is_some() {
                        p.ctrl.extend_from_slice(chunk);
                    } else {
                        p.append_data(chunk)?;
                    }
                    if p.remaining > 0 {
                        continue;
                    }
                    p.in_payload = false;
                    if let Some(op) = p.frame_control {
                        // A fresh borrow: only this returning branch may lend
                        // `self` out for 'a.
                        let message = control_message(op, &self.state().ctrl)?;
                        return Ok(Decoded {
                            consumed: pos,
                            message: Some(message),
                            compressed: None,
                        });
                    }
                    if p.frame_fin {
                        let (message, compressed) = self.state().finish_assembled()?;
                        return Ok(Decoded {
                            consumed: pos,
                            message: Some(message),
                            compressed,
                        });
                    }
                    continue;
                }
                hdr_len = p.hdr_len;
            }

            // Frame header.
            let avail = &input[pos..];
            let (h, used) = if hdr_len == 0 {
                match FrameHeader::parse(avail, cfg.allowed_rsv)? {
                    Some(parsed) => parsed,
                    None => {
                        let p = self.state();
                        p.hdr[..avail.len()].copy_from_slice(avail);
                        p.hdr_len = avail.len() as u8;
                        return Ok(Decoded {
                            consumed: input.len(),
                            message: None,
                            compressed: None,
                        });
                    }
                }
            } else {
                let p = self.state();
                let have = hdr_len as usize;
                let take = (MAX_HEADER_LEN - have).min(avail.len());
                p.hdr[have..have + take].copy_from_slice(&avail[..take]);
                match FrameHeader::parse(&p.hdr[..have + take], cfg.allowed_rsv)? {
                    Some((h, hlen)) => {
                        p.hdr_len = 0;
                        (h, hlen - have)
                    }
                    None => {
                        p.hdr_len = (have + take) as u8;
                        return Ok(Decoded {
                            consumed: input.len(),
                            message: None,
                            compressed: None,
                        });
                    }
                }
            };
            pos += used;
            let avail = (input.len() - pos) as u64;
            let whole = h.len <= avail;
            self.begin_frame(cfg, &h, whole)?;

            if !whole {
                // Payload split across inputs: stream it.
                let p = self.state();
                p.in_payload = true;
                p.remaining = h.len;
                p.frame_fin = h.fin;
                p.mask = h.mask;
                p.mask_pos = 0;
                p.frame_control = if h.opcode.is_control() {
                    Some(h.opcode)
                } else {
                    None
                };
                if h.opcode.is_control() {
                    p.ctrl.clear();
                    // At most 125 bytes (checked by the header parser).
                    p.ctrl.reserve_exact(h.len as usize);
                }
                continue;
            }

            // The whole payload is here.
            let start = pos;
            pos += h.len as usize;
            if let Some(key) = h.mask {
                apply_mask(&mut input[start..pos], key, 0);
            }
            if h.opcode.is_control() {
                let input: &'a [u8] = input;
                let message = control_message(h.opcode, &input[start..pos])?;
                return Ok(Decoded {
                    consumed: pos,
                    message: Some(message),
                    compressed: None,
                });
            }
            if h.fin && h.opcode != OpCode::Continuation {
                // A whole single-frame message: hand out the input itself.
                // `begin_frame` left no message in progress.
                debug_assert!(self.partial.as_deref().is_none_or(|p| p.msg.is_none()));
                let input: &'a [u8] = input;
                let payload = &input[start..pos];
                if h.rsv & RSV1 != 0 {
                    return Ok(Decoded {
                        consumed: pos,
                        message: Some(Message::Binary(payload)),
                        compressed: Some(h.opcode),
                    });
                }
                let message = if h.opcode == OpCode::Text {
                    Message::Text(
                        std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
                    )
                } else {
                    Message::Binary(payload)
                };
                return Ok(Decoded {
                    consumed: pos,
                    message: Some(message),
                    compressed: None,
                });
            }
            self.state().append_data(&input[start..pos])?;
            if h.fin {
                let (message, compressed) = self.state().finish_assembled()?;
                return Ok(Decoded {
                    consumed: pos,
                    message: Some(message),
                    compressed,
                });
            }
        }
    }

    /// Check a new frame against the role, the fragmentation rules and the
    /// limits, and start a new data message where it begins one. A whole
    /// (`whole`: its payload is in the input) single-frame data message within
    /// the limits needs no state and starts none.
    fn begin_frame(
        &mut self,
        cfg: &DecoderConfig,
        h: &FrameHeader,
        whole: bool,
    ) -> Result<(), ProtocolError> {
        match (cfg.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.rsv & RSV1 != 0 && (h.opcode.is_control() || h.opcode == OpCode::Continuation) {
            // RFC 7692 §6.1: only the first frame of a data message may
            // carry the compressed bit.
            return Err(ProtocolError::ReservedBits);
        }
        if h.opcode.is_control() {
            return Ok(());
        }
        if h.len > cfg.max_frame_size {
            return Err(ProtocolError::FrameTooLarge);
        }
        let in_progress = self.partial.as_deref().is_some_and(|p| p.msg.is_some());
        if h.fin
            && whole
            && h.opcode != OpCode::Continuation
            && !in_progress
            && h.len <= cfg.max_message_size
        {
            // A whole single-frame message: nothing to record.
            return Ok(());
        }
        self.begin_partial(cfg, h, in_progress)
    }

    /// The rest of [`Self::begin_frame`] for a data frame that continues or
    /// starts a message needing state (kept out of the hot path).
    #[inline(never)]
    fn begin_partial(
        &mut self,
        cfg: &DecoderConfig,
        h: &FrameHeader,
        in_progress: bool,
    ) -> Result<(), ProtocolError> {
        let p = if h.opcode == OpCode::Continuation {
            if !in_progress {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            self.state()
        } else {
            if in_progress {
                return Err(ProtocolError::ExpectedContinuation);
            }
            // Fragmented, split, or too large: record the message as begun
            // (also on the error below, as the decoder always has).
            let p = self.state();
            p.msg = Some(h.opcode);
            p.compressed = h.rsv & RSV1 != 0;
            p.msg_len = 0;
            p.utf8.reset();
            p.buf.clear();
            p
        };
        p.msg_len = p
            .msg_len
            .checked_add(h.len)
            .ok_or(ProtocolError::MessageTooLarge)?;
        if p.msg_len > cfg.max_message_size {
            return Err(ProtocolError::MessageTooLarge);
        }
        Ok(())
    }
}

impl Partial {
    /// Nothing partially received: no field matters to the next byte.
    fn is_idle(&self) -> bool {
        !self.in_payload && self.hdr_len == 0 && self.msg.is_none()
    }

    /// Append unmasked payload of the current data message, validating text.
    fn append_data(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.msg == Some(OpCode::Text) && !self.compressed && self.utf8.feed(chunk).is_err() {
            // Abandon the message. `finish_assembled` relies on `buf` holding
            // exactly the bytes the validator accepted; the validator may have
            // consumed part of this rejected chunk, so a caller that went on
            // decoding after this error (which it must not) could otherwise
            // get a `str` that is not UTF-8.
            self.msg = None;
            self.buf.clear();
            self.utf8.reset();
            return Err(ProtocolError::InvalidUtf8);
        }
        let need = self.buf.len().saturating_add(chunk.len());
        if need > self.buf.capacity() {
            // Grow geometrically, but never past the length the message has
            // announced so far (itself within the configured limit), so the
            // buffer cannot exceed `max_message_size` the way doubling could.
            let announced = usize::try_from(self.msg_len).unwrap_or(usize::MAX);
            let cap = self
                .buf
                .capacity()
                .saturating_mul(2)
                .max(64)
                .min(announced)
                .max(need);
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The final frame of an assembled message arrived.
    fn finish_assembled(&mut self) -> Result<(Message<'_>, Option<OpCode>), ProtocolError> {
        let op = self.msg.take();
        if self.compressed {
            self.compressed = false;
            return Ok((Message::Binary(&self.buf), op));
        }
        if op == Some(OpCode::Text) {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            debug_assert!(std::str::from_utf8(&self.buf).is_ok());
            // SAFETY: every byte of `buf` went through `append_data`, whose
            // incremental validator accepted it, and `finish` confirmed no
            // code point is left open, so `buf` is valid UTF-8.
            let text = unsafe { std::str::from_utf8_unchecked(&self.buf) };
            Ok((Message::Text(text), None))
        } else {
            Ok((Message::Binary(&self.buf), None))
        }
    }
}

/// A fresh partial-receive state (out of line: the hot path never needs it).
#[cold]
#[inline(never)]
fn new_partial() -> Box<Partial> {
    Box::default()
}

/// Build the message for a complete control frame.
fn control_message(op: OpCode, payload: &[u8]) -> Result<Message<'_>, ProtocolError> {
    Ok(match op {
        OpCode::Ping => Message::Ping(payload),
        OpCode::Pong => Message::Pong(payload),
        _ => Message::Close(close::parse_payload(payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode::masked_frame_into(&mut v, fin, op, payload, [0x37, 0xfa, 0x21, 0x3d]);
        v
    }

    #[test]
    fn decoder_is_one_pointer() {
        let size = std::mem::size_of::<Decoder>();
        let partial = std::mem::size_of::<Partial>();
        eprintln!("Decoder {size} B (was 96 B); partial-receive box {partial} B");
        assert!(size <= 8, "Decoder grew to {size} bytes");
    }

    #[test]
    fn whole_frames_allocate_nothing() {
        let cfg = DecoderConfig::default();
        let mut dec = Decoder::new();
        let mut input = [
            frame(true, OpCode::Text, b"hello"),
            frame(true, OpCode::Binary, &[7; 300]),
            frame(true, OpCode::Ping, b"p"),
            frame(true, OpCode::Text, b""),
        ]
        .concat();
        let mut pos = 0;
        let mut n = 0;
        while pos < input.len() {
            let d = dec.decode(&cfg, &mut input[pos..]).expect("valid");
            assert!(d.message.is_some());
            pos += d.consumed;
            n += 1;
        }
        assert_eq!(n, 4);
        assert!(dec.partial.is_none());
        assert!(dec.is_idle());
    }

    #[test]
    fn split_state_is_boxed_then_freed_when_idle() {
        let cfg = DecoderConfig::default();
        let mut dec = Decoder::new();
        // A header split after one byte, then a payload split in two.
        let mut f = frame(true, OpCode::Binary, b"abcdef");
        let (a, rest) = f.split_at_mut(1);
        assert_eq!(dec.decode(&cfg, a).expect("ok").message, None);
        assert!(dec.partial.is_some());
        assert!(!dec.is_idle());
        dec.release_buffers();
        assert!(dec.partial.is_some(), "kept while a header is split");
        let (b, c) = rest.split_at_mut(rest.len() - 2);
        assert_eq!(dec.decode(&cfg, b).expect("ok").message, None);
        let d = dec.decode(&cfg, c).expect("ok");
        assert_eq!(d.message, Some(Message::Binary(b"abcdef")));
        assert!(dec.is_idle());
        assert!(dec.partial.is_some());
        dec.release_buffers();
        assert!(dec.partial.is_none());
        assert_eq!(dec.buffered_capacity(), 0);

        // A fragmented text message with a split ping in the middle.
        let mut input = [
            frame(false, OpCode::Text, "κό".as_bytes()),
            frame(true, OpCode::Ping, b"ping"),
            frame(true, OpCode::Continuation, "σμε".as_bytes()),
        ]
        .concat();
        let first = frame(false, OpCode::Text, "κό".as_bytes()).len();
        let d = dec.decode(&cfg, &mut input[..first + 3]).expect("ok");
        assert_eq!(d.message, None);
        dec.release_buffers();
        assert!(dec.buffered_capacity() > 0, "the text so far is kept");
        let d = dec.decode(&cfg, &mut input[first + 3..]).expect("ok");
        assert_eq!(d.message, Some(Message::Ping(b"ping")));
        let ping = d.consumed;
        let d = dec
            .decode(&cfg, &mut input[first + 3 + ping..])
            .expect("ok");
        assert_eq!(d.message, Some(Message::Text("κόσμε")));
        dec.release_buffers();
        assert!(dec.partial.is_none());
    }

    #[test]
    fn oversized_single_frame_is_rejected_and_leaves_a_message_begun() {
        // As before the state moved into a box: a too-large first frame
        // counts as a begun message (the stream is unusable afterwards).
        let cfg = DecoderConfig {
            max_message_size: 4,
            ..DecoderConfig::default()
        };
        let mut dec = Decoder::new();
        let mut f = frame(true, OpCode::Binary, b"12345");
        assert_eq!(
            dec.decode(&cfg, &mut f).map(|d| d.consumed),
            Err(ProtocolError::MessageTooLarge)
        );
        assert!(!dec.is_idle());
        let mut dec = Decoder::new();
        let mut f = frame(true, OpCode::Binary, b"1234");
        let d = dec.decode(&cfg, &mut f).expect("ok");
        assert_eq!(d.message, Some(Message::Binary(b"1234")));
        assert!(dec.partial.is_none());
    }
}
