//! Server configuration: every limit and timeout, with its default.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::broker::history::HistoryConfig;
use crate::protocol::deflate::DeflateConfig;
use crate::protocol::{HandshakeConfig, HttpLimits};

/// Limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address. Default `127.0.0.1:9001`.
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per CPU. Default 0.
    pub workers: usize,
    /// Most simultaneous connections (all workers); beyond it new
    /// connections get HTTP 503. Default 100,000.
    pub max_connections: usize,
    /// Largest message (and frame) a client may send; larger → close 1009.
    /// Default 1 MiB (a push server's clients send control messages and
    /// publications; see also `max_pending_bytes`).
    pub max_message_size: usize,
    /// Unsent bytes a connection may have queued behind the message being
    /// written; more makes it a slow consumer, which is closed. Default 1 MiB.
    pub max_buffered: usize,
    /// Time a connection may take to send a complete request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time to wait for the peer's close frame after ours. Default 5 s.
    pub close_timeout: Duration,
    /// Time to let clients go after shutdown begins. Default 10 s.
    pub drain_timeout: Duration,
    /// Send a protocol ping to a connection that has been silent this long.
    /// `None` disables pings. Default 25 s.
    pub ping_interval: Option<Duration>,
    /// Close a connection that has sent nothing (not even a pong) for this
    /// long; this also reaps peers that vanished without a FIN. `None`
    /// disables it. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// Subprotocols and origin allowlist for the upgrade.
    pub handshake: HandshakeConfig,
    /// HTTP request limits (head size, header count, body size).
    pub http: HttpLimits,
    /// Give each worker its own SO_REUSEPORT listener (default). When false,
    /// or when the platform refuses it, worker 0 accepts for all workers.
    pub reuse_port: bool,
    /// Let another process's SO_REUSEPORT listeners share the address (a
    /// deliberate zero-downtime handover: the new server joins the old one's
    /// group, then the old one drains). Default false: if another socket
    /// already listens on the address, building the server fails with
    /// "address in use", whatever the number of workers.
    pub share_port: bool,
    /// Listen backlog. Default 4096.
    pub backlog: i32,
    /// Size of each worker's read buffer (one per worker, not per
    /// connection). Default 256 KiB, so 64 KiB frames arrive whole.
    pub read_buffer: usize,
    /// Per-channel history kept by the broker (for resume).
    pub history: HistoryConfig,
    /// Join other nodes through Redis (`None`: the in-process broker).
    #[cfg(feature = "redis")]
    pub redis: Option<crate::broker::redis::RedisConfig>,
    /// Bytes all connections together may hold in partially received
    /// messages and request bodies; a reception that would pass it is
    /// refused (close 1009, or HTTP 503). Default 256 MiB.
    pub max_pending_bytes: usize,
    /// Plain HTTP connections (API calls, health checks) still served when
    /// `max_connections` is reached. Default 64.
    pub http_reserve: usize,
    /// Serve TLS (`wss://`, `https://`) on the listener. Default none.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<super::tls::TlsAcceptor>>,
    /// permessage-deflate (RFC 7692): mode and size threshold. Default
    /// shared, 64 bytes (off without the `deflate` feature).
    pub compression: DeflateConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9001)),
            workers: 0,
            max_connections: 100_000,
            max_message_size: 1 << 20,
            max_buffered: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(25)),
            idle_timeout: Some(Duration::from_secs(60)),
            handshake: HandshakeConfig::default(),
            http: HttpLimits::default(),
            reuse_port: true,
            share_port: false,
            backlog: 4096,
            read_buffer: 256 << 10,
            history: HistoryConfig::default(),
            #[cfg(feature = "redis")]
            redis: None,
            max_pending_bytes: 256 << 20,
            http_reserve: 64,
            #[cfg(feature = "tls")]
            tls: None,
            compression: DeflateConfig::default(),
        }
    }
}
