//! Headless Chromium driven through the DevTools protocol (CDP) over a
//! tungstenite WebSocket: shared by the browser tests (`browser_demo.rs`,
//! `browser_client.rs`). Each test crate also declares `mod common;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{raw_exchange, status_of, Daemon};
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// Upper bound for the page to reach a state (Chromium's first start in a
/// fresh profile can be slow on a loaded machine).
pub const PAGE_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound for Chromium to print its DevTools address.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound on one CDP answer.
pub const CDP_LIMIT: Duration = Duration::from_secs(30);

/// `/usr/bin/chromium`, or `$WSPUSH_CHROMIUM` when set.
pub fn chromium_wanted() -> PathBuf {
    std::env::var_os("WSPUSH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub fn chromium_path() -> Option<PathBuf> {
    let p = chromium_wanted();
    p.exists().then_some(p)
}

/// Headless Chromium in its own process group, with a throwaway profile.
/// Dropping it kills the whole group and removes the profile.
pub struct Chromium {
    pub child: Child,
    pub profile: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub devtools: SocketAddr,
}

impl Chromium {
    pub fn start(path: &PathBuf, url: &str) -> Chromium {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let profile =
            std::env::temp_dir().join(format!("wspush-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("create Chromium profile dir");
        let mut child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
                if let Some(i) = line.find("DevTools listening on ws://") {
                    let rest = &line[i + "DevTools listening on ws://".len()..];
                    let host = rest.split('/').next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(host);
                    }
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let mut me = Chromium {
            child,
            profile,
            stderr: lines,
            devtools: "0.0.0.0:0".parse().unwrap(),
        };
        let host = match rx.recv_timeout(START_LIMIT) {
            Ok(h) => h,
            Err(_) => panic!(
                "Chromium did not print its DevTools address within {START_LIMIT:?}; stderr:\n{}",
                me.stderr_tail()
            ),
        };
        me.devtools = host
            .parse()
            .unwrap_or_else(|_| panic!("DevTools address {host:?}"));
        me
    }

    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr.lock().unwrap(), 40)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A plain HTTP/1.1 GET over a fresh TcpStream; the response body.
pub fn http_get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(CDP_LIMIT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // Read by Content-Length: Chromium's DevTools server keeps the
    // connection open despite `Connection: close`.
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).ok()?;
        out.extend_from_slice(&chunk[..n]);
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match len {
                Some(len) => out.len() >= end + 4 + len,
                None => n == 0,
            };
            if complete {
                if status_of(&head) != 200 {
                    return None;
                }
                let body = &out[end + 4..];
                let body = &body[..len.unwrap_or(body.len()).min(body.len())];
                return Some(String::from_utf8_lossy(body).into_owned());
            }
        }
        if n == 0 {
            return None;
        }
    }
}

/// One CDP session with a page target.
pub struct Cdp {
    pub ws: WebSocket<TcpStream>,
    pub next_id: u64,
    /// `Runtime.exceptionThrown` events: uncaught errors in the page.
    pub exceptions: Vec<Value>,
}

impl Cdp {
    /// Find the page target showing `url_prefix` and attach to it.
    pub fn attach(chromium: &Chromium, url_prefix: &str) -> Cdp {
        let deadline = Instant::now() + START_LIMIT;
        let ws_url = loop {
            let found = http_get_body(chromium.devtools, "/json/list")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .and_then(|targets| {
                    targets.as_array()?.iter().find_map(|t| {
                        let is_page = t["type"] == "page";
                        let url = t["url"].as_str().unwrap_or("");
                        (is_page && url.starts_with(url_prefix))
                            .then(|| t["webSocketDebuggerUrl"].as_str().map(String::from))
                            .flatten()
                    })
                });
            if let Some(u) = found {
                break u;
            }
            assert!(
                Instant::now() < deadline,
                "no Chromium page target for {url_prefix} within {START_LIMIT:?}; stderr:\n{}",
                chromium.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(chromium.devtools).expect("connect to DevTools");
        stream.set_read_timeout(Some(CDP_LIMIT)).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools handshake");
        let mut cdp = Cdp {
            ws,
            next_id: 1,
            exceptions: Vec::new(),
        };
        // Report uncaught exceptions (including earlier ones) as events.
        cdp.call("Runtime.enable", json!({}));
        cdp
    }

    /// Call a CDP method and return its `result` (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send CDP command");
        loop {
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("no CDP answer to {method}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("CDP message is JSON");
            if v["method"] == "Runtime.exceptionThrown" {
                self.exceptions
                    .push(v["params"]["exceptionDetails"].clone());
            }
            if v["id"] != json!(id) {
                continue; // an event, or an answer to something else
            }
            if let Some(err) = v.get("error") {
                panic!("CDP {method} failed: {err}");
            }
            return v["result"].clone();
        }
    }

    /// Evaluate a JavaScript expression in the page; its value (by value).
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }
}

/// Everything the failure messages need.
pub struct Env<'a> {
    pub cdp: Cdp,
    pub chromium: &'a Chromium,
    pub daemon: &'a Daemon,
}

impl Env<'_> {
    pub fn diagnostics(&mut self) -> String {
        let state = self.cdp.eval(
            "JSON.stringify({status: document.getElementById('status')?.textContent, \
             conn: document.getElementById('conn-id')?.textContent, \
             subs: document.getElementById('subscriptions')?.innerText, \
             events: document.getElementById('events')?.innerText, \
             log: document.getElementById('log')?.innerText})",
        );
        format!(
            "page: {}\n--- chromium stderr ---\n{}\n--- daemon log ---\n{}",
            state.as_str().unwrap_or("?"),
            self.chromium.stderr_tail(),
            tail(&self.daemon.log.lock().unwrap(), 40)
        )
    }

    /// Poll `expr` until `ok` accepts its value; panic after [`PAGE_LIMIT`].
    pub fn wait_for(&mut self, what: &str, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PAGE_LIMIT;
        loop {
            let v = self.cdp.eval(expr);
            if ok(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let d = self.diagnostics();
                panic!("page never showed {what} within {PAGE_LIMIT:?} (last value: {v})\n{d}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn status(&mut self) -> Value {
        self.cdp
            .eval("document.getElementById('status')?.textContent ?? null")
    }

    /// The `.push` rows as `[channel cell, data cell]`, newest first.
    pub fn pushes(&mut self) -> Value {
        self.cdp.eval(
            "[...document.querySelectorAll('#log .push')].map(r => \
             [r.querySelector('.ch').textContent, r.querySelector('.data').textContent])",
        )
    }

    pub fn wait_push(&mut self, channel_label: &str, data: &str) {
        let expr = "[...document.querySelectorAll('#log .push')].map(r => \
             [r.querySelector('.ch').textContent, r.querySelector('.data').textContent])";
        self.wait_for(
            &format!("a push on {channel_label} with {data}"),
            expr,
            |v| {
                v.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r[0].as_str() == Some(channel_label) && r[1].as_str() == Some(data)
                    })
                })
            },
        );
    }

    /// Fill an input and submit its form the way a user would.
    pub fn fill_and_submit(&mut self, fields: &[(&str, &str)], button: &str) {
        let mut js = String::new();
        for (id, value) in fields {
            js.push_str(&format!(
                "document.getElementById({}).value = {};",
                json!(id),
                json!(value)
            ));
        }
        js.push_str(&format!(
            "document.getElementById({}).click(); true",
            json!(button)
        ));
        assert_eq!(self.cdp.eval(&js), json!(true));
    }

    pub fn conn_id(&mut self) -> String {
        self.cdp
            .eval("document.getElementById('conn-id').textContent")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn subscribed(&mut self) -> Value {
        self.cdp.eval(
            "[...document.querySelectorAll('#subscriptions li[data-channel]')]\
             .filter(li => !li.querySelector('.state')).map(li => li.dataset.channel).sort()",
        )
    }
}

/// `POST path` with a JSON body through the HTTP API (no key: loopback).
pub fn api_post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    api_answer(raw_exchange(addr, req.as_bytes()))
}

pub fn api_delete(addr: SocketAddr, path: &str) -> (u16, Value) {
    let req = format!("DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    api_answer(raw_exchange(addr, req.as_bytes()))
}

pub fn api_answer(resp: String) -> (u16, Value) {
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status_of(&resp), v)
}

/// The Chromium binary, or `None` when the test should skip: without it the
/// test passes after printing `SKIPPED` (when `announce`), unless
/// `WSPUSH_REQUIRE_CHROMIUM=1`, which makes a missing browser a failure.
pub fn chromium_or_skip(announce: bool) -> Option<PathBuf> {
    if let Some(p) = chromium_path() {
        return Some(p);
    }
    if std::env::var("WSPUSH_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!(
            "WSPUSH_REQUIRE_CHROMIUM=1 but {} is not installed (apt-get install chromium)",
            chromium_wanted().display()
        );
    }
    if announce {
        // Straight to fd 2: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: chromium not installed ({}); set WSPUSH_REQUIRE_CHROMIUM=1 to fail instead",
            chromium_wanted().display()
        );
    }
    None
}
