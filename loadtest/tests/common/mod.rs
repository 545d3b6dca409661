//! Helpers shared by wsload's integration tests: the real wspush server as
//! a child process, wsload run with `--json` and checks of its summary, and
//! the upgrade answer of the tests' fake servers.
#![allow(dead_code)]

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wspush::protocol::handshake::accept_key;

/// target/<profile>/wspush, next to the directory of this test executable.
pub fn wspush_bin() -> PathBuf {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(workers: u32, extra: &[&str]) -> Server {
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

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run wsload with `args` + `--json -q`; returns (exit code, summary).
pub fn wsload(args: &[&str]) -> (i32, Value) {
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

pub fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no integer {k} in {v:#}"))
}

/// Every one of `keys` is 0 in the summary `v`.
pub fn assert_zero(v: &Value, keys: &[&str]) {
    for k in keys {
        assert_eq!(u(v, k), 0, "{k}: {v:#}");
    }
}

/// Accept the WebSocket upgrade request whose head is `head`: write the
/// 101 answer with its `Sec-WebSocket-Accept`.
pub fn switch_protocols(s: &mut impl Write, head: &str) -> io::Result<()> {
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("Sec-WebSocket-Key")
        .trim();
    let accept = accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        std::str::from_utf8(&accept).unwrap()
    )
}
