//! permessage-deflate (RFC 7692), sans-IO: the negotiation in the opening
//! handshake (§5, §7.1), and with the `deflate` feature the message codec
//! (§7.2) on `flate2` (zlib-rs backend).
//!
//! The frame-level rules (RSV1 only on the first frame of a data message)
//! live in the decoder ([`super::decode`]), which reports a compressed
//! message in [`super::Decoded::compressed`] instead of inflating it.
//!
//! What the server answers, whatever the client offered:
//! - always `client_no_context_takeover` (§7.1.1.2 lets the server add it to
//!   any offer): every client message is a fresh deflate stream, so a
//!   worker inflates it with one shared, reset inflater and a connection
//!   holds no inflate state at all;
//! - in [`Compression::Shared`] mode always `server_no_context_takeover`:
//!   the same compressed bytes are valid for every recipient;
//! - `server_max_window_bits=N` when the client asked for it, or in
//!   dedicated mode when `--compression-window-bits` is under 15. In shared
//!   mode an offer with N < 15 is declined (the shared frames are compressed
//!   with a 32 KiB window); in dedicated mode N = 9..15 is honoured and
//!   N = 8 is declined: zlib cannot produce a raw deflate stream with a
//!   256-byte window (it silently uses 512 bytes), and §7.1.2.1 lets a server
//!   decline an offer whose parameter it cannot honour. The next offer is
//!   then considered.
//! - `client_max_window_bits` is never sent: we inflate with a 32 KiB window,
//!   which reads any window the client uses.

use super::http::Request;

/// The extension token.
pub const EXTENSION: &str = "permessage-deflate";

/// How server → client messages are compressed (uWebSockets' terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never negotiate permessage-deflate.
    Off,
    /// No context takeover server → client: a publication or broadcast is
    /// deflated once and the same compressed frame is queued on every
    /// recipient that negotiated the extension.
    Shared,
    /// A compressor per connection, with context takeover (unless the client
    /// asked for `server_no_context_takeover`): better ratios for 1:1
    /// traffic, at the memory cost of one deflate state per connection that
    /// was sent a compressed message.
    Dedicated,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Compression::Off),
            "shared" => Ok(Compression::Shared),
            "dedicated" => Ok(Compression::Dedicated),
            _ => Err(format!(
                "unknown compression {s:?} (off, shared or dedicated)"
            )),
        }
    }
}

/// Server-side permessage-deflate settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// The mode. Default [`Compression::Shared`] when the crate is built with
    /// the `deflate` feature, [`Compression::Off`] without it.
    pub mode: Compression,
    /// Messages whose payload is shorter than this go uncompressed (RSV1
    /// clear, always allowed). Default 64 bytes.
    pub min_size: usize,
    /// Largest LZ77 window of a dedicated compressor, 9..=15 (default 15):
    /// answered as `server_max_window_bits` when smaller than what the
    /// client allows (RFC 7692 §7.1.2.1 lets the server name it unasked).
    /// Shared mode always uses 15.
    pub max_window_bits: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: if cfg!(feature = "deflate") {
                Compression::Shared
            } else {
                Compression::Off
            },
            min_size: 64,
            max_window_bits: 15,
        }
    }
}

/// The agreed parameters of one connection (what the response says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (always true:
    /// see the module documentation).
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, 9..=15; `Some` when the response names it.
    pub server_max_window_bits: Option<u8>,
}

impl Params {
    /// The window the server compresses with.
    pub fn server_window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }
}

/// One offer's parameters as the client sent them.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: bool,
}

/// Choose the first acceptable `permessage-deflate` offer of the request's
/// `Sec-WebSocket-Extensions` headers (all of them, in order). `None`:
/// compression is off, nothing was offered, or every offer was malformed or
/// asked for something we cannot honour: the extension is declined, the
/// connection is not refused.
pub fn negotiate(req: &Request<'_>, cfg: &DeflateConfig) -> Option<Params> {
    if cfg.mode == Compression::Off {
        return None;
    }
    let values = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| h.value);
    negotiate_values(values, cfg)
}

/// [`negotiate`] over raw header values (for tests and other front ends).
pub fn negotiate_values<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    cfg: &DeflateConfig,
) -> Option<Params> {
    if cfg.mode == Compression::Off {
        return None;
    }
    for value in values {
        for ext in split_outside_quotes(value, b',') {
            let mut parts = split_outside_quotes(ext, b';').into_iter();
            let Some(name) = parts.next() else { continue };
            if !name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
                continue;
            }
            let Some(offer) = parse_offer(parts) else {
                continue;
            };
            if let Some(p) = accept(&offer, cfg) {
                return Some(p);
            }
        }
    }
    None
}

/// Our answer to a well-formed offer, or `None` to decline it.
fn accept(o: &Offer, cfg: &DeflateConfig) -> Option<Params> {
    let _ = o.client_max_window_bits; // any client window is fine: we inflate with 15
    let _ = o.client_no_context_takeover; // we ask for it anyway
    let mode = cfg.mode;
    let bits = match (mode, o.server_max_window_bits) {
        (Compression::Off, _) => return None,
        (Compression::Shared, Some(n)) if n < 15 => return None,
        (Compression::Shared, offered) => offered,
        (Compression::Dedicated, Some(8)) => return None,
        (Compression::Dedicated, offered) => {
            let ours = cfg.max_window_bits.clamp(9, 15);
            let bits = offered.unwrap_or(15).min(ours);
            (offered.is_some() || bits < 15).then_some(bits)
        }
    };
    Some(Params {
        server_no_context_takeover: mode == Compression::Shared || o.server_no_context_takeover,
        client_no_context_takeover: true,
        server_max_window_bits: bits,
    })
}

/// Parse the parameters of one offer; `None` if malformed (unknown or
/// repeated parameter, bad value).
fn parse_offer<'a>(params: impl Iterator<Item = &'a [u8]>) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = 0u8;
    for p in params {
        let (name, value) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&p[..i]), Some(unquote(trim(&p[i + 1..]))?)),
            None => (p, None),
        };
        let bit = match name {
            n if n.eq_ignore_ascii_case(b"server_no_context_takeover") => {
                value.is_none().then_some(())?;
                o.server_no_context_takeover = true;
                1
            }
            n if n.eq_ignore_ascii_case(b"client_no_context_takeover") => {
                value.is_none().then_some(())?;
                o.client_no_context_takeover = true;
                2
            }
            n if n.eq_ignore_ascii_case(b"server_max_window_bits") => {
                o.server_max_window_bits = Some(window_bits(value?)?);
                4
            }
            n if n.eq_ignore_ascii_case(b"client_max_window_bits") => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                o.client_max_window_bits = true;
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some(o)
}

/// A window-bits value: 8..=15, digits only, no leading zero (§7.1.2).
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A token or a quoted string's content (no escapes needed for our values;
/// an escape makes the value invalid for every parameter we know).
fn unquote(v: &[u8]) -> Option<&[u8]> {
    match v {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'"') && !inner.contains(&b'\\') => {
            Some(inner)
        }
        [] => None,
        v if v.contains(&b'"') => None,
        v => Some(v),
    }
}

/// Split on `sep` outside double quotes, trimming spaces, dropping empties.
fn split_outside_quotes(v: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            out.push(trim(&v[start..i]));
            start = i + 1;
        }
    }
    out.push(trim(&v[start..]));
    out.retain(|p| !p.is_empty());
    out
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Append the response header line for agreed parameters.
pub fn write_response(p: &Params, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate");
    if p.server_no_context_takeover {
        out.extend_from_slice(b"; server_no_context_takeover");
    }
    if p.client_no_context_takeover {
        out.extend_from_slice(b"; client_no_context_takeover");
    }
    if let Some(n) = p.server_max_window_bits {
        out.extend_from_slice(b"; server_max_window_bits=");
        if n >= 10 {
            out.push(b'1');
        }
        out.push(b'0' + n % 10);
    }
    out.extend_from_slice(b"\r\n");
}

/// The four bytes a sync flush ends with, removed from every compressed
/// message and appended again before inflating it (§7.2.1, §7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

#[cfg(feature = "deflate")]
pub use codec::{Deflater, InflateError, Inflater};

#[cfg(feature = "deflate")]
mod codec {
    use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

    use super::TAIL;

    /// A raw-deflate compressor for messages (§7.2.1).
    pub struct Deflater {
        c: Compress,
        no_context_takeover: bool,
    }

    impl std::fmt::Debug for Deflater {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Deflater")
        }
    }

    impl Deflater {
        /// A compressor with a `2^window_bits` byte window (9..=15; zlib
        /// cannot write a raw stream with an 8-bit window). With
        /// `no_context_takeover` every message is a fresh deflate stream.
        pub fn new(window_bits: u8, no_context_takeover: bool) -> Deflater {
            let bits = window_bits.clamp(9, 15);
            Deflater {
                c: Compress::new_with_window_bits(flate2::Compression::new(6), false, bits),
                no_context_takeover,
            }
        }

        /// Compress one message's payload, appending the compressed bytes
        /// (without the trailing `00 00 ff ff`) to `out`.
        pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
            let start = out.len();
            out.reserve(input.len() / 2 + 64);
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    out.reserve(out.capacity().max(64));
                }
                let in0 = self.c.total_in();
                // No error is possible with a valid state and a sync flush.
                if self
                    .c
                    .compress_vec(&input[pos..], out, FlushCompress::Sync)
                    .is_err()
                {
                    break;
                }
                pos += (self.c.total_in() - in0) as usize;
                // The flush is complete when it ended with room to spare.
                if pos == input.len() && out.len() < out.capacity() {
                    break;
                }
            }
            if out[start..].ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            }
            if self.no_context_takeover {
                self.c.reset();
            }
        }
    }

    /// Why an inflate failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InflateError {
        /// It inflates to more than the limit (close 1009).
        TooBig,
        /// Not valid deflate data (close 1007).
        Invalid,
    }

    /// A raw-deflate decompressor for messages without context takeover,
    /// reset before every message (one per worker).
    pub struct Inflater {
        d: Decompress,
    }

    impl std::fmt::Debug for Inflater {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Inflater")
        }
    }

    impl Default for Inflater {
        fn default() -> Self {
            Inflater {
                d: Decompress::new_with_window_bits(false, 15),
            }
        }
    }

    impl Inflater {
        /// Inflate one message compressed without context takeover into
        /// `out` (cleared first), producing at most `max` bytes into it:
        /// a message that would inflate past `max` is [`InflateError::TooBig`]
        /// as soon as one byte more comes out, whatever its compressed size.
        pub fn inflate(
            &mut self,
            input: &[u8],
            max: usize,
            out: &mut Vec<u8>,
        ) -> Result<(), InflateError> {
            self.d.reset(false);
            out.clear();
            let r = self.run(input, max, out);
            if r.is_err() {
                self.d.reset(false);
            }
            r
        }

        /// Inflate one message of a stream *with* context takeover (the
        /// window of earlier messages is kept): what a client of a server
        /// in dedicated mode does. Same limit as [`Inflater::inflate`].
        pub fn inflate_with_context(
            &mut self,
            input: &[u8],
            max: usize,
            out: &mut Vec<u8>,
        ) -> Result<(), InflateError> {
            out.clear();
            let r = self.run(input, max, out);
            if r.is_err() {
                self.d.reset(false);
            }
            r
        }

        fn run(&mut self, input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
            let mut ended = false;
            for (part, is_tail) in [(input, false), (&TAIL[..], true)] {
                let mut pos = 0;
                loop {
                    if ended {
                        // After the end of the deflate stream (a final block)
                        // only the tail we appended may follow.
                        if !is_tail && pos < part.len() {
                            return Err(InflateError::Invalid);
                        }
                        break;
                    }
                    let (in0, out0) = (self.d.total_in(), self.d.total_out());
                    let (st, room_left) = if out.len() < max {
                        if out.len() == out.capacity() {
                            let grow = out.capacity().max(input.len() * 2).max(256);
                            out.reserve_exact(grow.min(max - out.len()));
                        }
                        let st = self
                            .d
                            .decompress_vec(&part[pos..], out, FlushDecompress::Sync)
                            .map_err(|_| InflateError::Invalid)?;
                        (st, out.len() < out.capacity())
                    } else {
                        // The limit is reached: one byte more is too many.
                        let mut probe = [0u8; 1];
                        let st = self
                            .d
                            .decompress(&part[pos..], &mut probe, FlushDecompress::Sync)
                            .map_err(|_| InflateError::Invalid)?;
                        if self.d.total_out() > out0 {
                            return Err(InflateError::TooBig);
                        }
                        (st, true)
                    };
                    pos += (self.d.total_in() - in0) as usize;
                    if st == Status::StreamEnd {
                        ended = true;
                        continue;
                    }
                    if room_left {
                        if pos == part.len() {
                            break;
                        }
                        if self.d.total_in() == in0 && self.d.total_out() == out0 {
                            return Err(InflateError::Invalid);
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(v: &str, mode: Compression) -> Option<Params> {
        let cfg = DeflateConfig {
            mode,
            ..Default::default()
        };
        negotiate_values([v.as_bytes()], &cfg)
    }

    #[test]
    fn browsers_offers() {
        let p = neg(
            "permessage-deflate; client_max_window_bits",
            Compression::Shared,
        )
        .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, None);
        let mut out = Vec::new();
        write_response(&p, &mut out);
        assert_eq!(
            out,
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        );
    }

    #[test]
    fn window_bits_values() {
        for (v, ok) in [
            ("8", true),
            ("15", true),
            ("9", true),
            ("10", true),
            ("16", false),
            ("7", false),
            ("08", false),
            ("", false),
            ("\"12\"", true),
        ] {
            let h = format!("permessage-deflate; client_max_window_bits={v}");
            assert_eq!(neg(&h, Compression::Dedicated).is_some(), ok, "{h}");
        }
    }
}
