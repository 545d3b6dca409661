//! The `wspush` daemon: command-line flags, the built-in endpoints, signal
//! handling and the graceful drain.

pub mod routes;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::protocol::HandshakeConfig;
use crate::server::{Config, Handle, Server};

/// Command-line flags of the `wspush` daemon.
#[derive(Debug, Clone, Parser)]
#[command(name = "wspush", version, about = "WebSocket real-time push server")]
pub struct Args {
    /// Address to listen on (HTTP and WebSocket on the same port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Worker threads, each with its own event loop and SO_REUSEPORT listener
    /// [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most simultaneous connections; beyond it new ones get HTTP 503.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Largest message (and frame) a client may send, in bytes; larger
    /// messages are answered with close code 1009.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message_size: usize,
    /// Unsent bytes a connection may have queued (behind the message being
    /// written) before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_buffered: usize,
    /// Time a client has to send its complete upgrade request, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Allowed `Origin` (repeatable; exact match, e.g. `https://example.com`).
    /// Without any, every origin is accepted. Requests without `Origin`
    /// (non-browser clients) are not refused by this list.
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// Supported subprotocol (repeatable), most preferred first; the first one
    /// the client also offers is chosen.
    #[arg(long = "protocol")]
    pub protocols: Vec<String>,
    /// On SIGINT/SIGTERM: how long to wait for clients to answer close 1001
    /// before exiting, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Parse `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    /// The server configuration these flags describe.
    pub fn config(&self) -> Config {
        Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(0),
            max_connections: self.max_connections,
            max_message_size: self.max_message_size,
            max_buffered: self.max_buffered,
            handshake_timeout: self.handshake_timeout,
            drain_timeout: self.drain_timeout,
            handshake: HandshakeConfig {
                protocols: self.protocols.clone(),
                origins: self.origins.clone(),
            },
            ..Config::default()
        }
    }
}

/// Block SIGINT and SIGTERM in this thread (and the threads it starts
/// later) and return a thread that waits for them and begins the drain.
fn watch_signals(handle: Handle) -> io::Result<()> {
    // SAFETY: plain libc calls on a local, zero-initialised signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    std::thread::Builder::new()
        .name("wspush-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                continue;
            }
            if handle.is_shutting_down() {
                log::warn!("signal {sig} again: still draining");
            } else {
                log::info!("signal {sig}: shutting down (closing clients with 1001)");
                handle.shutdown();
            }
        })?;
    Ok(())
}

/// Run the daemon until a signal ends the drain.
pub fn run(args: Args) -> io::Result<()> {
    // Signals must be blocked before the worker threads exist.
    let cfg = args.config();
    let server = Server::builder()
        .config(cfg.clone())
        .build(|_, _| routes::Routes)?;
    watch_signals(server.handle())?;
    let workers = server.handle().workers();
    log::info!(
        "wspush listening on {} ({} workers); max-connections {}, max-message-size {} B, max-buffered {} B, handshake-timeout {:?}, drain-timeout {:?}, protocols {:?}, origins {}",
        server.local_addr(),
        workers,
        cfg.max_connections,
        cfg.max_message_size,
        cfg.max_buffered,
        cfg.handshake_timeout,
        cfg.drain_timeout,
        cfg.handshake.protocols,
        if cfg.handshake.origins.is_empty() { "any".to_string() } else { cfg.handshake.origins.join(",") },
    );
    let handle = server.handle();
    server.run()?;
    let st = handle.stats();
    log::info!(
        "wspush stopped after {:.1}s: {} connections accepted, {} messages in, {} out",
        st.uptime_secs,
        st.get("accepted_total").unwrap_or(0),
        st.get("messages_in_total").unwrap_or(0),
        st.get("messages_out_total").unwrap_or(0)
    );
    Ok(())
}
