//! Incremental frame and message decoder (RFC 6455 §5), sans-IO.
//!
//! Feed it bytes in any split. Payloads are unmasked in place in the
//! caller's buffer. A message whose single frame lies whole in the input is
//! returned as a slice of that input (no copy); fragmented or split messages
//! are assembled in a buffer the decoder allocates only while such a message
//! is in progress. Limits are checked from the frame header, before any
//! payload is buffered. The decoder itself is under 100 bytes, so an idle
//! connection costs almost nothing.

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
}

/// Per-connection decoder state.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Assembly of a data message that is fragmented or split across inputs.
    buf: Vec<u8>,
    /// Assembly of a control payload split across inputs.
    ctrl: Vec<u8>,
    /// Payload bytes still to come for the current frame.
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
        !self.in_payload && self.hdr_len == 0 && self.msg.is_none()
    }

    /// Free the assembly buffers if no message needs them (call when a
    /// connection goes idle so it holds no heap memory).
    pub fn release_buffers(&mut self) {
        if self.msg.is_none() {
            self.buf = Vec::new();
        }
        if !(self.in_payload && self.frame_control.is_some()) {
            self.ctrl = Vec::new();
        }
    }

    /// Heap bytes held by the assembly buffers.
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.ctrl.capacity()
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
                });
            }
            if self.in_payload {
                let avail = input.len() - pos;
                let take = (self.remaining.min(avail as u64)) as usize;
                let chunk = &mut input[pos..pos + take];
                if let Some(key) = self.mask {
                    self.mask_pos = apply_mask(chunk, key, self.mask_pos as usize) as u8;
                }
                pos += take;
                self.remaining -= take as u64;
                if self.frame_control.is_some() {
                    self.ctrl.extend_from_slice(chunk);
                } else {
                    self.append_data(chunk)?;
                }
                if self.remaining > 0 {
                    continue;
                }
                self.in_payload = false;
                if let Some(op) = self.frame_control {
                    let message = control_message(op, &self.ctrl)?;
                    return Ok(Decoded {
                        consumed: pos,
                        message: Some(message),
                    });
                }
                if self.frame_fin {
                    let message = self.finish_assembled()?;
                    return Ok(Decoded {
                        consumed: pos,
                        message: Some(message),
                    });
                }
                continue;
            }

            // Frame header.
            let avail = &input[pos..];
            let (h, used) = if self.hdr_len == 0 {
                match FrameHeader::parse(avail, cfg.allowed_rsv)? {
                    Some(parsed) => parsed,
                    None => {
                        self.hdr[..avail.len()].copy_from_slice(avail);
                        self.hdr_len = avail.len() as u8;
                        return Ok(Decoded {
                            consumed: input.len(),
                            message: None,
                        });
                    }
                }
            } else {
                let have = self.hdr_len as usize;
                let take = (MAX_HEADER_LEN - have).min(avail.len());
                self.hdr[have..have + take].copy_from_slice(&avail[..take]);
                match FrameHeader::parse(&self.hdr[..have + take], cfg.allowed_rsv)? {
                    Some((h, hlen)) => {
                        self.hdr_len = 0;
                        (h, hlen - have)
                    }
                    None => {
                        self.hdr_len = (have + take) as u8;
                        return Ok(Decoded {
                            consumed: input.len(),
                            message: None,
                        });
                    }
                }
            };
            pos += used;
            self.begin_frame(cfg, &h)?;

            let avail = (input.len() - pos) as u64;
            if h.len > avail {
                // Payload split across inputs: stream it.
                self.in_payload = true;
                self.remaining = h.len;
                self.frame_fin = h.fin;
                self.mask = h.mask;
                self.mask_pos = 0;
                self.frame_control = if h.opcode.is_control() {
                    Some(h.opcode)
                } else {
                    None
                };
                if h.opcode.is_control() {
                    self.ctrl.clear();
                    // At most 125 bytes (checked by the header parser).
                    self.ctrl.reserve_exact(h.len as usize);
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
                });
            }
            if h.fin && h.opcode != OpCode::Continuation {
                // A whole single-frame message: hand out the input itself.
                self.msg = None;
                let input: &'a [u8] = input;
                let payload = &input[start..pos];
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
                });
            }
            self.append_data(&input[start..pos])?;
            if h.fin {
                let message = self.finish_assembled()?;
                return Ok(Decoded {
                    consumed: pos,
                    message: Some(message),
                });
            }
        }
    }

    /// Check a new frame against the role, the fragmentation rules and the
    /// limits, and start a new data message where it begins one.
    fn begin_frame(&mut self, cfg: &DecoderConfig, h: &FrameHeader) -> Result<(), ProtocolError> {
        match (cfg.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            return Ok(());
        }
        if h.len > cfg.max_frame_size {
            return Err(ProtocolError::FrameTooLarge);
        }
        if h.opcode == OpCode::Continuation {
            if self.msg.is_none() {
                return Err(ProtocolError::UnexpectedContinuation);
            }
        } else {
            if self.msg.is_some() {
                return Err(ProtocolError::ExpectedContinuation);
            }
            self.msg = Some(h.opcode);
            self.msg_len = 0;
            self.utf8.reset();
            self.buf.clear();
        }
        self.msg_len = self
            .msg_len
            .checked_add(h.len)
            .ok_or(ProtocolError::MessageTooLarge)?;
        if self.msg_len > cfg.max_message_size {
            return Err(ProtocolError::MessageTooLarge);
        }
        Ok(())
    }

    /// Append unmasked payload of the current data message, validating text.
    fn append_data(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.msg == Some(OpCode::Text) && self.utf8.feed(chunk).is_err() {
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
    fn finish_assembled(&mut self) -> Result<Message<'_>, ProtocolError> {
        let op = self.msg.take();
        if op == Some(OpCode::Text) {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            debug_assert!(std::str::from_utf8(&self.buf).is_ok());
            // SAFETY: every byte of `buf` went through `append_data`, whose
            // incremental validator accepted it, and `finish` confirmed no
            // code point is left open, so `buf` is valid UTF-8.
            let text = unsafe { std::str::from_utf8_unchecked(&self.buf) };
            Ok(Message::Text(text))
        } else {
            Ok(Message::Binary(&self.buf))
        }
    }
}

/// Build the message for a complete control frame.
fn control_message(op: OpCode, payload: &[u8]) -> Result<Message<'_>, ProtocolError> {
    Ok(match op {
        OpCode::Ping => Message::Ping(payload),
        OpCode::Pong => Message::Pong(payload),
        _ => Message::Close(close::parse_payload(payload)?),
    })
}
