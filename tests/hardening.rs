//! Issue 8 regressions through the real binary: secrets and keys checked at
//! start, nonsense flags refused, one daemon per port, HEAD without a body,
//! token claims, IPv4-mapped loopback, signals, and one JSON depth limit.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::push::http;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use tungstenite::Message as TMsg;
use wspush::push::unix_now;

fn publish_json(addr: SocketAddr, channel: &str, data: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        &format!("/publish/{channel}"),
        "Content-Type: application/json\r\n",
        data.as_bytes(),
    )
}

fn next_json(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match read_msg(ws).expect("read") {
            TMsg::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            TMsg::Ping(_) | TMsg::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn nest(depth: usize) -> String {
    "[".repeat(depth) + "1" + &"]".repeat(depth)
}

/// Assert that `wspush <args>` (with `env`) refuses to start: a non-zero
/// exit, and a message containing each of `needles`.
fn refused(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let (status, out) = run_to_exit(args, env);
    let status = status.unwrap_or_else(|| panic!("{args:?} {env:?} started: {out}"));
    assert!(!status.success(), "{args:?} {env:?} exited 0: {out}");
    for n in needles {
        assert!(out.contains(n), "{args:?} {env:?}: no {n:?} in {out:?}");
    }
    assert!(!out.contains("listening on"), "{args:?}: {out}");
    assert!(!out.contains("panicked"), "{args:?}: {out}");
}

const L: &str = "--listen";
const ANY: &str = "127.0.0.1:0";

// Item 1.
#[test]
fn empty_secrets_and_bad_api_keys_refuse_to_start() {
    refused(
        &[L, ANY, "--jwt-secret", ""],
        &[],
        &["--jwt-secret", "empty"],
    );
    refused(
        &[L, ANY],
        &[("WSPUSH_JWT_SECRET", "")],
        &["--jwt-secret", "empty"],
    );
    refused(&[L, ANY, "--api-key", ""], &[], &["--api-key", "empty"]);
    refused(
        &[L, ANY],
        &[("WSPUSH_API_KEY", "")],
        &["--api-key", "empty"],
    );
    refused(
        &[L, ANY, "--api-key", "two words"],
        &[],
        &["--api-key", "whitespace"],
    );
    refused(
        &[L, ANY, "--api-key", "tab\there"],
        &[],
        &["--api-key", "whitespace"],
    );
    refused(
        &["token", "--secret", "", "--sub", "a"],
        &[],
        &["--secret", "empty"],
    );
    refused(
        &["token", "--sub", "a"],
        &[("WSPUSH_JWT_SECRET", "")],
        &["--secret", "empty"],
    );
    // A short secret starts, with a warning; a long one without.
    let d = Daemon::start(&["--jwt-secret", "short"]);
    assert!(d.wait_logged("use at least 32"), "{}", d.log_text());
    let long = "x".repeat(32);
    let d = Daemon::start(&["--jwt-secret", &long]);
    assert!(d.wait_logged("tokens required"));
    assert!(!d.logged("use at least 32"), "{}", d.log_text());
}

// Item 11.
#[test]
fn nonsense_flags_are_refused_naming_the_flag() {
    for (args, flag) in [
        (&["--handshake-timeout", "0"][..], "--handshake-timeout"),
        (&["--handshake-timeout", "0.0001"], "--handshake-timeout"),
        (&["--drain-timeout", "0"], "--drain-timeout"),
        (&["--max-message-size", "0"], "--max-message-size"),
        (&["--max-buffered", "0"], "--max-buffered"),
        (&["--max-publish-size", "0"], "--max-publish-size"),
        (&["--max-pending-bytes", "0"], "--max-pending-bytes"),
        (&["--max-pending-bytes", "1000"], "--max-pending-bytes"),
        (&["--history-ttl", "0"], "--history-ttl"),
        (&["--history-max-bytes", "0"], "--history-max-bytes"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--workers", "0"], "--workers"),
        (&["--workers", "100000"], "--workers"),
        (
            &["--idle-timeout", "10s", "--ping-interval", "10s"],
            "--idle-timeout",
        ),
        (&["--idle-timeout", "5s"], "--ping-interval"),
        (&["--protocol", "a b"], "--protocol"),
        (&["--protocol", ""], "--protocol"),
        (&["--client-publish", ""], "--client-publish"),
        (&["--origin", "https://example.com/"], "--origin"),
        (&["--origin", ""], "--origin"),
        (&["--allow-non-expiring-tokens"], "--jwt-secret"),
    ] {
        let mut all = vec![L, ANY];
        all.extend_from_slice(args);
        refused(&all, &[], &[flag]);
    }
    // Edge values that do work still start: either interval off, or idle
    // just longer than ping.
    for args in [
        &["--origin", "https://example.com:8443", "--origin", "null"][..],
        &["--ping-interval", "0", "--idle-timeout", "5s"],
        &["--ping-interval", "5s", "--idle-timeout", "0"],
        &["--ping-interval", "5s", "--idle-timeout", "6s"],
    ] {
        let d = Daemon::start(args);
        assert_eq!(
            status_of(&raw_exchange(
                d.addr,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            )),
            200
        );
    }
}

// Item 2.
#[test]
fn a_second_daemon_on_the_same_port_fails_whatever_the_workers() {
    for (first, second) in [("1", "1"), ("4", "4"), ("1", "4"), ("4", "1")] {
        let a = Daemon::start(&["--workers", first]);
        let addr = a.addr.to_string();
        refused(
            &[L, &addr, "--workers", second],
            &[],
            &["address in use", &addr],
        );
        // The first daemon kept the whole port: every connection reaches it
        // (its subscriber receives every publication sent through new ones).
        let mut sub = ws(&a, "/ws?channel=c");
        assert_eq!(next_json(&mut sub)["op"], "welcome");
        assert_eq!(next_json(&mut sub)["op"], "subscribed");
        for i in 0..20 {
            let (st, body) = publish_json(a.addr, "c", &i.to_string());
            assert_eq!(st, 200, "{body}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["recipients"],
                1,
                "workers {first}/{second}"
            );
            assert_eq!(next_json(&mut sub)["data"], i);
        }
    }
}

// Item 2: the deliberate handover.
#[test]
fn reuse_port_lets_a_new_daemon_take_over_on_purpose() {
    let mut old = Daemon::start(&["--workers", "2"]);
    let addr = old.addr.to_string();
    let new = Daemon::start_on(&addr, &["--workers", "2", "--reuse-port"]);
    assert_eq!(new.addr, old.addr);
    old.signal(libc::SIGTERM);
    let st = old
        .wait_exit(IO_TIMEOUT)
        .expect("the old daemon drains and exits");
    assert!(st.success(), "{st:?}");
    // Every new connection now reaches the new daemon.
    for _ in 0..20 {
        let resp = raw_exchange(
            new.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&resp), 200, "{resp}");
    }
}

/// Read one response head (through the blank line) from `s`, byte by byte
/// so that nothing after it is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "EOF in a response head: {head:?}"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
}

// Item 4.
#[test]
fn head_answers_carry_the_get_headers_and_no_body_on_a_keep_alive_connection() {
    let d = Daemon::start(&["--workers", "1"]);
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for path in ["/", "/healthz", "/stats", "/metrics", "/", "/healthz"] {
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 "), "HEAD {path}: {head}");
        let head_len = content_length(&head);
        assert!(head_len > 0, "HEAD {path}: {head}");
        // The next bytes on the connection are the GET's answer, not a body.
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let get = read_head(&mut s);
        assert!(
            get.starts_with("HTTP/1.1 200 "),
            "GET {path} after HEAD: {get}"
        );
        let get_len = content_length(&get);
        let mut body = vec![0u8; get_len];
        s.read_exact(&mut body).unwrap();
        if path == "/" || path == "/healthz" {
            // Fixed bodies: HEAD announced exactly GET's length.
            assert_eq!(head_len, get_len, "{path}");
        }
        let strip = |h: &str| -> String {
            h.lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
                .collect()
        };
        assert_eq!(
            strip(&head),
            strip(&get),
            "{path}: HEAD and GET heads differ"
        );
    }
    // A refused method answered to HEAD has no body either.
    s.write_all(
        b"HEAD /publish/x HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 405 "));
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200 "));
}

/// An HS256 token over an arbitrary payload.
fn sign(payload: &str, secret: &[u8]) -> String {
    let hp = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    m.update(hp.as_bytes());
    format!("{hp}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
}

// Item 5.
#[test]
fn tokens_need_sub_and_exp_unless_non_expiring_ones_are_allowed() {
    let secret = "a-secret-of-at-least-thirty-two-bytes";
    let later = unix_now() + 600;
    let cases = [
        ("{}".to_string(), 401, 401),
        (r#"{"sub":"a"}"#.to_string(), 401, 101),
        (format!(r#"{{"exp":{later}}}"#), 401, 401),
        (format!(r#"{{"sub":"","exp":{later}}}"#), 401, 401),
        (format!(r#"{{"sub":"a","exp":{later}}}"#), 101, 101),
        (
            format!(r#"{{"sub":"a","exp":{}}}"#, unix_now() - 5),
            401,
            401,
        ),
    ];
    for (flags, strict) in [
        (&[][..], true),
        (&["--allow-non-expiring-tokens"][..], false),
    ] {
        let mut args = vec!["--jwt-secret", secret];
        args.extend_from_slice(flags);
        let d = Daemon::start(&args);
        for (payload, want_strict, want_allowing) in &cases {
            let want = if strict { *want_strict } else { *want_allowing };
            let t = sign(payload, secret.as_bytes());
            let resp = raw_exchange(
                d.addr,
                upgrade_request(&format!("/ws?token={t}"), "").as_bytes(),
            );
            assert_eq!(status_of(&resp), want, "{payload} strict={strict}: {resp}");
            if payload == r#"{"sub":"a"}"# && strict {
                assert!(resp.contains("no exp"), "{resp}");
            }
        }
    }
    // --help says the same rule.
    let (_, help) = run_to_exit(&["--help"], &[]);
    assert!(help.contains("--allow-non-expiring-tokens"), "{help}");
    assert!(help.contains("`sub` (user id, required)"), "{help}");
    assert!(help.contains("`exp` (required"), "{help}");
}

// Item 6.
#[test]
fn ipv4_mapped_loopback_is_loopback_for_the_api() {
    let d = Daemon::start_on("[::]:0", &["--workers", "1"]);
    assert!(d.addr.is_ipv6(), "{}", d.addr);
    let v4: SocketAddr = ([127, 0, 0, 1], d.addr.port()).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, d.addr.port()).into();
    for addr in [v4, v6] {
        let (st, body) = publish_json(addr, "c", "1");
        assert_eq!(st, 200, "from {addr}: {body}");
        let (st, _) = http(addr, "GET", "/stats", "", b"");
        assert_eq!(st, 200, "from {addr}");
    }
}

// Item 10.
#[test]
fn sighup_and_sigusr_do_not_kill_and_sigquit_drains_with_1001() {
    let mut d = Daemon::start(&["--workers", "2", "--drain-timeout", "20s"]);
    let mut c = ws(&d, "/echo");
    for (sig, line) in [
        (libc::SIGHUP, "SIGHUP: nothing to reload"),
        (libc::SIGUSR1, "SIGUSR1: ignored"),
        (libc::SIGUSR2, "SIGUSR2: ignored"),
        (libc::SIGHUP, "SIGHUP: nothing to reload"),
    ] {
        d.signal(sig);
        assert!(d.wait_logged(line), "{line}: {}", d.log_text());
        assert!(
            matches!(d.child.try_wait(), Ok(None)),
            "signal {sig} ended the daemon"
        );
        c.send(TMsg::Text(format!("after {sig}"))).unwrap();
        assert_eq!(
            read_msg(&mut c).unwrap(),
            TMsg::Text(format!("after {sig}"))
        );
        let resp = raw_exchange(
            d.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&resp), 200, "{resp}");
    }
    d.signal(libc::SIGQUIT);
    let code = loop {
        match read_msg(&mut c) {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame after SIGQUIT: {e}"),
        }
    };
    assert_eq!(code, Some(1001));
    while read_msg(&mut c).is_ok() {}
    let st = d.wait_exit(IO_TIMEOUT).expect("exits after the drain");
    assert!(st.success(), "{st:?}");
    assert!(d.wait_logged("SIGQUIT: shutting down"), "{}", d.log_text());
}

// Item 10: a daemon started with the drain signals ignored (as `cmd &` in
// a script leaves SIGINT and SIGQUIT) still drains on them: they are
// blocked and taken by sigwait, and the kernel does not discard a blocked
// signal even when its disposition is "ignore".
#[test]
fn inherited_ignored_signals_still_drain() {
    use std::os::unix::process::CommandExt;
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wspush"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(sig, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let started = std::iter::from_fn(|| rx.recv_timeout(IO_TIMEOUT).ok())
            .any(|l| l.contains("listening on"));
        assert!(started);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let exited = wait_until(IO_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert!(exited && status.success(), "signal {sig}: {status:?}");
    }
}

// Item 12.
#[test]
fn one_json_depth_limit_for_the_api_and_client_publish() {
    const MAX: usize = wspush::push::envelope::MAX_JSON_DEPTH;
    let d = Daemon::start(&["--workers", "2", "--client-publish", "c"]);
    let mut sub = ws(&d, "/ws?channel=c");
    assert_eq!(next_json(&mut sub)["op"], "welcome");
    assert_eq!(next_json(&mut sub)["op"], "subscribed");

    // The API: at the limit it is relayed, over it (or far over) 400.
    let (st, body) = publish_json(d.addr, "c", &nest(MAX));
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        next_json(&mut sub)["data"],
        serde_json::from_str::<Value>(&nest(MAX)).unwrap()
    );
    for depth in [MAX + 1, 500_000] {
        let (st, body) = publish_json(d.addr, "c", &nest(depth));
        assert_eq!(st, 400, "depth {depth}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(
            v["error"].as_str().unwrap().starts_with("invalid body"),
            "{v}"
        );
    }
    // The client path, the same limit.
    let mut publisher = ws(&d, "/ws");
    assert_eq!(next_json(&mut publisher)["op"], "welcome");
    let msg = |depth: usize| {
        format!(
            r#"{{"op":"publish","channel":"c","data":{},"id":{depth}}}"#,
            nest(depth)
        )
    };
    publisher.send(TMsg::Text(msg(MAX))).unwrap();
    assert_eq!(next_json(&mut publisher)["op"], "published");
    assert_eq!(
        next_json(&mut sub)["data"],
        serde_json::from_str::<Value>(&nest(MAX)).unwrap()
    );
    for depth in [MAX + 1, 500_000] {
        publisher.send(TMsg::Text(msg(depth))).unwrap();
        let e = next_json(&mut publisher);
        assert_eq!(e["op"], "error", "depth {depth}: {e}");
        assert_eq!(e["code"], "invalid_json", "{e}");
    }
    // Nothing over the limit reached the subscriber: the next push is the next one.
    let (st, _) = publish_json(d.addr, "c", "\"last\"");
    assert_eq!(st, 200);
    assert_eq!(next_json(&mut sub)["data"], "last");
}
