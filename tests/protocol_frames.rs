//! Frame decoder and encoder rules of issue 2 (§3, §4, §5), each input fed
//! whole, byte by byte and in random splits (see `protocol_support`).

mod protocol_support;

use protocol_support::*;
use wspush::protocol::close;
use wspush::protocol::decode::DEFAULT_MAX_MESSAGE;
use wspush::protocol::encode;
use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode, ProtocolError, Role};

fn cfg() -> DecoderConfig {
    DecoderConfig::default()
}

fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    client_frame(&mut v, fin, op, payload);
    v
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Decode all ways and expect exactly these messages and no error.
fn expect_messages(cfg: &DecoderConfig, input: &[u8], want: &[Msg]) {
    let run = decode_all_ways(cfg, input);
    assert_eq!(run.error, None, "unexpected error");
    assert_eq!(run.messages, want);
}

/// Decode all ways and expect these messages, then the error (with its close code).
fn expect_error(
    cfg: &DecoderConfig,
    input: &[u8],
    before: &[Msg],
    err: ProtocolError,
    code: u16,
) -> DecodeRun {
    let run = decode_all_ways(cfg, input);
    assert_eq!(run.messages, before, "messages before the error");
    assert_eq!(run.error, Some(err));
    assert_eq!(err.close_code(), code);
    run
}

fn text(s: &str) -> Msg {
    Msg::Text(s.to_string())
}

// --- Basic frames and lengths ---------------------------------------------------

#[test]
fn rfc6455_masked_hello() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    let input = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    expect_messages(&cfg(), &input, &[text("Hello")]);
}

#[test]
fn rfc6455_fragmented_hello_and_ping() {
    // RFC 6455 §5.7, masked here: "Hel" + "lo", a ping in between.
    let input = concat(&[
        frame(false, OpCode::Text, b"Hel"),
        frame(true, OpCode::Ping, b"Hello"),
        frame(true, OpCode::Continuation, b"lo"),
    ]);
    expect_messages(
        &cfg(),
        &input,
        &[Msg::Ping(b"Hello".to_vec()), text("Hello")],
    );
}

#[test]
fn every_data_and_control_kind() {
    let input = concat(&[
        frame(true, OpCode::Text, "κόσμε €𝄞".as_bytes()),
        frame(true, OpCode::Binary, &[0, 1, 2, 255]),
        frame(true, OpCode::Text, b""),
        frame(true, OpCode::Binary, b""),
        frame(true, OpCode::Ping, b""),
        frame(true, OpCode::Ping, b"are you there"),
        frame(true, OpCode::Pong, b"unsolicited"),
        frame(true, OpCode::Close, &[0x03, 0xe8, b'b', b'y', b'e']),
        frame(true, OpCode::Close, b""),
    ]);
    expect_messages(
        &cfg(),
        &input,
        &[
            text("κόσμε €𝄞"),
            Msg::Binary(vec![0, 1, 2, 255]),
            text(""),
            Msg::Binary(vec![]),
            Msg::Ping(vec![]),
            Msg::Ping(b"are you there".to_vec()),
            Msg::Pong(b"unsolicited".to_vec()),
            Msg::Close(Some((1000, "bye".to_string()))),
            Msg::Close(None),
        ],
    );
}

#[test]
fn seven_sixteen_and_sixty_four_bit_lengths() {
    let mut rng = Rng::new(1);
    for len in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70000] {
        let payload = rng.bytes(len);
        let input = frame(true, OpCode::Binary, &payload);
        let hdr = input.len() - len;
        let expect_hdr = match len {
            0..=125 => 6,
            126..=65535 => 8,
            _ => 14,
        };
        assert_eq!(hdr, expect_hdr, "header length for {len}");
        let random = if len > 10_000 { 2 } else { 6 };
        let run = decode_ways(&cfg(), &input, random);
        assert_eq!(run.error, None);
        assert_eq!(run.messages, vec![Msg::Binary(payload)], "len {len}");
    }
}

#[test]
fn non_minimal_length_encodings_are_accepted() {
    // RFC 6455 allows only minimal lengths "in all cases", but receivers
    // commonly accept the longer forms; the decoder reads them correctly.
    let p = b"abc";
    let input16 = raw_frame(0x82, true, 126, &[0, 3], p);
    expect_messages(&cfg(), &input16, &[Msg::Binary(p.to_vec())]);
    let input64 = raw_frame(0x82, true, 127, &[0, 0, 0, 0, 0, 0, 0, 3], p);
    expect_messages(&cfg(), &input64, &[Msg::Binary(p.to_vec())]);
}

#[test]
fn whole_message_is_returned_without_copy_and_consumed_counts_exactly() {
    let a = frame(true, OpCode::Text, b"first");
    let b = frame(true, OpCode::Binary, b"second");
    let mut input = concat(&[a.clone(), b.clone()]);
    let range = input.as_ptr_range();
    let mut dec = Decoder::new();
    let d = dec.decode(&cfg(), &mut input).expect("valid");
    assert_eq!(d.consumed, a.len());
    match d.message {
        Some(Message::Text(t)) => {
            assert_eq!(t, "first");
            // A single whole frame is handed out as a slice of the input.
            assert!(range.contains(&t.as_ptr()));
        }
        other => panic!("got {other:?}"),
    }
    assert_eq!(dec.buffered_capacity(), 0);
    let d = dec.decode(&cfg(), &mut input[a.len()..]).expect("valid");
    assert_eq!(d.consumed, b.len());
    assert_eq!(d.message, Some(Message::Binary(b"second")));
    assert!(dec.is_idle());
}

// --- Masking and roles ----------------------------------------------------------

#[test]
fn unmasked_client_frame_is_1002() {
    let input = raw_frame(0x81, false, 2, &[], b"hi");
    expect_error(&cfg(), &input, &[], ProtocolError::UnmaskedFrame, 1002);
    // Also after a good message, and for control frames.
    let input = concat(&[
        frame(true, OpCode::Text, b"ok"),
        raw_frame(0x89, false, 0, &[], b""),
    ]);
    expect_error(
        &cfg(),
        &input,
        &[text("ok")],
        ProtocolError::UnmaskedFrame,
        1002,
    );
}

#[test]
fn client_role_requires_unmasked_frames() {
    let ccfg = DecoderConfig::for_role(Role::Client);
    let mut input = Vec::new();
    encode::frame_into(&mut input, OpCode::Text, b"from server");
    expect_messages(&ccfg, &input, &[text("from server")]);
    let masked = frame(true, OpCode::Text, b"x");
    expect_error(&ccfg, &masked, &[], ProtocolError::MaskedFrame, 1002);
}

#[test]
fn masking_key_carries_across_splits_at_every_offset() {
    // Payloads whose length is not a multiple of 4, split at every point.
    let payload: Vec<u8> = (0..37u8).collect();
    let input = frame(true, OpCode::Binary, &payload);
    for cut in 0..=input.len() {
        let run = decode_chunks(&cfg(), &[&input[..cut], &input[cut..]]);
        assert_eq!(run.error, None);
        assert_eq!(
            run.messages,
            vec![Msg::Binary(payload.clone())],
            "cut {cut}"
        );
    }
}

// --- Header bits ------------------------------------------------------------------

#[test]
fn rsv_bits_without_extension_are_1002() {
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        let input = raw_frame(0x81 | rsv, true, 1, &[], b"a");
        expect_error(&cfg(), &input, &[], ProtocolError::ReservedBits, 1002);
        // Reported from the first byte alone, before the rest arrives.
        let run = decode_chunks(&cfg(), &[&input[..1]]);
        assert_eq!(run.error, Some(ProtocolError::ReservedBits));
    }
    // On a control frame too.
    let input = raw_frame(0x89 | 0x40, true, 0, &[], b"");
    expect_error(&cfg(), &input, &[], ProtocolError::ReservedBits, 1002);
}

#[test]
fn rsv1_is_accepted_when_an_extension_allows_it() {
    let c = DecoderConfig {
        allowed_rsv: 0b100,
        ..cfg()
    };
    // RSV1 is permessage-deflate's "compressed" bit (issue 11): the message
    // comes back as its raw payload, marked compressed, for the caller to
    // inflate (tests/protocol_deflate.rs).
    let mut input = raw_frame(0x81 | 0x40, true, 1, &[], b"a");
    let mut dec = Decoder::new();
    let d = dec.decode(&c, &mut input).expect("allowed");
    assert_eq!(d.compressed, Some(OpCode::Text));
    assert_eq!(d.message, Some(Message::Binary(b"a")));
    // RSV2 is still refused.
    let input = raw_frame(0x81 | 0x20, true, 1, &[], b"a");
    expect_error(&c, &input, &[], ProtocolError::ReservedBits, 1002);
}

#[test]
fn reserved_opcodes_are_1002() {
    for op in (3u8..=7).chain(0xb..=0xf) {
        let input = raw_frame(0x80 | op, true, 0, &[], b"");
        let run = expect_error(&cfg(), &input, &[], ProtocolError::ReservedOpcode(op), 1002);
        assert_eq!(run.consumed, 0);
        // Non-FIN too.
        let input = raw_frame(op, true, 0, &[], b"");
        expect_error(&cfg(), &input, &[], ProtocolError::ReservedOpcode(op), 1002);
        assert_eq!(
            decode_chunks(&cfg(), &[&input[..1]]).error,
            Some(ProtocolError::ReservedOpcode(op))
        );
    }
}

#[test]
fn control_frames_longer_than_125_are_1002() {
    for op in [0x8u8, 0x9, 0xa] {
        // 125 is fine for ping/pong (close needs a valid code, tested below).
        if op != 0x8 {
            let input = raw_frame(0x80 | op, true, 125, &[], &[b'p'; 125]);
            let run = decode_all_ways(&cfg(), &input);
            assert_eq!(run.error, None);
            assert_eq!(run.messages.len(), 1);
        }
        // 126 via the 16-bit form, and a huge 64-bit length.
        let input = raw_frame(0x80 | op, true, 126, &[0, 126], &[0; 126]);
        expect_error(
            &cfg(),
            &input,
            &[],
            ProtocolError::ControlFrameTooLong,
            1002,
        );
        let input = raw_frame(0x80 | op, true, 127, &[0, 0, 0, 1, 0, 0, 0, 0], &[]);
        expect_error(
            &cfg(),
            &input,
            &[],
            ProtocolError::ControlFrameTooLong,
            1002,
        );
        // Known from the first two bytes.
        assert_eq!(
            decode_chunks(&cfg(), &[&input[..2]]).error,
            Some(ProtocolError::ControlFrameTooLong)
        );
    }
    let mut close125 = vec![0x03, 0xe8];
    close125.extend_from_slice(&[b'r'; 123]);
    let input = frame(true, OpCode::Close, &close125);
    expect_messages(&cfg(), &input, &[Msg::Close(Some((1000, "r".repeat(123))))]);
}

#[test]
fn fragmented_control_frames_are_1002() {
    for op in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
        let input = frame(false, op, b"");
        expect_error(
            &cfg(),
            &input,
            &[],
            ProtocolError::FragmentedControlFrame,
            1002,
        );
        assert_eq!(
            decode_chunks(&cfg(), &[&input[..1]]).error,
            Some(ProtocolError::FragmentedControlFrame),
            "known from the first byte"
        );
    }
}

#[test]
fn sixty_four_bit_length_with_top_bit_is_1002() {
    for ext in [
        [0x80u8, 0, 0, 0, 0, 0, 0, 0],
        [0xff; 8],
        [0x80, 0, 0, 0, 0, 0, 0, 5],
    ] {
        let input = raw_frame(0x82, true, 127, &ext, &[]);
        expect_error(&cfg(), &input, &[], ProtocolError::LengthOverflow, 1002);
    }
    // The largest legal 64-bit length is over the size limit instead (1009).
    let input = raw_frame(
        0x82,
        true,
        127,
        &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[],
    );
    let run = expect_error(&cfg(), &input, &[], ProtocolError::FrameTooLarge, 1009);
    assert_eq!(run.max_buffered, 0);
}

// --- Fragmentation ------------------------------------------------------------------

#[test]
fn fragmented_messages_assemble() {
    let input = concat(&[
        frame(false, OpCode::Text, b"one "),
        frame(false, OpCode::Continuation, b""),
        frame(false, OpCode::Continuation, b"two "),
        frame(true, OpCode::Continuation, b"three"),
        frame(false, OpCode::Binary, &[1, 2]),
        frame(true, OpCode::Continuation, &[3]),
        frame(false, OpCode::Text, b""),
        frame(true, OpCode::Continuation, b""),
    ]);
    expect_messages(
        &cfg(),
        &input,
        &[text("one two three"), Msg::Binary(vec![1, 2, 3]), text("")],
    );
}

#[test]
fn continuation_without_a_message_is_1002() {
    let input = frame(true, OpCode::Continuation, b"x");
    expect_error(
        &cfg(),
        &input,
        &[],
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    let input = frame(false, OpCode::Continuation, b"x");
    expect_error(
        &cfg(),
        &input,
        &[],
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    // After a message has finished.
    let input = concat(&[
        frame(false, OpCode::Text, b"a"),
        frame(true, OpCode::Continuation, b"b"),
        frame(true, OpCode::Continuation, b"c"),
    ]);
    expect_error(
        &cfg(),
        &input,
        &[text("ab")],
        ProtocolError::UnexpectedContinuation,
        1002,
    );
}

#[test]
fn new_data_frame_inside_a_fragmented_message_is_1002() {
    for (first, second) in [
        (OpCode::Text, OpCode::Text),
        (OpCode::Text, OpCode::Binary),
        (OpCode::Binary, OpCode::Text),
        (OpCode::Binary, OpCode::Binary),
    ] {
        for fin in [true, false] {
            let input = concat(&[frame(false, first, b"a"), frame(fin, second, b"b")]);
            expect_error(
                &cfg(),
                &input,
                &[],
                ProtocolError::ExpectedContinuation,
                1002,
            );
        }
    }
}

#[test]
fn control_frames_interleave_with_fragments() {
    let input = concat(&[
        frame(false, OpCode::Binary, b"ab"),
        frame(true, OpCode::Ping, b"p1"),
        frame(false, OpCode::Continuation, b"cd"),
        frame(true, OpCode::Pong, b"p2"),
        frame(true, OpCode::Ping, b""),
        frame(true, OpCode::Continuation, b"ef"),
        frame(
            false,
            OpCode::Text,
            "€".as_bytes().get(..1).unwrap_or_default(),
        ),
        frame(true, OpCode::Ping, &[0xff; 125]),
        frame(
            false,
            OpCode::Continuation,
            "€".as_bytes().get(1..2).unwrap_or_default(),
        ),
        frame(true, OpCode::Close, &[0x03, 0xe9]),
    ]);
    expect_messages(
        &cfg(),
        &input,
        &[
            Msg::Ping(b"p1".to_vec()),
            Msg::Pong(b"p2".to_vec()),
            Msg::Ping(vec![]),
            Msg::Binary(b"abcdef".to_vec()),
            Msg::Ping(vec![0xff; 125]),
            // A close may arrive in the middle of a fragmented message; the
            // caller closes, the partial text is dropped.
            Msg::Close(Some((1001, String::new()))),
        ],
    );
}

// --- Size limits --------------------------------------------------------------------

#[test]
fn default_limits_are_16_mib() {
    let c = DecoderConfig::default();
    assert_eq!(c.max_frame_size, 16 << 20);
    assert_eq!(c.max_message_size, 16 << 20);
    assert_eq!(DEFAULT_MAX_MESSAGE, 16 << 20);
    assert_eq!(c.role, Role::Server);
    assert_eq!(c.allowed_rsv, 0);
    // A header announcing 16 MiB + 1 is refused before any payload.
    let len = (16u64 << 20) + 1;
    let input = raw_frame(0x82, true, 127, &len.to_be_bytes(), &[]);
    let run = expect_error(&c, &input, &[], ProtocolError::FrameTooLarge, 1009);
    assert_eq!(run.max_buffered, 0);
}

#[test]
fn frame_over_the_limit_is_1009_from_the_header() {
    let c = server_cfg(1000, 1 << 20);
    // Exactly at the limit: fine.
    let ok = frame(true, OpCode::Binary, &[7; 1000]);
    let run = decode_all_ways(&c, &ok);
    assert_eq!(run.error, None);
    // One over: refused from the header, with the payload present or absent.
    let big = frame(true, OpCode::Binary, &[7; 1001]);
    let run = expect_error(&c, &big, &[], ProtocolError::FrameTooLarge, 1009);
    assert_eq!(run.max_buffered, 0, "no payload may be buffered");
    let header_only = &big[..8];
    assert_eq!(
        decode_chunks(&c, &[header_only]).error,
        Some(ProtocolError::FrameTooLarge)
    );
    // A continuation frame over the limit.
    let input = concat(&[
        frame(false, OpCode::Text, b"a"),
        frame(true, OpCode::Continuation, &[b'b'; 1001]),
    ]);
    let run = expect_error(&c, &input, &[], ProtocolError::FrameTooLarge, 1009);
    assert!(run.max_buffered < 100, "buffered {}", run.max_buffered);
}

#[test]
fn message_over_the_limit_is_1009_before_the_payload() {
    let c = server_cfg(1 << 20, 1024);
    // Fragments of 600 + 424 = 1024: fine.
    let ok = concat(&[
        frame(false, OpCode::Binary, &[1; 600]),
        frame(true, OpCode::Continuation, &[2; 424]),
    ]);
    let run = decode_all_ways(&c, &ok);
    assert_eq!(run.error, None);
    assert_eq!(run.messages.len(), 1);
    assert!(
        run.max_buffered <= 1024 + 125,
        "buffered {}",
        run.max_buffered
    );
    // 600 + 425: refused at the second header; its payload never buffered.
    let bad = concat(&[
        frame(false, OpCode::Binary, &[1; 600]),
        frame(true, OpCode::Continuation, &[2; 425]),
    ]);
    let run = expect_error(&c, &bad, &[], ProtocolError::MessageTooLarge, 1009);
    assert!(
        run.max_buffered <= 600,
        "buffered {} > the first fragment",
        run.max_buffered
    );
    // Fed only up to the second header: the same verdict.
    let upto = 8 + 600 + 8; // 16-bit length headers: 2 + 2 + 4 (key) bytes each
    assert_eq!(
        decode_chunks(&c, &[&bad[..upto]]).error,
        Some(ProtocolError::MessageTooLarge)
    );
    // Interleaved control frames do not count toward the message.
    let input = concat(&[
        frame(false, OpCode::Binary, &[1; 1000]),
        frame(true, OpCode::Ping, &[0; 125]),
        frame(true, OpCode::Continuation, &[2; 24]),
    ]);
    let run = decode_all_ways(&c, &input);
    assert_eq!(run.error, None);
    assert_eq!(run.messages.len(), 2);
}

#[test]
fn buffering_follows_received_bytes_not_announced_lengths() {
    // With no limits at all, a header announcing 2^62 bytes allocates nothing;
    // the assembly buffer then grows only with the bytes that really arrive.
    let c = server_cfg(u64::MAX, u64::MAX);
    let len = 1u64 << 62;
    let mut input = raw_frame(0x82, true, 127, &len.to_be_bytes(), &[]);
    let run = decode_all_ways(&c, &input);
    assert_eq!(run.error, None);
    assert!(run.messages.is_empty());
    assert_eq!(run.max_buffered, 0);
    input.extend_from_slice(&[0u8; 4096]);
    let run = decode_chunks(&c, &[&input[..14], &input[14..]]);
    assert_eq!(run.error, None);
    assert!(
        run.max_buffered >= 4096 && run.max_buffered <= 2 * 4096,
        "buffered {}",
        run.max_buffered
    );
}

#[test]
fn buffers_stay_within_the_limit_while_streaming_a_large_message() {
    let c = server_cfg(1 << 20, 100_000);
    let payload = vec![b'x'; 100_000];
    let input = concat(&[
        frame(false, OpCode::Text, &payload[..33_333]),
        frame(false, OpCode::Continuation, &payload[33_333..66_666]),
        frame(true, OpCode::Continuation, &payload[66_666..]),
    ]);
    let run = decode_ways(&c, &input, 2);
    assert_eq!(run.error, None);
    assert_eq!(
        run.messages,
        vec![Msg::Text(String::from_utf8(payload).unwrap_or_default())]
    );
    assert!(
        run.max_buffered <= 100_000 + 125,
        "buffered {}",
        run.max_buffered
    );
}

#[test]
fn release_buffers_frees_memory_when_idle() {
    let c = cfg();
    let mut dec = Decoder::new();
    let mut a = frame(false, OpCode::Binary, &[1; 5000]);
    let mut b = frame(true, OpCode::Continuation, &[2; 10]);
    assert!(dec.decode(&c, &mut a).expect("ok").message.is_none());
    assert!(!dec.is_idle());
    // In the middle of a message, the buffer is kept.
    dec.release_buffers();
    assert!(dec.buffered_capacity() >= 5000);
    let d = dec.decode(&c, &mut b).expect("ok");
    assert_eq!(
        d.message.map(Msg::from),
        Some(Msg::Binary([vec![1; 5000], vec![2; 10]].concat()))
    );
    assert!(dec.is_idle());
    assert!(dec.buffered_capacity() > 0);
    dec.release_buffers();
    assert_eq!(dec.buffered_capacity(), 0);
}

// --- UTF-8 --------------------------------------------------------------------------

#[test]
fn invalid_utf8_text_is_1007() {
    for bad in [
        &b"\xff"[..],
        b"abc\xc0\xaf",
        b"\xed\xa0\x80",     // surrogate
        b"\xf4\x90\x80\x80", // > U+10FFFF
        b"\xe2\x82",         // truncated at the end of the message
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // Autobahn 6.x
    ] {
        let input = frame(true, OpCode::Text, bad);
        expect_error(&cfg(), &input, &[], ProtocolError::InvalidUtf8, 1007);
        // Binary messages are not checked.
        let input = frame(true, OpCode::Binary, bad);
        expect_messages(&cfg(), &input, &[Msg::Binary(bad.to_vec())]);
    }
}

#[test]
fn code_points_split_across_fragments_are_valid() {
    let s = "a€b𝄞c";
    let bytes = s.as_bytes();
    for cut in 0..=bytes.len() {
        for cut2 in cut..=bytes.len() {
            let input = concat(&[
                frame(false, OpCode::Text, &bytes[..cut]),
                frame(true, OpCode::Ping, b""),
                frame(false, OpCode::Continuation, &bytes[cut..cut2]),
                frame(true, OpCode::Continuation, &bytes[cut2..]),
            ]);
            let run = decode_chunks(&cfg(), &[&input]);
            assert_eq!(run.error, None, "cuts {cut} {cut2}");
            assert_eq!(run.messages, vec![Msg::Ping(vec![]), text(s)]);
        }
    }
    let input = concat(&[
        frame(false, OpCode::Text, &bytes[..2]),
        frame(true, OpCode::Continuation, &bytes[2..]),
    ]);
    expect_messages(&cfg(), &input, &[text(s)]);
}

#[test]
fn utf8_fails_early_across_fragments() {
    // The first fragment ends with F4; the second starts with 90, which can
    // never follow it. The message never ends (no FIN), yet it fails at once.
    let input = concat(&[
        frame(false, OpCode::Text, b"hello\xf4"),
        frame(false, OpCode::Continuation, b"\x90rest"),
    ]);
    expect_error(&cfg(), &input, &[], ProtocolError::InvalidUtf8, 1007);
    // Fed only the first fragment plus the second's header and first byte.
    let upto = input.len() - 4;
    assert_eq!(
        decode_chunks(&cfg(), &[&input[..upto]]).error,
        Some(ProtocolError::InvalidUtf8)
    );
    // An invalid byte in the first (non-final) fragment.
    let input = frame(false, OpCode::Text, b"ok\xffmore");
    expect_error(&cfg(), &input, &[], ProtocolError::InvalidUtf8, 1007);
}

#[test]
fn utf8_fails_early_inside_a_frame_still_arriving() {
    // A 10 000-byte text frame whose 6th byte is bad: fed only the header and
    // its first 16 payload bytes, the decoder already refuses it.
    let mut payload = vec![b'a'; 10_000];
    payload[5] = 0xc0;
    let input = frame(true, OpCode::Text, &payload);
    let run = decode_chunks(&cfg(), &[&input[..8 + 16]]);
    assert_eq!(run.error, Some(ProtocolError::InvalidUtf8));
    let run = decode_chunks(&cfg(), &[&input[..8 + 3], &input[8 + 3..8 + 6]]);
    assert_eq!(run.error, Some(ProtocolError::InvalidUtf8));
    // Byte by byte too: fails on the 6th payload byte.
    let bytes: Vec<&[u8]> = input[..8 + 6].chunks(1).collect();
    assert_eq!(
        decode_chunks(&cfg(), &bytes).error,
        Some(ProtocolError::InvalidUtf8)
    );
    let bytes: Vec<&[u8]> = input[..8 + 5].chunks(1).collect();
    assert_eq!(decode_chunks(&cfg(), &bytes).error, None);
}

#[test]
fn truncated_code_point_at_the_end_of_a_fragmented_message_is_1007() {
    let input = concat(&[
        frame(false, OpCode::Text, b"abc"),
        frame(true, OpCode::Continuation, b"\xe2\x82"),
    ]);
    expect_error(&cfg(), &input, &[], ProtocolError::InvalidUtf8, 1007);
}

// --- Close frames ------------------------------------------------------------------

#[test]
fn close_of_length_one_is_1002() {
    let input = frame(true, OpCode::Close, &[0x03]);
    expect_error(&cfg(), &input, &[], ProtocolError::CloseLengthOne, 1002);
}

#[test]
fn invalid_close_codes_are_1002() {
    let mut invalid: Vec<u16> = vec![
        0, 1, 500, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 6000, 65535,
    ];
    invalid.extend((0..1000).step_by(97));
    for code in invalid {
        assert!(!close::is_valid_code(code), "{code}");
        let input = frame(true, OpCode::Close, &code.to_be_bytes());
        expect_error(
            &cfg(),
            &input,
            &[],
            ProtocolError::InvalidCloseCode(code),
            1002,
        );
    }
    // Exhaustively: the valid set is exactly 1000-1003, 1007-1014, 3000-4999.
    for code in 0..=u16::MAX {
        let expect = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        assert_eq!(close::is_valid_code(code), expect, "{code}");
        let payload = code.to_be_bytes();
        assert_eq!(close::parse_payload(&payload).is_ok(), expect, "{code}");
    }
}

#[test]
fn valid_close_codes_and_reasons_decode() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice("bye ✓".as_bytes());
        let input = frame(true, OpCode::Close, &p);
        expect_messages(
            &cfg(),
            &input,
            &[Msg::Close(Some((code, "bye ✓".to_string())))],
        );
    }
}

#[test]
fn close_reason_must_be_utf8() {
    for bad in [&b"\xff"[..], b"ok\xed\xa0\x80", b"\xe2\x82"] {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(bad);
        let input = frame(true, OpCode::Close, &p);
        expect_error(&cfg(), &input, &[], ProtocolError::InvalidUtf8, 1007);
    }
    // An invalid code is reported before a bad reason.
    let input = frame(true, OpCode::Close, &[0x03, 0xed, 0xff]);
    expect_error(
        &cfg(),
        &input,
        &[],
        ProtocolError::InvalidCloseCode(1005),
        1002,
    );
}

#[test]
fn close_answer_echoes_the_code() {
    // The answer to a valid close is a close carrying the same code; check
    // that the encoder's frame decodes (client role) to exactly that.
    for code in [1000u16, 1001, 3000, 4999] {
        let mut answer = Vec::new();
        encode::close_into(&mut answer, Some(code), "");
        assert_eq!(answer, [0x88, 0x02, (code >> 8) as u8, code as u8]);
        let run = decode_all_ways(&DecoderConfig::for_role(Role::Client), &answer);
        assert_eq!(run.messages, vec![Msg::Close(Some((code, String::new())))]);
    }
    let mut empty = Vec::new();
    encode::close_into(&mut empty, None, "ignored");
    assert_eq!(empty, [0x88, 0x00]);
}

// --- Ping and pong ---------------------------------------------------------------

#[test]
fn ping_payload_is_returned_for_the_pong() {
    let mut rng = Rng::new(7);
    for len in [0usize, 1, 4, 5, 64, 124, 125] {
        let payload = rng.bytes(len);
        let input = frame(true, OpCode::Ping, &payload);
        let run = decode_all_ways(&cfg(), &input);
        assert_eq!(run.messages, vec![Msg::Ping(payload.clone())]);
        // The pong answer carries the same payload, unmasked.
        let mut pong = Vec::new();
        encode::frame_into(&mut pong, OpCode::Pong, &payload);
        assert_eq!(pong[0], 0x8a);
        assert_eq!(pong[1] as usize, len);
        assert_eq!(&pong[2..], &payload[..]);
        let run = decode_all_ways(&DecoderConfig::for_role(Role::Client), &pong);
        assert_eq!(run.messages, vec![Msg::Pong(payload)]);
    }
}

// --- Encoder -------------------------------------------------------------------------

#[test]
fn encoder_writes_unmasked_minimal_headers() {
    for (len, hdr) in [
        (0usize, &[0x82u8, 0][..]),
        (125, &[0x82, 125]),
        (126, &[0x82, 126, 0, 126]),
        (65535, &[0x82, 126, 0xff, 0xff]),
        (65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ] {
        let payload = vec![0x5a; len];
        let mut out = Vec::new();
        encode::frame_into(&mut out, OpCode::Binary, &payload);
        assert_eq!(&out[..hdr.len()], hdr, "len {len}");
        assert_eq!(&out[hdr.len()..], &payload[..]);
        // frame_header_into + payload gives the same bytes.
        let mut out2 = Vec::new();
        encode::frame_header_into(&mut out2, true, OpCode::Binary, len);
        out2.extend_from_slice(&payload);
        assert_eq!(out, out2);
        // shared() gives the same bytes in an exact-size Arc.
        let shared = encode::shared(OpCode::Binary, &payload);
        assert_eq!(&shared[..], &out[..]);
    }
    let mut out = Vec::new();
    encode::frame_header_into(&mut out, false, OpCode::Text, 3);
    assert_eq!(out, [0x01, 3]);
    encode::frame_into(&mut out, OpCode::Ping, b"p");
    assert_eq!(out, [0x01, 3, 0x89, 1, b'p']);
}

#[test]
fn encoded_frames_round_trip_through_a_client_decoder() {
    let ccfg = DecoderConfig::for_role(Role::Client);
    let mut out = Vec::new();
    encode::frame_into(&mut out, OpCode::Text, "héllo".as_bytes());
    encode::frame_header_into(&mut out, false, OpCode::Binary, 2);
    out.extend_from_slice(&[1, 2]);
    encode::frame_into(&mut out, OpCode::Pong, b"");
    encode::frame_header_into(&mut out, true, OpCode::Continuation, 1);
    out.push(3);
    out.extend_from_slice(&encode::shared(OpCode::Text, &[b'z'; 70_000]));
    encode::close_into(&mut out, Some(1001), "going away");
    expect_messages(
        &ccfg,
        &out,
        &[
            text("héllo"),
            Msg::Pong(vec![]),
            Msg::Binary(vec![1, 2, 3]),
            text(&"z".repeat(70_000)),
            Msg::Close(Some((1001, "going away".to_string()))),
        ],
    );
}

#[test]
fn close_reason_is_truncated_to_fit_125_bytes() {
    let long = "ü".repeat(100); // 200 bytes
    let mut out = Vec::new();
    encode::close_into(&mut out, Some(1000), &long);
    assert!(out.len() - 2 <= 125);
    let run = decode_all_ways(&DecoderConfig::for_role(Role::Client), &out);
    match &run.messages[..] {
        [Msg::Close(Some((1000, r)))] => {
            assert!(r.len() <= 123 && r.len() >= 122, "reason {} bytes", r.len());
            assert!(long.starts_with(r.as_str()));
        }
        other => panic!("got {other:?}"),
    }
    // The masked variant (client role) is decodable by the server.
    let mut out = Vec::new();
    encode::masked_close_into(&mut out, 4000, &long, [9, 8, 7, 6]);
    let run = decode_all_ways(&cfg(), &out);
    assert!(matches!(&run.messages[..], [Msg::Close(Some((4000, _)))]));
}

#[test]
fn masked_encoder_matches_the_rfc_and_any_key() {
    let mut out = Vec::new();
    encode::masked_frame_into(
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
    let mut rng = Rng::new(3);
    for len in [0usize, 3, 8, 31, 32, 33, 200, 4099] {
        let p = rng.bytes(len);
        let mut out = Vec::new();
        encode::masked_frame_into(&mut out, true, OpCode::Binary, &p, rng.key());
        assert_eq!(decode_all_ways(&cfg(), &out).messages, vec![Msg::Binary(p)]);
    }
}

// --- Error enum ----------------------------------------------------------------------

#[test]
fn every_protocol_error_carries_its_close_code() {
    use ProtocolError::*;
    let all = [
        (UnmaskedFrame, 1002),
        (MaskedFrame, 1002),
        (ReservedBits, 1002),
        (ReservedOpcode(3), 1002),
        (ControlFrameTooLong, 1002),
        (FragmentedControlFrame, 1002),
        (UnexpectedContinuation, 1002),
        (ExpectedContinuation, 1002),
        (LengthOverflow, 1002),
        (FrameTooLarge, 1009),
        (MessageTooLarge, 1009),
        (InvalidUtf8, 1007),
        (CloseLengthOne, 1002),
        (InvalidCloseCode(5), 1002),
    ];
    for (e, code) in all {
        assert_eq!(e.close_code(), code, "{e:?}");
        assert!(!e.reason().is_empty() && e.reason().len() <= 123);
        assert!(e.to_string().contains(&format!("[close {code}]")));
        let any: wspush::protocol::Error = e.into();
        assert_eq!(any.close_code(), Some(code));
        assert_eq!(any.http_status(), None);
    }
}

#[test]
fn decoding_on_after_a_utf8_error_never_yields_invalid_text() {
    // Misuse (the stream is unusable after an error), but it must stay
    // memory-safe: no `str` that is not UTF-8. The second fragment completes
    // the pending code point and then fails, leaving the validator ahead of
    // the assembly buffer unless the decoder abandons the message.
    let c = cfg();
    let mut dec = Decoder::new();
    let mut f1 = frame(false, OpCode::Text, b"\xe2");
    let mut f2 = frame(false, OpCode::Continuation, b"\x82\xac\xff");
    let mut f3 = frame(true, OpCode::Continuation, b"a");
    let mut f4 = frame(true, OpCode::Text, b"fresh");
    assert_eq!(
        dec.decode(&c, &mut f1).map(|d| d.message.is_none()),
        Ok(true)
    );
    assert_eq!(
        dec.decode(&c, &mut f2).map(|d| d.consumed),
        Err(ProtocolError::InvalidUtf8)
    );
    match dec.decode(&c, &mut f3) {
        Ok(d) => {
            if let Some(Message::Text(t)) = d.message {
                assert!(
                    std::str::from_utf8(t.as_bytes()).is_ok(),
                    "invalid str {:x?}",
                    t.as_bytes()
                );
            }
        }
        Err(e) => assert_eq!(e, ProtocolError::UnexpectedContinuation),
    }
    // Decoding unmasked f1 and f2 in place: build them again.
    let mut f1 = frame(false, OpCode::Text, b"\xe2");
    let mut f2 = frame(false, OpCode::Continuation, b"\x82\xac\xff");
    let mut dec = Decoder::new();
    assert!(dec.decode(&c, &mut f1).is_ok());
    assert!(dec.decode(&c, &mut f2).is_err());
    assert_eq!(
        dec.decode(&c, &mut f4).map(|d| d.message.map(Msg::from)),
        Ok(Some(text("fresh")))
    );
}
