//! wsload's accounting checked on loopback at small counts: against the
//! real wspush server (every message delivered exactly once, in order), and
//! against a deliberately faulty peer written here, so that the loss,
//! duplicate and reorder counters are seen to count what really happened.
//!
//! Nothing here asserts a timing figure; only counts.

use std::io::{Read, Write};
use std::net::TcpListener;

use wspush::protocol::encode::frame_into;
use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode, Role};

mod common;
use common::*;

#[test]
fn echo_counts_every_round_trip() {
    let s = Server::start(2, &[]);
    let (code, v) = wsload(&[
        "echo",
        "--url",
        &s.url("/echo"),
        "-c",
        "6",
        "-p",
        "3",
        "-s",
        "20",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "opened"), 6);
    assert!(u(&v, "sent") >= 18, "{v:#}");
    assert_eq!(u(&v, "received"), u(&v, "sent"), "{v:#}");
    assert_eq!(u(&v, "lost"), 0);
    assert_eq!(u(&v, "mismatched"), 0);
    assert_eq!(u(&v, "errors"), 0);
}

#[test]
fn echo_of_large_binary_messages() {
    let s = Server::start(1, &[]);
    let (code, v) = wsload(&[
        "echo",
        "--url",
        &s.url("/echo"),
        "-c",
        "2",
        "-p",
        "2",
        "-s",
        "70000",
        "--binary",
        "-d",
        "0.3",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert!(u(&v, "received") >= 4);
    assert_eq!(u(&v, "received"), u(&v, "sent"));
    assert_eq!(u(&v, "mismatched"), 0);
}

#[test]
fn broadcast_delivers_every_message_to_every_subscriber() {
    let s = Server::start(2, &[]);
    let (code, v) = wsload(&[
        "broadcast",
        "--url",
        &s.url("/broadcast"),
        "-c",
        "20",
        "--publishers",
        "3",
        "--rate",
        "40",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let published = u(&v, "published");
    assert!(published >= 3, "{v:#}");
    assert_eq!(u(&v, "subscribers"), 20);
    assert_eq!(u(&v, "deliveries"), published * 20, "{v:#}");
    assert_eq!(u(&v, "expected_deliveries"), published * 20);
    assert_eq!(
        u(&v, "fanout_samples"),
        published,
        "every message reached its last subscriber"
    );
    assert_zero(
        &v,
        &["lost", "duplicated", "out_of_order", "mismatched", "errors"],
    );
}

#[test]
fn chat_room_at_max_rate_over_threads_processes_and_sources() {
    let s = Server::start(2, &[]);
    let (code, v) = wsload(&[
        "broadcast",
        "--url",
        &s.url("/broadcast"),
        "-c",
        "24",
        "--publishers",
        "24",
        "--window",
        "2",
        "-d",
        "0.5",
        "--threads",
        "2",
        "--procs",
        "2",
        "--sources",
        "3",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let published = u(&v, "published");
    assert!(published >= 48, "{v:#}");
    assert_eq!(u(&v, "subscribers"), 24);
    assert_eq!(u(&v, "deliveries"), published * 24, "{v:#}");
    assert_zero(
        &v,
        &["lost", "duplicated", "out_of_order", "mismatched", "errors"],
    );
}

#[test]
fn connect_and_idle_count_connections() {
    let s = Server::start(1, &[]);
    let (code, v) = wsload(&[
        "connect",
        "--url",
        &s.url("/echo"),
        "-c",
        "60",
        "--concurrency",
        "16",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "attempted"), 60);
    assert_eq!(u(&v, "opened"), 60);
    assert_eq!(u(&v, "failed"), 0);
    let pid = s.child.id().to_string();
    let (code, v) = wsload(&[
        "idle",
        "--url",
        &s.url("/echo"),
        "-c",
        "30",
        "-d",
        "0.2",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "open_at_start"), 30);
    assert!(v["server_rss_after_kb"].as_u64().is_some(), "{v:#}");
    assert!(v["server_cpu_s"].as_f64().is_some(), "{v:#}");
}

#[test]
fn refusals_are_counted_by_reason_and_fail_the_run() {
    let s = Server::start(1, &[]);
    let (code, v) = wsload(&["connect", "--url", &s.url("/no-such-endpoint"), "-c", "5"]);
    assert_eq!(code, 1, "errors above --max-errors exit 1: {v:#}");
    assert_eq!(u(&v, "opened"), 0);
    assert_eq!(v["failures"]["http 404"].as_u64(), Some(5), "{v:#}");
    let (code, v) = wsload(&[
        "connect",
        "--url",
        &s.url("/nope"),
        "-c",
        "5",
        "--max-errors",
        "5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    drop(s);
    let port = free_port();
    let (code, v) = wsload(&[
        "connect",
        "--url",
        &format!("ws://127.0.0.1:{port}/echo"),
        "-c",
        "3",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        v["failures"]["connect: Connection refused"].as_u64(),
        Some(3),
        "{v:#}"
    );
}

/// A one-client "broadcast" peer that mangles the stream on purpose: of
/// message n it drops n % 10 == 3, sends n % 10 == 5 twice, and sends
/// n % 10 == 7 after n % 10 == 8.
fn faulty_peer(listener: TcpListener) {
    let (mut s, _) = listener.accept().unwrap();
    let mut req = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        req.extend_from_slice(&buf[..n]);
        if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&req[..end]).to_string();
    switch_protocols(&mut s, &head).unwrap();
    let cfg = DecoderConfig::for_role(Role::Server);
    let mut dec = Decoder::new();
    let mut pending: Vec<u8> = req[end..].to_vec();
    let mut held: Option<Vec<u8>> = None;
    let mut n = 0u64;
    loop {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < pending.len() {
            let d = dec.decode(&cfg, &mut pending[pos..]).expect("valid frames");
            pos += d.consumed;
            match d.message {
                None => break,
                Some(Message::Text(t)) => {
                    let p = t.as_bytes().to_vec();
                    match n % 10 {
                        3 => {}
                        5 => {
                            frame_into(&mut out, OpCode::Text, &p);
                            frame_into(&mut out, OpCode::Text, &p);
                        }
                        7 => held = Some(p),
                        8 => {
                            frame_into(&mut out, OpCode::Text, &p);
                            if let Some(h) = held.take() {
                                frame_into(&mut out, OpCode::Text, &h);
                            }
                        }
                        _ => frame_into(&mut out, OpCode::Text, &p),
                    }
                    n += 1;
                }
                Some(Message::Close(_)) => {
                    let _ = s.write_all(&[0x88, 0x02, 0x03, 0xe8]);
                    return;
                }
                Some(_) => {}
            }
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
        let r = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(r) => r,
        };
        pending.clear();
        pending.extend_from_slice(&buf[..r]);
    }
}

#[test]
fn loss_duplicates_and_reordering_are_counted_exactly() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || faulty_peer(listener));
    let (code, v) = wsload(&[
        "broadcast",
        "--url",
        &format!("ws://127.0.0.1:{port}/broadcast"),
        "-c",
        "1",
        "--publishers",
        "1",
        "--rate",
        "200",
        "-d",
        "0.5",
        "--drain",
        "0.5",
    ]);
    peer.join().unwrap();
    assert_eq!(code, 1, "errors must fail the run: {v:#}");
    let m = u(&v, "published");
    assert!(m >= 20, "{v:#}");
    let count = |pred: &dyn Fn(u64) -> bool| (0..m).filter(|&n| pred(n)).count() as u64;
    // A held 7 that no 8 ever released is lost too.
    let lost = count(&|n| n % 10 == 3) + u64::from((m - 1) % 10 == 7);
    let dup = count(&|n| n % 10 == 5);
    let ooo = count(&|n| n % 10 == 7 && n + 1 < m);
    assert_eq!(u(&v, "lost"), lost, "{v:#}");
    assert_eq!(u(&v, "duplicated"), dup, "{v:#}");
    assert_eq!(u(&v, "out_of_order"), ooo, "{v:#}");
    assert_eq!(u(&v, "deliveries"), m - lost + dup, "{v:#}");
    assert_eq!(u(&v, "errors"), lost + dup + ooo, "{v:#}");
}
