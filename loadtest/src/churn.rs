//! `wsload churn`: a chaos test of delivery with resume.
//!
//! S subscribers hold subscriptions to one or more channels of wspush's push
//! service (`/ws`); one publisher POSTs `/publish/CHANNEL` at R
//! publications/s (round robin over the channels) over one pipelined
//! keep-alive HTTP/1.1 connection; every `--drop-interval` a fraction of the
//! live subscribers is dropped — a close handshake or an abrupt TCP reset
//! (SO_LINGER 0) — and reconnected at once with
//! `/ws?since=CHANNEL:SEQ:EPOCH` per channel. Each subscriber checks the
//! server's `seq` per channel: delivered once, in order, no gap, except where
//! a `subscribed` reply said `"recovered":false` (the gap it announces is
//! excused and the expectation restarts at its `seq`).
//!
//! Accounting, per (subscriber, channel), in segments: a segment starts at
//! the `seq` S0 of a `subscribed` reply (fresh, or `recovered:false`) and
//! expects every seq S0+1 ..= END, END being the channel's last seq at the
//! end of the run (or, for a segment cut by `recovered:false`, the highest
//! seq received in it). Expected = Σ (END − S0); delivered = distinct seqs
//! received inside their segment; missing = expected − delivered. A seq seen
//! twice is a duplicate, a seq lower than one already received is out of
//! order (a 128-seq bitmap below the highest tells the two apart).
//!
//! One mio poll per `--threads` (default 1), no allocation per push: frames
//! are decoded in place and the channel, `seq` and send time are found in
//! the frame's bytes. Control replies (rare) go through serde_json.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};
use wspush::protocol::encode::{masked_close_into, masked_frame_into};
use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode, Role};

use crate::report::Summary;
use crate::stats::{self, new_hist, record};
use crate::wire::{self, now_ns, HttpReply, Rng};
use crate::Args;

/// The run's parameters.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    addr: SocketAddr,
    host: String,
    /// Path of the WebSocket endpoint, without query (e.g. `/ws`).
    path: String,
    api_addr: SocketAddr,
    api_host: String,
    api_key: Option<String>,
    subscribers: u32,
    /// Channel names, `PREFIX.0` … `PREFIX.C-1`.
    channels: Vec<String>,
    /// `PREFIX.`: what every channel name starts with.
    prefix: String,
    per_sub: u32,
    rate: f64,
    duration_ns: u64,
    drop: f64,
    reset_share: f64,
    drop_interval_ns: u64,
    drain_ns: u64,
    concurrency: usize,
    handshake_timeout_ns: u64,
    connect_deadline_ns: u64,
    threads: usize,
    sources: u32,
    /// Resume with `{"op":"subscribe","since":…}` after the welcome
    /// instead of `?since=` in the upgrade request.
    resume_op: bool,
}

fn build(a: &Args) -> Result<ChurnConfig, String> {
    let (addr, host, path) = crate::parse_url(&a.url)?;
    if path.contains('?') {
        return Err("churn: --url must not have a query (the channels are added)".into());
    }
    let (mut api_addr, mut api_host) = (addr, host.clone());
    if let Some(api) = &a.api_addr {
        let (ad, h, _) = crate::parse_url(&format!("ws://{api}"))?;
        api_addr = ad;
        api_host = h;
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b);
    if a.channel.is_empty() || a.channel.len() > 110 || !a.channel.bytes().all(ok) {
        return Err(
            "--channel (the prefix of the channel names) must be [A-Za-z0-9_.:@-]{1,110}".into(),
        );
    }
    let nch = a.channels.max(1);
    let per_sub = a.channels_per_sub.clamp(1, nch);
    if a.rate <= 0.0 {
        return Err("churn needs --rate R > 0 (publications per second, all channels)".into());
    }
    if !(0.0..=1.0).contains(&a.drop) || !(0.0..=1.0).contains(&a.reset_share) {
        return Err("--drop and --reset-share are fractions in 0..=1".into());
    }
    if a.procs > 1 {
        return Err("churn runs in one process (use --threads)".into());
    }
    if a.sources > 254 {
        return Err("--sources at most 254".into());
    }
    let threads = a.threads.max(1);
    Ok(ChurnConfig {
        addr,
        host,
        path,
        api_addr,
        api_host,
        api_key: a.api_key.clone(),
        subscribers: a.conns,
        channels: (0..nch).map(|i| format!("{}.{i}", a.channel)).collect(),
        prefix: format!("{}.", a.channel),
        per_sub,
        rate: a.rate,
        duration_ns: (a.duration * 1e9) as u64,
        drop: a.drop,
        reset_share: a.reset_share,
        drop_interval_ns: (a.drop_interval.max(0.01) * 1e9) as u64,
        drain_ns: (a.drain.unwrap_or(10.0) * 1e9) as u64,
        concurrency: (a.concurrency / threads).max(1),
        handshake_timeout_ns: (a.handshake_timeout * 1e9) as u64,
        connect_deadline_ns: (a.connect_deadline * 1e9) as u64,
        threads,
        sources: a.sources,
        resume_op: a.resume_op,
    })
}

/// Counts of one thread, merged at the end.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// Subscription segments' expected seqs (see the module comment).
    expected: u64,
    /// Distinct seqs received inside their segment.
    delivered: u64,
    /// Every push frame received.
    received: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Pushes on a channel whose `subscribed` reply had not come (or not ours).
    unexpected: u64,
    recovered_true: u64,
    recovered_false: u64,
    /// Seqs skipped by `recovered:false` replies (not expected).
    excused: u64,
    /// `recovered:true` under another epoch than the one asked for.
    epoch_mismatch: u64,
    /// Subscribe replies without `seq`/`epoch` (a server without history).
    no_position: u64,
    drops_close: u64,
    drops_reset: u64,
    /// Reconnections completed (every subscription acknowledged).
    reconnects: u64,
    /// Subscribers not live and caught up when the run was judged.
    not_caught_up: u64,
    /// Publish side.
    published: u64,
    publish_ok: u64,
    http_errors: BTreeMap<String, u64>,
    /// Connection-level events that were retried: refused handshakes,
    /// timeouts, closes by the server (not errors by themselves).
    retried: BTreeMap<String, u64>,
    /// Server `{"op":"error"}` replies and protocol errors.
    protocol_errors: BTreeMap<String, u64>,
    /// Publish → delivery (live and replayed), drop → resubscribed.
    lat: Option<Histogram<u64>>,
    resume: Option<Histogram<u64>>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            lat: Some(new_hist()),
            resume: Some(new_hist()),
            ..Default::default()
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.received += o.received;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.excused += o.excused;
        self.epoch_mismatch += o.epoch_mismatch;
        self.no_position += o.no_position;
        self.drops_close += o.drops_close;
        self.drops_reset += o.drops_reset;
        self.reconnects += o.reconnects;
        self.not_caught_up += o.not_caught_up;
        self.published += o.published;
        self.publish_ok += o.publish_ok;
        for (m, src) in [
            (&mut self.http_errors, &o.http_errors),
            (&mut self.retried, &o.retried),
            (&mut self.protocol_errors, &o.protocol_errors),
        ] {
            for (k, v) in src {
                *m.entry(k.clone()).or_insert(0) += v;
            }
        }
        for (h, src) in [(&mut self.lat, &o.lat), (&mut self.resume, &o.resume)] {
            if let (Some(h), Some(s)) = (h.as_mut(), src.as_ref()) {
                let _ = h.add(s);
            }
        }
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: impl Into<String>) {
    *m.entry(k.into()).or_insert(0) += 1;
}

/// State shared by the threads and the main thread.
struct Shared {
    go_ns: AtomicU64,
    ready: AtomicUsize,
    /// Per channel: its last seq once publishing is over and answered.
    final_seq: Vec<AtomicU64>,
    final_known: AtomicBool,
    /// Threads whose subscribers are all live and at the final seqs.
    caught_up: AtomicUsize,
    stop: AtomicBool,
    // Progress.
    live: AtomicI64,
    received: AtomicU64,
    published: AtomicU64,
    recovered_false: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Not connected; reconnect at `retry_at`.
    Idle,
    /// Waiting for a handshake slot.
    Queued,
    Connecting,
    Handshake,
    /// Upgraded, waiting for `welcome`.
    Welcome,
    /// Waiting for `subscribed` replies.
    Subscribing,
    Live,
    /// Our close frame is out; waiting for the server's (or EOF).
    Closing,
}

/// One (subscriber, channel) stream.
struct Chan {
    ch: u32,
    epoch: Option<Box<str>>,
    /// A segment is open (a `subscribed` reply gave its start).
    started: bool,
    /// Seq of the segment's start: S0 + 1 is the first one expected.
    s0: u64,
    /// Highest seq received in the segment + 1 (S0 + 1 at its start).
    next: u64,
    /// Bit i: seq next-1-i was received.
    seen: u128,
    /// `subscribed` received on the current connection.
    acked: bool,
}

struct Sub {
    sock: Option<TcpStream>,
    st: St,
    /// When the current state began (timeouts) / when it was dropped.
    t0: u64,
    dropped_at: u64,
    retry_at: u64,
    attempts: u32,
    g: u32,
    key: [u8; 24],
    hs: Vec<u8>,
    dec: Decoder,
    wbuf: Vec<u8>,
    wpos: usize,
    chans: Vec<Chan>,
}

/// A decoded frame, copied out of the decoder's borrow.
enum Ev {
    Push { ch: u32, seq: u64, ts: Option<u64> },
    Welcome,
    Subscribed(Reply),
    Error(String),
    Ping { buf: [u8; 125], len: usize },
    Close(Option<u16>),
    Other,
}

struct Reply {
    ch: u32,
    seq: Option<u64>,
    epoch: Option<Box<str>>,
    recovered: Option<bool>,
}

const HTTP_TOKEN: Token = Token(usize::MAX - 1);
const CLOSE_TIMEOUT_NS: u64 = 2_000_000_000;

struct Cx {
    cfg: Arc<ChurnConfig>,
    sh: Arc<Shared>,
    dcfg: DecoderConfig,
    rng: Rng,
    poll: Poll,
    c: Counts,
    in_progress: usize,
    live: i64,
    queue: VecDeque<usize>,
    reported: (u64, u64, u64, u64, i64, u64),
}

struct Worker {
    subs: Vec<Sub>,
    scratch: Vec<u8>,
    events: Events,
    http: Option<Publisher>,
    last_timers: u64,
    cx: Cx,
}

impl Worker {
    fn new(cfg: Arc<ChurnConfig>, sh: Arc<Shared>, gs: &[u32], seed: u64) -> io::Result<Worker> {
        let nch = cfg.channels.len() as u32;
        let subs = gs
            .iter()
            .map(|&g| Sub {
                sock: None,
                st: St::Idle,
                t0: 0,
                dropped_at: 0,
                retry_at: u64::MAX,
                attempts: 0,
                g,
                key: [0; 24],
                hs: Vec::new(),
                dec: Decoder::new(),
                wbuf: Vec::new(),
                wpos: 0,
                chans: (0..cfg.per_sub)
                    .map(|j| Chan {
                        ch: (g + j) % nch,
                        epoch: None,
                        started: false,
                        s0: 0,
                        next: 1,
                        seen: 0,
                        acked: false,
                    })
                    .collect(),
            })
            .collect();
        Ok(Worker {
            subs,
            scratch: vec![0u8; 256 * 1024],
            events: Events::with_capacity(1024),
            http: None,
            last_timers: 0,
            cx: Cx {
                cfg,
                sh,
                dcfg: DecoderConfig::for_role(Role::Client),
                rng: Rng::new(seed),
                poll: Poll::new()?,
                c: Counts::new(),
                in_progress: 0,
                live: 0,
                queue: VecDeque::new(),
                reported: (0, 0, 0, 0, 0, 0),
            },
        })
    }

    fn run(mut self, publisher: bool) -> Counts {
        let cfg = self.cx.cfg.clone();
        let sh = self.cx.sh.clone();
        if publisher {
            self.http = Some(Publisher::new(&cfg));
        }
        // Connect everyone.
        let start = now_ns();
        for i in 0..self.subs.len() {
            self.subs[i].st = St::Queued;
            self.cx.queue.push_back(i);
        }
        while self.cx.live < self.subs.len() as i64 && now_ns() < start + cfg.connect_deadline_ns {
            self.turn(5);
        }
        self.cx.flush(true);
        sh.ready.fetch_add(1, SeqCst);
        let go = loop {
            let go = sh.go_ns.load(SeqCst);
            if go != 0 || sh.stop.load(SeqCst) {
                break go;
            }
            self.turn(5);
        };
        if go == 0 {
            return self.finish();
        }
        let end = go + cfg.duration_ns;
        let tick_ns = (1e9 / cfg.rate).max(1.0) as u64;
        let mut tick = 0u64;
        let mut next_drop = go + cfg.drop_interval_ns;
        // Timed phase: publish, drop, reconnect.
        loop {
            let now = now_ns();
            if now >= end {
                break;
            }
            let mut timeout = 5_000_000u64;
            if let Some(h) = self.http.as_mut() {
                let mut burst = 0;
                while go + tick * tick_ns <= now && burst < 10_000 {
                    let ch = (tick % cfg.channels.len() as u64) as u32;
                    h.queue(ch, now, &mut self.cx);
                    tick += 1;
                    burst += 1;
                }
                if burst > 0 {
                    h.flush(&mut self.cx);
                }
                timeout = timeout.min((go + tick * tick_ns).saturating_sub(now_ns()));
            }
            if now >= next_drop {
                next_drop += cfg.drop_interval_ns;
                self.drop_some(now);
            }
            timeout = timeout
                .min(next_drop.saturating_sub(now))
                .min(end.saturating_sub(now));
            self.turn(timeout);
        }
        // Publications due before the end that a late wake-up missed: the
        // run publishes exactly ceil(duration × rate).
        if let Some(h) = self.http.as_mut() {
            let now = now_ns();
            while go + tick * tick_ns < end {
                let ch = (tick % cfg.channels.len() as u64) as u32;
                h.queue(ch, now, &mut self.cx);
                tick += 1;
            }
            h.flush(&mut self.cx);
        }
        // Drain: the publisher's answers, then every subscriber at the last seqs.
        let mut marked = false;
        while !sh.stop.load(SeqCst) {
            if let Some(h) = self.http.as_mut() {
                if !sh.final_known.load(SeqCst) && h.settled() {
                    for (i, f) in h.last_seq.iter().enumerate() {
                        sh.final_seq[i].store(*f, SeqCst);
                    }
                    sh.final_known.store(true, SeqCst);
                }
            }
            if !marked && sh.final_known.load(SeqCst) && self.all_caught_up() {
                marked = true;
                sh.caught_up.fetch_add(1, SeqCst);
            }
            self.turn(5_000_000);
        }
        self.finish()
    }

    fn all_caught_up(&self) -> bool {
        let f = &self.cx.sh.final_seq;
        self.subs.iter().all(|s| {
            s.st == St::Live
                && s.chans
                    .iter()
                    .all(|c| c.started && c.next > f[c.ch as usize].load(Relaxed))
        })
    }

    /// Judge, close everything, return the counts.
    fn finish(mut self) -> Counts {
        let f: Vec<u64> = self
            .cx
            .sh
            .final_seq
            .iter()
            .map(|x| x.load(SeqCst))
            .collect();
        for s in self.subs.iter_mut() {
            let mut ok = s.st == St::Live;
            for c in &s.chans {
                if c.started {
                    let end = f[c.ch as usize].max(c.next - 1);
                    self.cx.c.expected += end - c.s0;
                    ok &= c.next > f[c.ch as usize];
                } else {
                    ok = false;
                }
            }
            if !ok {
                self.cx.c.not_caught_up += 1;
            }
        }
        if let Some(h) = &self.http {
            let n = h.inflight.len() as u64;
            if n > 0 {
                *self.cx.c.http_errors.entry("no answer".into()).or_insert(0) += n;
            }
        }
        // Close: a close frame to every open connection, up to 1 s for
        // answers; nothing reconnects any more.
        self.cx.queue.clear();
        for s in self.subs.iter_mut() {
            if s.st == St::Closing {
                s.t0 = u64::MAX;
            } else if s.sock.is_some() && matches!(s.st, St::Live | St::Subscribing | St::Welcome) {
                let key = self.cx.rng.key();
                masked_close_into(&mut s.wbuf, 1000, "", key);
                s.st = St::Closing;
                s.t0 = u64::MAX; // never reconnect
                flush(s);
            } else {
                s.sock = None;
                s.st = St::Idle;
                s.retry_at = u64::MAX;
            }
        }
        let end = now_ns() + 1_000_000_000;
        while self.subs.iter().any(|s| s.sock.is_some()) && now_ns() < end {
            self.turn(10_000_000);
        }
        self.cx.flush(true);
        self.cx.c
    }

    /// Drop `--drop` × subscribers among the live ones of this thread.
    fn drop_some(&mut self, now: u64) {
        let cfg = self.cx.cfg.clone();
        let want = (cfg.drop * self.subs.len() as f64).round() as usize;
        if want == 0 {
            return;
        }
        let mut live: Vec<usize> = (0..self.subs.len())
            .filter(|&i| self.subs[i].st == St::Live)
            .collect();
        let n = want.min(live.len());
        for k in 0..n {
            let j = k + (self.cx.rng.next() % (live.len() - k) as u64) as usize;
            live.swap(k, j);
            let i = live[k];
            let s = &mut self.subs[i];
            s.dropped_at = now;
            let reset = (self.cx.rng.next() % 1_000_000) as f64 / 1e6 < cfg.reset_share;
            if reset {
                self.cx.c.drops_reset += 1;
                if let Some(sock) = s.sock.as_ref() {
                    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
                }
                self.cx.disconnect(s);
                self.cx.reconnect(s, i, now);
            } else {
                self.cx.c.drops_close += 1;
                let key = self.cx.rng.key();
                masked_close_into(&mut s.wbuf, 1000, "", key);
                self.cx.live -= 1;
                s.st = St::Closing;
                s.t0 = now;
                flush(s);
            }
        }
    }

    /// Start queued connections, wait for events up to `timeout_ns`, handle
    /// them, then the timers.
    fn turn(&mut self, timeout_ns: u64) {
        while self.cx.in_progress < self.cx.cfg.concurrency {
            let Some(i) = self.cx.queue.pop_front() else {
                break;
            };
            start_connect(&mut self.subs[i], i, &mut self.cx);
        }
        if let Err(e) = self
            .cx
            .poll
            .poll(&mut self.events, Some(Duration::from_nanos(timeout_ns)))
        {
            if e.kind() != io::ErrorKind::Interrupted {
                bump(&mut self.cx.c.protocol_errors, format!("poll: {e}"));
            }
            return;
        }
        for ev in self.events.iter() {
            if ev.token() == HTTP_TOKEN {
                if let Some(h) = self.http.as_mut() {
                    h.service(&mut self.scratch, &mut self.cx);
                }
                continue;
            }
            let i = ev.token().0;
            if let Some(s) = self.subs.get_mut(i) {
                handle(s, i, &mut self.scratch, &mut self.cx);
            }
        }
        self.timers();
        self.cx.flush(false);
    }

    /// Timeouts and retries, at most every 20 ms.
    fn timers(&mut self) {
        let now = now_ns();
        if now - self.last_timers < 20_000_000 {
            return;
        }
        self.last_timers = now;
        let to = self.cx.cfg.handshake_timeout_ns;
        for (i, s) in self.subs.iter_mut().enumerate() {
            match s.st {
                St::Idle if s.retry_at <= now => {
                    s.retry_at = u64::MAX;
                    s.st = St::Queued;
                    self.cx.queue.push_back(i);
                }
                St::Connecting | St::Handshake | St::Welcome | St::Subscribing
                    if now.saturating_sub(s.t0) > to =>
                {
                    let what = match s.st {
                        St::Connecting => "connect timeout",
                        St::Handshake => "handshake timeout",
                        St::Welcome => "no welcome",
                        _ => "no subscribed reply",
                    };
                    self.cx.retry(s, i, what.into());
                }
                St::Closing if s.t0 != u64::MAX && now.saturating_sub(s.t0) > CLOSE_TIMEOUT_NS => {
                    bump(&mut self.cx.c.retried, "close handshake timeout");
                    self.cx.disconnect(s);
                    self.cx.reconnect(s, i, now);
                }
                _ => {}
            }
        }
    }
}

impl Cx {
    /// Forget the socket (whatever the state), keeping the streams.
    fn disconnect(&mut self, s: &mut Sub) {
        match s.st {
            St::Connecting | St::Handshake | St::Welcome | St::Subscribing => self.in_progress -= 1,
            St::Live => self.live -= 1,
            _ => {}
        }
        s.st = St::Idle;
        s.sock = None;
        s.hs = Vec::new();
        s.wbuf.clear();
        s.wpos = 0;
        s.dec = Decoder::new();
        for c in s.chans.iter_mut() {
            c.acked = false;
        }
    }

    /// Reconnect now (a drop, or a close by the server).
    fn reconnect(&mut self, s: &mut Sub, i: usize, now: u64) {
        if s.dropped_at == 0 {
            s.dropped_at = now;
        }
        s.st = St::Queued;
        self.queue.push_back(i);
    }

    /// A connection attempt failed: count it, retry with backoff.
    fn retry(&mut self, s: &mut Sub, _i: usize, why: String) {
        bump(&mut self.c.retried, why);
        self.disconnect(s);
        s.attempts += 1;
        let backoff = (50_000_000u64 << s.attempts.min(4)).min(1_000_000_000);
        s.retry_at = now_ns() + backoff / 2 + self.rng.next() % (backoff / 2);
        if s.dropped_at == 0 {
            s.dropped_at = now_ns();
        }
    }

    fn protocol_error(&mut self, s: &mut Sub, i: usize, why: String) {
        bump(&mut self.c.protocol_errors, why);
        self.disconnect(s);
        self.reconnect(s, i, now_ns());
    }

    /// Push this thread's progress to the shared counters.
    fn flush(&mut self, force: bool) {
        let errs = self.c.protocol_errors.values().sum::<u64>()
            + self.c.http_errors.values().sum::<u64>()
            + self.c.duplicated
            + self.c.out_of_order
            + self.c.unexpected
            + self.c.epoch_mismatch;
        let now = (
            self.c.received,
            self.c.published,
            self.c.recovered_false,
            self.c.reconnects,
            self.live,
            errs,
        );
        if !force && now == self.reported {
            return;
        }
        let (r, p, rf, rc, l, e) = self.reported;
        let sh = &self.sh;
        sh.received.fetch_add(now.0 - r, Relaxed);
        sh.published.fetch_add(now.1 - p, Relaxed);
        sh.recovered_false.fetch_add(now.2 - rf, Relaxed);
        sh.reconnects.fetch_add(now.3 - rc, Relaxed);
        sh.live.fetch_add(now.4 - l, Relaxed);
        sh.errors.fetch_add(now.5 - e, Relaxed);
        self.reported = now;
    }
}

fn start_connect(s: &mut Sub, token: usize, cx: &mut Cx) {
    let now = now_ns();
    s.t0 = now;
    cx.in_progress += 1;
    s.st = St::Connecting;
    match crate::engine::open_socket_to(cx.cfg.addr, cx.cfg.sources, s.g) {
        Ok(mut sock) => {
            if let Err(e) = cx.poll.registry().register(
                &mut sock,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                cx.retry(s, token, format!("register: {}", short(&e)));
                return;
            }
            s.key = cx.rng.handshake_key();
            s.sock = Some(sock);
        }
        Err(e) => cx.retry(s, token, format!("connect: {}", short(&e))),
    }
}

fn short(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(p) => s[..p].to_string(),
        None => s,
    }
}

/// The upgrade path: `since=CHANNEL:SEQ:EPOCH` for every stream that has a
/// position; the others are subscribed after the welcome.
fn upgrade_path(s: &Sub, cfg: &ChurnConfig) -> String {
    let mut p = cfg.path.clone();
    if cfg.resume_op {
        return p;
    }
    let mut sep = '?';
    for c in &s.chans {
        if let (true, Some(e)) = (c.started, c.epoch.as_deref()) {
            p.push(sep);
            sep = '&';
            p.push_str(&format!(
                "since={}:{}:{e}",
                cfg.channels[c.ch as usize],
                c.next - 1
            ));
        }
    }
    p
}

fn handle(s: &mut Sub, i: usize, scratch: &mut [u8], cx: &mut Cx) {
    if s.st == St::Connecting {
        let Some(sock) = s.sock.as_ref() else { return };
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return cx.retry(s, i, format!("connect: {}", short(&e))),
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return cx.retry(s, i, format!("connect: {}", short(&e))),
        }
        s.st = St::Handshake;
        s.hs = Vec::with_capacity(256);
        let path = upgrade_path(s, &cx.cfg);
        wire::write_request(&mut s.wbuf, &cx.cfg.host, &path, &s.key);
    }
    if s.sock.is_some() {
        read_all(s, i, scratch, cx);
        if s.sock.is_some() {
            flush(s);
        }
    }
}

/// The connection ended (EOF, error or the server's close frame).
fn ended(s: &mut Sub, i: usize, cx: &mut Cx, why: String) {
    match s.st {
        St::Closing => {
            let final_close = s.t0 == u64::MAX;
            cx.disconnect(s);
            if !final_close {
                cx.reconnect(s, i, now_ns());
            }
        }
        St::Live => {
            // Closed by the server (slow consumer, idle, restart): resume.
            bump(&mut cx.c.retried, why);
            cx.disconnect(s);
            cx.reconnect(s, i, now_ns());
        }
        _ => cx.retry(s, i, why),
    }
}

fn read_all(s: &mut Sub, i: usize, scratch: &mut [u8], cx: &mut Cx) {
    loop {
        let Some(sock) = s.sock.as_mut() else { return };
        match sock.read(scratch) {
            Ok(0) => {
                let why = if s.st == St::Handshake {
                    "EOF during handshake"
                } else {
                    "closed by server without close frame"
                };
                return ended(s, i, cx, why.into());
            }
            Ok(n) => {
                if s.st == St::Handshake {
                    s.hs.extend_from_slice(&scratch[..n]);
                    match wire::parse_response(&s.hs, &s.key) {
                        wire::Response::Partial => continue,
                        wire::Response::Failed(why) => return cx.retry(s, i, why),
                        wire::Response::Upgraded(end) => {
                            s.st = St::Welcome;
                            s.t0 = now_ns();
                            let mut rest = std::mem::take(&mut s.hs);
                            on_bytes(s, i, &mut rest[end..], cx);
                        }
                    }
                } else {
                    on_bytes(s, i, &mut scratch[..n], cx);
                }
                if s.sock.is_none() {
                    return;
                }
                if n < scratch.len() && s.st != St::Handshake {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ended(s, i, cx, format!("read: {}", short(&e))),
        }
    }
}

fn flush(s: &mut Sub) {
    while s.wpos < s.wbuf.len() {
        let Some(sock) = s.sock.as_mut() else { return };
        match sock.write(&s.wbuf[s.wpos..]) {
            Ok(n) => s.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The read side sees the error or EOF too and ends the
            // connection; only stop writing here.
            Err(_) => break,
        }
    }
    s.wbuf.clear();
    s.wpos = 0;
}

/// `{"channel":"NAME","seq":N,"data":{"t":"HEX"}}`, found in place.
fn parse_push(t: &[u8], prefix: &[u8]) -> Option<(u32, u64, Option<u64>)> {
    const K: &[u8] = b"\"channel\":\"";
    let at = if t.get(1..1 + K.len()) == Some(K) {
        1
    } else {
        wire::find(t, K, 0)?
    } + K.len();
    let end = at + t[at..].iter().position(|&b| b == b'"')?;
    let name = &t[at..end];
    let idx = name.strip_prefix(prefix)?;
    if idx.is_empty() || idx.len() > 9 || !idx.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ch = idx.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
    let (seq, after) = wire::json_u64_after(t, b"\"seq\":", end)?;
    let ts = wire::find(t, b"\"t\":\"", after)
        .and_then(|p| t.get(p + 5..p + 21))
        .and_then(|h| {
            h.iter().try_fold(0u64, |a, &b| {
                let d = (b as char).to_digit(16)? as u64;
                Some((a << 4) | d)
            })
        });
    Some((ch, seq, ts))
}

fn classify(t: &str, cfg: &ChurnConfig) -> Ev {
    let b = t.as_bytes();
    if !b.starts_with(b"{\"op\"") {
        if let Some((ch, seq, ts)) = parse_push(b, cfg.prefix.as_bytes()) {
            return Ev::Push { ch, seq, ts };
        }
    }
    let Ok(v) = serde_json::from_str::<Value>(t) else {
        return Ev::Error("unparseable message".into());
    };
    match v["op"].as_str() {
        Some("welcome") => Ev::Welcome,
        Some("subscribed") => {
            let name = v["channel"].as_str().unwrap_or("");
            let Some(ch) = name
                .strip_prefix(cfg.prefix.as_str())
                .and_then(|x| x.parse::<u32>().ok())
                .filter(|&c| (c as usize) < cfg.channels.len())
            else {
                return Ev::Error(format!("subscribed to unknown channel {name}"));
            };
            Ev::Subscribed(Reply {
                ch,
                seq: v["seq"].as_u64(),
                epoch: v["epoch"].as_str().map(Into::into),
                recovered: v["recovered"].as_bool(),
            })
        }
        Some("error") => Ev::Error(format!(
            "server error: {}",
            v["code"].as_str().unwrap_or("?")
        )),
        Some("pong") | Some("unsubscribed") => Ev::Other,
        _ => match v.get("channel") {
            // A push whose data is not ours, or laid out differently.
            Some(_) => Ev::Error("unrecognised push".into()),
            None => Ev::Other,
        },
    }
}

fn on_bytes(s: &mut Sub, i: usize, data: &mut [u8], cx: &mut Cx) {
    let now = now_ns();
    let mut pos = 0;
    while pos < data.len() {
        let ev = match s.dec.decode(&cx.dcfg, &mut data[pos..]) {
            Err(e) => return cx.protocol_error(s, i, format!("protocol error: {e}")),
            Ok(d) => {
                pos += d.consumed;
                match d.message {
                    None => break,
                    Some(Message::Text(t)) => classify(t, &cx.cfg),
                    Some(Message::Binary(_)) => Ev::Error("binary message".into()),
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
            Ev::Push { ch, seq, ts } => {
                cx.c.received += 1;
                if let Some(ts) = ts {
                    if let Some(h) = cx.c.lat.as_mut() {
                        record(h, now.saturating_sub(ts));
                    }
                }
                match s.chans.iter_mut().find(|c| c.ch == ch) {
                    Some(c) if c.acked && c.started => track(c, seq, &mut cx.c),
                    Some(c) if c.acked => {
                        // No position in the reply (a server without
                        // history): the first push starts the segment.
                        c.started = true;
                        c.s0 = seq.saturating_sub(1);
                        c.next = c.s0 + 1;
                        track(c, seq, &mut cx.c);
                    }
                    _ => cx.c.unexpected += 1,
                }
            }
            Ev::Welcome => {
                if s.st != St::Welcome {
                    return cx.protocol_error(s, i, "welcome out of place".into());
                }
                s.st = St::Subscribing;
                for c in &s.chans {
                    let name = &cx.cfg.channels[c.ch as usize];
                    let m = match (c.started, c.epoch.as_deref()) {
                        // Resumed in the upgrade request.
                        (true, Some(_)) if !cx.cfg.resume_op => continue,
                        (true, Some(e)) => format!(
                            "{{\"op\":\"subscribe\",\"channel\":\"{name}\",\"since\":{{\"seq\":{},\"epoch\":\"{e}\"}}}}",
                            c.next - 1
                        ),
                        _ => format!("{{\"op\":\"subscribe\",\"channel\":\"{name}\"}}"),
                    };
                    let key = cx.rng.key();
                    masked_frame_into(&mut s.wbuf, true, OpCode::Text, m.as_bytes(), key);
                }
                // Replies that came before the welcome count too.
                maybe_live(s, cx, now);
            }
            Ev::Subscribed(r) => {
                let Some(c) = s.chans.iter_mut().find(|c| c.ch == r.ch) else {
                    return cx.protocol_error(s, i, "subscribed to another channel".into());
                };
                if c.acked {
                    return cx.protocol_error(s, i, "two subscribed replies".into());
                }
                c.acked = true;
                subscribed(c, r, &mut cx.c);
                maybe_live(s, cx, now);
            }
            Ev::Error(why) => bump(&mut cx.c.protocol_errors, why),
            Ev::Ping { buf, len } if s.st != St::Closing => {
                let key = cx.rng.key();
                masked_frame_into(&mut s.wbuf, true, OpCode::Pong, &buf[..len], key);
            }
            Ev::Ping { .. } => {}
            Ev::Close(code) => {
                if s.st != St::Closing {
                    let key = cx.rng.key();
                    masked_close_into(&mut s.wbuf, code.unwrap_or(1000), "", key);
                    flush(s);
                }
                let why = match code {
                    Some(code) => format!("closed by server: {code}"),
                    None => "closed by server: no code".into(),
                };
                return ended(s, i, cx, why);
            }
            Ev::Other => {}
        }
    }
}

/// Live once the welcome and every `subscribed` reply are in.
fn maybe_live(s: &mut Sub, cx: &mut Cx, now: u64) {
    if s.st != St::Subscribing || !s.chans.iter().all(|c| c.acked) {
        return;
    }
    s.st = St::Live;
    s.attempts = 0;
    cx.in_progress -= 1;
    cx.live += 1;
    if s.dropped_at != 0 {
        cx.c.reconnects += 1;
        if let Some(h) = cx.c.resume.as_mut() {
            record(h, now.saturating_sub(s.dropped_at));
        }
        s.dropped_at = 0;
    }
}

/// A `subscribed` reply for stream `c`.
fn subscribed(c: &mut Chan, r: Reply, n: &mut Counts) {
    let (Some(seq), Some(epoch)) = (r.seq, r.epoch) else {
        // No position (a server without history): a fresh stream starts at
        // its first push; a resumed one goes on, so a gap counts as missing.
        n.no_position += 1;
        return;
    };
    match r.recovered {
        Some(true) => {
            n.recovered_true += 1;
            if c.epoch.as_deref() != Some(&*epoch) {
                n.epoch_mismatch += 1;
            }
        }
        other => {
            if other == Some(false) {
                n.recovered_false += 1;
            }
            if c.started {
                // Close the segment at what it received; the rest up to the
                // new position is excused (same stream) or lost for good.
                let top = c.next - 1;
                n.expected += top - c.s0;
                if c.epoch.as_deref() == Some(&*epoch) {
                    n.excused += seq.saturating_sub(top);
                }
            }
            c.started = true;
            c.s0 = seq;
            c.next = seq + 1;
            c.seen = 0;
            c.epoch = Some(epoch);
        }
    }
}

/// Order, loss and duplicate accounting of one push of seq `q`.
#[inline]
fn track(c: &mut Chan, q: u64, n: &mut Counts) {
    if q <= c.s0 {
        n.duplicated += 1;
    } else if q >= c.next {
        let shift = q - c.next + 1;
        c.seen = if shift >= 128 { 0 } else { c.seen << shift } | 1;
        c.next = q + 1;
        n.delivered += 1;
    } else {
        let d = c.next - 1 - q;
        if d < 128 && c.seen & (1 << d) != 0 {
            n.duplicated += 1;
        } else {
            n.out_of_order += 1;
            if d < 128 {
                c.seen |= 1 << d;
                n.delivered += 1;
            }
        }
    }
}

/// The publisher: one keep-alive HTTP/1.1 connection, pipelined requests
/// (answered in order), each `POST /publish/CHANNEL` with a JSON body
/// `{"t":"<CLOCK_MONOTONIC ns, 16 hex digits>"}`. Reopened after an error.
struct Publisher {
    sock: Option<TcpStream>,
    /// Per channel: the request, the body's timestamp at `stamp_at[ch]`.
    reqs: Vec<Vec<u8>>,
    stamp_at: Vec<usize>,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    /// Channels of the requests sent and not answered, in order.
    inflight: VecDeque<u32>,
    /// Per channel: the highest seq an answer named.
    last_seq: Vec<u64>,
    retry_at: u64,
}

impl Publisher {
    fn new(cfg: &ChurnConfig) -> Publisher {
        let mut reqs = Vec::new();
        let mut stamp_at = Vec::new();
        for ch in &cfg.channels {
            let mut r = Vec::new();
            r.extend_from_slice(b"POST /publish/");
            r.extend_from_slice(ch.as_bytes());
            r.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            r.extend_from_slice(cfg.api_host.as_bytes());
            if let Some(k) = &cfg.api_key {
                r.extend_from_slice(b"\r\nAuthorization: Bearer ");
                r.extend_from_slice(k.as_bytes());
            }
            let body = b"{\"t\":\"0000000000000000\"}";
            r.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
            r.extend_from_slice(body.len().to_string().as_bytes());
            r.extend_from_slice(b"\r\n\r\n");
            stamp_at.push(r.len() + 6);
            r.extend_from_slice(body);
            reqs.push(r);
        }
        Publisher {
            sock: None,
            reqs,
            stamp_at,
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            rbuf: Vec::with_capacity(64 * 1024),
            inflight: VecDeque::new(),
            last_seq: vec![0; cfg.channels.len()],
            retry_at: 0,
        }
    }

    fn open(&mut self, cx: &mut Cx) {
        let r = std::net::TcpStream::connect_timeout(
            &cx.cfg.api_addr,
            Duration::from_nanos(cx.cfg.handshake_timeout_ns.max(1)),
        )
        .and_then(|s| {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            let mut s = TcpStream::from_std(s);
            cx.poll.registry().register(
                &mut s,
                HTTP_TOKEN,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match r {
            Ok(s) => self.sock = Some(s),
            Err(e) => {
                bump(&mut cx.c.http_errors, format!("connect: {}", short(&e)));
                self.retry_at = now_ns() + 100_000_000;
            }
        }
    }

    /// Queue one publication on channel `ch`, stamped `now`.
    fn queue(&mut self, ch: u32, now: u64, cx: &mut Cx) {
        if self.sock.is_none() {
            if now < self.retry_at {
                bump(&mut cx.c.http_errors, "not connected");
                return;
            }
            self.open(cx);
            if self.sock.is_none() {
                bump(&mut cx.c.http_errors, "not connected");
                return;
            }
        }
        let r = &mut self.reqs[ch as usize];
        let at = self.stamp_at[ch as usize];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for k in 0..16 {
            r[at + k] = HEX[((now >> (60 - 4 * k)) & 15) as usize];
        }
        self.wbuf.extend_from_slice(r);
        self.inflight.push_back(ch);
        cx.c.published += 1;
    }

    /// Publishing is over and every request was answered (or given up).
    fn settled(&self) -> bool {
        self.inflight.is_empty()
    }

    fn die(&mut self, cx: &mut Cx, why: String) {
        if let Some(mut s) = self.sock.take() {
            let _ = cx.poll.registry().deregister(&mut s);
        }
        bump(&mut cx.c.http_errors, why);
        let n = self.inflight.len() as u64;
        if n > 0 {
            *cx.c.http_errors.entry("no answer".into()).or_insert(0) += n;
        }
        self.inflight.clear();
        self.wbuf.clear();
        self.wpos = 0;
        self.rbuf.clear();
        self.retry_at = now_ns() + 100_000_000;
    }

    fn flush(&mut self, cx: &mut Cx) {
        while self.wpos < self.wbuf.len() {
            let Some(s) = self.sock.as_mut() else { return };
            match s.write(&self.wbuf[self.wpos..]) {
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.die(cx, format!("write: {}", short(&e))),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
    }

    fn service(&mut self, scratch: &mut [u8], cx: &mut Cx) {
        self.flush(cx);
        loop {
            let Some(s) = self.sock.as_mut() else { return };
            match s.read(scratch) {
                Ok(0) => return self.die(cx, "closed by server".into()),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    self.parse(cx);
                    if n < scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.die(cx, format!("read: {}", short(&e))),
            }
        }
    }

    fn parse(&mut self, cx: &mut Cx) {
        let mut off = 0;
        loop {
            match wire::parse_http_reply(&self.rbuf[off..]) {
                HttpReply::Partial => break,
                HttpReply::Bad(why) => return self.die(cx, why.into()),
                HttpReply::Done {
                    status,
                    seq,
                    consumed,
                    ..
                } => {
                    off += consumed;
                    let Some(ch) = self.inflight.pop_front() else {
                        return self.die(cx, "answer to no request".into());
                    };
                    match (status, seq) {
                        (200, Some(q)) => {
                            cx.c.publish_ok += 1;
                            let l = &mut self.last_seq[ch as usize];
                            *l = (*l).max(q);
                        }
                        (200, None) => bump(&mut cx.c.http_errors, "200 without seq"),
                        _ => bump(&mut cx.c.http_errors, format!("http {status}")),
                    }
                }
            }
        }
        self.rbuf.drain(..off);
    }
}

/// Run `wsload churn`; returns the exit status.
pub fn main(a: &Args) -> i32 {
    let cfg = match build(a) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("wsload: {e}");
            return 2;
        }
    };
    let nofile = stats::raise_nofile();
    if cfg.subscribers as u64 + 64 > nofile {
        eprintln!(
            "wsload: warning: {} subscribers but only {nofile} open files allowed",
            cfg.subscribers
        );
    }
    let sh = Arc::new(Shared {
        go_ns: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        final_seq: cfg.channels.iter().map(|_| AtomicU64::new(0)).collect(),
        final_known: AtomicBool::new(false),
        caught_up: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        live: AtomicI64::new(0),
        received: AtomicU64::new(0),
        published: AtomicU64::new(0),
        recovered_false: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let cpu_start = stats::self_cpu_s();
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let gs: Vec<u32> = (0..cfg.subscribers)
            .filter(|g| *g as usize % cfg.threads == t)
            .collect();
        let seed = now_ns() ^ ((t as u64 + 1) << 20) ^ std::process::id() as u64;
        let w = match Worker::new(cfg.clone(), sh.clone(), &gs, seed) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("wsload: poll: {e}");
                return 2;
            }
        };
        handles.push(std::thread::spawn(move || w.run(t == 0)));
    }
    let progress = Mutex::new((now_ns(), 0u64));
    let t_start = now_ns();
    let tick = |phase: &str| {
        if a.quiet {
            return;
        }
        let mut p = progress.lock().unwrap();
        let now = now_ns();
        if now - p.0 < 1_000_000_000 {
            return;
        }
        let rcv = sh.received.load(Relaxed);
        let rate = (rcv - p.1) as f64 / ((now - p.0) as f64 / 1e9);
        *p = (now, rcv);
        eprintln!(
            "[{:6.1}s] {phase:<7} live {:>6}  published {:>8}  pushes/s {:>9.0}  reconnects {:>7}  recovered:false {}  errors {}",
            (now - t_start) as f64 / 1e9,
            sh.live.load(Relaxed),
            sh.published.load(Relaxed),
            rate,
            sh.reconnects.load(Relaxed),
            sh.recovered_false.load(Relaxed),
            sh.errors.load(Relaxed),
        );
    };
    while sh.ready.load(SeqCst) < cfg.threads {
        tick("connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    let live_at_go = sh.live.load(SeqCst);
    let server = a.server_pid;
    let cpu0 = stats::self_cpu_s();
    let scpu0 = server.and_then(stats::proc_cpu_s);
    let me = std::process::id();
    let wait0 = stats::proc_runq_wait_s(me).unwrap_or(0.0);
    let swait0 = server.and_then(stats::proc_runq_wait_s);
    let go = now_ns();
    sh.go_ns.store(go, SeqCst);
    let end = go + cfg.duration_ns;
    while now_ns() < end {
        tick("churn");
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_end = now_ns() + cfg.drain_ns;
    while sh.caught_up.load(SeqCst) < cfg.threads && now_ns() < drain_end {
        tick("drain");
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = now_ns();
    let cpu1 = stats::self_cpu_s();
    let scpu1 = server.and_then(stats::proc_cpu_s);
    let wait1 = stats::proc_runq_wait_s(me).unwrap_or(0.0);
    let swait1 = server.and_then(stats::proc_runq_wait_s);
    sh.stop.store(true, SeqCst);
    let mut c = Counts::new();
    for h in handles {
        match h.join() {
            Ok(t) => c.merge(&t),
            Err(_) => bump(&mut c.protocol_errors, "thread panicked"),
        }
    }
    let f: Vec<u64> = sh.final_seq.iter().map(|x| x.load(SeqCst)).collect();
    let mut o = Summary::default();
    let missing = c.expected.saturating_sub(c.delivered);
    let http_errors: u64 = c.http_errors.values().sum();
    let proto: u64 = c.protocol_errors.values().sum();
    let secs = cfg.duration_ns as f64 / 1e9;
    let q = |h: &Option<Histogram<u64>>, x: f64| {
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| (h.value_at_quantile(x) as f64 / 1e3).round())
            .unwrap_or(0.0)
    };
    let r3 = |x: f64| (x * 1e3).round() / 1e3;
    o.set("mode", json!("churn"));
    o.set("url", json!(a.url));
    o.set("subscribers", json!(cfg.subscribers));
    o.set("live_at_start", json!(live_at_go));
    o.set("channels", json!(cfg.channels.len()));
    o.set("channels_per_subscriber", json!(cfg.per_sub));
    o.set("rate", json!(cfg.rate));
    o.set("seconds", json!(secs));
    o.set("drop", json!(cfg.drop));
    o.set("drop_interval_s", json!(cfg.drop_interval_ns as f64 / 1e9));
    o.set("published", json!(c.published));
    o.set("publish_ok", json!(c.publish_ok));
    o.set("http_errors", json!(http_errors));
    o.set("http_failures", json!(c.http_errors));
    o.set("last_seqs", json!(f));
    o.set("drops_close", json!(c.drops_close));
    o.set("drops_reset", json!(c.drops_reset));
    o.set("reconnects", json!(c.reconnects));
    o.set("recovered_true", json!(c.recovered_true));
    o.set("recovered_false", json!(c.recovered_false));
    o.set("excused", json!(c.excused));
    o.set("expected", json!(c.expected));
    o.set("delivered", json!(c.delivered));
    o.set("received", json!(c.received));
    o.set("missing", json!(missing));
    o.set("duplicated", json!(c.duplicated));
    o.set("out_of_order", json!(c.out_of_order));
    o.set("unexpected", json!(c.unexpected));
    o.set("epoch_mismatch", json!(c.epoch_mismatch));
    o.set("no_position", json!(c.no_position));
    o.set("not_caught_up", json!(c.not_caught_up));
    o.set("retried", json!(c.retried));
    o.set("protocol_errors", json!(c.protocol_errors));
    o.set("delivery_p50_us", json!(q(&c.lat, 0.5)));
    o.set("delivery_p99_us", json!(q(&c.lat, 0.99)));
    o.set(
        "delivery_max_us",
        json!(c.lat.as_ref().map(|h| h.max() / 1000).unwrap_or(0)),
    );
    o.set("resume_p50_us", json!(q(&c.resume, 0.5)));
    o.set("resume_p99_us", json!(q(&c.resume, 0.99)));
    o.set(
        "resume_max_us",
        json!(c.resume.as_ref().map(|h| h.max() / 1000).unwrap_or(0)),
    );
    let measured = (drained - go) as f64 / 1e9;
    o.set("measured_s", json!(r3(measured)));
    o.set("drain_s", json!(r3((drained - end) as f64 / 1e9)));
    o.set("client_cpu_s", json!(r3(cpu1 - cpu0)));
    o.set(
        "client_cpu_total_s",
        json!(r3(stats::self_cpu_s() - cpu_start)),
    );
    o.set("client_cpu_util", json!(r3((cpu1 - cpu0) / measured)));
    let per = |cpu: f64| r3(cpu * 1e6 / c.received.max(1) as f64);
    o.set("client_cpu_us_per_push", json!(per(cpu1 - cpu0)));
    // Runnable but waiting for a core (a shared machine), over go → drained.
    o.set("client_runq_wait_s", json!(r3(wait1 - wait0)));
    if let (Some(s0), Some(s1)) = (scpu0, scpu1) {
        o.set("server_cpu_s", json!(r3(s1 - s0)));
        o.set("server_cpu_util", json!(r3((s1 - s0) / measured)));
        o.set("server_cpu_us_per_push", json!(per(s1 - s0)));
    }
    if let (Some(w0), Some(w1)) = (swait0, swait1) {
        o.set("server_runq_wait_s", json!(r3(w1 - w0)));
    }
    let errors = missing
        + c.duplicated
        + c.out_of_order
        + c.unexpected
        + c.epoch_mismatch
        + c.not_caught_up
        + http_errors
        + proto;
    o.set("errors", json!(errors));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&o.to_json()).unwrap());
    } else {
        print!("{}", crate::report::table(&o));
    }
    if errors > a.max_errors {
        eprintln!(
            "wsload: {errors} errors (missing, duplicated, out of order, unexpected, not caught up, HTTP or protocol errors; more than --max-errors {})",
            a.max_errors
        );
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan() -> Chan {
        Chan {
            ch: 0,
            epoch: Some("e".into()),
            started: true,
            s0: 10,
            next: 11,
            seen: 0,
            acked: true,
        }
    }

    #[test]
    fn tracking_counts_duplicates_reorders_and_gaps() {
        let mut n = Counts::new();
        let mut c = chan();
        for q in [11, 12, 14, 13, 13, 10, 15] {
            track(&mut c, q, &mut n);
        }
        assert_eq!((n.delivered, n.duplicated, n.out_of_order), (5, 2, 1));
        // A gap: 16 never comes.
        track(&mut c, 17, &mut n);
        assert_eq!(n.delivered, 6);
        assert_eq!(c.next, 18);
        // recovered:false at 30 closes the segment at 17 (expected 7 of
        // 11..=17, 6 delivered: one missing) and excuses 18..=30.
        subscribed(
            &mut c,
            Reply {
                ch: 0,
                seq: Some(30),
                epoch: Some("e".into()),
                recovered: Some(false),
            },
            &mut n,
        );
        assert_eq!((n.expected, n.excused, n.recovered_false), (7, 13, 1));
        assert_eq!((c.s0, c.next), (30, 31));
        track(&mut c, 31, &mut n);
        assert_eq!(n.delivered, 7);
        // recovered:true keeps the stream; another epoch is flagged.
        subscribed(
            &mut c,
            Reply {
                ch: 0,
                seq: Some(40),
                epoch: Some("f".into()),
                recovered: Some(true),
            },
            &mut n,
        );
        assert_eq!((n.recovered_true, n.epoch_mismatch, c.next), (1, 1, 32));
    }

    #[test]
    fn push_frames_are_found_in_place() {
        let f = br#"{"channel":"bench.12","seq":345,"data":{"t":"00000000000000ff"}}"#;
        assert_eq!(parse_push(f, b"bench."), Some((12, 345, Some(255))));
        assert_eq!(parse_push(f, b"other."), None);
        let g = br#"{"seq":7,"channel":"bench.0","data":"x"}"#;
        assert_eq!(parse_push(g, b"bench."), None); // seq before the channel
        let h = br#"{"channel":"bench.0","seq":7,"data":"x"}"#;
        assert_eq!(parse_push(h, b"bench."), Some((0, 7, None)));
    }
}
