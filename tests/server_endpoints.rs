//! The daemon's endpoints over real sockets, with tungstenite as an
//! independent client: echo, refusals, protocol errors, ping/pong, close.

mod common;

use common::*;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOp};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Message as TMsg;
use wspush::protocol::OpCode;

#[test]
fn echo_text_binary_fragmented_and_16_mib() {
    let d = Daemon::start(&["--workers", "2"]);
    let mut ws = ws(&d, "/echo");
    ws.send(TMsg::Text("héllo wörld".into())).unwrap();
    assert_eq!(ws.read().unwrap(), TMsg::Text("héllo wörld".into()));
    let bin: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
    ws.send(TMsg::Binary(bin.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), TMsg::Binary(bin));
    ws.send(TMsg::Text(String::new())).unwrap();
    assert_eq!(ws.read().unwrap(), TMsg::Text(String::new()));

    // Fragmented text, with a ping between the fragments.
    ws.write(TMsg::Frame(Frame::message(
        b"frag".to_vec(),
        TOp::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.write(TMsg::Frame(Frame::message(
        b"men".to_vec(),
        TOp::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.write(TMsg::Ping(b"in-between".to_vec())).unwrap();
    ws.write(TMsg::Frame(Frame::message(
        b"ted".to_vec(),
        TOp::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), TMsg::Pong(b"in-between".to_vec()));
    assert_eq!(ws.read().unwrap(), TMsg::Text("fragmented".into()));

    // 1 MiB, the default limit, in one message.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i ^ (i >> 8)) as u8).collect();
    ws.send(TMsg::Binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        TMsg::Binary(b) => assert!(b == big, "1 MiB echo differs"),
        other => panic!("expected binary, got {other:?}"),
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(TMsg::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[test]
fn handshake_refusals_have_the_right_status() {
    let d = Daemon::start(&["--workers", "1", "--origin", "https://good.example"]);
    let base = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases: Vec<(String, u16)> = vec![
        (format!("POST /echo HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"), 405),
        (format!("GET /echo HTTP/1.1\r\n{base}Sec-WebSocket-Version: 8\r\n\r\n"), 426),
        (format!("GET /echo HTTP/1.1\r\n{base}\r\n"), 426),
        (
            "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n".into(),
            400,
        ),
        (
            "GET /echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".into(),
            400,
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".into(),
            400,
        ),
        (format!("GET /echo HTTP/1.0\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
        (format!("GET /echo HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n"), 403),
        (format!("GET /nowhere HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"), 404),
        ("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".into(), 426),
        ("GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 404),
        (format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)), 431),
        ("GARBAGE\r\n\r\n".into(), 400),
        ("GET /echo HTTP/2.0\r\nHost: x\r\n\r\n".into(), 505),
    ];
    for (req, want) in cases {
        let resp = raw_exchange(d.addr, req.as_bytes());
        assert_eq!(status_of(&resp), want, "request {req:?} got {resp:?}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            !body.trim().is_empty(),
            "refusal without a reason: {resp:?}"
        );
        if want == 426 && req.contains("Sec-WebSocket-Version: 8") {
            assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
        }
    }
    // The allowed origin and the seed's subprotocol offer upgrade fine.
    let ok = raw_exchange(
        d.addr,
        format!("GET /echo HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\nOrigin: https://good.example\r\nSec-WebSocket-Protocol: chat, superchat\r\nConnection: keep-alive, Upgrade\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&ok), 101, "{ok}");
    assert!(
        ok.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{ok}"
    );
    assert!(
        !ok.contains("Sec-WebSocket-Protocol"),
        "no protocol configured, none answered: {ok}"
    );
    assert!(d.wait_logged("refused: 403"), "refusals are logged");
}

#[test]
fn subprotocol_is_chosen_from_the_offer() {
    let d = Daemon::start(&[
        "--workers",
        "1",
        "--protocol",
        "chat",
        "--protocol",
        "superchat",
    ]);
    let resp = raw_exchange(
        d.addr,
        upgrade_request("/echo", "Sec-WebSocket-Protocol: superchat, chat\r\n").as_bytes(),
    );
    assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"), "{resp}");
    let resp = raw_exchange(
        d.addr,
        upgrade_request("/echo", "Sec-WebSocket-Protocol: superchat\r\n").as_bytes(),
    );
    assert!(
        resp.contains("Sec-WebSocket-Protocol: superchat\r\n"),
        "{resp}"
    );
    let resp = raw_exchange(
        d.addr,
        upgrade_request("/echo", "Sec-WebSocket-Protocol: other\r\n").as_bytes(),
    );
    assert_eq!(status_of(&resp), 101);
    assert!(!resp.contains("Sec-WebSocket-Protocol"), "{resp}");
}

#[test]
fn protocol_errors_get_their_close_codes() {
    let d = Daemon::start(&["--workers", "2", "--max-message-size", "1000"]);
    // Unmasked client frame → 1002.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(c.close_code(), Some(1002));
    assert!(c.at_eof());
    // Invalid UTF-8 → 1007.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Text, b"ok\xff", true);
    assert_eq!(c.close_code(), Some(1007));
    // Over --max-message-size → 1009, decided from the header alone.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send_raw(&[0x82, 0xfe, 0x10, 0x00, 1, 2, 3, 4]); // 4096 bytes announced, none sent
    assert_eq!(c.close_code(), Some(1009));
    // Reserved opcode → 1002.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Text, b"fine", true);
    assert_eq!(c.next(), Some((OpCode::Text, b"fine".to_vec())));
    c.send_raw(&[0x83, 0x80, 0, 0, 0, 0]);
    assert_eq!(c.close_code(), Some(1002));
    // Continuation without a message → 1002.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Continuation, b"x", true);
    assert_eq!(c.close_code(), Some(1002));
    // Close with an invalid code → 1002.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Close, &1005u16.to_be_bytes(), true);
    assert_eq!(c.close_code(), Some(1002));
    // Fragmented message over the limit → 1009.
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Binary, &[0u8; 600], false);
    c.send(OpCode::Continuation, &[0u8; 600], true);
    assert_eq!(c.close_code(), Some(1009));
    assert!(
        d.wait_logged("protocol error"),
        "protocol errors are logged"
    );
}

#[test]
fn ping_pong_and_unsolicited_pong() {
    let d = Daemon::start(&["--workers", "1"]);
    let mut c = RawWs::connect(d.addr, "/echo");
    c.send(OpCode::Pong, b"unsolicited", true);
    c.send(OpCode::Ping, b"are you there", true);
    assert_eq!(c.next(), Some((OpCode::Pong, b"are you there".to_vec())));
    c.send(OpCode::Ping, b"", true);
    assert_eq!(c.next(), Some((OpCode::Pong, Vec::new())));
    let mut t = ws(&d, "/echo");
    t.send(TMsg::Ping(b"tung".to_vec())).unwrap();
    assert_eq!(t.read().unwrap(), TMsg::Pong(b"tung".to_vec()));
}

#[test]
fn client_close_is_echoed_and_tcp_closed() {
    let d = Daemon::start(&["--workers", "1"]);
    let mut c = RawWs::connect(d.addr, "/echo");
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    c.send(OpCode::Close, &payload, true);
    assert_eq!(c.close_code(), Some(4000));
    assert!(c.at_eof(), "server closes TCP after the close handshake");

    let mut t = ws(&d, "/echo");
    t.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    let mut got = None;
    loop {
        match t.read() {
            Ok(TMsg::Close(f)) => got = f.map(|f| f.code),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(got, Some(CloseCode::Normal));
}

#[test]
fn bytes_after_the_request_are_the_first_frame() {
    let d = Daemon::start(&["--workers", "1"]);
    use std::io::Write;
    let mut req = upgrade_request("/echo", "").into_bytes();
    wspush::protocol::encode::masked_frame_into(
        &mut req,
        true,
        OpCode::Text,
        b"early",
        [9, 8, 7, 6],
    );
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(5).any(|w| w == b"early") {
        let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
        assert!(n > 0, "EOF before the echo");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"));
}

#[test]
fn more_than_a_read_buffer_of_frames_right_after_the_request() {
    // The request and 150 KB of frames in one send: the read that completes
    // the upgrade fills the buffer, and the rest must still be read.
    let d = Daemon::start(&["--workers", "1"]);
    let mut bytes = upgrade_request("/echo", "").into_bytes();
    for _ in 0..1500 {
        wspush::protocol::encode::masked_frame_into(
            &mut bytes,
            true,
            OpCode::Binary,
            &[7u8; 100],
            [1, 2, 3, 4],
        );
    }
    wspush::protocol::encode::masked_frame_into(
        &mut bytes,
        true,
        OpCode::Text,
        b"END",
        [1, 2, 3, 4],
    );
    let mut c = RawWs::connect_raw(d.addr, &bytes);
    let mut echoed = 0;
    loop {
        match c.next() {
            Some((OpCode::Binary, p)) => {
                assert_eq!(p, vec![7u8; 100]);
                echoed += 1;
            }
            Some((OpCode::Text, p)) => {
                assert_eq!(p, b"END");
                break;
            }
            other => panic!("unexpected {other:?} after {echoed} echoes"),
        }
    }
    assert_eq!(echoed, 1500);
}
