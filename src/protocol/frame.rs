//! Frame header layout (RFC 6455 §5.2) and opcodes.

use super::error::ProtocolError;

/// Frame opcodes that RFC 6455 defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text (UTF-8) data.
    Text = 0x1,
    /// 0x2: binary data.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for the low nibble `b`, or the reserved-opcode error.
    pub fn from_u8(b: u8) -> Result<OpCode, ProtocolError> {
        Ok(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Longest possible frame header: 2 + 8 (length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// RSV1-3 as bits 0b100 (RSV1), 0b010, 0b001.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Parse a header from the start of `buf`. `Ok(None)`: more bytes needed.
    /// Errors that the first one or two bytes already show (reserved opcode,
    /// RSV bits not in `allowed_rsv`, bad control frames) are reported as soon
    /// as those bytes are present. Returns the header and its length in bytes.
    pub fn parse(
        buf: &[u8],
        allowed_rsv: u8,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        if rsv & !allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() && len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlFrameTooLong);
        }
        let (len, mut pos) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            let Some(b) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([b[0], b[1], b[2], b[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                len,
            },
            pos,
        )))
    }

    /// Write this header into `out`; returns the number of bytes written
    /// (always the shortest length encoding).
    pub fn write(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = if self.len < 126 {
            out[1] = mask_bit | self.len as u8;
            2
        } else if self.len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

/// Length of the header for a payload of `len` bytes, masked or not.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}
