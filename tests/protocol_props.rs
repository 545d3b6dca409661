//! Property tests of the protocol core (issue 2, "Must show"): random
//! messages, fragmentations and input splits decode back to exactly the
//! messages sent; random bytes never panic and never make the decoder or the
//! HTTP parser hold more than the configured limits.

mod protocol_support;

use proptest::prelude::*;
use proptest::sample::Index;
use protocol_support::*;
use wspush::protocol::encode;
use wspush::protocol::handshake::{validate, HandshakeConfig};
use wspush::protocol::http::{HttpLimits, RequestParser};
use wspush::protocol::utf8::Utf8Validator;
use wspush::protocol::{Decoder, DecoderConfig, OpCode, ProtocolError, Role};

/// One message the client sends.
#[derive(Debug, Clone)]
enum Gen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
}

fn gen_message() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => "\\PC{0,60}".prop_map(Gen::Text),
        1 => "[a-z€𝄞é]{0,400}".prop_map(Gen::Text),
        4 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Gen::Binary),
        1 => prop::collection::vec(any::<u8>(), 0..3000).prop_map(Gen::Binary),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Gen::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Gen::Pong),
        1 => (prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999], "\\PC{0,30}")
            .prop_map(|(c, r)| Gen::Close(c, r)),
    ]
}

/// A data message's fragmentation: cut points, and control frames slipped in
/// after some of the fragments.
#[derive(Debug, Clone)]
struct Frag {
    cuts: Vec<Index>,
    interleave: Vec<(Index, bool, Vec<u8>)>,
    key: [u8; 4],
}

fn gen_frag() -> impl Strategy<Value = Frag> {
    (
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec(
            (
                any::<Index>(),
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..20),
            ),
            0..3,
        ),
        any::<[u8; 4]>(),
    )
        .prop_map(|(cuts, interleave, key)| Frag {
            cuts,
            interleave,
            key,
        })
}

/// Encode the messages as masked client frames; return the stream and the
/// messages the decoder must produce, in order.
fn build(items: &[(Gen, Frag)]) -> (Vec<u8>, Vec<Msg>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    for (g, f) in items {
        let (op, payload, msg) = match g {
            Gen::Text(s) => (OpCode::Text, s.as_bytes().to_vec(), Msg::Text(s.clone())),
            Gen::Binary(b) => (OpCode::Binary, b.clone(), Msg::Binary(b.clone())),
            Gen::Ping(p) => {
                encode::masked_frame_into(&mut out, true, OpCode::Ping, p, f.key);
                want.push(Msg::Ping(p.clone()));
                continue;
            }
            Gen::Pong(p) => {
                encode::masked_frame_into(&mut out, true, OpCode::Pong, p, f.key);
                want.push(Msg::Pong(p.clone()));
                continue;
            }
            Gen::Close(c, r) => {
                encode::masked_close_into(&mut out, *c, r, f.key);
                let r = wspush::protocol::close::truncate_reason(r);
                want.push(Msg::Close(Some((*c, r.to_string()))));
                continue;
            }
        };
        let mut cuts: Vec<usize> = f.cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(payload.len());
        let nfrags = bounds.len() - 1;
        for i in 0..nfrags {
            let last = i + 1 == nfrags;
            let fop = if i == 0 { op } else { OpCode::Continuation };
            encode::masked_frame_into(
                &mut out,
                last,
                fop,
                &payload[bounds[i]..bounds[i + 1]],
                f.key,
            );
            if !last {
                for (at, ping, p) in &f.interleave {
                    if at.index(nfrags) == i {
                        let cop = if *ping { OpCode::Ping } else { OpCode::Pong };
                        encode::masked_frame_into(&mut out, true, cop, p, f.key);
                        want.push(if *ping {
                            Msg::Ping(p.clone())
                        } else {
                            Msg::Pong(p.clone())
                        });
                    }
                }
            }
        }
        want.push(msg);
    }
    (out, want)
}

/// Cut `len` bytes at the given points.
fn split_at(len: usize, points: &[Index]) -> Split {
    let mut cuts: Vec<usize> = points.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(c - prev);
        prev = c;
    }
    out.push(len - prev);
    out
}

/// Flip some bytes of a valid stream: reaches deeper states than pure noise.
fn mutate(mut v: Vec<u8>, flips: &[(Index, u8)]) -> Vec<u8> {
    if !v.is_empty() {
        for (at, x) in flips {
            let i = at.index(v.len());
            v[i] ^= x;
        }
    }
    v
}

/// Feed `chunks` as the worker does, but release the decoder's buffers after
/// every call (whenever it is idle they must then be gone): the messages and
/// the error must be those of a decoder that never releases.
fn decode_releasing(cfg: &DecoderConfig, chunks: &[&[u8]]) -> (Vec<Msg>, Option<ProtocolError>) {
    let mut dec = Decoder::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        let mut data = chunk.to_vec();
        let mut pos = 0;
        while pos < data.len() {
            match dec.decode(cfg, &mut data[pos..]) {
                Ok(d) => {
                    pos += d.consumed;
                    messages.extend(d.message.map(Msg::from));
                }
                Err(e) => return (messages, Some(e)),
            }
            let idle = dec.is_idle();
            dec.release_buffers();
            if idle {
                assert_eq!(dec.buffered_capacity(), 0, "idle decoder kept a buffer");
            }
        }
    }
    (messages, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_messages_fragmentations_and_splits_round_trip(
        items in prop::collection::vec((gen_message(), gen_frag()), 1..8),
        points in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let (stream, want) = build(&items);
        let cfg = DecoderConfig::default();
        for split in [vec![stream.len()], split_at(stream.len(), &points), vec![1; stream.len()]] {
            let run = decode_chunks(&cfg, &chunks(&stream, &split));
            prop_assert_eq!(run.error, None);
            prop_assert_eq!(&run.messages, &want);
            prop_assert_eq!(run.consumed, stream.len());
        }
    }

    #[test]
    fn server_frames_round_trip_through_a_client_decoder(
        msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70_000), 1..4),
        points in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend_from_slice(&encode::shared(OpCode::Binary, m));
        }
        let cfg = DecoderConfig::for_role(Role::Client);
        let run = decode_chunks(&cfg, &chunks(&stream, &split_at(stream.len(), &points)));
        prop_assert_eq!(run.error, None);
        let want: Vec<Msg> = msgs.into_iter().map(Msg::Binary).collect();
        prop_assert_eq!(run.messages, want);
    }

    #[test]
    fn random_bytes_never_panic_nor_buffer_past_the_limits(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        points in prop::collection::vec(any::<Index>(), 0..16),
        client in any::<bool>(),
        max_message in 1u64..2048,
    ) {
        let cfg = DecoderConfig {
            role: if client { Role::Client } else { Role::Server },
            max_frame_size: max_message / 2 + 1,
            max_message_size: max_message,
            allowed_rsv: 0,
        };
        for split in [vec![bytes.len()], split_at(bytes.len(), &points), vec![1; bytes.len()]] {
            let run = decode_chunks(&cfg, &chunks(&bytes, &split));
            prop_assert!(run.max_buffered as u64 <= max_message + 125,
                "buffered {} with max_message {}", run.max_buffered, max_message);
        }
    }

    #[test]
    fn mutated_streams_never_panic_and_agree_across_splits(
        items in prop::collection::vec((gen_message(), gen_frag()), 1..6),
        flips in prop::collection::vec((any::<Index>(), 1u8..=255), 1..4),
        points in prop::collection::vec(any::<Index>(), 0..12),
        max_message in 16u64..4096,
    ) {
        let (stream, _) = build(&items);
        let stream = mutate(stream, &flips);
        let cfg = server_cfg(max_message, max_message);
        let whole = decode_chunks(&cfg, &[&stream]);
        for split in [split_at(stream.len(), &points), vec![1; stream.len()]] {
            let run = decode_chunks(&cfg, &chunks(&stream, &split));
            prop_assert_eq!(&run.messages, &whole.messages);
            prop_assert_eq!(run.error, whole.error);
            prop_assert!(run.max_buffered as u64 <= max_message + 125);
        }
        if let Some(e) = whole.error {
            prop_assert!([1002, 1007, 1009].contains(&e.close_code()));
        }
    }

    #[test]
    fn releasing_buffers_whenever_idle_changes_nothing(
        items in prop::collection::vec((gen_message(), gen_frag()), 1..6),
        flips in prop::collection::vec((any::<Index>(), 1u8..=255), 0..3),
        points in prop::collection::vec(any::<Index>(), 0..12),
        max_message in 16u64..4096,
    ) {
        let (stream, _) = build(&items);
        let stream = mutate(stream, &flips);
        let cfg = server_cfg(max_message, max_message);
        for split in [vec![stream.len()], split_at(stream.len(), &points), vec![1; stream.len()]] {
            let cs = chunks(&stream, &split);
            let plain = decode_chunks(&cfg, &cs);
            let (messages, error) = decode_releasing(&cfg, &cs);
            prop_assert_eq!(&messages, &plain.messages);
            prop_assert_eq!(error, plain.error);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_http_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        points in prop::collection::vec(any::<Index>(), 0..16),
        max_head in 1usize..600,
        max_headers in 0usize..8,
        max_body in 0usize..300,
    ) {
        // parse_chunks asserts that "need more" never comes with more than
        // max_head + max_body bytes buffered.
        let limits = HttpLimits { max_head, max_headers, max_body };
        let whole = parse_chunks(&limits, &[&bytes]);
        let split = parse_chunks(&limits, &chunks(&bytes, &split_at(bytes.len(), &points)));
        prop_assert_eq!(&split, &whole);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&parse_chunks(&limits, &bytewise), &whole);
    }

    #[test]
    fn mutated_requests_never_panic_the_http_parser_or_handshake(
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        points in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let input = mutate(CHROMIUM_UPGRADE.to_vec(), &flips);
        let limits = HttpLimits::default();
        let whole = parse_chunks(&limits, &[&input]);
        let split = parse_chunks(&limits, &chunks(&input, &split_at(input.len(), &points)));
        prop_assert_eq!(&split, &whole);
        if let Ok(Some((req, _))) = RequestParser::new().parse(&limits, &input) {
            let cfg = HandshakeConfig { protocols: vec!["chat".into()], origins: vec!["http://localhost:8080".into()] };
            match validate(&req, &cfg) {
                Ok(acc) => prop_assert!(acc.protocol.is_none()),
                Err(e) => prop_assert!([400, 403, 405, 426].contains(&e.status())),
            }
        }
    }

    #[test]
    fn generated_requests_parse_the_same_in_any_split(
        method in "[A-Z]{1,7}",
        path in "/[a-z0-9/._-]{0,30}",
        query in proptest::option::of("[a-z0-9=&%+]{0,20}"),
        headers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..10),
        body in prop::collection::vec(any::<u8>(), 0..200),
        trailing in prop::collection::vec(any::<u8>(), 0..50),
        points in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let mut s = format!("{method} {target} HTTP/1.1\r\n");
        for (n, v) in &headers {
            if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding") {
                continue;
            }
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut input = s.into_bytes();
        let head_len = input.len();
        input.extend_from_slice(&body);
        input.extend_from_slice(&trailing);
        let limits = HttpLimits::default();
        let whole = parse_chunks(&limits, &[&input]);
        match &whole {
            Parsed::Done { req, len, rest } => {
                prop_assert_eq!(&req.method, &method);
                prop_assert_eq!(&req.path, &path);
                prop_assert_eq!(&req.query, &query);
                prop_assert_eq!(&req.body, &body);
                prop_assert_eq!(*len, head_len + body.len());
                prop_assert_eq!(rest, &trailing);
            }
            other => prop_assert!(false, "not parsed: {:?}", other),
        }
        let split = parse_chunks(&limits, &chunks(&input, &split_at(input.len(), &points)));
        prop_assert_eq!(&split, &whole);
    }

    #[test]
    fn utf8_validator_fails_exactly_at_the_first_impossible_prefix(
        bytes in prop::collection::vec(prop_oneof![
            3 => 0x20u8..0x7f,
            3 => 0x80u8..=0xbf,
            2 => 0xc0u8..=0xf7,
            1 => any::<u8>(),
        ], 0..40),
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        // A prefix is viable when it is valid UTF-8 or a valid UTF-8 string
        // cut inside its last code point.
        let viable = |p: &[u8]| match std::str::from_utf8(p) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        };
        let first_bad = (1..=bytes.len()).find(|&n| !viable(&bytes[..n]));
        let mut v = Utf8Validator::new();
        let mut failed_at = None;
        for (i, b) in bytes.iter().enumerate() {
            if v.feed(std::slice::from_ref(b)).is_err() {
                failed_at = Some(i + 1);
                break;
            }
        }
        prop_assert_eq!(failed_at, first_bad);
        // Whole result in any split equals the standard library's verdict.
        let mut v = Utf8Validator::new();
        let mut ok = true;
        for c in chunks(&bytes, &split_at(bytes.len(), &points)) {
            ok = ok && v.feed(c).is_ok();
        }
        ok = ok && v.finish().is_ok();
        prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn chosen_subprotocol_is_the_servers_first_that_was_offered(
        server in prop::collection::vec("[a-d]{1,2}", 0..4),
        offered in prop::collection::vec("[a-d]{1,2}", 0..4),
    ) {
        let mut h = String::from("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
        if !offered.is_empty() {
            h.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", offered.join(", ")));
        }
        h.push_str("\r\n");
        let (req, _) = RequestParser::new().parse(&HttpLimits::default(), h.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
            .ok_or_else(|| TestCaseError::fail("incomplete"))?;
        let cfg = HandshakeConfig { protocols: server.clone(), origins: vec![] };
        let acc = validate(&req, &cfg).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let expect = server.iter().find(|p| offered.contains(p)).map(String::as_str);
        prop_assert_eq!(acc.protocol, expect);
        if let Some(p) = acc.protocol {
            prop_assert!(offered.iter().any(|o| o == p));
        }
    }
}
