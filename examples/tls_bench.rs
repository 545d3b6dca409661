//! TLS cost, measured against the daemon: handshakes (TCP + TLS + upgrade +
//! close) and echo of 20-byte messages, over `wss://` and `ws://`, with the
//! server's CPU per unit read from `/proc/PID/stat`.
//!
//!     cargo build --release && cargo run --release --example tls_bench [SECONDS]
//!
//! Starts `target/release/wspush --workers 1` twice (with and without
//! `--tls-cert`) on free loopback ports, with a certificate from a CA it
//! makes (rcgen); one client thread per case, so the figures compare server
//! CPU per unit, not rates.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new("target/release/wspush")
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("target/release/wspush (cargo build --release first)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("start line").unwrap();
        if let Some(i) = l.find("listening on ") {
            break l[i + 13..].split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn connect(addr: &str, tls: Option<&Arc<ClientConfig>>) -> tungstenite::WebSocket<Stream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    let stream = match tls {
        Some(cfg) => {
            let conn =
                ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                    .unwrap();
            Stream::Tls(Box::new(StreamOwned::new(conn, sock)))
        }
        None => Stream::Plain(sock),
    };
    tungstenite::client("ws://localhost/echo", stream)
        .unwrap()
        .0
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("wspush-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("cert.pem"),
        leaf.signed_by(&leaf_key, &issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tick_us = 1e6 / 100.0; // USER_HZ
    println!("| case | server | units | units/s | server CPU µs/unit |");
    println!("|---|---|---|---|---|");
    for (name, tls) in [("ws://", None), ("wss://", Some(&client))] {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let args: Vec<&str> = match tls {
            Some(_) => vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            None => vec![],
        };
        let (mut child, addr) = start(&args);
        let pid = child.id();
        // Handshakes: connect, (TLS,) upgrade, close, one after another.
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            let mut ws = connect(&addr, tls);
            let _ = ws.close(None);
            let _ = ws.flush();
            n += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - c0) as f64 * tick_us;
        println!(
            "| handshake | {name} | {n} | {:.0} | {:.1} |",
            n as f64 / el,
            cpu / n as f64
        );
        // Echo: 20-byte messages, 10 connections, one in flight each.
        let mut conns: Vec<_> = (0..10).map(|_| connect(&addr, tls)).collect();
        let msg = "x".repeat(20);
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            for ws in conns.iter_mut() {
                ws.send(Message::Text(msg.clone())).unwrap();
            }
            for ws in conns.iter_mut() {
                let _ = ws.read().unwrap();
            }
            n += conns.len() as u64;
        }
        let el = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - c0) as f64 * tick_us;
        println!(
            "| echo 10 × 20 B | {name} | {n} | {:.0} | {:.2} |",
            n as f64 / el,
            cpu / n as f64
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
