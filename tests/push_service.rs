//! The push service over real sockets, with tungstenite as the client:
//! channels across workers, targeted push, client publish, tokens, the
//! API's keys and statuses, idle reaping, and /metrics.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use common::push::*;
use common::*;
use serde_json::Value;
use tungstenite::Message as TMsg;
use wspush::push::auth::mint_hs256;
use wspush::push::unix_now;

fn worker_of(welcome: &Value) -> u64 {
    welcome["connection"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        >> 56
}

#[test]
fn publications_reach_exactly_their_subscribers_across_4_workers_in_seq_order() {
    let d = Daemon::start(&["--workers", "4"]);
    // 60 clients: a third on "a", a third on "b", a third on both; plus 20 on nothing.
    let mut clients: Vec<(Ws, Vec<&str>)> = Vec::new();
    let mut workers = std::collections::HashSet::new();
    for i in 0..80 {
        let subs: Vec<&str> = match i % 4 {
            0 => vec!["a"],
            1 => vec!["b"],
            2 => vec!["a", "b"],
            _ => vec![],
        };
        let q: String = subs
            .iter()
            .enumerate()
            .map(|(k, c)| format!("{}channel={c}", if k == 0 { "?" } else { "&" }))
            .collect();
        let (ws, welcome) = connect(&d, &q);
        workers.insert(worker_of(&welcome));
        clients.push((ws, subs));
    }
    assert!(
        workers.len() >= 2,
        "clients spread over workers: {workers:?}"
    );
    for i in 1..=30u64 {
        let r = publish(d.addr, "a", &format!("{{\"n\":{i}}}"));
        assert_eq!(r["seq"], i);
        assert_eq!(r["recipients"], 40, "{r}");
        let r = publish(d.addr, "b", &format!("\"b{i}\""));
        assert_eq!(r["seq"], i);
    }
    let r = publish(d.addr, "nobody", "1");
    assert_eq!(r["recipients"], 0);
    // A marker sent last to each client proves nothing else was queued before it.
    for (ws, subs) in clients.iter_mut() {
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        let expect = 30 * subs.len();
        for _ in 0..expect {
            let m = next_json(ws);
            let ch = m["channel"].as_str().expect("a channel push").to_string();
            assert!(
                subs.contains(&ch.as_str()),
                "got {ch} while subscribed to {subs:?}"
            );
            seen.entry(ch).or_default().push(m["seq"].as_u64().unwrap());
        }
        for s in subs.iter() {
            assert_eq!(
                seen[*s],
                (1..=30).collect::<Vec<_>>(),
                "channel {s}: each once, in seq order"
            );
        }
        ws.send(TMsg::Text(r#"{"op":"ping"}"#.into())).unwrap();
        assert_eq!(next_json(ws)["op"], "pong", "nothing extra was delivered");
    }
}

#[test]
fn unsubscribe_stops_delivery_and_subscribe_errors() {
    let d = Daemon::start(&["--workers", "2", "--max-channels-per-conn", "2"]);
    let (mut ws, _) = connect(&d, "");
    let r = op(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"x","id":1}),
    );
    assert_eq!(
        (&r["op"], &r["channel"], &r["id"], &r["seq"]),
        (
            &Value::from("subscribed"),
            &Value::from("x"),
            &Value::from(1),
            &Value::from(0)
        ),
        "{r}"
    );
    publish(d.addr, "x", "1");
    assert_eq!(next_json(&mut ws)["data"], 1);
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"unsubscribe","channel":"x"})
        )["op"],
        "unsubscribed"
    );
    assert_eq!(publish(d.addr, "x", "2")["recipients"], 0);
    assert_eq!(
        op(&mut ws, serde_json::json!({"op":"ping"}))["op"],
        "pong",
        "no delivery after unsubscribe"
    );
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"unsubscribe","channel":"x"})
        )["code"],
        "not_subscribed"
    );
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"bad name"})
        )["code"],
        "invalid_channel"
    );
    op(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"c1"}),
    );
    op(
        &mut ws,
        serde_json::json!({"op":"subscribe","channel":"c2"}),
    );
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"c3"})
        )["code"],
        "too_many_channels"
    );
    // Bad channel in the query is refused before the upgrade.
    let resp = raw_exchange(
        d.addr,
        upgrade_request("/ws?channel=no%20way", "").as_bytes(),
    );
    assert_eq!(status_of(&resp), 400, "{resp}");
}

#[test]
fn a_subscribe_loop_is_rate_limited() {
    let d = Daemon::start(&["--workers", "1"]);
    let (mut ws, _) = connect(&d, "");
    // 300 subscribe/unsubscribe pairs, fast: they span at most two
    // one-second windows of 128 subscriptions (the channel allowance).
    let mut codes = std::collections::HashMap::new();
    for i in 0..300 {
        let r = op(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"churn","id":i}),
        );
        let code = r["code"].as_str().unwrap_or("subscribed").to_string();
        *codes.entry(code.clone()).or_insert(0) += 1;
        if code == "subscribed" {
            op(
                &mut ws,
                serde_json::json!({"op":"unsubscribe","channel":"churn"}),
            );
        } else {
            assert_eq!(code, "rate_limited", "{r}");
            // Each refusal is a strike: stop before the strikes close it.
            break;
        }
    }
    assert_eq!(codes.get("rate_limited"), Some(&1), "{codes:?}");
    assert!(codes["subscribed"] >= 128, "{codes:?}");
}

#[test]
fn client_publish_allowed_and_refused_by_pattern() {
    let d = Daemon::start(&["--workers", "2", "--client-publish", "chat.*"]);
    let (mut a, _) = connect(&d, "?channel=chat.room");
    let (mut b, _) = connect(&d, "?channel=chat.room&channel=news");
    let r = op(
        &mut a,
        serde_json::json!({"op":"publish","channel":"chat.room","data":{"t":"hi"},"id":"q"}),
    );
    assert_eq!(
        r,
        serde_json::json!({"op":"published","channel":"chat.room","seq":1,"id":"q"})
    );
    assert_eq!(
        next_json(&mut a),
        serde_json::json!({"channel":"chat.room","seq":1,"data":{"t":"hi"}})
    );
    assert_eq!(
        next_json(&mut b),
        serde_json::json!({"channel":"chat.room","seq":1,"data":{"t":"hi"}})
    );
    let r = op(
        &mut a,
        serde_json::json!({"op":"publish","channel":"news","data":"x"}),
    );
    assert_eq!(r["op"], "error");
    assert_eq!(r["code"], "forbidden");
    assert_eq!(
        op(&mut b, serde_json::json!({"op":"ping"}))["op"],
        "pong",
        "refused publication was not delivered"
    );
}

#[test]
fn garbage_is_answered_then_rate_limited_with_1008() {
    let d = Daemon::start(&["--workers", "1"]);
    let (mut ws, _) = connect(&d, "");
    let r = op(&mut ws, Value::String("x".into()));
    assert_eq!(r["code"], "invalid_message");
    ws.send(TMsg::Text("{not json".into())).unwrap();
    assert_eq!(next_json(&mut ws)["code"], "invalid_json");
    ws.send(TMsg::Text(r#"{"op":"fly"}"#.into())).unwrap();
    assert_eq!(next_json(&mut ws)["code"], "unknown_op");
    for _ in 0..30 {
        if ws.send(TMsg::Text("garbage".into())).is_err() {
            break;
        }
    }
    let code = loop {
        match ws.read() {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1008));
}

#[test]
fn targeted_push_to_a_connection_and_to_a_user_on_two_workers() {
    let secret = "s3cret";
    let d = Daemon::start(&["--workers", "4", "--jwt-secret", secret]);
    let tok = |sub: &str| mint_hs256(secret.as_bytes(), sub, Some(unix_now() + 600), None);
    // Two connections of alice on different workers, one of bob.
    let (mut a1, w1) = connect(&d, &format!("?token={}", tok("alice")));
    assert_eq!(w1["user"], "alice");
    let mut a2 = None;
    for _ in 0..200 {
        let (ws, w) = connect(&d, &format!("?token={}", tok("alice")));
        if worker_of(&w) != worker_of(&w1) {
            a2 = Some(ws);
            break;
        }
    }
    let mut a2 = a2.expect("a second connection on another worker");
    let (mut bob, wb) = connect(&d, &format!("?token={}", tok("bob")));

    let (st, body) = http(
        d.addr,
        "POST",
        "/users/alice/send",
        "Content-Type: application/json\r\n",
        br#"{"m":1}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(json(&body)["recipients"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(
        next_json(&mut a1),
        serde_json::json!({"direct":true,"data":{"m":1}})
    );
    assert_eq!(
        next_json(&mut a2),
        serde_json::json!({"direct":true,"data":{"m":1}})
    );

    let bob_id = wb["connection"].as_str().unwrap();
    let (st, body) = http(d.addr, "POST", &format!("/send/{bob_id}"), "", b"just you");
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        next_json(&mut bob),
        serde_json::json!({"direct":true,"data":"just you"})
    );
    assert_eq!(
        op(&mut a1, serde_json::json!({"op":"ping"}))["op"],
        "pong",
        "alice got nothing of bob's"
    );

    let (st, _) = http(d.addr, "POST", "/broadcast", "", b"all");
    assert_eq!(st, 200);
    for ws in [&mut a1, &mut a2, &mut bob] {
        assert_eq!(
            next_json(ws),
            serde_json::json!({"broadcast":true,"data":"all"})
        );
    }

    // Disconnect bob through the API.
    let (st, _) = http(d.addr, "DELETE", &format!("/connections/{bob_id}"), "", b"");
    assert_eq!(st, 200);
    let code = loop {
        match bob.read() {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(1000));
    while bob.read().is_ok() {}
    drop(bob);
    // Gone: 404 for it now (the server forgets it as soon as it is reaped,
    // in the turn that sees the close: wait for it).
    let mut st = 0;
    wait_until(IO_TIMEOUT, || {
        st = http(d.addr, "POST", &format!("/send/{bob_id}"), "", b"x").0;
        st == 404
    });
    assert_eq!(st, 404);
}

#[test]
fn tokens_valid_expired_wrongly_signed_and_channel_limits() {
    let secret = b"k3y";
    let d = Daemon::start(&["--workers", "2", "--jwt-secret", "k3y"]);
    let chans = vec!["news".to_string(), "chat.*".to_string()];
    let good = mint_hs256(secret, "u1", Some(unix_now() + 600), Some(&chans));
    let expired = mint_hs256(secret, "u1", Some(unix_now() - 10), None);
    let forged = mint_hs256(b"other", "u1", Some(unix_now() + 600), None);
    for (q, hdr, want) in [
        (format!("/ws?token={good}"), String::new(), 101),
        (
            format!("/ws?token={good}&channel=chat.x"),
            String::new(),
            101,
        ),
        (
            "/ws".to_string(),
            format!("Authorization: Bearer {good}\r\n"),
            101,
        ),
        ("/ws".to_string(), String::new(), 401),
        (format!("/ws?token={expired}"), String::new(), 401),
        (format!("/ws?token={forged}"), String::new(), 401),
        ("/ws?token=not.a.jwt".to_string(), String::new(), 401),
        (
            format!("/ws?token={good}&channel=secret"),
            String::new(),
            403,
        ),
    ] {
        let resp = raw_exchange(d.addr, upgrade_request(&q, &hdr).as_bytes());
        assert_eq!(status_of(&resp), want, "{q} {hdr}: {resp}");
    }
    let (mut ws, w) = connect(&d, &format!("?token={good}"));
    assert_eq!(w["user"], "u1");
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"news"})
        )["op"],
        "subscribed"
    );
    assert_eq!(
        op(
            &mut ws,
            serde_json::json!({"op":"subscribe","channel":"secret"})
        )["code"],
        "forbidden"
    );
}

#[test]
fn api_key_and_every_error_status() {
    let d = Daemon::start(&[
        "--workers",
        "1",
        "--api-key",
        "letmein",
        "--max-publish-size",
        "100",
    ]);
    let a = d.addr;
    let auth = "Authorization: Bearer letmein\r\n";
    assert_eq!(
        http(a, "POST", "/publish/x", "", b"1").0,
        401,
        "missing key"
    );
    assert_eq!(
        http(
            a,
            "POST",
            "/publish/x",
            "Authorization: Bearer nope\r\n",
            b"1"
        )
        .0,
        401,
        "wrong key"
    );
    assert_eq!(
        http(a, "POST", "/publish/x", auth, b"1").0,
        200,
        "right key"
    );
    assert_eq!(http(a, "GET", "/stats", "", b"").0, 401);
    assert_eq!(http(a, "POST", "/publish/bad%20channel", auth, b"1").0, 400);
    assert_eq!(
        http(
            a,
            "POST",
            "/publish/x",
            &format!("{auth}Content-Type: application/json\r\n"),
            b"{oops"
        )
        .0,
        400
    );
    assert_eq!(http(a, "POST", "/send/notanumber", auth, b"1").0, 400);
    assert_eq!(http(a, "POST", "/send/12345", auth, b"1").0, 404);
    assert_eq!(http(a, "DELETE", "/connections/12345", auth, b"").0, 404);
    assert_eq!(http(a, "GET", "/nothing/here", auth, b"").0, 404);
    let (st, body) = http(a, "GET", "/publish/x", auth, b"");
    assert_eq!(st, 405);
    assert!(json(&body)["error"].is_string());
    assert_eq!(http(a, "POST", "/publish/x", auth, &[b'a'; 101]).0, 413);
    assert_eq!(
        http(a, "GET", "/healthz", "", b"").0,
        200,
        "health needs no key"
    );
    // Every error answer is JSON.
    let (st, body) = http(a, "POST", "/publish/x", "", b"1");
    assert_eq!(st, 401);
    assert_eq!(json(&body)["status"], 401);
    let (st, body) = http(a, "POST", "/publish/x", auth, &[b'a'; 101]);
    assert_eq!(st, 413);
    assert_eq!(json(&body)["status"], 413);
}

#[test]
fn separate_api_listener() {
    let api_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api_addr: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    // One worker: the API listener's own worker thread must still wake it.
    let d = Daemon::start(&["--workers", "1", "--api-listen", &api_addr.to_string()]);
    let (mut ws, _) = connect(&d, "?channel=c");
    assert_eq!(
        http(d.addr, "POST", "/publish/c", "", b"1").0,
        404,
        "no API on the main port"
    );
    let mut st = 0;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(api_addr) {
            drop(s);
            st = http(api_addr, "POST", "/publish/c", "", b"via api").0;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(st, 200);
    assert_eq!(next_json(&mut ws)["data"], "via api");
}

#[test]
fn idle_peers_are_reaped_and_live_ones_kept() {
    let d = Daemon::start(&[
        "--workers",
        "2",
        "--ping-interval",
        "100ms",
        "--idle-timeout",
        "600ms",
    ]);
    // A live tungstenite client answers pings as long as it reads: read on a thread.
    let (mut live, _) = connect(&d, "?channel=k");
    let reader = thread::spawn(move || {
        let mut pings = 0;
        loop {
            match live.read().expect("live client kept") {
                TMsg::Ping(_) => pings += 1,
                TMsg::Text(t) => return (pings, json(&t)),
                other => panic!("{other:?}"),
            }
        }
    });
    // A peer that never answers (it never reads, so never sees the pings).
    let mut silent = RawWs::connect(d.addr, "/ws");
    assert!(
        silent.close_code().is_some(),
        "idle peer gets a close frame"
    );
    assert!(silent.at_eof(), "and the TCP connection is closed");
    // Counters are published at the end of each worker's loop turn: allow
    // the turn that closed the socket to finish.
    let mut stats = Value::Null;
    wait_until(IO_TIMEOUT, || {
        stats = json(&http(d.addr, "GET", "/stats", "", b"").1);
        stats["disconnects"]["idle_timeout"].as_u64().unwrap() >= 1
    });
    assert!(
        stats["disconnects"]["idle_timeout"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    // The live one, which answered every ping meanwhile, still gets pushes.
    publish(d.addr, "k", "\"still here\"");
    let (pings, msg) = reader.join().unwrap();
    assert_eq!(msg["data"], "still here");
    assert!(pings >= 1, "the server pinged the quiet live client");
}

/// Check the Prometheus text exposition format line by line.
fn check_prometheus(text: &str) -> usize {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut samples = 0;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap();
            let name = parts.next().expect("metric name");
            assert!(name_ok(name), "bad name {name:?}");
            if kw == "TYPE" {
                let t = parts.next().expect("type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                assert!(
                    typed.insert(name.to_string(), t.to_string()).is_none(),
                    "TYPE twice: {line}"
                );
            } else {
                assert_eq!(kw, "HELP", "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = match series.split_once('{') {
            Some((n, labels)) => {
                let labels = labels.strip_suffix('}').expect("closing brace");
                for kv in labels.split(',') {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    assert!(name_ok(k), "{line}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
                n
            }
            None => series,
        };
        assert!(name_ok(name), "{line}");
        let t = typed
            .get(name)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if t == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter names end in _total: {name}"
            );
        }
        samples += 1;
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_stats_as_json() {
    let d = Daemon::start(&["--workers", "2"]);
    let (_ws, _) = connect(&d, "?channel=m");
    publish(d.addr, "m", "1");
    let (st, text) = http(d.addr, "GET", "/metrics", "", b"");
    assert_eq!(st, 200);
    assert!(check_prometheus(&text) > 20, "{text}");
    assert!(text.contains("wspush_connections{worker=\"0\"}"));
    assert!(text.contains("wspush_messages_sent_total "));
    assert!(text.contains("wspush_channels 1"), "{text}");
    // Connection counters are published at the end of the worker's loop
    // turn, which may end after the client has read its welcome: wait.
    let mut stats = Value::Null;
    wait_until(IO_TIMEOUT, || {
        stats = json(&http(d.addr, "GET", "/stats", "", b"").1);
        stats["connections"]["websockets"].as_u64().unwrap() >= 1
    });
    assert_eq!(stats["workers"].as_array().unwrap().len(), 2);
    assert_eq!(stats["channels"], 1);
    assert!(stats["publications"].as_u64().unwrap() >= 1);
    assert!(stats["connections"]["websockets"].as_u64().unwrap() >= 1);
}
