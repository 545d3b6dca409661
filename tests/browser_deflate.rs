//! permessage-deflate with real headless Chromium (issue 11): the demo page
//! connects through a sniffing TCP proxy, negotiates the extension (the 101's
//! `Sec-WebSocket-Extensions`, seen by the proxy and by the DevTools
//! `Network` events), and a ~1 KiB publication reaches the page as a frame
//! with RSV1 set on the wire, shown intact on the page.
//!
//! Skips like `browser_demo.rs` without Chromium (fails with
//! `WSPUSH_REQUIRE_CHROMIUM=1`).

mod browser_support;
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browser_support::{api_post, chromium_or_skip, Cdp, Chromium, Env, PAGE_LIMIT};
use common::Daemon;
use serde_json::{json, Value};
use wspush::protocol::decode::RSV1;
use wspush::protocol::{Decoder, DecoderConfig, Message, Role};

/// What the proxy saw from the server on upgraded connections.
#[derive(Default, Debug)]
struct Seen {
    /// The 101 response heads.
    heads: Vec<String>,
    /// `(first header byte, payload length on the wire)` of every server
    /// message (its first frame's header byte) other than a reply to the
    /// page's own requests (`{"op":"pong",…}` from its heartbeat can come
    /// at any moment on a slow machine).
    frames: Vec<(u8, usize)>,
}

/// Forward `listen` → `target`, sniffing server → client bytes.
fn proxy(target: SocketAddr, seen: Arc<Mutex<Seen>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, None));
            let seen = seen.clone();
            std::thread::spawn(move || pipe(server, client, Some(seen)));
        }
    });
    addr
}

fn pipe(mut from: TcpStream, mut to: TcpStream, sniff: Option<Arc<Mutex<Seen>>>) {
    let mut head: Vec<u8> = Vec::new();
    let mut upgraded = false;
    let mut plain = false;
    let mut cfg = DecoderConfig::for_role(Role::Client);
    cfg.allowed_rsv = RSV1;
    cfg.max_frame_size = 64 << 20;
    cfg.max_message_size = 64 << 20;
    let mut dec = Decoder::new();
    let mut first = 0u8;
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let Some(seen) = sniff.as_ref() else { continue };
        if plain {
            continue;
        }
        let mut data = buf[..n].to_vec();
        if !upgraded {
            head.extend_from_slice(&data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !head.starts_with(b"HTTP/1.1 101") {
                // Plain HTTP (the page, keep-alive): stop sniffing this one.
                plain = true;
                continue;
            }
            upgraded = true;
            let text = String::from_utf8_lossy(&head[..end]).into_owned();
            seen.lock().unwrap().heads.push(text);
            data = head[end + 4..].to_vec();
        }
        let mut pos = 0;
        while pos < data.len() {
            if dec.is_idle() {
                first = data[pos];
            }
            let Ok(d) = dec.decode(&cfg, &mut data[pos..]) else {
                return;
            };
            pos += d.consumed;
            let Some(m) = d.message else { break };
            let len = match m {
                Message::Text(t) if t.starts_with("{\"op\":") => continue,
                Message::Text(t) => t.len(),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
                Message::Close(_) => 0,
            };
            seen.lock().unwrap().frames.push((first, len));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn chromium_negotiates_deflate_and_receives_compressed_pushes() {
    let Some(chromium_bin) = chromium_or_skip(true) else {
        return;
    };
    let daemon = Daemon::start(&["--workers", "2"]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let front = proxy(daemon.addr, seen.clone());
    let origin = format!("http://{front}/");
    let chromium = Chromium::start(
        &chromium_bin,
        &format!("{origin}?channel=demo&autoconnect=1"),
    );
    let mut cdp = Cdp::attach(&chromium, &origin);
    cdp.call("Network.enable", json!({}));
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };
    env.wait_for(
        "status `connected`",
        "document.getElementById('status')?.textContent ?? null",
        |v| v == "connected",
    );
    // Chromium offered permessage-deflate and the server accepted it.
    let head = seen.lock().unwrap().heads.first().cloned().expect("a 101");
    assert!(
        head.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    // The page's own socket: reconnect it with the Network domain on, so
    // DevTools reports the handshake Chromium saw.
    env.cdp.call("Page.reload", json!({}));
    let deadline = Instant::now() + PAGE_LIMIT;
    let mut ext = None;
    while ext.is_none() && Instant::now() < deadline {
        let Ok(tungstenite::Message::Text(t)) = env.cdp.ws.read() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        if v["method"] == "Network.webSocketHandshakeResponseReceived" {
            let h = &v["params"]["response"]["headers"];
            ext = h
                .as_object()
                .and_then(|o| {
                    o.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
                })
                .map(|(_, v)| v.as_str().unwrap_or("").to_string());
        }
    }
    let ext = ext.expect("DevTools reported the WebSocket handshake");
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    env.wait_for(
        "status `connected` after reload",
        "document.getElementById('status')?.textContent ?? null",
        |v| v == "connected",
    );
    env.wait_for(
        "subscribed to demo",
        "[...document.querySelectorAll('#subscriptions li[data-channel]')]\
         .filter(li => !li.querySelector('.state')).map(li => li.dataset.channel)",
        |v| v == &json!(["demo"]),
    );

    // A ~1 KiB JSON publication: compressed on the wire, intact on the page.
    let items: Vec<String> = (0..18)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"title\":\"Breaking story number {i}\",\"score\":{}}}",
                i * 7
            )
        })
        .collect();
    let data = format!("{{\"items\":[{}]}}", items.join(","));
    assert!(data.len() > 900, "{}", data.len());
    let before = seen.lock().unwrap().frames.len();
    let (status, answer) = api_post(daemon.addr, "/publish/demo", &data);
    assert_eq!(status, 200, "{answer}");
    env.wait_push("demo #1", &data);
    let frames: Vec<(u8, usize)> = seen.lock().unwrap().frames[before..].to_vec();
    // The push: FIN + RSV1 + text, far shorter than the ~1.1 KiB envelope.
    let push = frames.iter().find(|(b0, _)| *b0 & 0x0f == 1).copied();
    let (b0, len) = push.unwrap_or_else(|| panic!("no data frame seen: {frames:?}"));
    assert_eq!(
        b0,
        0x80 | 0x40 | 0x1,
        "RSV1 set on the pushed frame: {frames:?}"
    );
    assert!(
        len * 2 < data.len(),
        "compressed length {len} of {}",
        data.len()
    );
    // A small publication goes plain (under --compression-min-size).
    let before = seen.lock().unwrap().frames.len();
    let (status, _) = api_post(daemon.addr, "/publish/demo", "7");
    assert_eq!(status, 200);
    env.wait_push("demo #2", "7");
    let wait = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().frames.len() == before && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(20));
    }
    let small = seen.lock().unwrap().frames[before..].to_vec();
    assert!(
        small.iter().any(|&(b0, _)| b0 == 0x81),
        "a plain text frame: {small:?}"
    );
}
