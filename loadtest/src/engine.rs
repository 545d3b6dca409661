//! The client engine: one thread per `--threads`, each with its own
//! `mio::Poll` over its share of the connections. No async runtime, no
//! allocation per message: frames are built into each connection's reused
//! write buffer (masked word-at-a-time by the protocol core), and replies are
//! read into one per-thread buffer and decoded in place.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use wspush::protocol::encode::{masked_close_into, masked_frame_into};
use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode, Role};

use crate::publisher::{self, Connection, Failure};
use crate::stats::{new_hist, record, Results};
use crate::wire::{self, elapsed_since, now_ns, Probe, PushFrame, Rng};

/// What a run does once connections are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Open N connections as fast as possible.
    Connect,
    /// Open N connections and hold them.
    Idle,
    /// Echo round trips with P messages in flight per connection.
    Echo,
    /// Publishers send, every connection receives every message.
    Broadcast,
    /// wspush's push service: every connection subscribes to `--channel`,
    /// one publisher POSTs `/publish/CHANNEL` over a keep-alive HTTP/1.1
    /// connection, every subscriber receives every publication.
    Push,
    /// Chaos test of delivery: subscribers of `--channels` channels are
    /// dropped (`--drop` per `--drop-interval`) and resume with `since`
    /// while publications go on; every seq checked per subscriber.
    Churn,
}

/// The engine's view of the command line, shared by all threads.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub size: usize,
    pub binary: bool,
    pub in_flight: u32,
    /// Publishers in the whole run (ids 0..publishers).
    pub publishers: u32,
    /// Messages per second per publisher; 0 = window mode.
    pub rate: f64,
    /// Unanswered (not yet delivered to every subscriber) messages per publisher.
    pub window: u64,
    /// Local source addresses 127.0.0.1 ..= 127.0.0.N; 0 = let the kernel choose.
    pub sources: u32,
    /// Handshakes in progress at once, per thread.
    pub concurrency: usize,
    pub handshake_timeout_ns: u64,
    /// Bound on the whole connect phase.
    pub connect_deadline_ns: u64,
    pub duration_ns: u64,
    /// Push: channel subscribed to and published on.
    pub channel: String,
    /// Push: where the HTTP API listens, and its Host header.
    pub api_addr: SocketAddr,
    pub api_host: String,
    /// Push: `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Connections in the whole run: the `recipients` each publication must reach.
    pub conns: u32,
    /// Push: this process holds the publisher (process 0, thread 0).
    pub publisher: bool,
    /// Offer permessage-deflate and inflate compressed frames.
    pub deflate: bool,
    /// Push over the Pusher protocol (`--pusher`).
    pub pusher: Option<PusherApp>,
}

/// A Pusher app (`--pusher ID:KEY:SECRET`).
#[derive(Debug, Clone)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl Config {
    /// Modes in which subscribers check per-publisher ordering and fan-out.
    pub fn fans_out(&self) -> bool {
        matches!(self.mode, Mode::Broadcast | Mode::Push)
    }
}

/// Fan-out tracking of one message: (sequence tag << 32 | deliveries seen)
/// and the largest latency so far.
#[derive(Default)]
pub struct Slot {
    state: AtomicU64,
    max: AtomicU64,
}

/// State shared between the threads of one process and its main thread.
pub struct Shared {
    /// CLOCK_MONOTONIC ns at which the measured phase began; 0 before.
    pub go_ns: AtomicU64,
    pub close: AtomicBool,
    /// Threads done opening their connections (or, in connect mode, ready).
    pub ready: AtomicUsize,
    /// Threads done with the timed phase.
    pub done: AtomicUsize,
    /// Threads finished entirely.
    pub finished: AtomicUsize,
    pub open: AtomicI64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub handshakes: AtomicU64,
    pub errors: AtomicU64,
    /// Latencies since the start, for the progress line.
    pub live: Mutex<Histogram<u64>>,
    /// Subscribers a message must reach for its fan-out to be complete.
    pub subs: AtomicU64,
    pub ring: usize,
    pub fan: Vec<Slot>,
    /// Per publisher: messages whose fan-out completed.
    pub completed: Vec<AtomicU64>,
    /// Push: server seq − stamp seq, from the first publish response
    /// (u64::MAX until known).
    pub pub_base: AtomicU64,
}

impl Shared {
    pub fn new(cfg: &Config) -> Shared {
        let k = match cfg.mode {
            Mode::Broadcast => cfg.publishers as usize,
            Mode::Push => 1,
            _ => 0,
        };
        let ring = match (1usize << 20).checked_div(k) {
            None => 1,
            Some(per) => (2 * cfg.window as usize)
                .max(per)
                .clamp(16, 1 << 16)
                .next_power_of_two(),
        };
        Shared {
            go_ns: AtomicU64::new(0),
            close: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            open: AtomicI64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            live: Mutex::new(new_hist()),
            subs: AtomicU64::new(0),
            ring,
            fan: (0..k * ring).map(|_| Slot::default()).collect(),
            completed: (0..k).map(|_| AtomicU64::new(0)).collect(),
            pub_base: AtomicU64::new(u64::MAX),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    New,
    Connecting,
    Handshake,
    /// Push: upgraded, waiting for the welcome message.
    Welcome,
    Open,
    Closing,
    Closed,
}

/// Per (subscriber, publisher) ordering state: next expected sequence and a
/// bitmap of the 64 sequences below it (bit i = next-1-i was received).
#[derive(Clone, Copy, Default)]
struct Stream {
    next: u64,
    seen: u64,
}

struct Conn {
    sock: Option<TcpStream>,
    st: St,
    /// Global index of the connection in the run; publisher id if < publishers.
    g: u32,
    t0: u64,
    key: [u8; 24],
    hs: Vec<u8>,
    dec: Decoder,
    /// permessage-deflate, echo mode: this connection's inflater (context kept).
    zin: Option<Box<wspush::protocol::deflate::Inflater>>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Data messages sent (echo requests or publishes): the next sequence.
    sent: u64,
    /// Echo replies received: the next expected sequence.
    recv: u64,
    streams: Vec<Stream>,
    /// Push: server seq − stamp seq seen by this subscriber (u64::MAX: none yet).
    base: u64,
}

/// What a decoded frame was, copied out so the decoder's borrow ends.
enum Ev {
    Data { len: usize, probe: Option<Probe> },
    Push { len: usize, frame: PushFrame },
    Ping { buf: [u8; 125], len: usize },
    Close(Option<u16>),
    Other,
}

struct Cx {
    cfg: Arc<Config>,
    sh: Arc<Shared>,
    dcfg: DecoderConfig,
    /// permessage-deflate: one inflater per thread (the server answers
    /// server_no_context_takeover in shared mode; dedicated mode would need
    /// one per connection, see `on_bytes`) and its output.
    inflater: wspush::protocol::deflate::Inflater,
    inflated: Vec<u8>,
    /// Payload bytes on the wire of the message being handled, and whether
    /// it came compressed.
    wire_len: usize,
    compressed_now: bool,
    payload: Vec<u8>,
    op: OpCode,
    rng: Rng,
    r: Results,
    live: Histogram<u64>,
    poll: Poll,
    in_progress: usize,
    open: i64,
    /// End of the timed window (u64::MAX before go).
    deadline: u64,
    reported: (u64, u64, u64, u64, i64),
    last_live: u64,
    /// Push: `"channel":"NAME"` as it appears in a push frame.
    chan: Vec<u8>,
}

pub struct Worker {
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    events: Events,
    pubs: Vec<usize>,
    /// Push: the HTTP publisher, in one thread of one process.
    http: Option<HttpPub>,
    cx: Cx,
}

/// Push mode's publisher: one keep-alive HTTP/1.1 connection; each request
/// a copy of a fixed template whose stamp is rewritten in place.
struct HttpPub {
    conn: Connection,
    /// The whole request; the body's stamp starts at `stamp_at`.
    req: Vec<u8>,
    /// Pusher: the event data (stamp, then filler); each request is signed anew.
    pusher_body: Vec<u8>,
    stamp_at: usize,
    /// Requests queued (the next stamp sequence) and responses parsed.
    sent: u64,
    answered: u64,
    dead: bool,
}

impl Worker {
    /// A thread's worker for the connections with global indices `gs`.
    pub fn new(cfg: Arc<Config>, sh: Arc<Shared>, gs: Vec<u32>, seed: u64) -> io::Result<Worker> {
        let k = match cfg.mode {
            Mode::Broadcast => cfg.publishers as usize,
            Mode::Push => 1,
            _ => 0,
        };
        let conns: Vec<Conn> = gs
            .iter()
            .map(|&g| Conn {
                sock: None,
                st: St::New,
                g,
                t0: 0,
                key: [0; 24],
                hs: Vec::new(),
                dec: Decoder::new(),
                zin: None,
                wbuf: Vec::new(),
                wpos: 0,
                sent: 0,
                recv: 0,
                streams: vec![Stream::default(); k],
                base: u64::MAX,
            })
            .collect();
        let pubs = if cfg.mode == Mode::Broadcast {
            (0..conns.len())
                .filter(|&i| conns[i].g < cfg.publishers)
                .collect()
        } else {
            Vec::new()
        };
        let op = if cfg.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        let payload = wire::template(cfg.size);
        Ok(Worker {
            conns,
            scratch: vec![0u8; 256 * 1024],
            events: Events::with_capacity(1024),
            pubs,
            http: None,
            cx: Cx {
                dcfg: DecoderConfig {
                    allowed_rsv: if cfg.deflate {
                        wspush::protocol::decode::RSV1
                    } else {
                        0
                    },
                    ..DecoderConfig::for_role(Role::Client)
                },
                inflater: Default::default(),
                inflated: Vec::new(),
                wire_len: 0,
                compressed_now: false,
                payload,
                op,
                rng: Rng::new(seed),
                r: Results::default(),
                live: new_hist(),
                poll: Poll::new()?,
                in_progress: 0,
                open: 0,
                deadline: u64::MAX,
                reported: (0, 0, 0, 0, 0),
                last_live: 0,
                chan: format!(
                    "\"channel\":{}",
                    serde_json::Value::from(cfg.channel.as_str())
                )
                .into_bytes(),
                cfg,
                sh,
            },
        })
    }

    /// Run every phase; returns this thread's counts.
    pub fn run(mut self, publisher: bool) -> Results {
        let cfg = self.cx.cfg.clone();
        let sh = self.cx.sh.clone();
        if publisher && cfg.mode == Mode::Push {
            match HttpPub::open(&cfg, &self.cx.poll) {
                Ok(h) => self.http = Some(h),
                Err(e) => self.cx.r.fail(format!("publisher connect: {}", short(&e))),
            }
        }
        if cfg.mode != Mode::Connect {
            self.connect_phase();
        }
        self.cx.flush_stats(true);
        sh.ready.fetch_add(1, SeqCst);
        // Wait for go, keeping the connections served (pings).
        let go = loop {
            let go = sh.go_ns.load(SeqCst);
            if go != 0 {
                break go;
            }
            if sh.close.load(SeqCst) {
                break 0;
            }
            self.turn(Some(Duration::from_millis(5)));
        };
        if go != 0 {
            self.cx.deadline = go + cfg.duration_ns;
            self.cx.r.open_at_go = self.cx.open as u64;
            if cfg.mode == Mode::Connect {
                self.connect_phase();
            } else {
                self.timed_phase(go);
            }
        }
        self.cx.flush_stats(true);
        sh.done.fetch_add(1, SeqCst);
        // Drain: keep receiving until told to close.
        while !sh.close.load(SeqCst) {
            self.turn(Some(Duration::from_millis(5)));
        }
        self.close_phase();
        self.finish()
    }

    fn finish(mut self) -> Results {
        let cfg = &self.cx.cfg;
        if cfg.mode == Mode::Push {
            if let Some(h) = &self.http {
                let n = h.sent - h.answered;
                if n > 0 {
                    *self
                        .cx
                        .r
                        .failures
                        .entry("publish unanswered".into())
                        .or_insert(0) += n;
                }
            }
            // Every subscriber must have seen the seq the publisher was told.
            let b = self.cx.sh.pub_base.load(SeqCst);
            if b != u64::MAX {
                self.cx.r.mismatched += self
                    .conns
                    .iter()
                    .filter(|c| c.base != u64::MAX && c.base != b)
                    .count() as u64;
            }
        }
        if cfg.mode == Mode::Echo {
            self.cx.r.lost = self
                .conns
                .iter()
                .map(|c| c.sent.saturating_sub(c.recv))
                .sum();
        }
        self.cx.flush_stats(true);
        self.cx.sh.finished.fetch_add(1, SeqCst);
        self.cx.r
    }

    /// One loop turn: wait for events up to `timeout`, handle them.
    fn turn(&mut self, timeout: Option<Duration>) {
        if let Err(e) = self.cx.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                self.cx.r.fail(format!("poll: {e}"));
            }
            return;
        }
        for ev in self.events.iter() {
            if ev.token() == publisher::TOKEN {
                if let Some(h) = self.http.as_mut() {
                    h.service(&mut self.scratch, &mut self.cx);
                }
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = self.conns.get_mut(i) else {
                continue;
            };
            handle(conn, &mut self.scratch, &mut self.cx);
        }
        self.cx.flush_stats(false);
    }

    fn connect_phase(&mut self) {
        let start = now_ns();
        let deadline = start + self.cx.cfg.connect_deadline_ns;
        let mut next = 0usize;
        let mut last_scan = start;
        loop {
            while self.cx.in_progress < self.cx.cfg.concurrency && next < self.conns.len() {
                start_connect(&mut self.conns[next], next, &mut self.cx);
                next += 1;
            }
            if next == self.conns.len() && self.cx.in_progress == 0 {
                break;
            }
            let now = now_ns();
            if now > deadline {
                for c in self.conns.iter_mut() {
                    if matches!(c.st, St::Connecting | St::Handshake | St::Welcome) {
                        self.cx.fail(c, "connect phase deadline".into());
                    }
                }
                break;
            }
            if now - last_scan > 50_000_000 {
                last_scan = now;
                let to = self.cx.cfg.handshake_timeout_ns;
                for c in self.conns.iter_mut() {
                    if matches!(c.st, St::Connecting | St::Handshake | St::Welcome)
                        && now - c.t0 > to
                    {
                        let what = match c.st {
                            St::Connecting => "connect timeout",
                            St::Handshake => "handshake timeout",
                            _ => "no welcome message",
                        };
                        self.cx.fail(c, what.into());
                    }
                }
            }
            self.turn(Some(Duration::from_millis(5)));
        }
        // Connections that idle from now on need no handshake buffers.
        for c in self.conns.iter_mut() {
            c.hs = Vec::new();
        }
    }

    fn timed_phase(&mut self, go: u64) {
        let cfg = self.cx.cfg.clone();
        let deadline = self.cx.deadline;
        match cfg.mode {
            Mode::Echo => {
                for c in self.conns.iter_mut() {
                    if c.st == St::Open {
                        for _ in 0..cfg.in_flight {
                            send_probe(c, &mut self.cx, now_ns());
                        }
                        flush(c, &mut self.cx);
                    }
                }
            }
            Mode::Idle => {
                for c in self.conns.iter_mut() {
                    c.wbuf = Vec::new();
                }
            }
            _ => {}
        }
        let kl = self.pubs.len() as u64;
        let tick_ns = if cfg.rate > 0.0 && kl > 0 {
            (1e9 / (cfg.rate * kl as f64)).max(1.0) as u64
        } else {
            0
        };
        let mut tick = 0u64;
        // At a fixed rate every publication scheduled before the deadline is
        // sent, even when this thread got its core back only after it (a
        // loaded machine): `--rate R -d D` publishes R × D.
        let due = |tick: u64, tick_ns: u64, now: u64| {
            let at = go + tick * tick_ns;
            at <= now && at < deadline
        };
        loop {
            let now = now_ns();
            let ended = now >= deadline;
            let mut timeout = Duration::from_millis(5);
            if let Some(h) = self.http.as_mut().filter(|h| !h.dead) {
                if cfg.rate > 0.0 {
                    let tick_ns = (1e9 / cfg.rate).max(1.0) as u64;
                    let mut burst = 0;
                    while due(tick, tick_ns, now) && burst < 10_000 {
                        h.queue(&mut self.cx, now);
                        tick += 1;
                        burst += 1;
                    }
                    if burst > 0 {
                        h.flush(&mut self.cx);
                    }
                    let next = go + tick * tick_ns;
                    timeout = Duration::from_nanos(next.saturating_sub(now_ns()).min(5_000_000));
                } else if !ended {
                    let done = self.cx.sh.completed[0].load(Acquire);
                    let mut queued = false;
                    while h.sent - done.min(h.sent) < cfg.window {
                        h.queue(&mut self.cx, now);
                        queued = true;
                    }
                    if queued {
                        h.flush(&mut self.cx);
                    }
                    timeout = Duration::from_millis(1);
                }
            }
            if cfg.mode == Mode::Broadcast && kl > 0 {
                if tick_ns > 0 {
                    let mut burst = 0;
                    while due(tick, tick_ns, now) && burst < 10_000 {
                        let i = self.pubs[(tick % kl) as usize];
                        let c = &mut self.conns[i];
                        if c.st == St::Open {
                            send_probe(c, &mut self.cx, now);
                            flush(c, &mut self.cx);
                        }
                        tick += 1;
                        burst += 1;
                    }
                    let next = go + tick * tick_ns;
                    timeout = Duration::from_nanos(next.saturating_sub(now_ns()).min(5_000_000));
                } else if !ended {
                    let w = cfg.window;
                    for &i in &self.pubs {
                        let c = &mut self.conns[i];
                        if c.st != St::Open {
                            continue;
                        }
                        let done = self.cx.sh.completed[c.g as usize].load(Acquire);
                        let mut queued = false;
                        while c.sent - done.min(c.sent) < w {
                            send_probe(c, &mut self.cx, now);
                            queued = true;
                        }
                        if queued {
                            flush(c, &mut self.cx);
                        }
                    }
                    // Completions may come from other threads' subscribers.
                    timeout = Duration::from_millis(1);
                }
            }
            if ended {
                break;
            }
            let left = Duration::from_nanos(deadline.saturating_sub(now_ns()));
            self.turn(Some(timeout.min(left)));
        }
    }

    fn close_phase(&mut self) {
        let mut closing = 0usize;
        for c in self.conns.iter_mut() {
            if c.st == St::Open {
                let key = self.cx.rng.key();
                masked_close_into(&mut c.wbuf, 1000, "", key);
                c.st = St::Closing;
                flush(c, &mut self.cx);
                if c.st == St::Closing {
                    closing += 1;
                }
            } else if c.st != St::Closed {
                c.sock = None;
                c.st = St::Closed;
            }
        }
        let end = now_ns() + 2_000_000_000;
        while closing > 0 && now_ns() < end {
            self.turn(Some(Duration::from_millis(10)));
            closing = self.conns.iter().filter(|c| c.st == St::Closing).count();
        }
        for c in self.conns.iter_mut() {
            c.sock = None;
        }
    }
}

fn source_addr(sources: u32, g: u32) -> Option<Ipv4Addr> {
    if sources == 0 {
        return None;
    }
    Some(Ipv4Addr::new(127, 0, 0, 1 + (g % sources) as u8))
}

fn start_connect(c: &mut Conn, token: usize, cx: &mut Cx) {
    let now = now_ns();
    c.t0 = now;
    cx.r.attempted += 1;
    cx.r.first_connect_ns = cx.r.first_connect_ns.min(now);
    cx.in_progress += 1;
    c.st = St::Connecting;
    match open_socket(&cx.cfg, c.g) {
        Ok(mut s) => {
            if let Err(e) = cx.poll.registry().register(
                &mut s,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                cx.fail(c, format!("register: {}", short(&e)));
                return;
            }
            c.key = cx.rng.handshake_key();
            c.sock = Some(s);
        }
        Err(e) => cx.fail(c, format!("connect: {}", short(&e))),
    }
}

fn open_socket(cfg: &Config, g: u32) -> io::Result<TcpStream> {
    open_socket_to(cfg.addr, cfg.sources, g)
}

/// A non-blocking connect to `addr` from 127.0.0.(1 + g % sources), or from
/// the kernel's choice with `sources` = 0.
pub fn open_socket_to(addr: SocketAddr, sources: u32, g: u32) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    s.set_nodelay(true)?;
    if let Some(src) = source_addr(sources, g) {
        // Let connect() pick the port for the full 4-tuple, so each source
        // address gives its own ~28k ports per destination.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own fd with a c_int option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    }
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// An io error without the " (os error N)" tail.
fn short(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(p) => s[..p].to_string(),
        None => s,
    }
}

fn handle(c: &mut Conn, scratch: &mut [u8], cx: &mut Cx) {
    if c.st == St::Connecting {
        let Some(s) = c.sock.as_ref() else { return };
        match s.take_error() {
            Ok(Some(e)) | Err(e) => {
                cx.fail(c, format!("connect: {}", short(&e)));
                return;
            }
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                cx.fail(c, format!("connect: {}", short(&e)));
                return;
            }
        }
        c.st = St::Handshake;
        c.hs = Vec::with_capacity(256);
        wire::write_request_ext(
            &mut c.wbuf,
            &cx.cfg.host,
            &cx.cfg.path,
            &c.key,
            cx.cfg.deflate,
        );
    }
    if matches!(c.st, St::Handshake | St::Welcome | St::Open | St::Closing) {
        read_all(c, scratch, cx);
        flush(c, cx);
    }
}

fn read_all(c: &mut Conn, scratch: &mut [u8], cx: &mut Cx) {
    loop {
        let Some(s) = c.sock.as_mut() else { return };
        match s.read(scratch) {
            Ok(0) => {
                match c.st {
                    St::Closing => cx.closed(c),
                    St::Handshake => cx.fail(c, "EOF during handshake".into()),
                    _ => cx.fail(c, "closed by server without close frame".into()),
                }
                return;
            }
            Ok(n) => {
                if c.st == St::Handshake {
                    c.hs.extend_from_slice(&scratch[..n]);
                    match wire::parse_response(&c.hs, &c.key) {
                        wire::Response::Partial => continue,
                        wire::Response::Failed(why) => {
                            cx.fail(c, why);
                            return;
                        }
                        wire::Response::Upgraded(end) => {
                            if cx.cfg.mode == Mode::Push {
                                // Open once the welcome (sent after the
                                // subscription) has come.
                                c.st = St::Welcome;
                            } else {
                                cx.opened(c);
                            }
                            let mut rest = std::mem::take(&mut c.hs);
                            on_bytes(c, &mut rest[end..], cx, now_ns());
                        }
                    }
                } else {
                    // One clock reading per read: every message in it arrived together.
                    on_bytes(c, &mut scratch[..n], cx, now_ns());
                }
                if c.st == St::Closed {
                    return;
                }
                // A short read emptied the receive queue; anything arriving
                // later raises a new edge, so skip the read that would only
                // say WouldBlock.
                if n < scratch.len() && c.st != St::Handshake {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if c.st == St::Closing {
                    cx.closed(c);
                } else {
                    cx.fail(c, format!("read: {}", short(&e)));
                }
                return;
            }
        }
    }
}

fn on_bytes(c: &mut Conn, data: &mut [u8], cx: &mut Cx, now: u64) {
    let mut pos = 0;
    while pos < data.len() {
        let ev = match c.dec.decode(&cx.dcfg, &mut data[pos..]) {
            Err(e) => {
                cx.fail(c, format!("protocol error: {e}"));
                return;
            }
            Ok(d) => {
                pos += d.consumed;
                let wire_len = match d.message {
                    Some(Message::Text(t)) => t.len(),
                    Some(Message::Binary(b)) => b.len(),
                    _ => 0,
                };
                cx.wire_len = wire_len;
                if let (Some(op), Some(Message::Binary(raw))) = (d.compressed, d.message) {
                    cx.compressed_now = true;
                    let mut out = std::mem::take(&mut cx.inflated);
                    // Echo: one inflater per connection, keeping its context
                    // (dedicated mode); push: one per thread, reset per
                    // message (shared mode never keeps server context).
                    let r = if cx.cfg.mode == Mode::Echo {
                        c.zin
                            .get_or_insert_with(Default::default)
                            .inflate_with_context(raw, 64 << 20, &mut out)
                    } else {
                        cx.inflater.inflate(raw, 64 << 20, &mut out)
                    };
                    if r.is_err() {
                        cx.fail(c, "bad compressed frame".into());
                        return;
                    }
                    let ev = match (op, cx.cfg.mode) {
                        (OpCode::Text, Mode::Push) => Ev::Push {
                            len: out.len(),
                            frame: wire::parse_push(&out, &cx.chan),
                        },
                        _ => Ev::Data {
                            len: out.len(),
                            probe: Probe::read(&out),
                        },
                    };
                    cx.inflated = out;
                    match ev {
                        Ev::Data { len, probe } => on_data(c, cx, len, probe, now),
                        Ev::Push { len, frame } => on_push(c, cx, len, frame, now),
                        _ => {}
                    }
                    cx.compressed_now = false;
                    continue;
                }
                match d.message {
                    None => break,
                    Some(Message::Text(t)) if cx.cfg.mode == Mode::Push => Ev::Push {
                        len: t.len(),
                        frame: if cx.cfg.pusher.is_some() {
                            wire::parse_pusher(t.as_bytes())
                        } else {
                            wire::parse_push(t.as_bytes(), &cx.chan)
                        },
                    },
                    Some(Message::Text(t)) => Ev::Data {
                        len: t.len(),
                        probe: Probe::read(t.as_bytes()),
                    },
                    Some(Message::Binary(b)) => Ev::Data {
                        len: b.len(),
                        probe: Probe::read(b),
                    },
                    Some(Message::Ping(p)) => {
                        let mut buf = [0u8; 125];
                        buf[..p.len()].copy_from_slice(p);
                        Ev::Ping { buf, len: p.len() }
                    }
                    Some(Message::Close(f)) => Ev::Close(f.map(|f| f.code)),
                    Some(Message::Pong(_)) => Ev::Other,
                }
            }
        };
        match ev {
            Ev::Data { len, probe } => on_data(c, cx, len, probe, now),
            Ev::Push { len, frame } => on_push(c, cx, len, frame, now),
            Ev::Ping { buf, len } => {
                let key = cx.rng.key();
                masked_frame_into(&mut c.wbuf, true, OpCode::Pong, &buf[..len], key);
            }
            Ev::Close(code) => {
                if c.st == St::Closing {
                    cx.closed(c);
                } else {
                    let key = cx.rng.key();
                    masked_close_into(&mut c.wbuf, code.unwrap_or(1000), "", key);
                    flush(c, cx);
                    let what = match code {
                        Some(code) => format!("closed by server: {code}"),
                        None => "closed by server: no code".into(),
                    };
                    cx.fail(c, what);
                }
                return;
            }
            Ev::Other => {}
        }
    }
}

fn on_data(c: &mut Conn, cx: &mut Cx, len: usize, probe: Option<Probe>, now: u64) {
    cx.r.received += 1;
    let in_window = now < cx.deadline;
    if in_window {
        cx.r.received_in_window += 1;
        cx.r.bytes_in_window += len as u64;
        cx.r.wire_bytes_in_window += cx.wire_len as u64;
        cx.r.compressed_in_window += cx.compressed_now as u64;
    }
    match cx.cfg.mode {
        Mode::Echo => {
            match probe {
                Some(p) if p.id == c.g && p.seq == c.recv && len == cx.payload.len() => {
                    let lat = elapsed_since(p.ts, now);
                    record(&mut cx.r.lat, lat);
                    record(&mut cx.live, lat);
                }
                _ => cx.r.mismatched += 1,
            }
            c.recv += 1;
            if in_window && c.st == St::Open {
                send_probe(c, cx, now);
            }
        }
        Mode::Broadcast => {
            let Some(p) = probe.filter(|p| p.id < cx.cfg.publishers && len == cx.payload.len())
            else {
                cx.r.mismatched += 1;
                return;
            };
            track(c, cx, p, now);
        }
        Mode::Connect | Mode::Idle | Mode::Push | Mode::Churn => {}
    }
}

/// A text frame on a push subscription: the welcome first, then pushes.
fn on_push(c: &mut Conn, cx: &mut Cx, len: usize, frame: PushFrame, now: u64) {
    if c.st == St::Welcome {
        if cx.cfg.pusher.is_some() {
            // connection_established: subscribe; subscription_succeeded: open.
            match frame {
                PushFrame::Welcome => {
                    let msg = format!(
                        "{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":{}}}}}",
                        serde_json::Value::from(cx.cfg.channel.as_str())
                    );
                    let key = cx.rng.key();
                    masked_frame_into(&mut c.wbuf, true, OpCode::Text, msg.as_bytes(), key);
                    flush(c, cx);
                }
                PushFrame::Subscribed => cx.opened(c),
                _ => cx.fail(
                    c,
                    "expected connection_established, then subscription_succeeded".into(),
                ),
            }
            return;
        }
        if frame == PushFrame::Welcome {
            cx.opened(c);
        } else {
            cx.fail(c, "first message is not the welcome".into());
        }
        return;
    }
    if frame == PushFrame::Subscribed {
        return;
    }
    cx.r.received += 1;
    if now < cx.deadline {
        cx.r.received_in_window += 1;
        cx.r.bytes_in_window += len as u64;
        cx.r.wire_bytes_in_window += cx.wire_len as u64;
        cx.r.compressed_in_window += cx.compressed_now as u64;
    }
    let PushFrame::Push(p, srv_seq) = frame else {
        cx.r.mismatched += 1;
        return;
    };
    if p.id != 0 {
        cx.r.mismatched += 1;
        return;
    }
    // seq must rise by one per publication: server seq − stamp seq is the
    // same for every delivery (and, checked at the end, for the publisher).
    let base = srv_seq.wrapping_sub(p.seq);
    if c.base == u64::MAX {
        c.base = base;
    } else if c.base != base {
        cx.r.mismatched += 1;
    }
    track(c, cx, p, now);
}

/// Ordering, loss and duplicate accounting of one delivery, then its
/// latency and fan-out.
fn track(c: &mut Conn, cx: &mut Cx, p: Probe, now: u64) {
    let s = &mut c.streams[p.id as usize];
    if p.seq >= s.next {
        let shift = p.seq - s.next + 1;
        s.seen = if shift >= 64 { 0 } else { s.seen << shift } | 1;
        s.next = p.seq + 1;
    } else {
        let d = s.next - 1 - p.seq;
        if d < 64 && s.seen & (1 << d) != 0 {
            cx.r.duplicated += 1;
            return;
        }
        if d < 64 {
            s.seen |= 1 << d;
        }
        cx.r.out_of_order += 1;
    }
    let lat = elapsed_since(p.ts, now);
    record(&mut cx.r.lat, lat);
    record(&mut cx.live, lat);
    cx.fanout(p.id, p.seq, lat);
}

/// Queue one data message carrying (connection id, next sequence, now).
#[inline]
fn send_probe(c: &mut Conn, cx: &mut Cx, now: u64) {
    Probe {
        id: c.g,
        seq: c.sent,
        ts: now,
    }
    .write(&mut cx.payload);
    let key = cx.rng.key();
    masked_frame_into(&mut c.wbuf, true, cx.op, &cx.payload, key);
    c.sent += 1;
    cx.r.sent += 1;
    if now < cx.deadline {
        cx.r.sent_in_window += 1;
    }
}

fn flush(c: &mut Conn, cx: &mut Cx) {
    while c.wpos < c.wbuf.len() {
        let Some(s) = c.sock.as_mut() else { return };
        match s.write(&c.wbuf[c.wpos..]) {
            Ok(n) => c.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if c.st == St::Closing {
                    cx.closed(c);
                } else {
                    cx.fail(c, format!("write: {}", short(&e)));
                }
                return;
            }
        }
    }
    c.wbuf.clear();
    c.wpos = 0;
}

impl Cx {
    fn opened(&mut self, c: &mut Conn) {
        let now = now_ns();
        c.st = St::Open;
        self.in_progress -= 1;
        self.open += 1;
        self.r.opened += 1;
        record(&mut self.r.handshake, now - c.t0);
        self.r.last_handshake_ns = self.r.last_handshake_ns.max(now);
    }

    fn drop_conn(&mut self, c: &mut Conn) {
        match c.st {
            St::Connecting | St::Handshake | St::Welcome => self.in_progress -= 1,
            St::Open | St::Closing => self.open -= 1,
            _ => {}
        }
        c.st = St::Closed;
        c.sock = None;
        c.hs = Vec::new();
        c.wbuf = Vec::new();
        c.wpos = 0;
        c.dec.release_buffers();
    }

    /// A connection ended normally (our close was answered).
    fn closed(&mut self, c: &mut Conn) {
        self.drop_conn(c);
    }

    fn fail(&mut self, c: &mut Conn, why: String) {
        if c.st == St::Closed {
            return;
        }
        self.r.fail(why);
        self.drop_conn(c);
    }

    /// Count one delivery of (publisher, seq) towards its fan-out.
    fn fanout(&mut self, id: u32, seq: u64, lat: u64) {
        let subs = self.sh.subs.load(Relaxed);
        if subs == 0 {
            return;
        }
        let ring = self.sh.ring;
        let slot = &self.sh.fan[id as usize * ring + (seq as usize & (ring - 1))];
        let tag = ((seq as u32).wrapping_add(1) as u64) << 32;
        loop {
            let st = slot.state.load(Acquire);
            let same = st & !0xffff_ffff == tag;
            let new = if same { st + 1 } else { tag | 1 };
            if slot
                .state
                .compare_exchange_weak(st, new, AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            if same {
                slot.max.fetch_max(lat, AcqRel);
            } else {
                if st != 0 && (st & 0xffff_ffff) < subs {
                    self.r.fanout_incomplete += 1;
                }
                slot.max.swap(lat, AcqRel);
            }
            if new & 0xffff_ffff == subs {
                let m = slot.max.swap(0, AcqRel);
                record(&mut self.r.fanout, m);
                self.sh.completed[id as usize].fetch_add(1, Release);
            }
            return;
        }
    }

    /// Publish this thread's progress to the shared counters.
    fn flush_stats(&mut self, force: bool) {
        let (s, r, h, e, o) = self.reported;
        let errs = self.r.failed();
        let hs = self.r.opened;
        if self.r.sent != s {
            self.sh.sent.fetch_add(self.r.sent - s, Relaxed);
        }
        if self.r.received != r {
            self.sh.received.fetch_add(self.r.received - r, Relaxed);
        }
        if hs != h {
            self.sh.handshakes.fetch_add(hs - h, Relaxed);
        }
        if errs != e {
            self.sh.errors.fetch_add(errs - e, Relaxed);
        }
        if self.open != o {
            self.sh.open.fetch_add(self.open - o, Relaxed);
        }
        self.reported = (self.r.sent, self.r.received, hs, errs, self.open);
        let now = now_ns();
        if (force || now - self.last_live > 200_000_000) && !self.live.is_empty() {
            self.last_live = now;
            if let Ok(mut l) = self.sh.live.try_lock() {
                let _ = l.add(&self.live);
                self.live.reset();
            }
        }
    }
}

impl HttpPub {
    fn open(cfg: &Config, poll: &Poll) -> io::Result<HttpPub> {
        let conn = Connection::open(cfg.api_addr, cfg.handshake_timeout_ns, poll)?;
        let body = wire::template(cfg.size.max(wire::STAMP_LEN));
        let (req, stamp_at) = publisher::request(
            &cfg.api_host,
            cfg.api_key.as_deref(),
            &cfg.channel,
            "text/plain",
            &body,
        );
        Ok(HttpPub {
            conn,
            pusher_body: body.clone(),
            req,
            stamp_at,
            sent: 0,
            answered: 0,
            dead: false,
        })
    }

    /// Queue one publication stamped (0, next sequence, now).
    #[inline]
    fn queue(&mut self, cx: &mut Cx, now: u64) {
        Probe {
            id: 0,
            seq: self.sent,
            ts: now,
        }
        .write_stamp(&mut self.req[self.stamp_at..]);
        if let Some(app) = &cx.cfg.pusher {
            self.pusher_body[..wire::STAMP_LEN]
                .copy_from_slice(&self.req[self.stamp_at..self.stamp_at + wire::STAMP_LEN]);
            let req = publisher::pusher_request(
                &cx.cfg.api_host,
                app,
                &cx.cfg.channel,
                &self.pusher_body,
            );
            self.conn.send(&req);
        } else {
            self.conn.send(&self.req);
        }
        self.sent += 1;
        cx.r.sent += 1;
        if now < cx.deadline {
            cx.r.sent_in_window += 1;
        }
    }

    fn flush(&mut self, cx: &mut Cx) {
        if self.dead {
            return;
        }
        if let Err(f) = self.conn.flush() {
            self.die(cx, f);
        }
    }

    fn die(&mut self, cx: &mut Cx, f: Failure) {
        if !self.dead {
            self.dead = true;
            cx.r.fail(match f {
                Failure::Write(e) => format!("publisher write: {}", short(&e)),
                Failure::Read(e) => format!("publisher read: {}", short(&e)),
                Failure::Closed => "publisher: connection closed by server".into(),
                Failure::Bad(why) => format!("publisher: {why}"),
            });
            self.conn.deregister(&cx.poll);
        }
    }

    /// Readable or writable: send what is queued, check every answer.
    fn service(&mut self, scratch: &mut [u8], cx: &mut Cx) {
        if self.dead {
            return;
        }
        let answered = &mut self.answered;
        let r = self.conn.service(scratch, |a| {
            let n = *answered;
            *answered += 1;
            if a.status != 200 {
                cx.r.fail(format!("publish: http {}", a.status));
                return Ok(());
            }
            if cx.cfg.pusher.is_some() {
                // Pusher answers `{}`: deliveries are checked by the subscribers.
                return Ok(());
            }
            // A cluster node answers `nodes` instead: no count to check.
            if a.recipients.is_some_and(|n| n != cx.cfg.conns as u64) {
                cx.r.recipients_mismatched += 1;
            }
            match a.seq {
                Some(s) => {
                    let base = s.wrapping_sub(n);
                    let sh = &cx.sh.pub_base;
                    if let Err(b) = sh.compare_exchange(u64::MAX, base, SeqCst, SeqCst) {
                        if b != base {
                            cx.r.mismatched += 1;
                        }
                    }
                }
                None => cx.r.mismatched += 1,
            }
            Ok(())
        });
        if let Err(f) = r {
            self.die(cx, f);
        }
    }
}
