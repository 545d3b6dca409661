//! The browser client `wspush.js` (`GET /wspush.js`) in real headless
//! Chromium, driven through the DevTools protocol.
//!
//! Chromium opens the demo page (which loads `/wspush.js` under the page's
//! CSP); the test creates its own `WsPush` in the page with
//! `Runtime.evaluate`. The main test publishes steadily through the HTTP API
//! from a Rust thread while it drops the page's connection several times
//! with `DELETE /connections/{id}`: the client reconnects, resumes with
//! `since`, and must end with every published seq exactly once and in order,
//! with no `recovery_failed` and no gap. Another test checks the promise API
//! (subscribe, publish allowed and refused, unsubscribe, ping) and the
//! script's headers; a third refreshes a JWT.
//!
//! Skipping without Chromium follows `browser_demo.rs`
//! (`WSPUSH_REQUIRE_CHROMIUM=1` turns a missing browser into a failure).
//! Every wait is bounded; no timing is asserted.

mod browser_support;
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use browser_support::{api_delete, api_post, chromium_or_skip, Cdp, Chromium, Env};
use common::{raw_exchange, status_of, Daemon};
use serde_json::json;

/// How many times the server drops the page's connection.
const DROPS: usize = 6;

/// Create `window.TC`, a `WsPush` recording what it sees in `window.T`.
fn install_client(env: &mut Env<'_>, opts: &str) {
    let js = format!(
        "(() => {{
          const T = window.T = {{ got: [], subs: [], failed: [], gaps: [], errors: [], conns: [] }};
          const c = window.TC = new WsPush({opts});
          c.on('publication', p => T.got.push([p.channel, p.seq, p.data]));
          c.on('subscribed', s => T.subs.push(s));
          c.on('recovery_failed', r => T.failed.push(r));
          c.on('gap', g => T.gaps.push(g));
          c.on('error', e => T.errors.push(e));
          c.on('state', s => {{ if (s === 'connected') T.conns.push(c.connectionId); }});
          c.connect();
          return true;
        }})()"
    );
    assert_eq!(env.cdp.eval(&js), json!(true));
}

/// The ids of the connections the client has had so far.
fn conns(env: &mut Env<'_>) -> Vec<String> {
    let v = env.cdp.eval("window.T.conns");
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect()
}

/// Wait for connection number `n` (1-based) with `channel` subscribed; its id.
fn wait_connected(env: &mut Env<'_>, n: usize, channel: &str) -> String {
    let expr = format!(
        "window.TC.state === 'connected' && window.T.conns.length >= {n} && \
         window.TC.subscriptions().some(s => s.channel === {ch} && s.state === 'subscribed')",
        ch = json!(channel)
    );
    env.wait_for(&format!("connection #{n} with {channel}"), &expr, |v| {
        v == &json!(true)
    });
    conns(env).pop().unwrap()
}

fn start(args: &[&str]) -> Option<(Daemon, Chromium)> {
    let bin = chromium_or_skip(true)?;
    let daemon = Daemon::start(args);
    let chromium = Chromium::start(&bin, &format!("http://{}/", daemon.addr));
    Some((daemon, chromium))
}

#[test]
fn client_resumes_without_loss_while_the_server_drops_it() {
    let Some((daemon, chromium)) = start(&["--workers", "2"]) else {
        return;
    };
    let addr = daemon.addr;
    let origin = format!("http://{addr}/");
    let cdp = Cdp::attach(&chromium, &origin);
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };
    env.wait_for("wspush.js loaded", "typeof WsPush", |v| v == "function");
    install_client(
        &mut env,
        "{channels: ['feed'], minDelay: 50, maxDelay: 400, pingInterval: 2000}",
    );
    let mut id = wait_connected(&mut env, 1, "feed");

    // A backend publishing steadily, one request at a time, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    // Publications made while the page had no subscription: only a resume
    // can deliver them.
    let unheard = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, last, unheard) = (stop.clone(), last.clone(), unheard.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (status, answer) = api_post(addr, "/publish/feed", &format!("{{\"n\":{n}}}"));
                assert_eq!(status, 200, "POST /publish/feed: {answer}");
                assert_eq!(answer["seq"], json!(n), "one publisher: seq = n");
                if answer["recipients"] == json!(0) {
                    unheard.fetch_add(1, Ordering::Relaxed);
                }
                last.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };

    for k in 1..=DROPS {
        // Let some publications arrive on this connection, then drop it.
        let seen = last.load(Ordering::Relaxed);
        env.wait_for(
            "publications on the current connection",
            &format!(
                "window.T.got.length > 0 && window.T.got[window.T.got.length - 1][1] > {seen}"
            ),
            |v| v == &json!(true),
        );
        let (status, answer) = api_delete(addr, &format!("/connections/{id}"));
        assert_eq!(status, 200, "DELETE /connections/{id}: {answer}");
        let next = wait_connected(&mut env, k + 1, "feed");
        assert_ne!(next, id, "a new connection after drop {k}");
        id = next;
    }
    // A little more live traffic on the last connection, then stop.
    let seen = last.load(Ordering::Relaxed);
    env.wait_for(
        "publications after the last reconnect",
        &format!("window.T.got.length > 0 && window.T.got[window.T.got.length - 1][1] > {seen}"),
        |v| v == &json!(true),
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher thread");
    let total = last.load(Ordering::Relaxed);
    env.wait_for(
        &format!("seq {total}, the last published"),
        "window.T.got.length ? window.T.got[window.T.got.length - 1][1] : 0",
        |v| v.as_u64() >= Some(total),
    );

    let unheard = unheard.load(Ordering::Relaxed);
    assert!(
        unheard > 0,
        "some publications fell into the outages (else resume was not exercised)"
    );
    let got = env.cdp.eval("window.T.got");
    let got = got.as_array().unwrap();
    let seqs: Vec<u64> = got.iter().map(|p| p[1].as_u64().unwrap()).collect();
    let missing: Vec<u64> = (1..=total).filter(|s| !seqs.contains(s)).collect();
    assert!(
        seqs.iter().copied().eq(1..=total),
        "every seq 1..={total} exactly once and in order; {} received, missing {:?}, \
         first out of place at {:?}",
        seqs.len(),
        &missing[..missing.len().min(20)],
        seqs.iter()
            .enumerate()
            .find(|(i, s)| **s != *i as u64 + 1)
            .map(|(i, _)| i)
    );
    for p in got {
        assert_eq!(p[0], "feed");
        assert_eq!(p[2]["n"], p[1], "each push carries its own data");
    }
    let report = env.cdp.eval(
        "({failed: window.T.failed, gaps: window.T.gaps, errors: window.T.errors, \
           subs: window.T.subs, stats: window.TC.stats})",
    );
    assert_eq!(report["failed"], json!([]), "no recovery_failed: {report}");
    assert_eq!(report["gaps"], json!([]), "no gap: {report}");
    let recovered = report["subs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["recovered"] == json!(true))
        .count();
    assert_eq!(
        recovered, DROPS,
        "each reconnection resumed (recovered:true): {report}"
    );
    assert_eq!(report["stats"]["reconnects"], json!(DROPS), "{report}");
    assert!(
        env.cdp.exceptions.is_empty(),
        "uncaught exceptions in the page: {:?}",
        env.cdp.exceptions
    );
    eprintln!(
        "browser client: {total} publications ({unheard} while disconnected), {DROPS} drops, \
         all delivered once in order; duplicates dropped by the client: {}",
        report["stats"]["duplicates"]
    );
}

/// `GET` and `HEAD /wspush.js`: the script with its headers.
#[test]
fn wspush_js_is_served() {
    let daemon = Daemon::start(&["--workers", "1"]);
    let addr = daemon.addr;
    let get = raw_exchange(
        addr,
        format!("GET /wspush.js HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&get), 200, "{get}");
    let (head, body) = get.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    for h in [
        "content-type: application/javascript; charset=utf-8",
        "cache-control: no-cache",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(h), "missing {h}: {head}");
    }
    assert_eq!(body, wspush::push::CLIENT_JS);
    assert!(body.contains("class WsPush"));
    let resp = raw_exchange(
        addr,
        format!("HEAD /wspush.js HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
    let head = resp.split_once("\r\n\r\n").unwrap().0;
    assert!(head.to_ascii_lowercase().contains("application/javascript"));
    // (Whether a HEAD answer carries the body is the runtime's business, the
    // same for every route; not checked here.)
    // The page loads it under a CSP that allows scripts from 'self'.
    let page = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(page.contains("<script src=\"/wspush.js\"></script>"));
    let csp = page
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .expect("CSP header");
    assert!(csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
}

/// The promise API: subscribe resolves with the server's position, publish
/// resolves with the seq (or rejects with the server's error code),
/// unsubscribe resolves, ping measures a round trip.
#[test]
fn client_promises_follow_the_server_replies() {
    let Some((daemon, chromium)) = start(&["--workers", "2", "--client-publish", "chat.*"]) else {
        return;
    };
    let addr = daemon.addr;
    let cdp = Cdp::attach(&chromium, &format!("http://{addr}/"));
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };
    env.wait_for("wspush.js loaded", "typeof WsPush", |v| v == "function");
    let (status, _) = api_post(addr, "/publish/chat.a", "1");
    assert_eq!(status, 200);
    install_client(&mut env, "{minDelay: 50, maxDelay: 400}");
    env.wait_for("connected", "window.TC.state", |v| v == "connected");

    let sub = env.cdp.eval("window.TC.subscribe('chat.a')");
    assert_eq!(sub["channel"], "chat.a", "{sub}");
    assert_eq!(sub["seq"], 1, "subscribed after seq 1: {sub}");
    assert!(
        sub["epoch"].as_str().is_some_and(|e| e.len() == 16),
        "{sub}"
    );
    let published = env.cdp.eval("window.TC.publish('chat.a', {hi: 'there'})");
    assert_eq!(published, json!({"channel": "chat.a", "seq": 2}));
    env.wait_for("its own publication", "window.T.got", |v| {
        v == &json!([["chat.a", 2, {"hi": "there"}]])
    });
    let refused = env.cdp.eval(
        "window.TC.publish('news', 1).then(() => 'resolved', e => e.code + ' ' + e.op + ' ' + e.channel)",
    );
    assert_eq!(refused, json!("forbidden publish news"));
    let bad = env
        .cdp
        .eval("window.TC.subscribe('no spaces').then(() => 'resolved', e => e.code)");
    assert_eq!(bad, json!("invalid_channel"));
    let rtt = env.cdp.eval("window.TC.ping()");
    assert!(rtt.as_f64().is_some_and(|r| r >= 0.0), "{rtt}");
    let unsub = env.cdp.eval("window.TC.unsubscribe('chat.a')");
    assert_eq!(unsub, json!({"channel": "chat.a"}));
    let (status, answer) = api_post(addr, "/publish/chat.a", "3");
    assert_eq!(status, 200);
    assert_eq!(
        answer["recipients"], 0,
        "nobody on chat.a after unsubscribe"
    );
    let errors = env.cdp.eval("window.T.errors");
    assert_eq!(
        errors,
        json!([{"code": "forbidden", "message": "clients may not publish on this channel",
                "op": "publish", "channel": "news"}]),
        "the refusal is also an error event"
    );
    assert!(env.cdp.exceptions.is_empty(), "{:?}", env.cdp.exceptions);
}

/// With `--jwt-secret`: the token comes from `getToken`; `refresh` sends a
/// fresh one and resolves with its expiry; a refreshed token without one of
/// the channels ends that subscription (`unsubscribed` event); a token that
/// expires closes the connection and the client comes back with a new token
/// from `getToken`, resuming its channel.
#[test]
fn client_refreshes_its_token() {
    let secret = "browser-client-secret";
    let Some((daemon, chromium)) = start(&["--workers", "1", "--jwt-secret", secret]) else {
        return;
    };
    let addr = daemon.addr;
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let mint = |exp: u64, channels: &[&str]| {
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        wspush::push::auth::mint_hs256(secret.as_bytes(), "alice", Some(exp), Some(&channels))
    };
    let cdp = Cdp::attach(&chromium, &format!("http://{addr}/"));
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };
    env.wait_for("wspush.js loaded", "typeof WsPush", |v| v == "function");
    let first = mint(now() + 600, &["a", "b"]);
    env.cdp
        .eval(&format!("window.NEXT = {}; true", json!(first)));
    install_client(
        &mut env,
        "{channels: ['a', 'b'], getToken: async () => window.NEXT, minDelay: 50, maxDelay: 400}",
    );
    let id1 = wait_connected(&mut env, 1, "b");
    assert_eq!(env.cdp.eval("window.TC.user"), json!("alice"));
    env.cdp.eval(
        "window.T.ended = []; window.TC.on('unsubscribed', u => window.T.ended.push(u)); true",
    );

    // A refresh that keeps only `a`: `b` ends.
    let exp = now() + 7200;
    let answer = env
        .cdp
        .eval(&format!("window.TC.refresh({})", json!(mint(exp, &["a"]))));
    assert_eq!(answer, json!({"exp": exp}), "refreshed");
    env.wait_for(
        "b ended by the server",
        "window.T.ended.map(u => u.channel)",
        |v| v == &json!(["b"]),
    );
    assert_eq!(
        env.cdp
            .eval("window.TC.subscriptions().map(s => s.channel + ':' + s.state)"),
        json!(["a:subscribed"])
    );
    let bad = env
        .cdp
        .eval("window.TC.refresh('not.a.token').then(() => 'resolved', e => e.op + ' ' + e.code)");
    assert_eq!(bad, json!("refresh invalid_token"));

    // A token about to expire, no refresh: the server closes (3000) and the
    // client reconnects with the next token, resuming `a`.
    let soon = now() + 2;
    let answer = env
        .cdp
        .eval(&format!("window.TC.refresh({})", json!(mint(soon, &["a"]))));
    assert_eq!(answer, json!({"exp": soon}));
    let (status, _) = api_post(addr, "/publish/a", "1");
    assert_eq!(status, 200);
    env.cdp.eval(&format!(
        "window.NEXT = {}; true",
        json!(mint(now() + 3600, &["a"]))
    ));
    let id2 = wait_connected(&mut env, 2, "a");
    assert_ne!(id1, id2);
    let errors = env.cdp.eval("window.T.errors.map(e => e.code)");
    assert!(
        errors.as_array().unwrap().contains(&json!("token_expired")),
        "the expiry is an error event: {errors}"
    );
    let (status, _) = api_post(addr, "/publish/a", "2");
    assert_eq!(status, 200);
    env.wait_for(
        "both publications on a",
        "window.T.got.map(p => p[1])",
        |v| v == &json!([1, 2]),
    );
    assert_eq!(env.cdp.eval("window.T.failed"), json!([]));
    assert!(env.cdp.exceptions.is_empty(), "{:?}", env.cdp.exceptions);
}
