//! Frame encoder: header and payload into one buffer.
//!
//! Server frames are unmasked; [`shared`] encodes a message once into
//! reference-counted bytes that any number of connections can queue without
//! copying. Masked (client-role) encoding is here for the load generator and
//! the tests.

use std::sync::Arc;

use super::close;
use super::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use super::mask::apply_mask;

/// Append one unmasked frame with FIN set to `out`.
#[inline]
pub fn frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    // One allocation for header and payload (not a small one, then a copy).
    out.reserve(MAX_HEADER_LEN + payload.len());
    frame_header_into(out, true, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Append only the header of an unmasked frame; the caller appends
/// `len` payload bytes after it.
#[inline]
pub fn frame_header_into(out: &mut Vec<u8>, fin: bool, opcode: OpCode, len: usize) {
    frame_header_rsv_into(out, fin, 0, opcode, len);
}

/// Write the header of an unmasked frame with FIN set into `out`; returns
/// its length (the payload of `len` bytes goes after it).
#[inline]
pub fn frame_header(out: &mut [u8; MAX_HEADER_LEN], opcode: OpCode, len: usize) -> usize {
    FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        len: len as u64,
    }
    .write(out)
}

/// [`frame_header_into`] with reserved bits `rsv` (RSV1 marks a
/// permessage-deflate message).
#[inline]
pub fn frame_header_rsv_into(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, len: usize) {
    let h = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: None,
        len: len as u64,
    };
    let mut hb = [0u8; MAX_HEADER_LEN];
    let n = h.write(&mut hb);
    out.extend_from_slice(&hb[..n]);
}

/// Length of the header of the unmasked or masked frame that `frame` starts
/// with (0 if `frame` is too short to hold one).
pub fn header_len(frame: &[u8]) -> usize {
    let Some(&b1) = frame.get(1) else { return 0 };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let n = match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    } + mask;
    if frame.len() < n {
        0
    } else {
        n
    }
}

/// Encode one unmasked, final frame into a fresh exact-size buffer shared by
/// reference count: encode once, queue on every recipient.
pub fn shared(opcode: OpCode, payload: &[u8]) -> Arc<[u8]> {
    // One allocation, written in place: building a Vec and converting it
    // would allocate twice and copy the payload twice (the Arc needs its
    // counts in front of the bytes).
    let mut hb = [0u8; MAX_HEADER_LEN];
    let n = frame_header(&mut hb, opcode, payload.len());
    let total = n + payload.len();
    let mut arc: Arc<[u8]> = std::iter::repeat_n(0u8, total).collect();
    match Arc::get_mut(&mut arc) {
        Some(buf) => {
            buf[..n].copy_from_slice(&hb[..n]);
            buf[n..].copy_from_slice(payload);
            arc
        }
        // Unreachable: the Arc was just created and has no other owner.
        None => {
            let mut v = Vec::with_capacity(total);
            frame_into(&mut v, opcode, payload);
            Arc::from(v)
        }
    }
}

/// Append a close frame with `code` and `reason` (cut to 123 bytes on a
/// character boundary). `None` sends an empty close payload.
pub fn close_into(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    match code {
        None => frame_into(out, OpCode::Close, &[]),
        Some(code) => {
            let reason = close::truncate_reason(reason);
            frame_header_into(out, true, OpCode::Close, 2 + reason.len());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

/// Append one masked frame (client role) with the given FIN bit and key.
pub fn masked_frame_into(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    key: [u8; 4],
) {
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        len: payload.len() as u64,
    };
    let mut hb = [0u8; MAX_HEADER_LEN];
    let n = h.write(&mut hb);
    out.extend_from_slice(&hb[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

/// Append a masked close frame (client role).
pub fn masked_close_into(out: &mut Vec<u8>, code: u16, reason: &str, key: [u8; 4]) {
    let reason = close::truncate_reason(reason);
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    masked_frame_into(out, true, OpCode::Close, &p, key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_encodings_are_minimal() {
        for (len, hdr) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = Vec::new();
            frame_into(&mut out, OpCode::Binary, &vec![7u8; len]);
            assert_eq!(out.len(), hdr + len, "len {len}");
            assert_eq!(out[0], 0x82);
        }
    }

    #[test]
    fn rfc_examples() {
        let mut out = Vec::new();
        frame_into(&mut out, OpCode::Text, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let mut out = Vec::new();
        masked_frame_into(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn close_reason_is_cut_on_char_boundary() {
        let mut out = Vec::new();
        let long = "é".repeat(100); // 200 bytes
        close_into(&mut out, Some(1000), &long);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn shared_frame_is_exact() {
        let f = shared(OpCode::Text, b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
    }
}
