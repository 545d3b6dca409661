//! The Pusher protocol and API at the wire level (tungstenite and raw
//! HTTP): every kind of bad input gets a clear answer, never a panic; the
//! activity timeout; start-up checks of `--pusher-*`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use tungstenite::Message;

const APP: &str = "1:app-key:app-secret";

fn text(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> Value {
    loop {
        match read_msg(ws).expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `data` of a server event, decoded from its JSON string.
fn data(v: &Value) -> Value {
    match &v["data"] {
        Value::String(s) => serde_json::from_str(s).expect("data is JSON"),
        other => other.clone(),
    }
}

fn connect(d: &Daemon) -> (tungstenite::WebSocket<std::net::TcpStream>, String) {
    let mut ws = ws(d, "/app/app-key?protocol=7&client=js&version=8.4.0");
    let hello = text(&mut ws);
    assert_eq!(hello["event"], "pusher:connection_established");
    let sid = data(&hello)["socket_id"].as_str().unwrap().to_string();
    assert!(data(&hello)["activity_timeout"].as_u64().unwrap() > 0);
    (ws, sid)
}

fn send(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, s: &str) {
    ws.send(Message::text(s)).unwrap();
}

#[test]
fn bad_messages_get_pusher_errors_and_the_socket_stays() {
    let d = Daemon::start(&["--pusher-app", APP]);
    let (mut ws, _) = connect(&d);
    for bad in [
        "not json",
        "[]",
        r#"{"event":1}"#,
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":42}"#,
        r#"{"event":"pusher:unsubscribe","data":{}}"#,
        r#"{"event":"pusher:nope","data":{}}"#,
        r#"{"event":"pusher:signin","data":{}}"#,
    ] {
        send(&mut ws, bad);
        let e = text(&mut ws);
        assert_eq!(e["event"], "pusher:error", "{bad}: {e}");
        assert!(e["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(text(&mut ws)["event"], "pusher:error");
    // Subscription refusals name the channel, type and status.
    for (sub, kind, status) in [
        (r#"{"channel":"bad name"}"#, "InvalidChannel", 400),
        (r#"{"channel":"private-x"}"#, "AuthError", 401),
        (
            r#"{"channel":"private-x","auth":"app-key:00"}"#,
            "AuthError",
            401,
        ),
        (
            r#"{"channel":"private-x","auth":"other:abcd"}"#,
            "AuthError",
            401,
        ),
        (
            r#"{"channel":"presence-x","auth":"app-key:00"}"#,
            "AuthError",
            401,
        ),
        (r##"{"channel":"#server-to-user-1"}"##, "AuthError", 403),
    ] {
        send(
            &mut ws,
            &format!(r#"{{"event":"pusher:subscribe","data":{sub}}}"#),
        );
        let e = text(&mut ws);
        assert_eq!(e["event"], "pusher:subscription_error", "{sub}: {e}");
        let d = data(&e);
        assert_eq!(d["type"], kind, "{sub}: {e}");
        assert_eq!(d["status"], status, "{sub}: {e}");
    }
    // Still alive: ping, public subscribe (data as a string, as old clients send).
    send(&mut ws, r#"{"event":"pusher:ping","data":{}}"#);
    assert_eq!(text(&mut ws)["event"], "pusher:pong");
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":"{\"channel\":\"news\"}"}"#,
    );
    let ok = text(&mut ws);
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["channel"], "news");
    assert!(d.wait_logged("pusher: conn"));
}

#[test]
fn silent_socket_is_pinged_then_closed_with_4201() {
    let d = Daemon::start(&["--pusher-app", APP, "--pusher-activity-timeout", "1s"]);
    let (mut ws, _) = connect(&d);
    let ping = text(&mut ws);
    assert_eq!(ping["event"], "pusher:ping");
    // Answering keeps it open; the next silence ends it with 4201.
    send(&mut ws, r#"{"event":"pusher:pong","data":{}}"#);
    assert_eq!(text(&mut ws)["event"], "pusher:ping");
    loop {
        match read_msg(&mut ws) {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 4201);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn unknown_key_and_protocol_version() {
    let d = Daemon::start(&["--pusher-app", APP]);
    for (path, code) in [("/app/nope", 4001), ("/app/app-key?protocol=3", 4007)] {
        let mut ws = ws(&d, path);
        let e = text(&mut ws);
        assert_eq!(e["event"], "pusher:error");
        assert_eq!(e["data"]["code"], code);
        match read_msg(&mut ws) {
            Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), code),
            other => panic!("{path}: expected close {code}, got {other:?}"),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac(secret: &str, msg: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn md5(body: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a signed request goes: a daemon's main port or another address.
trait Target {
    fn addr(&self) -> std::net::SocketAddr;
}

impl Target for Daemon {
    fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Target for std::net::SocketAddr {
    fn addr(&self) -> std::net::SocketAddr {
        *self
    }
}

/// A signed request of the app `app-key` as the SDKs make it; `(status, body)`.
fn api(
    d: &impl Target,
    method: &str,
    path: &str,
    params: &str,
    body: &str,
    ts: u64,
    secret: &str,
) -> (u16, String) {
    api_as(d, "app-key", method, path, params, body, ts, secret)
}

/// A signed request of the app `key` as the SDKs make it; `(status, body)`.
#[allow(clippy::too_many_arguments)]
fn api_as(
    d: &impl Target,
    key: &str,
    method: &str,
    path: &str,
    params: &str,
    body: &str,
    ts: u64,
    secret: &str,
) -> (u16, String) {
    let mut q = vec![
        format!("auth_key={key}"),
        format!("auth_timestamp={ts}"),
        "auth_version=1.0".to_string(),
    ];
    if !body.is_empty() {
        q.push(format!("body_md5={}", md5(body)));
    }
    q.extend(
        params
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    );
    q.sort();
    let qs = q.join("&");
    let sig = hmac(secret, &format!("{method}\n{path}\n{qs}"));
    let req = format!(
        "{method} {path}?{qs}&auth_signature={sig} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_exchange(d.addr(), req.as_bytes());
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status_of(&resp), body)
}

#[test]
fn api_statuses_are_json() {
    let d = Daemon::start(&["--pusher-app", APP]);
    let ev = r#"{"name":"e","data":"x","channel":"news"}"#;
    let ok = api(&d, "POST", "/apps/1/events", "", ev, now(), "app-secret");
    assert_eq!(ok, (200, "{}".to_string()));
    let cases = [
        ("POST", "/apps/1/events", "", ev, now(), "wrong", 401),
        (
            "POST",
            "/apps/1/events",
            "",
            ev,
            now() - 601,
            "app-secret",
            401,
        ),
        (
            "POST",
            "/apps/1/events",
            "",
            ev,
            now() + 601,
            "app-secret",
            401,
        ),
        ("POST", "/apps/9/events", "", ev, now(), "app-secret", 404),
        ("POST", "/apps/1/nothing", "", ev, now(), "app-secret", 404),
        ("POST", "/apps/1/events", "", "{", now(), "app-secret", 400),
        (
            "POST",
            "/apps/1/events",
            "",
            r#"{"name":"e","data":"x"}"#,
            now(),
            "app-secret",
            400,
        ),
        (
            "POST",
            "/apps/1/events",
            "",
            r#"{"name":"e","data":"x","channel":"a b"}"#,
            now(),
            "app-secret",
            400,
        ),
        (
            "POST",
            "/apps/1/events",
            "",
            r#"{"name":"e","data":"x","channel":"a","socket_id":"zz"}"#,
            now(),
            "app-secret",
            400,
        ),
        (
            "GET",
            "/apps/1/channels/news/users",
            "",
            "",
            now(),
            "app-secret",
            400,
        ),
        (
            "GET",
            "/apps/1/channels",
            "info=user_count",
            "",
            now(),
            "app-secret",
            400,
        ),
        ("GET", "/apps/1/events", "", "", now(), "app-secret", 405),
    ];
    for (method, path, params, body, ts, secret, want) in cases {
        let (status, text) = api(&d, method, path, params, body, ts, secret);
        assert_eq!(status, want, "{method} {path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
    }
    let big = format!(
        r#"{{"name":"e","data":"{}","channel":"news"}}"#,
        "x".repeat(10 * 1024 + 1)
    );
    assert_eq!(
        api(&d, "POST", "/apps/1/events", "", &big, now(), "app-secret").0,
        413
    );
    let batch: Vec<String> = (0..11).map(|_| ev.to_string()).collect();
    let batch = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
    assert_eq!(
        api(
            &d,
            "POST",
            "/apps/1/batch_events",
            "",
            &batch,
            now(),
            "app-secret"
        )
        .0,
        400
    );
    // A key of another app on this app's path.
    let two = Daemon::start(&["--pusher-app", APP, "--pusher-app", "2:other:s2"]);
    assert_eq!(
        api(&two, "POST", "/apps/2/events", "", ev, now(), "app-secret").0,
        403
    );
    // Unsigned.
    let resp = raw_exchange(
        d.addr,
        b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 401);
    assert!(d.wait_logged("pusher API: 401"));
}

#[test]
fn start_refuses_bad_pusher_flags() {
    for (args, needle) in [
        (vec!["--pusher-app", "1:key:"], "secret is empty"),
        (vec!["--pusher-app", "1:key"], "ID:KEY:SECRET"),
        (
            vec!["--pusher-app", "1:a:s", "--pusher-app", "1:b:s"],
            "given twice",
        ),
        (
            vec!["--pusher-app", APP, "--pusher-webhook", "ftp://x"],
            "only http:// and https://",
        ),
        (
            vec!["--pusher-client-events"],
            "needs a --pusher-app or --pusher-apps-file",
        ),
        (
            vec!["--pusher-app", APP, "--pusher-webhook-ca", "ca.pem"],
            "--pusher-webhook-ca needs an https:// --pusher-webhook",
        ),
        (
            vec!["--pusher-app", APP, "--pusher-activity-timeout", "0s"],
            "at least 1s",
        ),
    ] {
        let (status, out) = run_to_exit(&args, &[]);
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: {out}");
    }
    let (status, out) = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("WSPUSH_PUSHER_APP", "1:k:")],
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    let _ = Duration::ZERO;
}

/// Server memory per idle connection subscribed to one channel: Pusher
/// (`/app/{key}`, `pusher:subscribe`) beside the native protocol
/// (`/ws?channel=`). Prints both (BENCHMARKS.md quotes them).
#[test]
fn idle_pusher_connection_memory() {
    let n = 2000;
    let measure = |pusher: bool| -> u64 {
        let d = Daemon::start(&["--pusher-app", APP, "--workers", "1"]);
        let pid = d.child.id();
        let open = |i: usize| {
            if pusher {
                let (mut ws, _) = connect(&d);
                let ch = format!("idle-{}", i % 10);
                send(
                    &mut ws,
                    &format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{ch}"}}}}"#),
                );
                assert_eq!(
                    text(&mut ws)["event"],
                    "pusher_internal:subscription_succeeded"
                );
                ws
            } else {
                let mut ws = ws(&d, &format!("/ws?channel=idle-{}", i % 10));
                assert_eq!(text(&mut ws)["op"], "welcome");
                assert_eq!(text(&mut ws)["op"], "subscribed");
                ws
            }
        };
        let warm: Vec<_> = (0..100).map(open).collect();
        std::thread::sleep(Duration::from_millis(200));
        let before = rss_kib(pid);
        let held: Vec<_> = (0..n).map(open).collect();
        std::thread::sleep(Duration::from_millis(300));
        let per = rss_kib(pid).saturating_sub(before) * 1024 / n as u64;
        drop(held);
        drop(warm);
        per
    };
    let native = measure(false);
    let pusher = measure(true);
    eprintln!(
        "idle connection subscribed to one channel ({n} connections): \
         Pusher {pusher} B of server RSS each, native /ws {native} B"
    );
    assert!(pusher < 16 * 1024, "{pusher} B per idle Pusher connection");
}

#[test]
fn presence_cap_and_cache_miss() {
    let d = Daemon::start(&["--pusher-app", APP, "--pusher-max-presence-members", "1"]);
    let join = |user: &str| {
        let (mut ws, sid) = connect(&d);
        let cd = format!(r#"{{"user_id":"{user}","user_info":{{"n":"{user}"}}}}"#);
        let sig = hmac("app-secret", &format!("{sid}:presence-capped:{cd}"));
        let msg = serde_json::json!({"event":"pusher:subscribe","data":{
            "channel":"presence-capped","auth":format!("app-key:{sig}"),"channel_data":cd}});
        send(&mut ws, &msg.to_string());
        let answer = text(&mut ws);
        (ws, answer)
    };
    let (_a, first) = join("1");
    assert_eq!(first["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(data(&first)["presence"]["count"], 1);
    // A second tab of the same user is not a new member.
    let (_a2, again) = join("1");
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
    let (_b, full) = join("2");
    assert_eq!(full["event"], "pusher:subscription_error", "{full}");
    assert_eq!(data(&full)["status"], 403);
    // A cache channel with nothing published yet: succeeded, then cache_miss.
    let (mut ws, _) = connect(&d);
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":{"channel":"cache-empty"}}"#,
    );
    assert_eq!(
        text(&mut ws)["event"],
        "pusher_internal:subscription_succeeded"
    );
    let miss = text(&mut ws);
    assert_eq!(miss["event"], "pusher:cache_miss");
    assert_eq!(miss["channel"], "cache-empty");
}

#[test]
fn a_subscribe_flood_is_refused_past_the_rate() {
    let d = Daemon::start(&["--pusher-app", APP]);
    let (mut ws, _) = connect(&d);
    // Subscribe and unsubscribe in a loop: past 128 a second (the channel
    // allowance) subscriptions are refused (429) instead of costing the
    // broker more. 300 fast requests span at most two seconds' windows.
    const N: usize = 300;
    for _ in 0..N {
        send(
            &mut ws,
            r#"{"event":"pusher:subscribe","data":{"channel":"churn"}}"#,
        );
        send(
            &mut ws,
            r#"{"event":"pusher:unsubscribe","data":{"channel":"churn"}}"#,
        );
    }
    let answers: Vec<Value> = (0..N).map(|_| text(&mut ws)).collect();
    let ok = answers
        .iter()
        .filter(|a| a["event"] == "pusher_internal:subscription_succeeded")
        .count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|a| a["event"] == "pusher:subscription_error")
        .collect();
    assert_eq!(ok + refused.len(), N);
    assert!((128..=256).contains(&ok), "{ok} accepted");
    assert!(refused.iter().all(|r| data(r)["status"] == 429));
    assert!(d.wait_logged("too many subscriptions"));
    // The socket stays: a ping is still answered.
    send(&mut ws, r#"{"event":"pusher:ping","data":{}}"#);
    assert_eq!(text(&mut ws)["event"], "pusher:pong");
}

#[test]
fn help_does_not_show_the_secret_from_the_environment() {
    let (_, out) = run_to_exit(
        &["--help"],
        &[("WSPUSH_PUSHER_APP", "1:key:very-secret-value")],
    );
    assert!(out.contains("--pusher-app"), "{out}");
    assert!(!out.contains("very-secret-value"), "{out}");
}

/// What a webhook receiver got: connections accepted, and the body and
/// `X-Pusher-Signature` of each request read whole.
#[derive(Debug, Default)]
struct Received {
    connections: usize,
    requests: Vec<(String, String)>,
}

/// A webhook receiver on `listener`: each connection is turned by `wrap`
/// into the stream HTTP is spoken on (TLS for https), the i-th request is
/// answered with `status(i)`.
fn webhook_receiver<S: std::io::Read + std::io::Write>(
    listener: std::net::TcpListener,
    wrap: impl Fn(std::net::TcpStream) -> S + Send + 'static,
    status: impl Fn(usize) -> &'static str + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Received>> {
    use std::io::{BufRead, BufReader, Read};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Received::default()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            got2.lock().unwrap().connections += 1;
            let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
            let mut s = wrap(tcp);
            let mut r = BufReader::new(&mut s);
            let mut request_line = String::new();
            if r.read_line(&mut request_line).unwrap_or(0) == 0 {
                continue; // No request (a failed TLS handshake).
            }
            let (mut len, mut sig) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let l = line.to_ascii_lowercase();
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = l.strip_prefix("x-pusher-signature:") {
                    sig = v.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let i = {
                let mut g = got2.lock().unwrap();
                g.requests
                    .push((String::from_utf8_lossy(&body).into_owned(), sig));
                g.requests.len() - 1
            };
            let answer = format!(
                "HTTP/1.1 {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                status(i)
            );
            let _ = s.write_all(answer.as_bytes());
            let _ = s.flush();
        }
    });
    got
}

/// A webhook batch: signed with the app's secret, one `channel_occupied`
/// of `channel` first.
fn assert_occupied_hook(body: &str, sig: &str, secret: &str, channel: &str) {
    assert_eq!(sig, hmac(secret, body), "X-Pusher-Signature of {body}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["time_ms"].as_u64().is_some(), "{body}");
    assert_eq!(v["events"][0]["name"], "channel_occupied", "{body}");
    assert_eq!(v["events"][0]["channel"], channel, "{body}");
}

/// Subscribe a new socket of `app-key` to `channel` (a webhook follows).
fn occupy(d: &Daemon, channel: &str) -> tungstenite::WebSocket<std::net::TcpStream> {
    let (mut ws, _) = connect(d);
    send(
        &mut ws,
        &format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#),
    );
    assert_eq!(
        text(&mut ws)["event"],
        "pusher_internal:subscription_succeeded"
    );
    ws
}

/// A webhook receiver that fails first is retried: the same signed batch
/// arrives again.
#[test]
fn webhooks_are_retried_and_signed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = webhook_receiver(
        listener,
        |s| s,
        |i| if i == 0 { "503 Busy" } else { "200 OK" },
    );
    let url = format!("http://127.0.0.1:{port}/hook");
    let d = Daemon::start(&["--pusher-app", APP, "--pusher-webhook", &url]);
    let _ws = occupy(&d, "hooked");
    assert!(
        wait_until(Duration::from_secs(10), || got
            .lock()
            .unwrap()
            .requests
            .len()
            >= 2),
        "no retry: {:?}\n{}",
        got.lock().unwrap(),
        d.log_text()
    );
    let got = got.lock().unwrap();
    assert_eq!(got.requests[0].0, got.requests[1].0, "the same batch again");
    for (body, sig) in &got.requests {
        assert_occupied_hook(body, sig, "app-secret", "hooked");
    }
    assert!(d.wait_logged("pusher webhook to 127.0.0.1"));
}

/// Subscribe a new socket of `app-key` to presence `channel` as `user`.
fn join_presence(
    d: &Daemon,
    channel: &str,
    user: &str,
) -> tungstenite::WebSocket<std::net::TcpStream> {
    let (mut ws, sid) = connect(d);
    let cd = format!(r#"{{"user_id":"{user}","user_info":{{"n":"{user}"}}}}"#);
    let sig = hmac("app-secret", &format!("{sid}:{channel}:{cd}"));
    let msg = serde_json::json!({"event":"pusher:subscribe","data":{
        "channel":channel,"auth":format!("app-key:{sig}"),"channel_data":cd}});
    send(&mut ws, &msg.to_string());
    loop {
        let v = text(&mut ws);
        if v["event"] == "pusher_internal:subscription_succeeded" {
            return ws;
        }
        assert!(v["event"] != "pusher:subscription_error", "{v}");
    }
}

/// Two nodes on one Redis: the webhooks tell the cluster's story once —
/// one `channel_occupied`, a member added once however many nodes hold
/// it, a dead node's user removed by the survivor, one `channel_vacated`.
#[test]
fn webhooks_across_two_nodes_report_the_cluster_once() {
    if !common::redis::available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = webhook_receiver(listener, |s| s, |_| "200 OK");
    let events = || -> Vec<(String, String)> {
        got.lock()
            .unwrap()
            .requests
            .iter()
            .flat_map(|(body, _)| {
                let v: Value = serde_json::from_str(body).unwrap();
                v["events"].as_array().cloned().unwrap_or_default()
            })
            .map(|e| {
                let user = e["user_id"].as_str().unwrap_or("").to_string();
                (e["name"].as_str().unwrap().to_string(), user)
            })
            .collect()
    };
    let has = |name: &str, user: &str| events().iter().any(|(n, u)| n == name && u == user);
    let r = common::redis::Redis::start();
    let (url, hook) = (r.url(), format!("http://127.0.0.1:{port}/hook"));
    let args = [
        "--pusher-app",
        APP,
        "--pusher-webhook",
        hook.as_str(),
        "--redis",
        url.as_str(),
        "--presence-lease",
        "3s",
    ];
    let a = Daemon::start(&args);
    let mut b = Daemon::start(&args);
    let mut x = join_presence(&a, "presence-w", "1");
    let _y = join_presence(&b, "presence-w", "2");
    let _x2 = join_presence(&b, "presence-w", "1");
    let limit = Duration::from_secs(15);
    assert!(
        wait_until(limit, || has("member_added", "1")
            && has("member_added", "2")),
        "{:?}",
        events()
    );
    // Node B dies without a word: node A's renewal removes its share.
    b.child.kill().unwrap();
    assert!(
        wait_until(limit, || has("member_removed", "2")),
        "{:?}\n{}",
        events(),
        a.log_text()
    );
    // Alice's last connection (on A) leaves: removed, then vacated.
    x.close(None).unwrap();
    let _ = x.flush();
    assert!(
        wait_until(limit, || has("channel_vacated", "")),
        "{:?}",
        events()
    );
    let mut all = events();
    let vacated_last = all.last().cloned();
    all.sort();
    let want: Vec<(String, String)> = [
        ("channel_occupied", ""),
        ("channel_vacated", ""),
        ("member_added", "1"),
        ("member_added", "2"),
        ("member_removed", "1"),
        ("member_removed", "2"),
    ]
    .iter()
    .map(|(n, u)| (n.to_string(), u.to_string()))
    .collect();
    assert_eq!(all, want, "each change once, cluster-wide");
    assert_eq!(
        vacated_last,
        Some(("channel_vacated".into(), String::new()))
    );
    for (body, sig) in &got.lock().unwrap().requests {
        assert_eq!(*sig, hmac("app-secret", body));
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wspush-pusher-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An HTTPS webhook receiver (a rustls server with a certificate for
/// 127.0.0.1 from a CA made here, `dir/ca.pem`); its port.
fn https_receiver(dir: &std::path::Path) -> (u16, std::sync::Arc<std::sync::Mutex<Received>>) {
    make_pki(dir);
    let cfg = wspush::server::tls::server_config(&dir.join("cert.pem"), &dir.join("key.pem"))
        .expect("server TLS config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = webhook_receiver(
        listener,
        move |tcp| {
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            rustls::StreamOwned::new(conn, tcp)
        },
        |_| "200 OK",
    );
    (port, got)
}

/// An https:// webhook whose receiver's CA is given with
/// `--pusher-webhook-ca`: delivered, signed.
#[test]
fn https_webhooks_with_an_extra_ca() {
    let dir = temp_dir("https-ca");
    let (port, got) = https_receiver(&dir);
    let url = format!("https://127.0.0.1:{port}/hook");
    let ca = dir.join("ca.pem");
    let d = Daemon::start(&[
        "--pusher-app",
        APP,
        "--pusher-webhook",
        &url,
        "--pusher-webhook-ca",
        ca.to_str().unwrap(),
    ]);
    let _ws = occupy(&d, "tls-hooked");
    assert!(
        wait_until(Duration::from_secs(10), || !got
            .lock()
            .unwrap()
            .requests
            .is_empty()),
        "not delivered: {:?}\n{}",
        got.lock().unwrap(),
        d.log_text()
    );
    let got = got.lock().unwrap();
    assert_occupied_hook(
        &got.requests[0].0,
        &got.requests[0].1,
        "app-secret",
        "tls-hooked",
    );
    assert!(!d.logged("invalid peer certificate"), "{}", d.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without the CA, the receiver's certificate is refused: wspush connects
/// (and retries) but never sends a request, and logs why once per streak.
#[test]
fn https_webhooks_refuse_an_unknown_ca() {
    let dir = temp_dir("https-no-ca");
    let (port, got) = https_receiver(&dir);
    let url = format!("https://127.0.0.1:{port}/hook");
    let d = Daemon::start(&["--pusher-app", APP, "--pusher-webhook", &url]);
    let _ws = occupy(&d, "tls-refused");
    assert!(
        wait_until(Duration::from_secs(10), || got.lock().unwrap().connections
            >= 3),
        "no retries: {:?}\n{}",
        got.lock().unwrap(),
        d.log_text()
    );
    assert!(
        d.wait_logged("invalid peer certificate: UnknownIssuer"),
        "{}",
        d.log_text()
    );
    let warned = d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("invalid peer certificate"))
        .count();
    assert_eq!(warned, 1, "once per failure streak:\n{}", d.log_text());
    assert!(
        got.lock().unwrap().requests.is_empty(),
        "{:?}",
        got.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Apps from `--pusher-apps-file` (here by its environment variable)
/// beside a `--pusher-app`: pusher-js connects with the file's key, the
/// HTTP API takes requests signed with the file's secret.
#[test]
fn apps_from_a_file() {
    let dir = temp_dir("apps-file");
    let file = dir.join("apps.json");
    std::fs::write(
        &file,
        r#"{"apps": [{"id": "7", "key": "file-key", "secret": "file-secret-1x9"}]}"#,
    )
    .unwrap();
    let d = Daemon::start_env(
        "127.0.0.1:0",
        &["--pusher-app", APP],
        &[("WSPUSH_PUSHER_APPS_FILE", file.to_str().unwrap())],
    );
    let mut ws = ws(&d, "/app/file-key?protocol=7&client=js&version=8.4.0");
    assert_eq!(text(&mut ws)["event"], "pusher:connection_established");
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":{"channel":"from-file"}}"#,
    );
    assert_eq!(
        text(&mut ws)["event"],
        "pusher_internal:subscription_succeeded"
    );
    let ev = r#"{"name":"e","data":"filed","channel":"from-file"}"#;
    let wrong = api_as(
        &d,
        "file-key",
        "POST",
        "/apps/7/events",
        "",
        ev,
        now(),
        "app-secret",
    );
    assert_eq!(wrong.0, 401, "{wrong:?}");
    let ok = api_as(
        &d,
        "file-key",
        "POST",
        "/apps/7/events",
        "",
        ev,
        now(),
        "file-secret-1x9",
    );
    assert_eq!(ok, (200, "{}".to_string()));
    let got = text(&mut ws);
    assert_eq!(
        (got["event"].as_str(), got["data"].as_str()),
        (Some("e"), Some("filed"))
    );
    // The flag's app still works too.
    let _ = connect(&d);
    assert!(d.wait_logged("pusher: apps 1, 7"), "{}", d.log_text());
    assert!(!d.log_text().contains("file-secret-1x9"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bad `--pusher-apps-file` stops the start, naming the file and the
/// problem (and never the secret).
#[test]
fn a_bad_apps_file_refuses_to_start() {
    let dir = temp_dir("bad-apps-file");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let app = r#"{"id":"7","key":"k7","secret":"hidden-s3cret"}"#;
    for (name, text, flags, needle) in [
        ("missing.json", None, vec![], "cannot read it"),
        (
            "syntax.json",
            Some(r#"{"apps":[{"id":"7",}]}"#.to_string()),
            vec![],
            "trailing comma at line 1",
        ),
        (
            "unknown.json",
            Some(
                r#"{"apps":[{"id":"7","key":"k7","secret":"hidden-s3cret","enabled":true}]}"#
                    .to_string(),
            ),
            vec![],
            "unknown field `enabled`",
        ),
        (
            "empty-secret.json",
            Some(r#"{"apps":[{"id":"7","key":"k7","secret":""}]}"#.to_string()),
            vec![],
            "7: the secret is empty",
        ),
        (
            "dup.json",
            Some(format!(r#"{{"apps":[{app}]}}"#)),
            vec!["--pusher-app", "7:other:s"],
            "app id 7 given twice",
        ),
        (
            "dup-key.json",
            Some(format!(r#"{{"apps":[{app}]}}"#)),
            vec!["--pusher-app", "1:k7:s"],
            "key k7 given twice",
        ),
    ] {
        let file = path(name);
        if let Some(text) = &text {
            std::fs::write(&file, text).unwrap();
        }
        let mut args = flags.clone();
        args.extend(["--listen", "127.0.0.1:0", "--pusher-apps-file", &file]);
        let (status, out) = run_to_exit(&args, &[]);
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{name}: {out}");
        assert!(
            out.contains(&format!("--pusher-apps-file {file}: ")),
            "{name}: {out}"
        );
        assert!(out.contains(needle), "{name}: {out}");
        assert!(!out.contains("hidden-s3cret"), "{name}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--api-listen`, the Pusher API answers there (and still on the
/// main port: it is authenticated by its signatures, not by address).
#[test]
fn pusher_api_on_the_api_listener() {
    let api_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let d = Daemon::start(&["--pusher-app", APP, "--api-listen", &api_addr.to_string()]);
    let (mut ws, _) = connect(&d);
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":{"channel":"via"}}"#,
    );
    assert_eq!(
        text(&mut ws)["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(api_addr).is_ok()
    }));
    for (target, n) in [(api_addr, "1"), (d.addr, "2")] {
        let ev = format!(r#"{{"name":"e","data":"{n}","channel":"via"}}"#);
        let (status, body) = api(
            &target,
            "POST",
            "/apps/1/events",
            "",
            &ev,
            now(),
            "app-secret",
        );
        assert_eq!((status, body.as_str()), (200, "{}"), "{target}");
        let got = text(&mut ws);
        assert_eq!(
            (got["event"].as_str(), got["data"].as_str()),
            (Some("e"), Some(n))
        );
    }
    // Upgrades are the main port's only.
    let resp = raw_exchange(api_addr, upgrade_request("/app/app-key", "").as_bytes());
    assert_eq!(status_of(&resp), 404, "{resp}");
}

#[test]
fn pusher_counters_in_metrics() {
    let d = Daemon::start(&["--pusher-app", APP]);
    let (mut ws, _) = connect(&d);
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":{"channel":"m"}}"#,
    );
    assert_eq!(
        text(&mut ws)["event"],
        "pusher_internal:subscription_succeeded"
    );
    send(
        &mut ws,
        r#"{"event":"pusher:subscribe","data":{"channel":"private-m"}}"#,
    );
    assert_eq!(text(&mut ws)["event"], "pusher:subscription_error");
    let ev = r#"{"name":"e","data":"x","channel":"m"}"#;
    assert_eq!(
        api(&d, "POST", "/apps/1/events", "", ev, now(), "app-secret").0,
        200
    );
    assert_eq!(
        api(&d, "POST", "/apps/1/events", "", ev, now(), "bad").0,
        401
    );
    let metrics = || {
        let r = raw_exchange(
            d.addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        r.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    };
    let m = metrics();
    for line in [
        "wspush_pusher_sockets 1",
        "wspush_pusher_subscriptions_total 1",
        "wspush_pusher_subscription_errors_total 1",
        "wspush_pusher_api_events_total 1",
        "wspush_pusher_api_refusals_total 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing:\n{m}");
    }
    drop(ws);
    assert!(wait_until(Duration::from_secs(5), || metrics()
        .lines()
        .any(|l| l == "wspush_pusher_sockets 0")));
}
