//! The `wspush` daemon: command-line flags, the built-in endpoints, signal
//! handling and the graceful drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::broker::history::HistoryConfig;
use crate::protocol::{HandshakeConfig, HttpLimits};
use crate::push::channel::Pattern;
use crate::push::{auth, PushConfig, PushService, Secrets, Shared};
use crate::server::tls::TlsAcceptor;
use crate::server::{Config, Handle, Server};

/// Command-line flags of the `wspush` daemon.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wspush",
    version,
    about = "WebSocket real-time push server",
    after_help = "Every flag can also be set with the environment variable shown beside it \
                  (WSPUSH_ and the flag in upper case); a flag on the command line wins."
)]
pub struct Args {
    /// `token`: mint a client token instead of running the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on (HTTP and WebSocket on the same port).
    #[arg(long, default_value = "127.0.0.1:9001", env = "WSPUSH_LISTEN")]
    pub listen: SocketAddr,
    /// Worker threads, each with its own event loop and SO_REUSEPORT listener
    /// [default: number of CPUs].
    #[arg(long, env = "WSPUSH_WORKERS")]
    pub workers: Option<usize>,
    /// Join the SO_REUSEPORT listeners of a daemon already on this address
    /// (same user) instead of failing with "address in use": for a
    /// zero-downtime handover, start the new daemon with this flag, then send
    /// SIGTERM to the old one, which stops accepting and drains. Without it a
    /// port another process listens on is an error, whatever `--workers` is.
    #[arg(long, env = "WSPUSH_REUSE_PORT")]
    pub reuse_port: bool,
    /// Most simultaneous connections; beyond it new ones get HTTP 503
    /// [default: 100000, lowered to fit the open-files limit (RLIMIT_NOFILE)
    /// so that the 503 can still be sent].
    #[arg(long, env = "WSPUSH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest message (and frame) a client may send, in bytes; larger
    /// messages are answered with close code 1009. Push clients send control
    /// messages and publications: 1 MiB covers those with room to spare.
    #[arg(long, default_value_t = 1 << 20, env = "WSPUSH_MAX_MESSAGE_SIZE")]
    pub max_message_size: usize,
    /// Unsent bytes a connection may have queued (behind the message being
    /// written) before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20, env = "WSPUSH_MAX_BUFFERED")]
    pub max_buffered: usize,
    /// permessage-deflate (RFC 7692): `off`; `shared` (publications and
    /// broadcasts deflated once, no context takeover, no memory per idle
    /// connection); `dedicated` (a compressor per connection with context
    /// takeover, for 1:1 traffic; up to ~300 KiB per connection sent a
    /// compressed message).
    #[arg(long, default_value = "shared", env = "WSPUSH_COMPRESSION")]
    pub compression: crate::protocol::deflate::Compression,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64, env = "WSPUSH_COMPRESSION_MIN_SIZE")]
    pub compression_min_size: usize,
    /// `dedicated`: largest LZ77 window of a connection's compressor, as
    /// bits (9 to 15; 2^bits bytes).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u8).range(9..=15), env = "WSPUSH_COMPRESSION_WINDOW_BITS")]
    pub compression_window_bits: u8,
    /// Time a client has to send its complete upgrade request, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "WSPUSH_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Duration,
    /// Allowed `Origin` (repeatable; exact match, e.g. `https://example.com`).
    /// Without any, every origin is accepted. Requests without `Origin`
    /// (non-browser clients) are not refused by this list.
    #[arg(long = "origin", env = "WSPUSH_ORIGIN", value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Supported subprotocol (repeatable), most preferred first; the first one
    /// the client also offers is chosen.
    #[arg(long = "protocol", env = "WSPUSH_PROTOCOL", value_delimiter = ',')]
    pub protocols: Vec<String>,
    /// On SIGINT/SIGTERM/SIGQUIT: how long to wait for clients to answer close 1001
    /// before exiting, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "WSPUSH_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
    /// Send a protocol ping to a connection silent for this long (`0` disables).
    /// With both on, --idle-timeout must be longer than this.
    #[arg(long, default_value = "25s", value_parser = parse_duration, env = "WSPUSH_PING_INTERVAL")]
    pub ping_interval: Duration,
    /// Close a connection that sent nothing (not even a pong) for this long;
    /// this reaps peers that vanished without a FIN (`0` disables).
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "WSPUSH_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Most channels one connection may subscribe to.
    #[arg(long, default_value_t = 128, env = "WSPUSH_MAX_CHANNELS_PER_CONN")]
    pub max_channels_per_conn: usize,
    /// Channels clients may publish on over their socket (repeatable pattern,
    /// `*` matches any run of characters, e.g. `chat.*`). Default: none.
    #[arg(
        long = "client-publish",
        env = "WSPUSH_CLIENT_PUBLISH",
        value_delimiter = ','
    )]
    pub client_publish: Vec<String>,
    /// HS256 secret: when set, every WebSocket needs a JWT (`?token=` or
    /// `Authorization: Bearer`) with `sub` (user id, required), `exp`
    /// (required, see --allow-non-expiring-tokens) and optional `channels`.
    /// Must not be empty; shorter than 32 bytes draws a warning.
    #[arg(long, env = "WSPUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Read the HS256 secret from this file instead (trailing newlines
    /// removed), so it stays out of `ps` and shell history; SIGHUP re-reads
    /// it without dropping connections.
    #[arg(long, env = "WSPUSH_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Accept client tokens without an `exp` claim (they never expire).
    /// Without this flag such tokens are refused with 401.
    #[arg(long, env = "WSPUSH_ALLOW_NON_EXPIRING_TOKENS")]
    pub allow_non_expiring_tokens: bool,
    /// Key for the backend HTTP API (`Authorization: Bearer <key>`). Without
    /// it the API answers only clients on loopback. Must not be empty nor
    /// contain whitespace or control characters.
    #[arg(long, env = "WSPUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from this file instead (trailing newlines removed);
    /// SIGHUP re-reads it.
    #[arg(long, env = "WSPUSH_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Serve the backend API (and /stats, /metrics) on this separate address
    /// instead of the main port.
    #[arg(long, env = "WSPUSH_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Largest body of an API request (a publication), in bytes; larger → 413.
    #[arg(long, default_value_t = 1 << 20, env = "WSPUSH_MAX_PUBLISH_SIZE")]
    pub max_publish_size: usize,
    /// The Pusher protocol and API (`--pusher-*`).
    #[command(flatten)]
    pub pusher: crate::pusher::PusherArgs,
    /// Publications kept per channel, for clients that resume after a
    /// disconnect (`0` turns history off).
    #[arg(long, default_value_t = 100, env = "WSPUSH_HISTORY_SIZE")]
    pub history_size: usize,
    /// How long a publication stays in its channel's history, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "WSPUSH_HISTORY_TTL")]
    pub history_ttl: Duration,
    /// Bytes all connections together may hold in partially received
    /// messages and request bodies; past it new large receptions are
    /// refused (close 1009, HTTP 503).
    #[arg(long, default_value_t = 256 << 20, env = "WSPUSH_MAX_PENDING_BYTES")]
    pub max_pending_bytes: usize,
    /// Bytes the history of all channels may take (each entry is charged
    /// its frame, its channel name and 256 B); past it the oldest go first.
    #[arg(long, default_value_t = 64 << 20, env = "WSPUSH_HISTORY_MAX_BYTES")]
    pub history_max_bytes: usize,
    /// Join other wspush nodes through Redis, e.g. `redis://127.0.0.1:6379/0`:
    /// channel order, history, user and connection pushes become
    /// cluster-wide. A Redis Cluster: `redis+cluster://host:port,host:port`
    /// (seed nodes), or several `--redis` URLs. Without it the node stands
    /// alone and needs no Redis.
    #[arg(long = "redis", env = "WSPUSH_REDIS")]
    pub redis: Vec<String>,
    /// How long connecting to Redis, and any one Redis request, may take
    /// (the start fails if Redis cannot be reached in this time).
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "WSPUSH_REDIS_TIMEOUT")]
    pub redis_timeout: Duration,
    /// Serve `wss://` and `https://` with this certificate chain (PEM, leaf
    /// first); needs --tls-key. SIGHUP re-reads both files.
    #[arg(long, env = "WSPUSH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WSPUSH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print an HS256 client token for `--jwt-secret`.
    Token {
        /// The secret (as given to the server's --jwt-secret; not empty).
        #[arg(long, env = "WSPUSH_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// The user id (`sub` claim; not empty).
        #[arg(long)]
        sub: String,
        /// Lifetime (the `exp` claim is now + ttl), e.g. `1h`, `30m`, `3600s`.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Channel (or pattern) the token may subscribe to (repeatable); none: any.
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
}

/// `25s`, or `off` for a disabled interval.
fn off_or(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_string(), |d| format!("{d:?}"))
}

/// Raise the soft open-files limit to the hard one: a push server's
/// connections are its file descriptors.
pub fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                log::warn!(
                    "could not raise the open-files limit: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// 100,000, or what the open-files limit leaves after the server's own
/// descriptors (per worker: listener, poll, waker; plus a reserve for the
/// refusals, the API listener and the standard streams).
pub fn default_max_connections(workers: usize) -> usize {
    let workers = if workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        workers
    };
    // SAFETY: getrlimit writes into a local struct.
    let soft = unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            libc::RLIM_INFINITY
        }
    };
    let reserve = 64 + 4 * workers as u64;
    if soft == libc::RLIM_INFINITY {
        return 100_000;
    }
    (soft.saturating_sub(reserve) as usize).clamp(1, 100_000)
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
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    // Longer than a year is a typo, and would overflow deadlines.
    if secs > 365.0 * 86400.0 {
        return Err(format!("duration {s:?} is longer than a year"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// A secret shorter than this draws a warning (HS256 keys should carry at
/// least the hash's 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Check an HS256 secret: an error when empty, a warning when short.
fn check_secret(flag: &str, secret: &str, warnings: &mut Vec<String>) -> Result<(), String> {
    if secret.is_empty() {
        return Err(format!(
            "{flag} is empty: anyone could sign tokens with an empty key (an unset \
             variable in a template leaves WSPUSH_JWT_SECRET= empty); give a secret \
             of at least {MIN_SECRET_LEN} random bytes"
        ));
    }
    if secret.len() < MIN_SECRET_LEN {
        warnings.push(format!(
            "{flag} is {} bytes long; use at least {MIN_SECRET_LEN} random bytes",
            secret.len()
        ));
    }
    Ok(())
}

impl Args {
    /// Check the flags once, before anything starts: values that cannot work
    /// are an error naming the flag; doubtful ones come back as warnings.
    pub fn validate(&self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        if let Some(Command::Token {
            secret, sub, ttl, ..
        }) = &self.command
        {
            check_secret("--secret", secret, &mut warnings)?;
            if sub.is_empty() {
                return Err("--sub is empty: a token needs a user id".into());
            }
            if ttl.as_secs() == 0 {
                return Err(
                    "--ttl must be at least 1s (the token would be expired at once)".into(),
                );
            }
            return Ok(warnings);
        }
        let positive = [
            ("--max-message-size", self.max_message_size),
            ("--max-buffered", self.max_buffered),
            ("--max-publish-size", self.max_publish_size),
            ("--max-pending-bytes", self.max_pending_bytes),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be more than 0 bytes"));
            }
        }
        if self.max_connections == Some(0) {
            return Err("--max-connections must be at least 1".into());
        }
        if !self.redis.is_empty() {
            Self::redis_seeds(&self.redis)?;
        }
        if !self.redis.is_empty() && self.redis_timeout.is_zero() {
            return Err("--redis-timeout must be more than 0".into());
        }
        let largest = self.max_message_size.max(self.max_publish_size);
        if self.max_pending_bytes < largest {
            return Err(format!(
                "--max-pending-bytes ({}) must be at least the largest message or body \
                 a client may send ({largest}: --max-message-size / --max-publish-size)",
                self.max_pending_bytes
            ));
        }
        if self.history_size > 0 {
            if self.history_ttl.is_zero() {
                return Err(
                    "--history-ttl must be more than 0 (use --history-size 0 to turn history off)"
                        .into(),
                );
            }
            if self.history_max_bytes == 0 {
                return Err("--history-max-bytes must be more than 0 (use --history-size 0 to turn history off)".into());
            }
        }
        match self.workers {
            Some(0) => {
                return Err("--workers must be at least 1 (leave it out for one per CPU)".into())
            }
            Some(n) if n > crate::server::hub::MAX_WORKERS => {
                return Err(format!(
                    "--workers must be at most {}",
                    crate::server::hub::MAX_WORKERS
                ))
            }
            _ => {}
        }
        for (flag, d) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--drain-timeout", self.drain_timeout),
        ] {
            if d < Duration::from_millis(1) {
                return Err(format!("{flag} must be at least 1ms"));
            }
        }
        let ping = Some(self.ping_interval).filter(|d| !d.is_zero());
        let idle = Some(self.idle_timeout).filter(|d| !d.is_zero());
        if let (Some(ping), Some(idle)) = (ping, idle) {
            if idle <= ping {
                return Err(format!(
                    "--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?}), \
                     or a quiet but live client is closed before it is pinged \
                     (0 disables either)"
                ));
            }
        }
        for p in &self.protocols {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(format!(
                    "--protocol {p:?} is not a subprotocol token (printable ASCII, no comma)"
                ));
            }
        }
        for o in &self.origins {
            // Browsers send `scheme://host[:port]` (or `null`), never a path
            // or a trailing slash: such an entry could never match.
            let path = o
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
            if o.is_empty() || path || o.chars().any(|c| c.is_whitespace()) {
                return Err(format!(
                    "--origin {o:?} can never match: browsers send scheme://host[:port], \
                     e.g. https://example.com, without a path or trailing slash"
                ));
            }
        }
        for p in &self.client_publish {
            if p.is_empty() {
                return Err("--client-publish needs a non-empty pattern".into());
            }
        }
        if let Some(secret) = &self.jwt_secret {
            check_secret("--jwt-secret (WSPUSH_JWT_SECRET)", secret, &mut warnings)?;
        } else if self.allow_non_expiring_tokens {
            return Err("--allow-non-expiring-tokens needs --jwt-secret".into());
        }
        if let Some(key) = &self.api_key {
            if key.is_empty() {
                return Err(
                    "--api-key (WSPUSH_API_KEY) is empty: no request could ever match it \
                     (leave it unset to answer loopback clients only)"
                        .into(),
                );
            }
            if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(
                    "--api-key (WSPUSH_API_KEY) contains whitespace or control characters: \
                     no `Authorization: Bearer` header could carry it"
                        .into(),
                );
            }
        }
        self.pusher.validate()?;
        if self.pusher.has_apps() && !self.redis.is_empty() {
            return Err("--pusher-app (or --pusher-apps-file) with --redis: the Pusher protocol runs on one node for now (its presence channels are not shared across nodes yet); run Pusher apps on a node without --redis".into());
        }
        if self.api_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err("--api-listen must differ from --listen".into());
        }
        Ok(warnings)
    }

    /// The server configuration these flags describe.
    pub fn config(&self) -> Config {
        Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(0),
            max_connections: self
                .max_connections
                .unwrap_or_else(|| default_max_connections(self.workers.unwrap_or(0))),
            max_message_size: self.max_message_size,
            max_buffered: self.max_buffered,
            handshake_timeout: self.handshake_timeout,
            drain_timeout: self.drain_timeout,
            ping_interval: Some(self.ping_interval).filter(|d| !d.is_zero()),
            idle_timeout: Some(self.idle_timeout).filter(|d| !d.is_zero()),
            handshake: HandshakeConfig {
                protocols: self.protocols.clone(),
                origins: self.origins.clone(),
            },
            http: HttpLimits {
                max_body: self.max_publish_size,
                ..HttpLimits::default()
            },
            share_port: self.reuse_port,
            max_pending_bytes: self.max_pending_bytes,
            compression: crate::protocol::deflate::DeflateConfig {
                mode: self.compression,
                min_size: self.compression_min_size,
                max_window_bits: self.compression_window_bits,
            },
            history: HistoryConfig {
                size: self.history_size,
                ttl: self.history_ttl,
                max_bytes: self.history_max_bytes,
            },
            redis: Self::redis_seeds(&self.redis).ok().map(|(urls, cluster)| {
                crate::broker::redis::RedisConfig {
                    urls,
                    cluster,
                    timeout: self.redis_timeout,
                }
            }),
            ..Config::default()
        }
    }

    /// The seed URLs of `--redis` and whether they name a Redis Cluster.
    fn redis_seeds(given: &[String]) -> Result<(Vec<String>, bool), String> {
        let mut urls = Vec::new();
        let mut cluster = given.len() > 1;
        for url in given {
            if let Some(rest) = url.strip_prefix("redis+cluster://") {
                cluster = true;
                for hp in rest.split(',') {
                    urls.push(format!("redis://{hp}"));
                }
            } else {
                urls.push(url.clone());
            }
        }
        for url in &urls {
            let ok = url.starts_with("redis://") || url.starts_with("rediss://");
            if !ok || ::redis::Client::open(url.as_str()).is_err() {
                return Err(format!(
                "--redis {url:?}: not a Redis URL (redis://host:port[/db], or redis+cluster://host:port,host:port)"
            ));
            }
        }
        if urls.is_empty() {
            return Err("--redis: no URL".into());
        }
        Ok((urls, cluster))
    }

    /// The push service settings these flags describe.
    pub fn push_config(&self) -> PushConfig {
        PushConfig {
            client_publish: self
                .client_publish
                .iter()
                .map(|p| Pattern::new(p))
                .collect(),
            max_channels_per_conn: self.max_channels_per_conn,
            jwt_secret: self.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            allow_non_expiring_tokens: self.allow_non_expiring_tokens,
            api_key: self.api_key.as_ref().map(|s| s.as_bytes().to_vec()),
            api_on_main: self.api_listen.is_none(),
            pusher: self.pusher.build(self.max_channels_per_conn),
            ..PushConfig::default()
        }
    }
}

/// What the daemon does on a signal it handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGINT, SIGTERM, SIGQUIT: close every client with 1001, drain, exit 0.
    Drain,
    /// SIGHUP: re-read the secret files; the daemon runs on.
    Reload,
    /// SIGUSR1, SIGUSR2: logged and ignored.
    Ignore,
}

/// The signals the daemon takes over, and what each does. Any other signal
/// keeps the system's default action.
pub const SIGNALS: [(libc::c_int, &str, SignalAction); 6] = [
    (libc::SIGINT, "SIGINT", SignalAction::Drain),
    (libc::SIGTERM, "SIGTERM", SignalAction::Drain),
    (libc::SIGQUIT, "SIGQUIT", SignalAction::Drain),
    (libc::SIGHUP, "SIGHUP", SignalAction::Reload),
    (libc::SIGUSR1, "SIGUSR1", SignalAction::Ignore),
    (libc::SIGUSR2, "SIGUSR2", SignalAction::Ignore),
];

/// Block the [`SIGNALS`] in this thread (and the threads it starts later)
/// and start a thread that waits for them: the drain signals begin the
/// drain of every server given; SIGHUP calls `reload` (secrets from files);
/// the others are logged.
/// Block the signals the daemon handles in the calling thread, and so in
/// every thread it starts afterwards (workers, the Redis broker's, the
/// webhook sender): only [`watch_signals`]'s thread takes them. Called
/// before any thread exists; a thread started earlier would be killed by
/// the default action of a SIGHUP or SIGTERM instead.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: plain libc calls on a local, zero-initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for (sig, _, _) in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Take the blocked signals `set` on a thread of their own.
fn watch_signals(
    set: libc::sigset_t,
    handles: Vec<Handle>,
    reload: impl Fn() + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("wspush-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                continue;
            }
            let Some(&(_, name, action)) = SIGNALS.iter().find(|(s, _, _)| *s == sig) else {
                continue;
            };
            match action {
                SignalAction::Reload => reload(),
                SignalAction::Ignore => log::info!("{name}: ignored"),
                SignalAction::Drain if handles.iter().all(Handle::is_shutting_down) => {
                    log::warn!("{name} again: still draining")
                }
                SignalAction::Drain => {
                    log::info!("{name}: shutting down (closing clients with 1001)");
                    for h in &handles {
                        h.shutdown();
                    }
                }
            }
        })?;
    Ok(())
}

/// Read a secret from a file: its text without trailing line ends.
fn read_secret(flag: &str, path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl Args {
    /// Read `--jwt-secret-file` and `--api-key-file` into the secrets they
    /// stand for (checked by [`Args::validate`] like the inline flags).
    pub fn load_secret_files(&mut self) -> Result<(), String> {
        if let Some(p) = &self.jwt_secret_file {
            self.jwt_secret = Some(read_secret("--jwt-secret-file", p)?);
        }
        if let Some(p) = &self.api_key_file {
            self.api_key = Some(read_secret("--api-key-file", p)?);
        }
        Ok(())
    }
}

/// SIGHUP: re-read the secret files and put their values in force. A file
/// that cannot be read, or holds a value the start would refuse, keeps the
/// secrets in force and says why.
fn reload_secrets(args: &Args, shared: &Shared) {
    if args.jwt_secret_file.is_none() && args.api_key_file.is_none() {
        log::info!("SIGHUP: nothing to reload (no --jwt-secret-file or --api-key-file)");
        return;
    }
    let mut fresh = args.clone();
    let checked = fresh.load_secret_files().and_then(|_| fresh.validate());
    let warnings = match checked {
        Ok(w) => w,
        Err(e) => {
            log::error!("SIGHUP: reload refused, the secrets in force stay: {e}");
            return;
        }
    };
    for w in warnings {
        log::warn!("{w}");
    }
    let old = shared.secrets();
    let new = Secrets {
        jwt_secret: fresh.jwt_secret.map(String::into_bytes),
        api_key: fresh.api_key.map(String::into_bytes),
    };
    let what = |changed: bool| if changed { "changed" } else { "unchanged" };
    let summary = format!(
        "JWT secret {}, API key {}",
        what(old.jwt_secret != new.jwt_secret),
        what(old.api_key != new.api_key)
    );
    match shared.set_secrets(new) {
        Ok(()) => log::info!("SIGHUP: reloaded secrets ({summary})"),
        Err(e) => log::error!("SIGHUP: reload refused: {e}"),
    }
}

/// Run the daemon until a signal ends the drain (or run a subcommand).
pub fn run(mut args: Args) -> io::Result<()> {
    args.load_secret_files().map_err(io::Error::other)?;
    for w in args.validate().map_err(io::Error::other)? {
        log::warn!("{w}");
    }
    if let Some(Command::Token {
        secret,
        sub,
        ttl,
        channels,
    }) = &args.command
    {
        let exp = crate::push::unix_now() + ttl.as_secs();
        let chans = (!channels.is_empty()).then_some(channels.as_slice());
        println!(
            "{}",
            auth::mint_hs256(secret.as_bytes(), sub, Some(exp), chans)
        );
        return Ok(());
    }
    raise_open_files_limit();
    let signals = block_signals()?;
    let mut cfg = args.config();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(TlsAcceptor::from_pem_files(cert, key)?)),
        _ => None,
    };
    cfg.tls = tls.clone();
    let shared = Shared::new(args.push_config());
    let s2 = shared.clone();
    let server = Server::builder()
        .config(cfg.clone())
        .build(move |_, h| PushService::new(s2.clone(), h))?;
    let main_handle = server.handle();
    let api = match args.api_listen {
        Some(addr) => {
            let api_cfg = Config {
                listen: addr,
                workers: 1,
                // It publishes through the main server's broker.
                redis: None,
                ..cfg.clone()
            };
            let (s3, h3) = (shared.clone(), main_handle.clone());
            Some(
                Server::builder()
                    .config(api_cfg)
                    .build(move |_, own| PushService::api_only(s3.clone(), h3.clone(), own))?,
            )
        }
        None => None,
    };
    let mut handles = vec![main_handle.clone()];
    handles.extend(api.as_ref().map(|a| a.handle()));
    let reload = {
        let (args, shared) = (args.clone(), shared.clone());
        move || {
            let secret_files = args.jwt_secret_file.is_some() || args.api_key_file.is_some();
            if secret_files || tls.is_none() {
                reload_secrets(&args, &shared);
            }
            if let (Some(t), Some(cert), Some(key)) = (&tls, &args.tls_cert, &args.tls_key) {
                match t.reload(cert, key) {
                    Ok(()) => log::info!("SIGHUP: reloaded the TLS certificate"),
                    Err(e) => log::error!(
                        "SIGHUP: TLS certificate not reloaded, the one in force stays: {e}"
                    ),
                }
            }
        }
    };
    watch_signals(signals, handles, reload)?;
    log::info!(
        "wspush listening on {} ({} workers); max-connections {}, max-message-size {} B, max-buffered {} B, handshake-timeout {:?}, ping-interval {}, idle-timeout {}, drain-timeout {:?}, protocols {:?}, origins {}, client-publish {:?}, tokens {}, history {}, max-pending-bytes {} B, tls {}, redis {}",
        server.local_addr(),
        main_handle.workers(),
        cfg.max_connections,
        cfg.max_message_size,
        cfg.max_buffered,
        cfg.handshake_timeout,
        off_or(cfg.ping_interval),
        off_or(cfg.idle_timeout),
        cfg.drain_timeout,
        cfg.handshake.protocols,
        if cfg.handshake.origins.is_empty() { "any".to_string() } else { cfg.handshake.origins.join(",") },
        args.client_publish,
        match (&args.jwt_secret, args.allow_non_expiring_tokens) {
            (None, _) => "not required",
            (Some(_), false) => "required (HS256; sub and exp)",
            (Some(_), true) => "required (HS256; sub; non-expiring allowed)",
        },
        if cfg.history.enabled() {
            format!(
                "{} per channel, {:?}, {} B in all",
                cfg.history.size, cfg.history.ttl, cfg.history.max_bytes
            )
        } else {
            "off".to_string()
        },
        cfg.max_pending_bytes,
        match &args.tls_cert {
            Some(c) => format!("on ({})", c.display()),
            None => "off".to_string(),
        },
        match args.redis.first() {
            Some(u) => format!("{u} (node {})", main_handle.broker().node()),
            None => "off".to_string(),
        },
    );
    match (&api, &args.api_key) {
        (Some(a), Some(_)) => log::info!("API on {} (API key required)", a.local_addr()),
        (Some(a), None) => log::warn!(
            "API on {} without --api-key: answering loopback clients only",
            a.local_addr()
        ),
        (None, Some(_)) => log::info!("API on the main port (API key required)"),
        (None, None) => {
            log::warn!("API on the main port without --api-key: answering loopback clients only")
        }
    }
    let api_thread = match api {
        Some(a) => Some(
            std::thread::Builder::new()
                .name("wspush-api".into())
                .spawn(move || a.run())?,
        ),
        None => None,
    };
    server.run()?;
    if let Some(t) = api_thread {
        match t.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("API server thread panicked")),
        }
    }
    let st = main_handle.stats();
    log::info!(
        "wspush stopped after {:.1}s: {} connections accepted, {} messages in, {} out",
        st.uptime_secs,
        st.get("accepted_total").unwrap_or(0),
        st.get("messages_in_total").unwrap_or(0),
        st.get("messages_out_total").unwrap_or(0)
    );
    Ok(())
}
