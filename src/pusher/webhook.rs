//! Webhooks: `channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed` and `client_event`, POSTed in batches
//! (`{"time_ms":...,"events":[...]}`) to `--pusher-webhook`, signed with
//! `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 hex of the body
//! with the app's secret).
//!
//! Workers only enqueue (a bounded queue; when it is full the event is
//! dropped, counted and logged): one background thread batches, sends and
//! retries with backoff for a bounded time. A worker never waits on it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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

/// Where webhooks go: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// The `Host` header.
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parse an `http://` URL (https is not supported: put a local relay or
    /// the receiver on http).
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "--pusher-webhook {url:?}: only http:// URLs are supported"
            ));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hostport.is_empty() || hostport.contains('@') || url.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "--pusher-webhook {url:?}: not a usable http:// URL"
            ));
        }
        let authority = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Target {
            authority,
            host: hostport.to_string(),
            path: path.to_string(),
        })
    }
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
            deliver(&target, &app.key, &signature, &body, hooks);
        }
    }
}

fn deliver(target: &Target, key: &str, signature: &str, body: &str, hooks: &Webhooks) {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match post(target, key, signature, body) {
            Ok(status) if (200..300).contains(&status) => {
                hooks.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(status) => log::warn!("pusher webhook to {}: HTTP {status}", target.host),
            Err(e) => log::warn!("pusher webhook to {}: {e}", target.host),
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

/// One HTTP/1.1 POST; the response's status.
fn post(target: &Target, key: &str, signature: &str, body: &str) -> std::io::Result<u16> {
    let addr = target
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
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
    s.write_all(req.as_bytes())?;
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
        let t = Target::parse("http://127.0.0.1:8080/hooks?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/hooks?x=1");
        assert_eq!(
            Target::parse("http://example.com").unwrap().authority,
            "example.com:80"
        );
        assert!(Target::parse("https://example.com").is_err());
        assert!(Target::parse("http://").is_err());
    }
}
