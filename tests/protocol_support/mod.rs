//! Shared helpers of the protocol tests: feed the same input whole, byte by
//! byte and in random splits, and check that every way gives the same result.

#![allow(dead_code)]

use wspush::protocol::encode;
use wspush::protocol::http::{HttpLimits, RequestParser};
use wspush::protocol::{Decoder, DecoderConfig, HttpError, Message, OpCode, ProtocolError};

/// A tiny deterministic PRNG (xorshift64*), so the tests need no extra crate
/// and every failure reproduces.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// How to cut an input: a list of chunk lengths summing to its length.
pub type Split = Vec<usize>;

/// Cut `input` into the chunks `split` describes.
pub fn chunks<'a>(input: &'a [u8], split: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(split.len());
    let mut pos = 0;
    for &n in split {
        out.push(&input[pos..pos + n]);
        pos += n;
    }
    assert_eq!(pos, input.len(), "split does not cover the input");
    out
}

/// A random split of `len` bytes into chunks of 1..=max_chunk bytes
/// (occasionally an empty chunk, which must be harmless too).
pub fn random_split(rng: &mut Rng, len: usize, max_chunk: usize) -> Split {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = if rng.below(16) == 0 {
            0
        } else {
            1 + rng.below(max_chunk.min(left))
        };
        out.push(n);
        left -= n;
    }
    out
}

/// The ways every input is fed: whole, byte by byte, and `random` random
/// splits with small and large chunks.
pub fn all_splits(len: usize, seed: u64, random: usize) -> Vec<(String, Split)> {
    let mut v = vec![
        ("whole".to_string(), vec![len]),
        ("bytewise".to_string(), vec![1; len]),
    ];
    let mut rng = Rng::new(seed ^ len as u64);
    for i in 0..random {
        let max = if i % 2 == 0 { 7 } else { (len / 3).max(1) };
        v.push((format!("random#{i}"), random_split(&mut rng, len, max)));
    }
    v
}

// ----------------------------------------------------------------------------
// Frame decoder

/// An owned copy of a decoded [`Message`], so results of several runs compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Message<'_>> for Msg {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Text(t) => Msg::Text(t.to_string()),
            Message::Binary(b) => Msg::Binary(b.to_vec()),
            Message::Ping(p) => Msg::Ping(p.to_vec()),
            Message::Pong(p) => Msg::Pong(p.to_vec()),
            Message::Close(c) => Msg::Close(c.map(|c| (c.code, c.reason.to_string()))),
        }
    }
}

/// What a run of the decoder produced: the messages in order, then the error
/// that stopped it (if any), and the largest heap buffer it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeRun {
    pub messages: Vec<Msg>,
    pub error: Option<ProtocolError>,
    pub max_buffered: usize,
    /// Input bytes consumed before the error (or all of them).
    pub consumed: usize,
}

/// Feed `chunks` to a fresh decoder, each chunk copied into its own mutable
/// buffer as a socket read would deliver it.
pub fn decode_chunks(cfg: &DecoderConfig, chunks: &[&[u8]]) -> DecodeRun {
    let mut dec = Decoder::new();
    let mut run = DecodeRun {
        messages: Vec::new(),
        error: None,
        max_buffered: 0,
        consumed: 0,
    };
    for chunk in chunks {
        let mut data = chunk.to_vec();
        let mut pos = 0;
        loop {
            let given = data.len() - pos;
            let res = dec.decode(cfg, &mut data[pos..]);
            match res {
                Ok(d) => {
                    assert!(d.consumed <= given, "consumed more than given");
                    let consumed = d.consumed;
                    let msg = d.message.map(Msg::from);
                    if msg.is_none() {
                        assert_eq!(consumed, given, "no message but input left over");
                    }
                    if let Some(m) = msg {
                        run.messages.push(m);
                    }
                    pos += consumed;
                    run.consumed += consumed;
                    run.max_buffered = run.max_buffered.max(dec.buffered_capacity());
                    if pos == data.len() {
                        break;
                    }
                }
                Err(e) => {
                    run.max_buffered = run.max_buffered.max(dec.buffered_capacity());
                    run.error = Some(e);
                    return run;
                }
            }
        }
    }
    run
}

/// Decode `input` whole, byte by byte and in random splits; assert every way
/// gives the same messages and error; return that result (with the largest
/// buffer any way held).
pub fn decode_all_ways(cfg: &DecoderConfig, input: &[u8]) -> DecodeRun {
    decode_ways(cfg, input, 6)
}

pub fn decode_ways(cfg: &DecoderConfig, input: &[u8], random: usize) -> DecodeRun {
    let mut first: Option<DecodeRun> = None;
    let mut max_buffered = 0;
    for (name, split) in all_splits(input.len(), 0x5eed, random) {
        let run = decode_chunks(cfg, &chunks(input, &split));
        max_buffered = max_buffered.max(run.max_buffered);
        match &first {
            None => first = Some(run),
            Some(f) => {
                assert_eq!(run.messages, f.messages, "messages differ when fed {name}");
                assert_eq!(run.error, f.error, "error differs when fed {name}");
            }
        }
    }
    let mut run = first.unwrap_or_else(|| unreachable!());
    run.max_buffered = max_buffered;
    run
}

/// A server-role decoder config with the given limits.
pub fn server_cfg(max_frame: u64, max_message: u64) -> DecoderConfig {
    DecoderConfig {
        max_frame_size: max_frame,
        max_message_size: max_message,
        ..DecoderConfig::default()
    }
}

/// Append a masked client frame with a fixed key.
pub fn client_frame(out: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8]) {
    encode::masked_frame_into(out, fin, op, payload, [0x37, 0xfa, 0x21, 0x3d]);
}

/// A masked client frame built by hand from raw header bits, for frames the
/// encoder cannot make (RSV bits, reserved opcodes, bad lengths).
/// `len_field` is written exactly as given (7-bit value plus the extended
/// length bytes), then the key, then the masked payload.
pub fn raw_frame(b0: u8, masked: bool, len7: u8, ext_len: &[u8], payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut v = vec![b0, if masked { 0x80 } else { 0 } | len7];
    v.extend_from_slice(ext_len);
    if masked {
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

// ----------------------------------------------------------------------------
// HTTP request parser

/// An owned copy of a parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub path: String,
    pub query: Option<String>,
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The outcome of feeding a whole input to the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request; `rest` is every input byte after it, untouched.
    Done { req: Req, len: usize, rest: Vec<u8> },
    /// The input ended before the request did.
    NeedMore,
    /// The parser refused the request.
    Err(HttpError),
}

impl Parsed {
    pub fn req(&self) -> &Req {
        match self {
            Parsed::Done { req, .. } => req,
            other => panic!("expected a request, got {other:?}"),
        }
    }
    pub fn err(&self) -> HttpError {
        match self {
            Parsed::Err(e) => *e,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// Feed `chunks` one after another into a growing receive buffer, calling
/// the parser after each, as a server does. Also asserts that while the
/// parser says "need more" the buffer never holds more than the limits allow.
pub fn parse_chunks(limits: &HttpLimits, chunks: &[&[u8]]) -> Parsed {
    let mut parser = RequestParser::new();
    let mut buf = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        match parser.parse(limits, &buf) {
            Ok(None) => {
                assert!(
                    buf.len() <= limits.max_head.saturating_add(limits.max_body),
                    "parser wants more bytes with {} buffered (limits {limits:?})",
                    buf.len()
                );
            }
            Ok(Some((r, n))) => {
                assert!(n <= buf.len());
                let req = Req {
                    method: r.method.to_string(),
                    target: r.target.to_string(),
                    path: r.path.to_string(),
                    query: r.query.map(str::to_string),
                    minor_version: r.minor_version,
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                    body: r.body.to_vec(),
                };
                let mut rest = buf[n..].to_vec();
                for c in &chunks[i + 1..] {
                    rest.extend_from_slice(c);
                }
                return Parsed::Done { req, len: n, rest };
            }
            Err(e) => return Parsed::Err(e),
        }
    }
    Parsed::NeedMore
}

/// Parse `input` whole, byte by byte and in random splits; assert all agree.
pub fn parse_all_ways(limits: &HttpLimits, input: &[u8]) -> Parsed {
    let mut first: Option<Parsed> = None;
    for (name, split) in all_splits(input.len(), 0x4077, 6) {
        let p = parse_chunks(limits, &chunks(input, &split));
        match &first {
            None => first = Some(p),
            Some(f) => assert_eq!(&p, f, "parse differs when fed {name}"),
        }
    }
    first.unwrap_or_else(|| unreachable!())
}

/// A typical Chromium upgrade request.
pub const CHROMIUM_UPGRADE: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";
