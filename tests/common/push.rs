//! Helpers for tests of the push service: HTTP API calls, `/ws` clients
//! speaking JSON through tungstenite.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;
use tungstenite::Message as TMsg;

use super::{status_of, ws, Daemon, IO_TIMEOUT};

/// A `/ws` client.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// One HTTP request, `Connection: close`; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw).into_owned();
    let status = status_of(&out);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Parse JSON or fail the test with the text.
pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

/// `POST /publish/{channel}` with a JSON body; the answer (200 asserted).
pub fn publish(addr: SocketAddr, channel: &str, data: &str) -> Value {
    let (st, body) = http(
        addr,
        "POST",
        &format!("/publish/{channel}"),
        "Content-Type: application/json\r\n",
        data.as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    json(&body)
}

/// `GET` a path of the API; (status, JSON body).
pub fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (st, body) = http(addr, "GET", path, "", b"");
    (st, json(&body))
}

/// Connect to `/ws` with a query; returns the socket and its welcome,
/// after the `subscribed` answer of each channel in the query.
pub fn connect(d: &Daemon, query: &str) -> (Ws, Value) {
    let (mut ws, welcome) = connect_raw(d, query);
    // In query order on one node; a cluster's shards answer in any order.
    let mut want: Vec<&Value> = welcome["channels"].as_array().unwrap().iter().collect();
    while !want.is_empty() {
        let r = next_json(&mut ws);
        assert_eq!(r["op"], "subscribed", "{r}");
        let i = want.iter().position(|c| **c == r["channel"]);
        assert!(i.is_some(), "{r} not among {want:?}");
        want.remove(i.unwrap_or(0));
    }
    (ws, welcome)
}

/// Connect to `/ws` with a query; returns the socket and its welcome only.
pub fn connect_raw(d: &Daemon, query: &str) -> (Ws, Value) {
    let mut ws = ws(d, &format!("/ws{query}"));
    let welcome = next_json(&mut ws);
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text message as JSON (pings and pongs skipped).
pub fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            TMsg::Text(t) => return json(&t),
            TMsg::Ping(_) | TMsg::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Send a control message and read the next message.
pub fn op(ws: &mut Ws, v: Value) -> Value {
    ws.send(TMsg::Text(v.to_string())).unwrap();
    next_json(ws)
}

/// `POST /publish/{channel}` for each `(channel, data)`, all pipelined on one
/// keep-alive connection in a single write (so the server drains them in
/// one turn); the answers in order (200 asserted for each).
pub fn publish_pipelined(addr: SocketAddr, batch: &[(&str, String)]) -> Vec<Value> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    for (channel, data) in batch {
        out.extend_from_slice(
            format!(
                "POST /publish/{channel} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{data}",
                data.len()
            )
            .as_bytes(),
        );
    }
    s.write_all(&out).unwrap();
    let mut raw: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 16384];
    while answers.len() < batch.len() {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n");
        let parsed = end.and_then(|end| {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            (raw.len() >= end + 4 + len).then_some((head, end + 4, len))
        });
        if let Some((head, start, len)) = parsed {
            assert_eq!(status_of(&head), 200, "{head}");
            let body = String::from_utf8_lossy(&raw[start..start + len]).into_owned();
            answers.push(json(&body));
            raw.drain(..start + len);
            continue;
        }
        let n = s
            .read(&mut chunk)
            .expect("answers to the pipelined publishes");
        assert!(n > 0, "connection closed after {} answers", answers.len());
        raw.extend_from_slice(&chunk[..n]);
    }
    answers
}
