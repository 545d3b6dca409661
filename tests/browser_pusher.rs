//! A page using the real pusher-js (its browser build from
//! `tests/pusher/node_modules`) against wspush, in headless Chromium: it
//! connects, subscribes to a public and a private channel (signed by the
//! page's own little server at `POST /auth`, as a Laravel app would), and
//! shows events triggered through the signed HTTP API.
//!
//! Skips like the other browser and Pusher tests (`SKIPPED`) without
//! Chromium or `tests/pusher/node_modules`, unless `WSPUSH_REQUIRE_CHROMIUM=1`
//! or `WSPUSH_REQUIRE_PUSHER_CLIENTS=1` make that a failure.

mod browser_support;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use browser_support::{chromium_or_skip, Cdp, Chromium, Env};
use common::{raw_exchange, status_of, Daemon};
use serde_json::json;

const SECRET: &str = "app-secret";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

fn hmac(msg: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The page's server: `/` (demo.html), `/pusher.min.js`, `POST /auth`.
fn page_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Head, then a body of Content-Length.
    loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, out): (u16, &str, Vec<u8>) = if target.starts_with("/pusher.min.js") {
        let js = std::fs::read(dir().join("node_modules/pusher-js/dist/web/pusher.min.js"))
            .unwrap_or_default();
        (200, "application/javascript", js)
    } else if target.starts_with("/auth") {
        // socket_id=1.2&channel_name=private-x (form-encoded)
        let mut sid = String::new();
        let mut ch = String::new();
        for pair in body.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.replace("%2D", "-").replace("%2E", ".");
            match k {
                "socket_id" => sid = v,
                "channel_name" => ch = v,
                _ => {}
            }
        }
        let auth = format!("app-key:{}", hmac(&format!("{sid}:{ch}")));
        (
            200,
            "application/json",
            json!({ "auth": auth }).to_string().into_bytes(),
        )
    } else {
        let html = std::fs::read(dir().join("demo.html")).unwrap_or_default();
        (200, "text/html; charset=utf-8", html)
    };
    let _ = s.write_all(
        format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            out.len()
        )
        .as_bytes(),
    );
    let _ = s.write_all(&out);
}

fn trigger(d: &Daemon, channel: &str, event: &str, data: &str) {
    let body = json!({"name": event, "channel": channel, "data": data}).to_string();
    let md5: String = {
        use md5::{Digest, Md5};
        Md5::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let q = format!("auth_key=app-key&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let sig = hmac(&format!("POST\n/apps/1/events\n{q}"));
    let req = format!(
        "POST /apps/1/events?{q}&auth_signature={sig} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_exchange(d.addr, req.as_bytes());
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[test]
fn pusher_js_page_in_headless_chromium() {
    let Some(chromium_bin) = chromium_or_skip(true) else {
        return;
    };
    if !dir()
        .join("node_modules/pusher-js/dist/web/pusher.min.js")
        .exists()
    {
        if std::env::var("WSPUSH_REQUIRE_PUSHER_CLIENTS").as_deref() == Ok("1") {
            panic!("WSPUSH_REQUIRE_PUSHER_CLIENTS=1 but tests/pusher/node_modules is missing (npm ci --prefix tests/pusher)");
        }
        eprintln!("SKIPPED: tests/pusher/node_modules missing (npm ci --prefix tests/pusher)");
        return;
    }
    let daemon = Daemon::start(&["--workers", "2", "--pusher-app", "1:app-key:app-secret"]);
    let page = page_server();
    let origin = format!("http://{page}/");
    let url = format!(
        "{origin}?key=app-key&host=127.0.0.1&port={}&channels=demo,private-orders",
        daemon.addr.port()
    );
    let chromium = Chromium::start(&chromium_bin, &url);
    let cdp = Cdp::attach(&chromium, &origin);
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };
    env.wait_for(
        "state connected",
        "document.getElementById('state')?.textContent ?? null",
        |v| v == "connected",
    );
    let sid = env
        .cdp
        .eval("document.getElementById('socket').textContent");
    let sid = sid.as_str().unwrap_or("");
    assert!(
        sid.split_once('.')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()),
        "socket id {sid:?}"
    );
    // Both channels subscribed, the private one signed by the page's /auth.
    env.wait_for(
        "two subscriptions",
        "[...document.querySelectorAll('#subs li')].map(li => li.textContent).sort()",
        |v| v == &json!(["demo", "private-orders"]),
    );
    trigger(&daemon, "demo", "hello", r#"{"from":"api"}"#);
    trigger(&daemon, "private-orders", "created", r#"{"id":7}"#);
    env.wait_for(
        "both events",
        "[...document.querySelectorAll('#events li')].map(li => li.textContent)",
        |v| {
            v == &json!([
                r#"demo hello {"from":"api"}"#,
                r#"private-orders created {"id":7}"#
            ])
        },
    );
    assert!(
        env.cdp.exceptions.is_empty(),
        "page exceptions: {:?}",
        env.cdp.exceptions
    );
}
