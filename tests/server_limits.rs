//! Memory and refusal under abuse (issue 8, items 7 and 9), through the
//! real binary: the receive budget holds (RSS read from /proc), API
//! requests are judged on their head before a body is read, and the
//! backend can still call the API and the health check at the connection
//! limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::push::*;
use common::*;
use wspush::protocol::{encode, OpCode};

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < IO_TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unfinished_frames_cannot_take_more_than_the_receive_budget() {
    // 40 connections each start a 4 MiB frame and send 3.9 MiB of it: 156 MiB
    // without a budget; --max-pending-bytes 32 MiB must hold (within one
    // read buffer per refusal and the allocator's slack).
    let d = Daemon::start(&[
        "--workers",
        "2",
        "--max-message-size",
        "4194304",
        "--max-pending-bytes",
        "33554432",
    ]);
    let base = rss_kib(d.child.id());
    let mut header = Vec::new();
    encode::frame_header_into(&mut header, true, OpCode::Binary, 4 << 20);
    header[1] |= 0x80; // masked
    header.extend_from_slice(&[1, 2, 3, 4]);
    let chunk = vec![0u8; 64 << 10];
    let mut conns = Vec::new();
    for _ in 0..40 {
        let mut c = RawWs::connect(d.addr, "/echo");
        c.stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut ok = c.stream.write_all(&header).is_ok();
        let mut sent = 0;
        while ok && sent < (4 << 20) - (100 << 10) {
            ok = c.stream.write_all(&chunk).is_ok();
            sent += chunk.len();
        }
        conns.push(c);
    }
    // Every byte sent has been read by the server (or refused) once its
    // counters stop moving; then RSS says what it holds.
    let mut last = 0;
    wait_for("the server to take in what was sent", || {
        let (_, s) = get_json(d.addr, "/stats");
        let now = s["bytes"]["in"].as_u64().unwrap_or(0);
        let settled = now == last && now > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        settled
    });
    let grown = rss_kib(d.child.id()).saturating_sub(base);
    eprintln!("receive budget 32 MiB: RSS +{grown} KiB");
    assert!(
        grown < 32 * 1024 + 24 * 1024,
        "RSS grew by {grown} KiB with a 32 MiB receive budget"
    );
    // Some connections were refused with 1009, and the log says so.
    let mut refused = 0;
    for c in conns.iter_mut() {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if let Some((OpCode::Close, p)) = c.next() {
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1009);
            refused += 1;
        }
    }
    assert!(refused >= 30, "only {refused} of 40 refused");
    wait_for("the log line", || d.logged("--max-pending-bytes"));
    // The server still serves.
    let mut e = ws(&d, "/echo");
    e.send(tungstenite::Message::Text("alive".into())).unwrap();
    assert_eq!(e.read().unwrap().into_text().unwrap(), "alive");
}

#[test]
fn api_requests_are_refused_on_their_head_before_the_body() {
    let d = Daemon::start(&[
        "--workers",
        "1",
        "--api-key",
        "an-api-key-that-is-long-enough-123",
    ]);
    // A 1 MiB body is announced; only the head is sent. The 401 comes at once.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n{\"partial\":",
    )
    .unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed without an answer");
        out.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // With the key the same request waits for its body and succeeds.
    let body = vec![b'1'; 1000];
    let (st, _) = http(
        d.addr,
        "POST",
        "/publish/news",
        "Authorization: Bearer an-api-key-that-is-long-enough-123\r\nContent-Type: application/json\r\n",
        &body,
    );
    assert_eq!(st, 200);
}

#[test]
fn at_the_connection_limit_the_api_and_health_check_still_answer() {
    let d = Daemon::start(&["--workers", "2", "--max-connections", "20"]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&d, "?channel=full").0);
    }
    wait_for("the limit to be reached", || {
        http(d.addr, "GET", "/healthz", "", b"").0 == 503
    });
    let (st, body) = http(d.addr, "GET", "/healthz", "", b"");
    assert_eq!(st, 503);
    assert!(body.contains("20 of --max-connections 20"), "{body}");
    // A new WebSocket is refused with 503 ...
    let r = raw_exchange(d.addr, upgrade_request("/ws", "").as_bytes());
    assert_eq!(status_of(&r), 503, "{r}");
    // ... but the backend's publish reaches the 20 subscribers.
    let p = publish(d.addr, "full", "\"hello\"");
    assert_eq!(p["recipients"], 20, "{p}");
    for ws in held.iter_mut() {
        assert_eq!(next_json(ws)["data"], "hello");
    }
    drop(held);
    wait_for("room again", || {
        http(d.addr, "GET", "/healthz", "", b"").0 == 200
    });
}

/// Publish `n` client messages, each to a new channel `chat.<i>`, over one
/// connection (written from another thread while the answers are read).
fn publish_to_distinct_channels(d: &Daemon, n: usize) {
    let mut c = RawWs::connect(d.addr, "/ws");
    assert!(c.next().is_some(), "welcome");
    let mut all = Vec::with_capacity(n * 80);
    for i in 0..n {
        let m = format!(r#"{{"op":"publish","channel":"chat.{i}","data":{i}}}"#);
        encode::masked_frame_into(&mut all, true, OpCode::Text, m.as_bytes(), [1, 2, 3, 4]);
    }
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&all).unwrap());
    for i in 0..n {
        let (op, p) = c.next().unwrap_or_else(|| panic!("EOF after {i} answers"));
        assert_eq!(op, OpCode::Text);
        assert!(
            p.starts_with(br#"{"op":"published""#),
            "{}",
            String::from_utf8_lossy(&p)
        );
    }
    writer.join().unwrap();
}

#[test]
fn channels_nobody_listens_to_cost_nothing_after_their_publication() {
    // History off: 200,000 publications to distinct empty channels leave no
    // channel state behind.
    let d = Daemon::start(&[
        "--workers",
        "2",
        "--client-publish",
        "chat.*",
        "--history-size",
        "0",
    ]);
    publish_to_distinct_channels(&d, 10_000); // warm up allocator and buffers
    let base = rss_kib(d.child.id());
    publish_to_distinct_channels(&d, 200_000);
    let grown = rss_kib(d.child.id()).saturating_sub(base);
    let (_, stats) = get_json(d.addr, "/stats");
    eprintln!("history off: RSS +{grown} KiB after 200,000 channels");
    assert_eq!(stats["history"]["channels_held"], 0, "{stats}");
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB for channels nobody listens to"
    );
}

#[test]
fn channels_kept_for_their_history_stay_within_the_history_cap() {
    // History on with an 8 MiB cap: the same flood keeps at most 8 MiB of
    // charged history (RSS within the cap plus a stated margin of 16 MiB for
    // the maps and the allocator).
    let d = Daemon::start(&[
        "--workers",
        "2",
        "--client-publish",
        "chat.*",
        "--history-max-bytes",
        "8388608",
    ]);
    publish_to_distinct_channels(&d, 10_000);
    let base = rss_kib(d.child.id());
    publish_to_distinct_channels(&d, 200_000);
    let grown = rss_kib(d.child.id()).saturating_sub(base);
    let (_, stats) = get_json(d.addr, "/stats");
    let bytes = stats["history"]["bytes"].as_u64().unwrap();
    assert!(bytes <= 8 << 20, "history bytes {bytes}");
    assert!(
        stats["history"]["evicted"].as_u64().unwrap() > 100_000,
        "{stats}"
    );
    let held = stats["history"]["channels_held"].as_u64().unwrap();
    eprintln!("history cap 8 MiB: RSS +{grown} KiB, {bytes} B charged, {held} channels held");
    assert!(held < 40_000, "{held} channels held for 8 MiB of history");
    assert!(
        grown < (8 + 16) * 1024,
        "RSS grew by {grown} KiB with an 8 MiB history cap"
    );
}
