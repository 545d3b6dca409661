//! Bodies of the fuzz targets, kept in a library so that the libFuzzer
//! targets and any other driver (a plain loop over random inputs) run exactly
//! the same checks.

use wspush::protocol::handshake::{self, HandshakeConfig};
use wspush::protocol::http::{HttpLimits, RequestParser};
use wspush::protocol::{Decoder, DecoderConfig, HttpError, Message, ProtocolError, Role};

/// A tiny PRNG to turn a seed from the input into split points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Cut `data` into chunks whose sizes come from `seed`: mostly small ones,
/// sometimes bigger, byte by byte when the seed says so.
fn split(data: &[u8], seed: u16) -> Vec<&[u8]> {
    let mut out = Vec::new();
    if seed == 0 {
        return data.chunks(1).collect();
    }
    let mut rng = Rng(seed as u64 | 0x1_0000);
    let max = 1 + (seed as usize % 64);
    let mut rest = data;
    while !rest.is_empty() {
        let n = (1 + (rng.next() as usize % max)).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum ParseOutcome {
    Done {
        len: usize,
        head: String,
        body: Vec<u8>,
        answer: Vec<u8>,
    },
    NeedMore,
    Err(HttpError),
}

fn parse_chunks(limits: &HttpLimits, chunks: &[&[u8]], hs: &HandshakeConfig) -> ParseOutcome {
    let mut parser = RequestParser::new();
    let mut buf = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        match parser.parse(limits, &buf) {
            Ok(None) => {
                assert!(
                    buf.len() <= limits.max_head.saturating_add(limits.max_body),
                    "buffered past the limits"
                );
            }
            Ok(Some((req, n))) => {
                assert!(n <= buf.len());
                assert!(req.body.len() <= limits.max_body);
                assert!(req.headers.len() <= limits.max_headers);
                let mut answer = Vec::new();
                match handshake::validate(&req, hs) {
                    Ok(acc) => {
                        if let Some(p) = acc.protocol {
                            assert!(
                                req.has_token("sec-websocket-protocol", p),
                                "chose a protocol not offered"
                            );
                        }
                        handshake::write_accept(&acc, &mut answer);
                    }
                    Err(e) => e.write_response(&mut answer),
                }
                let _ = req.keep_alive();
                let _ = req.query_pairs().count();
                let head = format!(
                    "{} {} {:?} {:?}",
                    req.method, req.path, req.query, req.headers
                );
                return ParseOutcome::Done {
                    len: n,
                    head,
                    body: req.body.to_vec(),
                    answer,
                };
            }
            Err(e) => {
                let mut out = Vec::new();
                e.write_response(&mut out);
                return ParseOutcome::Err(e);
            }
        }
    }
    ParseOutcome::NeedMore
}

/// Fuzz body of the HTTP request parser and the handshake.
pub fn request_parser(data: &[u8]) {
    let [a, b, s0, s1, rest @ ..] = data else {
        return;
    };
    let limits = if a & 1 == 0 {
        HttpLimits::default()
    } else {
        HttpLimits {
            max_head: 1 + *b as usize * 4,
            max_headers: (a >> 1) as usize % 16,
            max_body: *b as usize,
        }
    };
    let hs = HandshakeConfig {
        protocols: vec!["chat".into(), "superchat".into()],
        origins: if a & 2 == 0 {
            vec![]
        } else {
            vec!["http://localhost:8080".into()]
        },
    };
    let whole = parse_chunks(&limits, &[rest], &hs);
    let parts = split(rest, u16::from_le_bytes([*s0, *s1]));
    let pieces = parse_chunks(&limits, &parts, &hs);
    assert_eq!(whole, pieces, "whole and split parses differ");
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn decode_chunks(cfg: &DecoderConfig, chunks: &[&[u8]]) -> (Vec<Event>, Option<ProtocolError>) {
    let mut dec = Decoder::new();
    let mut events = Vec::new();
    let limit = usize::try_from(cfg.max_message_size)
        .unwrap_or(usize::MAX)
        .saturating_add(125);
    for chunk in chunks {
        let mut data = chunk.to_vec();
        let mut pos = 0;
        while pos < data.len() {
            let given = data.len() - pos;
            match dec.decode(cfg, &mut data[pos..]) {
                Ok(d) => {
                    assert!(d.consumed <= given);
                    assert!(d.message.is_some() || d.consumed == given);
                    pos += d.consumed;
                    if let Some(m) = d.message {
                        events.push(match m {
                            Message::Text(t) => Event::Text(t.to_string()),
                            Message::Binary(b) => Event::Binary(b.to_vec()),
                            Message::Ping(p) => {
                                assert!(p.len() <= 125);
                                Event::Ping(p.to_vec())
                            }
                            Message::Pong(p) => Event::Pong(p.to_vec()),
                            Message::Close(c) => {
                                Event::Close(c.map(|c| (c.code, c.reason.to_string())))
                            }
                        });
                    }
                }
                Err(e) => {
                    assert!(dec.buffered_capacity() <= limit, "buffered past the limits");
                    return (events, Some(e));
                }
            }
            assert!(dec.buffered_capacity() <= limit, "buffered past the limits");
        }
    }
    (events, None)
}

/// Fuzz body of the frame decoder: the first byte picks role and limits, the
/// next two the split points.
pub fn frame_decoder(data: &[u8]) {
    let [cfg_byte, s0, s1, rest @ ..] = data else {
        return;
    };
    let max = match cfg_byte & 0x3 {
        0 => 16u64 << 20,
        1 => 1 + (*s0 as u64) * 16,
        2 => 125,
        _ => 0,
    };
    let cfg = DecoderConfig {
        role: if cfg_byte & 0x4 == 0 {
            Role::Server
        } else {
            Role::Client
        },
        max_frame_size: if cfg_byte & 0x8 == 0 { max } else { max / 2 },
        max_message_size: max,
        allowed_rsv: (cfg_byte >> 4) & 0x7,
    };
    let whole = decode_chunks(&cfg, &[rest]);
    let parts = split(rest, u16::from_le_bytes([*s0, *s1]));
    let pieces = decode_chunks(&cfg, &parts);
    assert_eq!(whole, pieces, "whole and split decodes differ");
    let bytes: Vec<&[u8]> = rest.chunks(1).collect();
    assert_eq!(
        whole,
        decode_chunks(&cfg, &bytes),
        "whole and bytewise decodes differ"
    );
    decode_on_after_errors(&cfg, &parts);
}

/// Misuse on purpose: keep feeding after errors (the rest of the failing
/// chunk is dropped). Must not panic, must not buffer past the limits, and
/// every `Text` must still be UTF-8 (the decoder builds it unchecked).
fn decode_on_after_errors(cfg: &DecoderConfig, chunks: &[&[u8]]) {
    let mut dec = Decoder::new();
    let limit = usize::try_from(cfg.max_message_size)
        .unwrap_or(usize::MAX)
        .saturating_add(125);
    for chunk in chunks {
        let mut data = chunk.to_vec();
        let mut pos = 0;
        while pos < data.len() {
            match dec.decode(cfg, &mut data[pos..]) {
                Ok(d) => {
                    pos += d.consumed;
                    if let Some(Message::Text(t)) = d.message {
                        assert!(
                            std::str::from_utf8(t.as_bytes()).is_ok(),
                            "Text that is not UTF-8"
                        );
                    }
                }
                Err(_) => break,
            }
            assert!(dec.buffered_capacity() <= limit, "buffered past the limits");
        }
    }
}
