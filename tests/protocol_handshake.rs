//! WebSocket upgrade rules of issue 2 (§2), each request fed whole, byte by
//! byte and in random splits (see `protocol_support`).

mod protocol_support;

use protocol_support::*;
use wspush::protocol::handshake::{
    self, accept_key, is_upgrade, validate, write_accept, HandshakeConfig,
};
use wspush::protocol::http::{HttpLimits, RequestParser};
use wspush::protocol::HttpError;

/// The outcome of a handshake: the bytes to answer with, and the error if refused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    response: Vec<u8>,
    refused: Option<HttpError>,
    upgrade: bool,
}

fn answer_chunks(cfg: &HandshakeConfig, chunks: &[&[u8]]) -> Answer {
    let limits = HttpLimits::default();
    let mut parser = RequestParser::new();
    let mut buf = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        match parser.parse(&limits, &buf) {
            Ok(None) => continue,
            Ok(Some((req, _))) => {
                let upgrade = is_upgrade(&req);
                let mut response = Vec::new();
                return match validate(&req, cfg) {
                    Ok(acc) => {
                        write_accept(&acc, &mut response);
                        Answer {
                            response,
                            refused: None,
                            upgrade,
                        }
                    }
                    Err(e) => {
                        e.write_response(&mut response);
                        Answer {
                            response,
                            refused: Some(e),
                            upgrade,
                        }
                    }
                };
            }
            Err(e) => panic!("parser refused: {e:?}"),
        }
    }
    panic!("request incomplete")
}

/// Parse and validate `input` whole, byte by byte and in random splits; all must agree.
fn answer(cfg: &HandshakeConfig, input: &[u8]) -> Answer {
    let mut first: Option<Answer> = None;
    for (name, split) in all_splits(input.len(), 0x4a4d, 6) {
        let a = answer_chunks(cfg, &chunks(input, &split));
        match &first {
            None => first = Some(a),
            Some(f) => assert_eq!(&a, f, "answer differs when fed {name}"),
        }
    }
    first.unwrap_or_else(|| unreachable!())
}

fn accepted(cfg: &HandshakeConfig, input: &[u8]) -> String {
    let a = answer(cfg, input);
    assert_eq!(
        a.refused,
        None,
        "refused: {}",
        String::from_utf8_lossy(&a.response)
    );
    String::from_utf8(a.response).expect("ASCII")
}

fn refused(cfg: &HandshakeConfig, input: &[u8]) -> (HttpError, String) {
    let a = answer(cfg, input);
    let e = a.refused.expect("expected a refusal");
    (e, String::from_utf8(a.response).expect("ASCII"))
}

/// A request built from header lines (each without CRLF).
fn request(first: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{first}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const GOOD: [&str; 5] = [
    "Host: server.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// The good headers with the one starting with `name` replaced (or removed when `with` is None).
fn good_but(name: &str, with: Option<&str>) -> Vec<u8> {
    let mut h: Vec<&str> = Vec::new();
    for g in GOOD {
        if g.to_ascii_lowercase()
            .starts_with(&name.to_ascii_lowercase())
        {
            if let Some(w) = with {
                h.push(w);
            }
        } else {
            h.push(g);
        }
    }
    request("GET /chat HTTP/1.1", &h)
}

#[test]
fn seed_and_rfc_accept_keys() {
    assert_eq!(
        &accept_key(b"x3JJHMbDL1EzLkh9GBhXDw=="),
        b"HSmrc0sMlYUkAGmm5OPpG2HaGWk="
    );
    assert_eq!(
        &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(handshake::GUID, b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
}

#[test]
fn rfc_request_is_answered_with_101() {
    let cfg = HandshakeConfig::default();
    let resp = accepted(&cfg, &request("GET /chat HTTP/1.1", &GOOD));
    assert_eq!(
        resp,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn chromium_request_is_answered_with_the_seed_accept_and_no_extensions() {
    let cfg = HandshakeConfig::default();
    let a = answer(&cfg, CHROMIUM_UPGRADE);
    assert!(a.upgrade);
    let resp = String::from_utf8(a.response).expect("ASCII");
    assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(resp.contains("\r\nSec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n"));
    // The client offered permessage-deflate: ignored, no extension header.
    assert!(!resp
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));
    assert!(!resp.to_ascii_lowercase().contains("sec-websocket-protocol"));
    assert!(resp.ends_with("\r\n\r\n"));
}

#[test]
fn firefox_style_token_lists_are_accepted() {
    let cfg = HandshakeConfig::default();
    let input = request(
        "GET /ws HTTP/1.1",
        &[
            "host: localhost",
            "connection: keep-alive, Upgrade",
            "upgrade: WebSocket",
            "sec-websocket-key: x3JJHMbDL1EzLkh9GBhXDw==",
            "sec-websocket-version: 13",
            "Sec-WebSocket-Extensions: permessage-deflate",
        ],
    );
    let resp = accepted(&cfg, &input);
    assert!(resp.contains("Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n"));
    assert!(!resp.to_ascii_lowercase().contains("extensions"));
    // Connection and Upgrade spread over several headers.
    let input = request(
        "GET /ws HTTP/1.1",
        &[
            "Host: h",
            "Connection: keep-alive",
            "Connection: Upgrade",
            "Upgrade: h2c",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
            "Sec-WebSocket-Version: 13",
        ],
    );
    accepted(&cfg, &input);
}

fn assert_refusal(resp: &str, status: u16, e: HttpError) {
    assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
    let (_, body) = resp.split_once("\r\n\r\n").expect("body");
    assert_eq!(
        body,
        format!("{}\n", e.reason()),
        "one-line plain-text reason"
    );
    assert!(resp.contains("Content-Type: text/plain"));
    assert!(!resp.contains("Sec-WebSocket-Accept"));
}

#[test]
fn non_get_is_405() {
    let cfg = HandshakeConfig::default();
    for m in ["POST", "PUT", "HEAD", "OPTIONS", "get"] {
        let input = request(&format!("{m} /chat HTTP/1.1"), &GOOD);
        let (e, resp) = refused(&cfg, &input);
        assert_eq!(e, HttpError::MethodNotAllowed, "{m}");
        assert_eq!(e.status(), 405);
        assert_refusal(&resp, 405, e);
        assert!(resp.contains("\r\nAllow: GET\r\n"));
    }
}

#[test]
fn http_1_0_is_400() {
    let cfg = HandshakeConfig::default();
    let (e, resp) = refused(&cfg, &request("GET /chat HTTP/1.0", &GOOD));
    assert_eq!(e, HttpError::UpgradeRequiresHttp11);
    assert_refusal(&resp, 400, e);
}

#[test]
fn missing_host_is_400() {
    let cfg = HandshakeConfig::default();
    for with in [None, Some("Host:"), Some("Host:   ")] {
        let (e, resp) = refused(&cfg, &good_but("Host", with));
        assert_eq!(e, HttpError::MissingHost, "{with:?}");
        assert_refusal(&resp, 400, e);
    }
}

#[test]
fn upgrade_without_websocket_is_400() {
    let cfg = HandshakeConfig::default();
    for with in [
        None,
        Some("Upgrade: h2c"),
        Some("Upgrade: websockets"),
        Some("Upgrade: web socket"),
    ] {
        let input = good_but("Upgrade", with);
        let (e, resp) = refused(&cfg, &input);
        assert_eq!(e, HttpError::NotWebSocketUpgrade, "{with:?}");
        assert_refusal(&resp, 400, e);
        assert!(
            !answer(&cfg, &input).upgrade,
            "is_upgrade is false: {with:?}"
        );
    }
}

#[test]
fn connection_without_upgrade_is_400() {
    let cfg = HandshakeConfig::default();
    for with in [
        None,
        Some("Connection: keep-alive"),
        Some("Connection: close"),
        Some("Connection: upgrades"),
    ] {
        let (e, resp) = refused(&cfg, &good_but("Connection", with));
        assert_eq!(e, HttpError::MissingConnectionUpgrade, "{with:?}");
        assert_refusal(&resp, 400, e);
    }
}

#[test]
fn bad_keys_are_400() {
    let cfg = HandshakeConfig::default();
    for with in [
        None,
        Some("Sec-WebSocket-Key:"),
        Some("Sec-WebSocket-Key: not base64!!"),
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j"), // 15 bytes
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE="), // 17 bytes
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), // missing padding
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==dGhl"), // trailing data
        Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), // 36 bytes
    ] {
        let (e, resp) = refused(&cfg, &good_but("Sec-WebSocket-Key", with));
        assert_eq!(e, HttpError::BadKey, "{with:?}");
        assert_refusal(&resp, 400, e);
    }
}

#[test]
fn other_versions_are_426_with_version_13() {
    let cfg = HandshakeConfig::default();
    for with in [
        None,
        Some("Sec-WebSocket-Version: 8"),
        Some("Sec-WebSocket-Version: 12"),
        Some("Sec-WebSocket-Version: 14"),
        Some("Sec-WebSocket-Version: 13, 8"),
        Some("Sec-WebSocket-Version: x"),
    ] {
        let (e, resp) = refused(&cfg, &good_but("Sec-WebSocket-Version", with));
        assert_eq!(e, HttpError::UnsupportedWebSocketVersion, "{with:?}");
        assert_eq!(e.status(), 426);
        assert_refusal(&resp, 426, e);
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
    }
}

#[test]
fn origin_allowlist_is_403() {
    let cfg = HandshakeConfig {
        origins: vec![
            "https://app.example.com".into(),
            "http://localhost:8080".into(),
        ],
        ..Default::default()
    };
    let with_origin = |o: &str| {
        let mut h: Vec<String> = GOOD.iter().map(|s| s.to_string()).collect();
        h.push(format!("Origin: {o}"));
        let refs: Vec<&str> = h.iter().map(String::as_str).collect();
        request("GET /chat HTTP/1.1", &refs)
    };
    accepted(&cfg, &with_origin("https://app.example.com"));
    accepted(&cfg, &with_origin("HTTPS://APP.example.com"));
    accepted(&cfg, &with_origin("http://localhost:8080"));
    for bad in [
        "https://evil.example.com",
        "http://localhost:8081",
        "null",
        "https://app.example.com.evil",
    ] {
        let (e, resp) = refused(&cfg, &with_origin(bad));
        assert_eq!(e, HttpError::OriginNotAllowed, "{bad}");
        assert_refusal(&resp, 403, e);
        assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    }
    // Without Origin (non-browser client): allowed.
    accepted(&cfg, &request("GET /chat HTTP/1.1", &GOOD));
    // Without an allowlist, any origin.
    accepted(
        &HandshakeConfig::default(),
        &with_origin("https://anything.example"),
    );
}

fn with_protocols(offers: &[&str]) -> Vec<u8> {
    let mut h: Vec<String> = GOOD.iter().map(|s| s.to_string()).collect();
    for o in offers {
        h.push(format!("Sec-WebSocket-Protocol: {o}"));
    }
    let refs: Vec<&str> = h.iter().map(String::as_str).collect();
    request("GET /chat HTTP/1.1", &refs)
}

fn chosen(server: &[&str], offers: &[&str]) -> Option<String> {
    let cfg = HandshakeConfig {
        protocols: server.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let resp = accepted(&cfg, &with_protocols(offers));
    let lines: Vec<&str> = resp
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("sec-websocket-protocol"))
        .collect();
    assert!(lines.len() <= 1, "at most one protocol header");
    lines
        .first()
        .map(|l| l.split_once(": ").expect("value").1.to_string())
}

#[test]
fn subprotocol_choice() {
    assert_eq!(
        chosen(&["chat"], &["chat, superchat"]).as_deref(),
        Some("chat")
    );
    assert_eq!(
        chosen(&["superchat", "chat"], &["chat, superchat"]).as_deref(),
        Some("superchat")
    );
    assert_eq!(
        chosen(&["chat", "superchat"], &["superchat, chat"]).as_deref(),
        Some("chat")
    );
    assert_eq!(
        chosen(&["v2", "v1"], &["v1", "v2"]).as_deref(),
        Some("v2"),
        "offers over several headers"
    );
    // Never one the client did not offer; no header when nothing matches.
    assert_eq!(chosen(&["mqtt"], &["chat, superchat"]), None);
    assert_eq!(chosen(&["chat"], &[]), None);
    assert_eq!(chosen(&[], &["chat"]), None);
    assert_eq!(
        chosen(&["Chat"], &["chat"]),
        None,
        "protocol names are case-sensitive"
    );
    assert_eq!(
        chosen(&["chat"], &["superchat"]),
        None,
        "no substring matches"
    );
    assert_eq!(chosen(&["chat"], &["  chat  ,x"]).as_deref(), Some("chat"));
}

#[test]
fn validate_returns_the_accept_and_protocol() {
    let cfg = HandshakeConfig {
        protocols: vec!["chat".into()],
        ..Default::default()
    };
    let input = with_protocols(&["superchat, chat"]);
    let (req, _) = RequestParser::new()
        .parse(&HttpLimits::default(), &input)
        .expect("ok")
        .expect("done");
    assert!(is_upgrade(&req));
    let acc = validate(&req, &cfg).expect("valid");
    assert_eq!(&acc.accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(acc.protocol, Some("chat"));
    let mut out = Vec::new();
    write_accept(&acc, &mut out);
    assert!(out.ends_with(b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n"));
}

#[test]
fn plain_requests_are_not_upgrades() {
    let input = b"GET /index.html HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n";
    let (req, _) = RequestParser::new()
        .parse(&HttpLimits::default(), input)
        .expect("ok")
        .expect("done");
    assert!(!is_upgrade(&req));
}

#[test]
fn refusal_order_is_stable_across_splits() {
    // Several faults at once: the first check in RFC order wins, whichever
    // way the bytes arrive.
    let cfg = HandshakeConfig::default();
    let input = request("POST /chat HTTP/1.0", &["Upgrade: websocket"]);
    assert_eq!(refused(&cfg, &input).0, HttpError::MethodNotAllowed);
    let input = request(
        "GET /chat HTTP/1.1",
        &["Upgrade: websocket", "Connection: upgrade"],
    );
    assert_eq!(refused(&cfg, &input).0, HttpError::MissingHost);
}
