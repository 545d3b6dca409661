//! `wsload push` against the real wspush push service at small counts:
//! every subscriber of the channel gets every publication once and in order,
//! every publish answer names all subscribers as recipients, and a refused
//! publish is counted as an error.
//!
//! Nothing here asserts a timing figure; only counts.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// target/<profile>/wspush, next to the directory of this test executable.
fn wspush_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("wspush");
    assert!(
        bin.exists(),
        "the wspush server binary is missing at {}: build it first with `cargo build --release -p wspush` \
         (or run `cargo test --release --workspace`, which builds every workspace binary)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(workers: u32, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(wspush_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                &workers.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wspush");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "wspush did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run wsload with `args` + `--json -q`; returns (exit code, summary).
fn wsload(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsload"))
        .args(args)
        .args(["--json", "-q"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run wsload");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("wsload output is not JSON ({e}): {text}"));
    (out.status.code().unwrap_or(-1), v)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no integer {k} in {v:#}"))
}

/// Zero loss; every subscriber got every seq once, in order, seq rising by
/// one per publication; every answer said recipients = subscribers.
/// With `--procs K`, each process sees its own last subscriber: K fan-out
/// samples per publication.
fn assert_clean(v: &Value, subs: u64, procs: u64) {
    let published = u(v, "published");
    assert_eq!(u(v, "opened"), subs, "{v:#}");
    assert_eq!(u(v, "subscribers"), subs, "{v:#}");
    assert_eq!(u(v, "deliveries"), published * subs, "{v:#}");
    assert_eq!(u(v, "expected_deliveries"), published * subs);
    assert_eq!(
        u(v, "fanout_samples"),
        published * procs,
        "every publication reached its last subscriber: {v:#}"
    );
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "mismatched",
        "recipients_mismatched",
        "failed",
        "errors",
    ] {
        assert_eq!(u(v, k), 0, "{k}: {v:#}");
    }
}

#[test]
fn push_at_a_fixed_rate_reaches_every_subscriber_once_in_order() {
    let s = Server::start(1, &[]);
    // 400/s for 0.5 s: publications at go + 0, 2.5 ms, ... 497.5 ms.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url(),
        "-c",
        "50",
        "--rate",
        "400",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "published"), 200, "{v:#}");
    assert_clean(&v, 50, 1);
    // The channel's seq goes on from 200; a second run checks against it.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url(),
        "-c",
        "50",
        "--rate",
        "400",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_clean(&v, 50, 1);
}

#[test]
fn push_with_a_window_over_threads_processes_and_workers() {
    let s = Server::start(2, &[]);
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url(),
        "--channel",
        "news.eu-1",
        "-c",
        "40",
        "--window",
        "4",
        "-d",
        "0.5",
        "--threads",
        "2",
        "--procs",
        "2",
        "--sources",
        "3",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert!(u(&v, "published") >= 4, "{v:#}");
    assert_clean(&v, 40, 2);
}

#[test]
fn push_with_an_api_key_and_refused_publishes() {
    let s = Server::start(1, &["--api-key", "sekrit"]);
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url(),
        "-c",
        "10",
        "--rate",
        "100",
        "-d",
        "0.3",
        "--api-key",
        "sekrit",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "published"), 30, "{v:#}");
    assert_clean(&v, 10, 1);
    // A wrong key: every publish refused with 401, nothing delivered, and
    // the run fails.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url(),
        "-c",
        "10",
        "--rate",
        "100",
        "-d",
        "0.3",
        "--api-key",
        "wrong",
        "--drain",
        "0.5",
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(u(&v, "published"), 30, "{v:#}");
    assert_eq!(
        v["failures"]["publish: http 401"].as_u64(),
        Some(30),
        "{v:#}"
    );
    assert_eq!(u(&v, "deliveries"), 0, "{v:#}");
    assert_eq!(u(&v, "lost"), 300, "{v:#}");
}
