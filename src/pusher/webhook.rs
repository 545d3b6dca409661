//! Webhooks: `channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed` and `client_event`, POSTed in batches
//! (`{"time_ms":...,"events":[...]}`) to `--pusher-webhook`, signed with
//! `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 hex of the body
//! with the app's secret).
//!
//! Workers only enqueue (a bounded queue; when it is full the event is
//! dropped, counted and logged): one background thread batches, sends and
//! retries with backoff for a bounded time. A worker never waits on it.
//!
//! `https://` targets (feature `webhook-https`) are reached with rustls
//! (blocking, on that thread alone), verifying the receiver's certificate
//! and name against the system's root certificates (`rustls-native-certs`:
//! the OS store, or `SSL_CERT_FILE` / `SSL_CERT_DIR`) and the CAs of
//! `--pusher-webhook-ca`. A failure (an invalid certificate too) is logged
//! once per streak of failures and retried like any other.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::app::App;
use super::sign::hmac_hex;

/// Events waiting for the sender thread, at most.
const QUEUE: usize = 10_000;
/// Most events in one request.
const BATCH: usize = 100;
/// How long a batch is retried before it is dropped.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of one attempt.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where webhooks go: `http://host[:port][/path]` or `https://...`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// The `Host` header.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// With `https://`: how to speak TLS to it.
    #[cfg(feature = "webhook-https")]
    pub tls: Option<Tls>,
}

/// TLS to an `https://` target: the client settings (roots) and the name
/// its certificate must carry.
#[cfg(feature = "webhook-https")]
#[derive(Clone)]
pub struct Tls {
    /// The name verified (and sent as SNI when it is a DNS name).
    pub name: rustls::pki_types::ServerName<'static>,
    /// Root certificates and protocol versions.
    pub config: Arc<rustls::ClientConfig>,
}

#[cfg(feature = "webhook-https")]
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parse an `http://` or `https://` URL; `extra_ca` is a PEM file of
    /// CA certificates trusted for https besides the system's roots (it is
    /// refused with http://, where it could only be a mistake).
    pub fn parse(url: &str, extra_ca: Option<&Path>) -> Result<Target, String> {
        let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(format!(
                "--pusher-webhook {url:?}: only http:// and https:// URLs are supported"
            ));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hostport.is_empty() || hostport.contains('@') || url.chars().any(|c| c.is_whitespace()) {
            return Err(format!("--pusher-webhook {url:?}: not a usable URL"));
        }
        let port = hostport
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok());
        let authority = if port.is_some() {
            hostport.to_string()
        } else {
            format!("{hostport}:{}", if https { 443 } else { 80 })
        };
        if !https {
            if extra_ca.is_some() {
                return Err(format!(
                    "--pusher-webhook-ca is for https:// webhooks, and {url:?} is http://"
                ));
            }
            return Ok(Target {
                authority,
                host: hostport.to_string(),
                path: path.to_string(),
                #[cfg(feature = "webhook-https")]
                tls: None,
            });
        }
        #[cfg(feature = "webhook-https")]
        {
            let name = port.map_or(hostport, |(h, _)| h);
            let name = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(name);
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| format!("--pusher-webhook {url:?}: host {name:?}: {e}"))?;
            Ok(Target {
                authority,
                host: hostport.to_string(),
                path: path.to_string(),
                tls: Some(Tls {
                    name,
                    config: client_config(extra_ca)?,
                }),
            })
        }
        #[cfg(not(feature = "webhook-https"))]
        {
            let _ = extra_ca;
            Err(format!(
                "--pusher-webhook {url:?}: https:// needs the webhook-https feature"
            ))
        }
    }
}

/// The TLS client settings for https:// webhooks: the system's root
/// certificates plus those in `extra_ca` (PEM); the `ring` provider.
#[cfg(feature = "webhook-https")]
fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _) = roots.add_parsable_certificates(native.certs);
    if let Some(e) = native.errors.first() {
        log::warn!("pusher webhooks: reading the system's root certificates: {e}");
    }
    if let Some(path) = extra_ca {
        let bad =
            |e: &dyn std::fmt::Display| format!("--pusher-webhook-ca {}: {e}", path.display());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no CERTIFICATE in the file"));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| bad(&format!("not a usable CA certificate: {e}")))?;
        }
    } else if system == 0 {
        return Err(
            "--pusher-webhook https://...: no root certificates found on this system \
             (install the CA bundle, set SSL_CERT_FILE, or give --pusher-webhook-ca)"
                .into(),
        );
    }
    log::debug!("pusher webhooks: {system} system root certificates");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

struct Event {
    app: Arc<App>,
    json: String,
}

/// The webhook sender: a queue and its thread.
#[derive(Debug)]
pub struct Webhooks {
    tx: Sender<Event>,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Batches delivered (2xx).
    pub delivered: AtomicU64,
    /// Batches given up after retrying.
    pub failed: AtomicU64,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.json)
    }
}

impl Webhooks {
    /// Start the sender thread for `target`.
    pub fn start(target: Target) -> Arc<Webhooks> {
        let (tx, rx) = bounded(QUEUE);
        let hooks = Arc::new(Webhooks {
            tx,
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let h2 = hooks.clone();
        std::thread::Builder::new()
            .name("pusher-webhooks".into())
            .spawn(move || run(target, rx, &h2))
            .expect("spawn the webhook thread");
        hooks
    }

    /// Queue one event (a JSON object with `name`) of `app`.
    pub fn emit(&self, app: &Arc<App>, json: String) {
        match self.tx.try_send(Event {
            app: app.clone(),
            json,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    log::warn!("pusher webhooks: queue full, {} events dropped", n + 1);
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn run(target: Target, rx: Receiver<Event>, hooks: &Webhooks) {
    // Whether the last attempt failed: a failure is logged at warn once
    // per streak, the next ones at debug.
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut events = vec![first];
        // Gather what arrives within a moment into the same batch.
        let until = Instant::now() + Duration::from_millis(20);
        while events.len() < BATCH {
            match rx.recv_deadline(until) {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        // One request per app (each is signed with its own secret).
        while !events.is_empty() {
            let app = events[0].app.clone();
            let (mine, rest): (Vec<Event>, Vec<Event>) =
                events.into_iter().partition(|e| Arc::ptr_eq(&e.app, &app));
            events = rest;
            let time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let list: Vec<&str> = mine.iter().map(|e| e.json.as_str()).collect();
            let body = format!("{{\"time_ms\":{time_ms},\"events\":[{}]}}", list.join(","));
            let signature = hmac_hex(&app.secret, body.as_bytes());
            deliver(&target, &app.key, &signature, &body, hooks, &mut failing);
        }
    }
}

fn deliver(
    target: &Target,
    key: &str,
    signature: &str,
    body: &str,
    hooks: &Webhooks,
    failing: &mut bool,
) {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let why = match post(target, key, signature, body) {
            Ok(status) if (200..300).contains(&status) => {
                hooks.delivered.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(failing) {
                    log::info!("pusher webhook to {}: delivered again", target.host);
                }
                return;
            }
            Ok(status) => format!("HTTP {status}"),
            Err(e) => e.to_string(),
        };
        if std::mem::replace(failing, true) {
            log::debug!("pusher webhook to {}: {why}", target.host);
        } else {
            log::warn!(
                "pusher webhook to {}: {why} (retrying; further failures are logged at debug until one succeeds)",
                target.host
            );
        }
        if start.elapsed() + delay > RETRY_FOR {
            log::warn!(
                "pusher webhook to {}: giving up on a batch after {:?}",
                target.host,
                start.elapsed()
            );
            hooks.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(8));
    }
}

/// One HTTP/1.1 POST (over TLS for https); the response's status.
fn post(target: &Target, key: &str, signature: &str, body: &str) -> std::io::Result<u16> {
    let addr = target
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-Pusher-Key: {key}\r\nX-Pusher-Signature: {signature}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.path,
        target.host,
        body.len()
    );
    #[cfg(feature = "webhook-https")]
    if let Some(tls) = &target.tls {
        let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
            .map_err(std::io::Error::other)?;
        return exchange(rustls::StreamOwned::new(conn, s), &req);
    }
    exchange(s, &req)
}

/// Send `req`, read the status line of the answer.
fn exchange(mut s: impl Read + Write, req: &str) -> std::io::Result<u16> {
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() > 4096 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/hooks?x=1", None).unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/hooks?x=1");
        assert_eq!(
            Target::parse("http://example.com", None).unwrap().authority,
            "example.com:80"
        );
        assert!(Target::parse("ftp://example.com", None).is_err());
        assert!(Target::parse("http://", None).is_err());
        assert!(Target::parse("https://", None).is_err());
        assert!(Target::parse("http://u@example.com/", None).is_err());
        let err = Target::parse("http://x/", Some(Path::new("ca.pem"))).unwrap_err();
        assert!(err.contains("is for https://"), "{err}");
    }

    #[cfg(feature = "webhook-https")]
    #[test]
    fn https_targets() {
        use rustls::pki_types::ServerName;
        // Whether or not this machine has root certificates: with none, the
        // refusal says so.
        let t = match Target::parse("https://example.com/h", None) {
            Ok(t) => t,
            Err(e) => return assert!(e.contains("no root certificates"), "{e}"),
        };
        assert_eq!(t.authority, "example.com:443");
        assert_eq!((t.host.as_str(), t.path.as_str()), ("example.com", "/h"));
        let name = &t.tls.as_ref().unwrap().name;
        assert_eq!(name, &ServerName::try_from("example.com").unwrap());
        let t = Target::parse("https://127.0.0.1:8443", None).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8443", "/")
        );
        let name = &t.tls.as_ref().unwrap().name;
        assert_eq!(name, &ServerName::try_from("127.0.0.1").unwrap());
        let t = Target::parse("https://[::1]:8443/x", None).unwrap();
        assert_eq!(t.authority, "[::1]:8443");
        let name = &t.tls.as_ref().unwrap().name;
        assert_eq!(name, &ServerName::try_from("::1").unwrap());
        let t = Target::parse("https://[::1]/x", None).unwrap();
        assert_eq!(t.authority, "[::1]:443");
    }

    #[cfg(feature = "webhook-https")]
    #[test]
    fn bad_ca_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("wspush-hook-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let none = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, needle) in [(&none, "missing.pem: "), (&empty, "no CERTIFICATE")] {
            let err = Target::parse("https://127.0.0.1:1/", Some(path)).unwrap_err();
            assert!(err.starts_with("--pusher-webhook-ca "), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
