//! Helpers shared by the server integration tests: run the real `wspush`
//! binary on a free port, connect with tungstenite or raw sockets.
#![allow(dead_code)]

pub mod push;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;
use wspush::protocol::{encode, Decoder, DecoderConfig, Message, OpCode, Role};

/// Generous bound on any single blocking read in the tests (never a timing assertion).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Resident memory of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Raise the soft open-files limit to the hard limit (tests open thousands of sockets).
pub fn raise_fd_limit() {
    wspush::daemon::raise_open_files_limit();
}

/// The daemon running as a child process.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Poll `cond` until it holds or `limit` has passed; whether it held. For
/// anything that happens asynchronously (a log line, a counter published
/// once per loop turn, a peer's close): never look just once.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `wspush <args>` with extra environment variables, expecting it to
/// exit by itself (a refusal at start, `--help`, a subcommand); its status
/// and stderr (plus stdout). A daemon that starts instead is killed after
/// [`IO_TIMEOUT`] and the status is `None`.
pub fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<std::process::ExitStatus>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wspush"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("WSPUSH_JWT_SECRET")
        .env_remove("WSPUSH_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn wspush");
    let mut status = None;
    if wait_until(IO_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))) {
        status = child.try_wait().ok().flatten();
    } else {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wspush output");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (status, text)
}

impl Daemon {
    /// Start `wspush --listen 127.0.0.1:0 <args>` and wait for its start line.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_on("127.0.0.1:0", args)
    }

    /// Start `wspush --listen <listen> <args>` and wait for its start line.
    pub fn start_on(listen: &str, args: &[&str]) -> Daemon {
        Daemon::start_env(listen, args, &[])
    }

    /// Start `wspush --listen <listen> <args>` with extra environment
    /// variables and wait for its start line.
    pub fn start_env(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        raise_fd_limit();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wspush"));
        cmd.arg("--listen")
            .arg(listen)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wspush");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on ") {
                    let rest = &line[i + "listening on ".len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(IO_TIMEOUT).expect("wspush start line");
        Daemon {
            child,
            addr: addr.parse().expect("address in start line"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Wait (at most [`IO_TIMEOUT`]) for a log line containing `needle`:
    /// the daemon logs from its own threads, after the client saw the effect.
    pub fn wait_logged(&self, needle: &str) -> bool {
        wait_until(IO_TIMEOUT, || self.logged(needle))
    }

    /// The daemon's log so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tungstenite client over a plain TCP stream.
pub fn ws(d: &Daemon, path: &str) -> WebSocket<TcpStream> {
    ws_at(d.addr, path)
}

/// A tungstenite client of the server at `addr` (usable from any thread).
pub fn ws_at(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next message from a tungstenite client. A read interrupted by a
/// signal is retried: a socket with a receive timeout (all of ours) fails
/// with EINTR on any caught signal, even one installed with SA_RESTART, and
/// when the process is stopped and continued (man 7 signal).
#[allow(clippy::result_large_err)] // tungstenite's own error type, as `read` returns it
pub fn read_msg(ws: &mut WebSocket<TcpStream>) -> Result<tungstenite::Message, tungstenite::Error> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Send raw bytes, read the answer: everything until the server closes,
/// or just the head of a `101` (the connection then stays open).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            if head.starts_with("http/1.1 101") {
                break;
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| out.len() >= end + 4 + len) {
                break; // complete even if the server keeps the connection alive
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of an HTTP response text.
pub fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A typical upgrade request for `path`.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw upgraded connection, speaking frames through our own codec.
pub struct RawWs {
    pub stream: TcpStream,
    dec: Decoder,
    cfg: DecoderConfig,
    buf: Vec<u8>,
    start: usize,
}

impl RawWs {
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        Self::connect_raw(addr, upgrade_request(path, "").as_bytes())
    }

    /// Upgrade over an already connected stream.
    pub fn from_stream(mut stream: TcpStream, path: &str) -> RawWs {
        stream
            .write_all(upgrade_request(path, "").as_bytes())
            .unwrap();
        Self::finish(stream)
    }

    /// Send `bytes` (an upgrade request, possibly followed by frames) and read the 101.
    pub fn connect_raw(addr: SocketAddr, bytes: &[u8]) -> RawWs {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(bytes).unwrap();
        Self::finish(stream)
    }

    fn finish(mut stream: TcpStream) -> RawWs {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut b).unwrap(), 1, "EOF during handshake");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut cfg = DecoderConfig::for_role(Role::Client);
        cfg.max_frame_size = 64 << 20;
        cfg.max_message_size = 64 << 20;
        RawWs {
            stream,
            dec: Decoder::new(),
            cfg,
            buf: Vec::new(),
            start: 0,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, op: OpCode, payload: &[u8], fin: bool) {
        let mut v = Vec::new();
        encode::masked_frame_into(&mut v, fin, op, payload, [0x11, 0x22, 0x33, 0x44]);
        self.send_raw(&v);
    }

    /// The next message as (opcode, payload); `None` at EOF.
    pub fn next(&mut self) -> Option<(OpCode, Vec<u8>)> {
        loop {
            if self.start < self.buf.len() {
                let d = self
                    .dec
                    .decode(&self.cfg, &mut self.buf[self.start..])
                    .expect("server frame");
                self.start += d.consumed;
                if let Some(m) = d.message {
                    return Some(match m {
                        Message::Text(t) => (OpCode::Text, t.as_bytes().to_vec()),
                        Message::Binary(b) => (OpCode::Binary, b.to_vec()),
                        Message::Ping(p) => (OpCode::Ping, p.to_vec()),
                        Message::Pong(p) => (OpCode::Pong, p.to_vec()),
                        Message::Close(c) => {
                            let mut p = Vec::new();
                            if let Some(c) = c {
                                p.extend_from_slice(&c.code.to_be_bytes());
                                p.extend_from_slice(c.reason.as_bytes());
                            }
                            (OpCode::Close, p)
                        }
                    });
                }
                continue;
            }
            self.buf.clear();
            self.start = 0;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read until a close frame; its code (`None`: EOF without one, or an empty close).
    pub fn close_code(&mut self) -> Option<u16> {
        while let Some((op, p)) = self.next() {
            if op == OpCode::Close {
                return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            }
        }
        None
    }

    /// Whether the server closed the TCP connection (EOF or reset) next.
    pub fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it, as PEM
/// files in `dir` (`cert.pem`, `key.pem`, and the CA's `ca.pem`); returns
/// the CA certificate (DER).
#[cfg(feature = "tls")]
pub fn make_pki(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    ca_cert.der().clone()
}
