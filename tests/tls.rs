//! TLS (`wss://`, `https://`) through the real binary, with clients that
//! verify the server's certificate against a CA the test makes (rcgen).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message as TMsg;

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wspush-tls-{}-{name}", std::process::id()))
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A verified TLS connection to the daemon (handshake completed).
fn tls_connect(addr: SocketAddr, ca: &CertificateDer<'static>) -> std::io::Result<Tls> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    let conn = ClientConnection::new(
        client_config(ca),
        ServerName::try_from("localhost").unwrap(),
    )
    .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

fn wss(addr: SocketAddr, ca: &CertificateDer<'static>, path: &str) -> tungstenite::WebSocket<Tls> {
    let s = tls_connect(addr, ca).expect("TLS handshake");
    let (ws, resp) = tungstenite::client(format!("wss://localhost{path}"), s).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn start_tls(dir: &Path, extra: &[&str]) -> Daemon {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&refs)
}

#[test]
fn wss_echo_broadcast_and_https_on_one_listener() {
    let dir = temp_dir("basic");
    let ca = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "2"]);
    // ALPN http/1.1, a verified certificate, echo.
    let mut e = wss(d.addr, &ca, "/echo");
    assert_eq!(e.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for i in 0..100 {
        let m = format!("hello {i} {}", "x".repeat(i * 100));
        e.send(TMsg::Text(m.clone())).unwrap();
        assert_eq!(e.read().unwrap().into_text().unwrap(), m);
    }
    // Broadcast (the chat room) to several TLS clients.
    let mut room: Vec<_> = (0..5).map(|_| wss(d.addr, &ca, "/broadcast")).collect();
    room[0].send(TMsg::Text("to all".into())).unwrap();
    for ws in room.iter_mut() {
        assert_eq!(ws.read().unwrap().into_text().unwrap(), "to all");
    }
    // https on the same port.
    let mut s = tls_connect(d.addr, &ca).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("ok\n"), "{out}");
}

#[test]
fn a_bad_client_hello_is_refused_and_others_are_served() {
    let dir = temp_dir("bad");
    let ca = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "1"]);
    // Plain HTTP to the TLS port: the server answers with an alert (or
    // nothing) and closes.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        !out.starts_with(b"HTTP/"),
        "a plaintext answer on a TLS port"
    );
    if let Some(&first) = out.first() {
        assert_eq!(first, 0x15, "a TLS alert record: {out:?}");
    }
    assert!(d.wait_logged("TLS"), "the refusal is logged");
    // A client that trusts another CA refuses the server's certificate.
    let other = make_pki(&temp_dir("other"));
    assert!(tls_connect(d.addr, &other).is_err());
    // Others are served.
    let mut e = wss(d.addr, &ca, "/echo");
    e.send(TMsg::Text("still".into())).unwrap();
    assert_eq!(e.read().unwrap().into_text().unwrap(), "still");
}

#[test]
fn a_client_stalling_mid_handshake_is_reaped_at_the_handshake_timeout() {
    let dir = temp_dir("stall");
    let _ca = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "1", "--handshake-timeout", "1s"]);
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The first bytes of a TLS record header, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let mut b = [0u8; 64];
    let t0 = std::time::Instant::now();
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(t0.elapsed() < IO_TIMEOUT);
    assert!(d.wait_logged("handshake timeout"));
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = temp_dir("reload");
    let ca1 = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "1"]);
    let mut old = wss(d.addr, &ca1, "/echo");
    let ca2 = make_pki(&dir);
    d.signal(libc::SIGHUP);
    assert!(d.wait_logged("SIGHUP: reloaded the TLS certificate"));
    assert!(
        tls_connect(d.addr, &ca1).is_err(),
        "the new certificate is served"
    );
    let mut e = wss(d.addr, &ca2, "/echo");
    e.send(TMsg::Text("new".into())).unwrap();
    assert_eq!(e.read().unwrap().into_text().unwrap(), "new");
    // The connection made under the old certificate goes on.
    old.send(TMsg::Text("old".into())).unwrap();
    assert_eq!(old.read().unwrap().into_text().unwrap(), "old");
    // A broken key file keeps the certificate in force.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_logged("TLS certificate not reloaded"));
    assert!(tls_connect(d.addr, &ca2).is_ok());
}

#[test]
fn idle_tls_connections_memory() {
    let dir = temp_dir("idle");
    let ca = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "1"]);
    let pid = d.child.id();
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(wss(d.addr, &ca, "/echo"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid);
    let n = 1000;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(wss(d.addr, &ca, "/echo"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let per = (rss_kib(pid).saturating_sub(before)) * 1024 / n;
    eprintln!(
        "idle TLS connection: {per} B of server RSS each ({n} connections); \
         rustls::ServerConnection itself is {} B",
        std::mem::size_of::<rustls::ServerConnection>()
    );
    assert!(per < 64 * 1024, "{per} B per idle TLS connection");
    drop(held);
    drop(warm);
}

#[test]
fn a_tls_client_over_the_connection_limit_reads_its_503() {
    let dir = temp_dir("limit");
    let ca = make_pki(&dir);
    let d = start_tls(&dir, &["--workers", "1", "--max-connections", "1"]);
    let _held = wss(d.addr, &ca, "/echo");
    // The reserve serves plain HTTP over the limit; an upgrade gets 503,
    // readable through TLS.
    let mut s = tls_connect(d.addr, &ca).unwrap();
    s.write_all(
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    // With the reserve full too, the refusal is queued at accept, before the
    // handshake: it still arrives, through TLS, once the handshake is done.
    let reserve: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    assert!(wait_until(IO_TIMEOUT, || {
        let mut s = match tls_connect(d.addr, &ca) {
            Ok(s) => s,
            Err(_) => return false,
        };
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 503") && out.contains("connection limit")
    }));
    drop(reserve);
}
