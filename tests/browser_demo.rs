//! The demo page (`GET /`) in real headless Chromium, driven through the
//! DevTools protocol (CDP) over a tungstenite WebSocket.
//!
//! The daemon runs as a child process; Chromium opens
//! `http://ADDR/?channel=demo&autoconnect=1`; the test reads the page's DOM
//! with `Runtime.evaluate`, publishes through the HTTP API and waits for the
//! push to appear on the page. It also drives the page's controls (subscribe,
//! the send box, allowed and refused, unsubscribe) and checks reconnect +
//! re-subscribe after the server drops the connection. Two more tests: a
//! JWT-protected daemon (user, refused channel, direct and broadcast pushes)
//! and a server killed and restarted on the same port.
//!
//! Without `/usr/bin/chromium` (or `$WSPUSH_CHROMIUM`) the test prints
//! `SKIPPED: chromium not installed` and passes, unless
//! `WSPUSH_REQUIRE_CHROMIUM=1` (set by `.ci/run`), in which case it fails.
//!
//! Every wait is bounded (generous limits against hangs, never a timing
//! assertion); on failure the page's event list, Chromium's stderr and the
//! daemon's log are printed.

mod browser_support;
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use browser_support::{
    api_answer, api_delete, api_post, chromium_or_skip, http_get_body, tail, Cdp, Chromium, Env,
    PAGE_LIMIT,
};
use common::{raw_exchange, Daemon};
use serde_json::json;

#[test]
fn demo_page_in_headless_chromium() {
    let Some(chromium_bin) = chromium_or_skip(true) else {
        return;
    };
    let started = Instant::now();
    let daemon = Daemon::start(&["--workers", "2", "--client-publish", "chat.*"]);
    let addr = daemon.addr;

    // The page is served at `/` and is the compiled-in file.
    let page = http_get_body(addr, "/").expect("GET / answers 200");
    assert!(
        page.contains("<title>wspush demo</title>"),
        "GET / is the demo page"
    );

    let origin = format!("http://{addr}/");
    let chromium = Chromium::start(
        &chromium_bin,
        &format!("{origin}?channel=demo&autoconnect=1"),
    );
    let cdp = Cdp::attach(&chromium, &origin);
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };

    // 1. Autoconnect with the channel from the URL.
    env.wait_for(
        "status `connected`",
        "document.getElementById('status')?.textContent ?? null",
        |v| v == "connected",
    );
    let first_conn = env.conn_id();
    assert!(
        !first_conn.is_empty() && first_conn.parse::<u64>().is_ok(),
        "conn-id shows the welcome's connection id, got {first_conn:?}"
    );
    assert_eq!(
        env.subscribed(),
        json!(["demo"]),
        "subscribed from ?channel=demo"
    );
    // The heartbeat's first ping is sent on the welcome: its pong shows up.
    env.wait_for(
        "a pong",
        "document.getElementById('last-pong').textContent",
        |v| v.as_str().is_some_and(|s| s != "never"),
    );

    // 2. A publication through the HTTP API appears on the page.
    let (status, answer) = api_post(addr, "/publish/demo", r#"{"hello":"browser"}"#);
    assert_eq!(status, 200, "POST /publish/demo: {answer}");
    assert_eq!(answer["channel"], "demo");
    assert_eq!(answer["seq"], 1);
    assert_eq!(answer["recipients"], 1, "the page is the one subscriber");
    env.wait_push("demo #1", r#"{"hello":"browser"}"#);

    // 3. Subscribe through the page's form; a string body arrives as a string.
    env.fill_and_submit(&[("channel-input", "chat.lobby")], "subscribe");
    env.wait_for(
        "chat.lobby subscribed",
        "[...document.querySelectorAll('#subscriptions li[data-channel]')]\
         .filter(li => !li.querySelector('.state')).map(li => li.dataset.channel).sort()",
        |v| v == &json!(["chat.lobby", "demo"]),
    );
    let req = format!(
        "POST /publish/chat.lobby HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
         Content-Length: 11\r\nConnection: close\r\n\r\nplain words"
    );
    let (status, answer) = api_answer(raw_exchange(addr, req.as_bytes()));
    assert_eq!(status, 200, "{answer}");
    env.wait_push("chat.lobby #1", "plain words");

    // 4. The send box: allowed on `chat.*` (and, subscribed, the page gets
    //    its own push), refused elsewhere with the server's error shown.
    env.fill_and_submit(
        &[
            ("send-channel", "chat.lobby"),
            ("send-data", r#"{"from":"page"}"#),
        ],
        "send",
    );
    env.wait_push("chat.lobby #2", r#"{"from":"page"}"#);
    env.wait_for(
        "the publish ack",
        "document.getElementById('send-result').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("seq 2")),
    );
    env.fill_and_submit(&[("send-channel", "demo"), ("send-data", "nope")], "send");
    env.wait_for("the refusal", "document.getElementById('send-result').className + ' ' + document.getElementById('send-result').textContent", |v| {
        v.as_str().is_some_and(|s| s.contains("error") && s.contains("forbidden"))
    });

    // 5. Unsubscribe through the page: the server confirms, and later
    //    publications on that channel have no recipient.
    assert_eq!(
        env.cdp.eval(
            "document.querySelector('#subscriptions li[data-channel=\"chat.lobby\"] button').click(); true"
        ),
        json!(true)
    );
    env.wait_for(
        "the unsubscribe ack",
        "document.getElementById('events').innerText",
        |v| {
            v.as_str()
                .is_some_and(|s| s.contains("unsubscribed from chat.lobby"))
        },
    );
    let (status, answer) = api_post(addr, "/publish/chat.lobby", "3");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["recipients"], 0,
        "nobody on chat.lobby after unsubscribe"
    );

    // 6. The server drops the connection: the page reconnects by itself
    //    (backoff), re-subscribes `demo`, and receives again.
    let (status, answer) = api_delete(addr, &format!("/connections/{first_conn}"));
    assert_eq!(status, 200, "DELETE /connections/{first_conn}: {answer}");
    env.wait_for(
        "a new connection after the server closed the old one",
        "document.getElementById('status').textContent + ' ' + document.getElementById('conn-id').textContent",
        |v| {
            v.as_str().is_some_and(|s| {
                s.starts_with("connected ") && s != format!("connected {first_conn}")
            })
        },
    );
    assert_eq!(
        env.subscribed(),
        json!(["demo"]),
        "re-subscribed after reconnect"
    );
    let (status, answer) = api_post(addr, "/publish/demo", r#"{"after":"reconnect"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seq"], 2);
    assert_eq!(answer["recipients"], 1);
    env.wait_push("demo #2", r#"{"after":"reconnect"}"#);

    // Newest first, nothing duplicated.
    let rows = env.pushes();
    let labels: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["demo #2", "chat.lobby #2", "chat.lobby #1", "demo #1"],
        "one row per push, newest at the top"
    );
    assert_eq!(env.status(), json!("connected"));
    if let Some(path) = std::env::var_os("WSPUSH_DEMO_SCREENSHOT") {
        use base64::Engine as _;
        let shot = env
            .cdp
            .call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .expect("screenshot is base64");
        std::fs::write(&path, png).expect("write screenshot");
    }
    assert!(
        env.cdp.exceptions.is_empty(),
        "uncaught exceptions in the page: {:?}",
        env.cdp.exceptions
    );

    drop(env);
    drop(chromium);
    eprintln!("browser demo test took {:?}", started.elapsed());
}

/// With `--jwt-secret`: the token from `?token=` is used, the user shown;
/// a channel the token does not allow makes the server refuse the upgrade,
/// so after two refusals the page connects without channels and subscribes
/// one by one, showing the refusal for that channel; direct (to the user)
/// and broadcast pushes appear; a fresh token goes through the refresh box.
#[test]
fn demo_page_with_token_in_headless_chromium() {
    let Some(chromium_bin) = chromium_or_skip(false) else {
        return; // the other test prints the SKIPPED line
    };
    let secret = "browser-test-secret";
    let daemon = Daemon::start(&["--workers", "2", "--jwt-secret", secret]);
    let addr = daemon.addr;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = wspush::push::auth::mint_hs256(
        secret.as_bytes(),
        "alice",
        Some(now + 3600),
        Some(&["demo".to_string(), "chat.*".to_string()]),
    );

    let origin = format!("http://{addr}/");
    let chromium = Chromium::start(
        &chromium_bin,
        &format!("{origin}?channel=demo&channel=secret&token={token}&autoconnect=1"),
    );
    let cdp = Cdp::attach(&chromium, &origin);
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &daemon,
    };

    env.wait_for(
        "status `connected` (after two refused upgrades)",
        "document.getElementById('status')?.textContent ?? null",
        |v| v == "connected",
    );
    assert_eq!(
        env.cdp.eval("document.getElementById('user').textContent"),
        json!("alice"),
        "the welcome's user (the token's sub)"
    );
    env.wait_for(
        "`secret` refused and `demo` subscribed",
        "JSON.stringify([...document.querySelectorAll('#subscriptions li[data-channel]')]\
         .map(li => [li.dataset.channel, li.querySelector('.state')?.textContent ?? 'subscribed']))",
        |v| v == r#"[["demo","subscribed"],["secret","refused: forbidden"]]"#,
    );
    let events = env.cdp.eval("document.getElementById('events').innerText");
    assert!(
        events
            .as_str()
            .is_some_and(|e| e.contains("before the welcome") && e.contains("forbidden")),
        "the refusals are shown: {events}"
    );

    let (status, answer) = api_post(addr, "/publish/demo", r#"{"n":1}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], 1);
    env.wait_push("demo #1", r#"{"n":1}"#);
    let (status, answer) = api_post(addr, "/users/alice/send", r#"{"to":"alice"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], 1);
    env.wait_push("direct", r#"{"to":"alice"}"#);
    let (status, answer) = api_post(addr, "/broadcast", r#""everyone""#);
    assert_eq!(status, 200, "{answer}");
    env.wait_push("broadcast", "everyone");

    // A fresh token through the page's refresh box: the server confirms
    // the new expiry, and the token field takes it for later connections.
    let fresh = wspush::push::auth::mint_hs256(
        secret.as_bytes(),
        "alice",
        Some(now + 7200),
        Some(&["demo".to_string(), "chat.*".to_string()]),
    );
    env.fill_and_submit(&[("new-token", &fresh)], "refresh");
    env.wait_for(
        "the refresh confirmed",
        "document.getElementById('events').innerText",
        |v| {
            v.as_str()
                .is_some_and(|s| s.contains("token refreshed, expires"))
        },
    );
    assert_eq!(
        env.cdp.eval("document.getElementById('token').value"),
        json!(fresh)
    );
    assert!(
        env.cdp.exceptions.is_empty(),
        "uncaught exceptions in the page: {:?}",
        env.cdp.exceptions
    );
}

/// Start the daemon on a given address (to bring a server back on the port
/// the page keeps retrying); `Daemon::start` always picks a fresh port.
fn daemon_on(addr: SocketAddr) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wspush"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wspush");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            log2.lock().unwrap().push(line);
        }
    });
    let mut d = Daemon { child, addr, log };
    if rx.recv_timeout(common::IO_TIMEOUT).is_err() {
        let status = d.wait_exit(Duration::from_secs(1));
        panic!(
            "wspush on {addr} did not start ({status:?}):\n{}",
            tail(&d.log.lock().unwrap(), 20)
        );
    }
    d
}

/// The server goes away (killed: connections reset, new ones refused): the
/// page shows `disconnected` and keeps retrying with backoff; a new server
/// on the same port gets the page back, re-subscribed.
#[test]
fn demo_page_survives_a_server_restart() {
    let Some(chromium_bin) = chromium_or_skip(false) else {
        return; // the first test prints the SKIPPED line
    };
    let first = Daemon::start(&["--workers", "2"]);
    let addr = first.addr;
    let origin = format!("http://{addr}/");
    let chromium = Chromium::start(
        &chromium_bin,
        &format!("{origin}?channel=news&channel=demo&autoconnect=1"),
    );
    let mut cdp = Cdp::attach(&chromium, &origin);
    {
        let mut env = Env {
            cdp,
            chromium: &chromium,
            daemon: &first,
        };
        env.wait_for(
            "status `connected`",
            "document.getElementById('status')?.textContent ?? null",
            |v| v == "connected",
        );
        assert_eq!(env.subscribed(), json!(["demo", "news"]));
        cdp = env.cdp;
    }
    drop(first); // SIGKILL: no close frame, the page sees 1006

    // While the server is away the page says so and schedules retries.
    // (Only states are checked, never how fast they change.)
    let state = "document.getElementById('status').textContent + '|' + \
                 document.getElementById('reconnect-info').textContent";
    let deadline = Instant::now() + PAGE_LIMIT;
    loop {
        let v = cdp.eval(state);
        let s = v.as_str().unwrap_or("");
        if s.starts_with("disconnected|reconnecting in ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "page never showed the retry after the server died (last: {v}); chromium:\n{}",
            chromium.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = daemon_on(addr);
    let mut env = Env {
        cdp,
        chromium: &chromium,
        daemon: &second,
    };
    env.wait_for(
        "status `connected` on the new server",
        "document.getElementById('status').textContent",
        |v| v == "connected",
    );
    assert_eq!(
        env.subscribed(),
        json!(["demo", "news"]),
        "re-subscribed on the new server"
    );
    let (status, answer) = api_post(addr, "/publish/news", r#"{"back":true}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seq"], 1, "a new server: seq starts again");
    assert_eq!(answer["recipients"], 1);
    env.wait_push("news #1", r#"{"back":true}"#);
    let reconnect_info = env
        .cdp
        .eval("document.getElementById('reconnect-info').textContent");
    assert_eq!(reconnect_info, json!(""), "no retry pending once connected");
    assert!(
        env.cdp.exceptions.is_empty(),
        "uncaught exceptions in the page: {:?}",
        env.cdp.exceptions
    );
}
