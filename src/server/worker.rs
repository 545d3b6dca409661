//! One worker: a mio loop on its own thread that owns its connections.
//!
//! Each turn: poll; handle socket events (accept, read → decode → handler,
//! write when the socket drains); drain the hub's commands (broadcasts,
//! publications, targeted sends, closes) into connection queues; expire
//! deadlines; then flush every connection that has output, one `writev`
//! each; then remove the connections that ended.

use std::io::{self, Read};
use std::mem;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use super::config::Config;
use super::conn::{
    Conn, HttpState, Phase, CLOSE_AFTER_FLUSH, CLOSE_DONE, COUNTED, DIRTY, SLOW, UPGRADED,
    WRITE_INTEREST,
};
use super::handler::{CloseReason, ConnInfo, Context, Handler};
use super::hub::{self, Command, ConnId, Handle, LocalStats, WorkerPart, WorkerStats, WAKER_TOKEN};
use super::outbuf::{BufPool, Flushed, LocalFrame};
use super::response::Response;
use super::timers::{millis, Entry, TimerKind, Timers};
use super::topics::{Sub, Topics};
use crate::protocol::{
    close, encode, handshake, DecoderConfig, HttpError, Message, OpCode, ProtocolError, Role,
};

const LISTENER: Token = Token(usize::MAX - 2);
/// Reads per readiness event before yielding to other connections.
const MAX_READS_PER_EVENT: usize = 16;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Slab keys must fit the 24 bits a [`ConnId`] gives them.
const MAX_KEY: usize = 0xff_ffff;

/// One worker: its poll, its listener, its handler. Built by
/// [`Server`](super::Server); run it with [`Worker::run`] on any thread.
pub struct Worker<H: Handler> {
    index: usize,
    cfg: Arc<Config>,
    handle: Handle,
    part: WorkerPart,
    listener: Option<TcpListener>,
    /// This worker accepts for all workers (no SO_REUSEPORT).
    distribute: bool,
    handler: H,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        cfg: Arc<Config>,
        handle: Handle,
        part: WorkerPart,
        socket: Option<std::net::TcpListener>,
        handler: H,
        distribute: bool,
    ) -> io::Result<Self> {
        let mut listener = socket.map(TcpListener::from_std);
        if let Some(l) = listener.as_mut() {
            part.poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(Worker {
            index,
            cfg,
            handle,
            part,
            listener,
            distribute,
            handler,
        })
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Run the loop on the current thread until the server shuts down and
    /// this worker's clients are gone (or the drain timeout passes).
    pub fn run(self) -> io::Result<()> {
        let Worker {
            index,
            cfg,
            handle,
            part,
            listener,
            distribute,
            handler,
        } = self;
        let WorkerPart {
            mut poll,
            rx,
            stats,
        } = part;
        hub::set_current_worker(handle.hub(), index);
        let registry = poll.registry().try_clone()?;
        let core = Core::new(index, cfg.clone(), handle, registry);
        let mut lp = Loop {
            core,
            app: App {
                handler,
                states: Vec::new(),
            },
            readbuf: vec![0; cfg.read_buffer.max(4096)],
            listener,
            distribute,
            next_target: 0,
            pending_reads: Vec::new(),
            accept_paused_until: None,
            last_accept_warning: None,
            drain_deadline: None,
        };
        lp.run(&mut poll, &rx, &stats)
    }
}

/// Everything of a worker except the application: connections, topics,
/// timers, queues, counters. Callbacks reach it through [`Context`].
pub(crate) struct Core {
    pub index: usize,
    pub handle: Handle,
    pub cfg: Arc<Config>,
    dec_cfg: DecoderConfig,
    registry: Registry,
    conns: Slab<Conn>,
    pub topics: Topics,
    timers: Timers,
    dirty: Vec<u32>,
    dead: Vec<u32>,
    pool: BufPool,
    stats: LocalStats,
    next_generation: u32,
    now: Instant,
    /// Start of the worker's millisecond clock (for `Conn::last_rx`).
    epoch: Instant,
    /// `now` on that clock.
    ms: u32,
    draining: bool,
}

/// The application side: the handler and each connection's state.
struct App<H: Handler> {
    handler: H,
    states: Vec<Option<H::Conn>>,
}

struct Loop<H: Handler> {
    core: Core,
    app: App<H>,
    readbuf: Vec<u8>,
    listener: Option<TcpListener>,
    distribute: bool,
    next_target: usize,
    pending_reads: Vec<usize>,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    drain_deadline: Option<Instant>,
}

/// What a read loop does after handing over one read.
enum After {
    /// Read again (same phase).
    More,
    /// The phase changed: resume reading next turn.
    Requeue,
    /// Stop reading (the connection is gone).
    Stop,
}

/// Queue a shared frame on an open connection and mark it for the flush.
#[inline]
fn push_frame(c: &mut Conn, key: usize, f: &LocalFrame, q: &mut Queues<'_>) {
    if c.phase != Phase::Open || c.has(SLOW) {
        return;
    }
    c.out.push_shared(f, q.pool);
    q.stats.messages_out_total += 1;
    after_push(c, key, q);
}

/// What a push needs besides the connection: the dirty list, the buffer
/// pool, the counters and the limit.
struct Queues<'a> {
    dirty: &'a mut Vec<u32>,
    pool: &'a mut BufPool,
    stats: &'a mut LocalStats,
    max_buffered: usize,
}

/// Mark the connection for the end-of-turn flush. If its backlog passed
/// `max_buffered`, write now: only a peer that still cannot take the bytes
/// is a slow consumer (a healthy client may get a large burst in one turn).
#[inline]
fn after_push(c: &mut Conn, key: usize, q: &mut Queues<'_>) {
    if c.out.len() > q.max_buffered && c.out.backlog() > q.max_buffered {
        if let Ok((n, _)) = c.out.write_to(&mut c.stream, q.pool) {
            q.stats.bytes_out_total += n as u64;
        }
        if c.out.backlog() > q.max_buffered {
            c.flags |= SLOW;
        }
    }
    if !c.has(DIRTY) {
        c.flags |= DIRTY;
        q.dirty.push(key as u32);
    }
}

impl Core {
    fn new(index: usize, cfg: Arc<Config>, handle: Handle, registry: Registry) -> Self {
        let dec_cfg = DecoderConfig {
            role: Role::Server,
            max_frame_size: cfg.max_message_size as u64,
            max_message_size: cfg.max_message_size as u64,
            allowed_rsv: 0,
        };
        Core {
            index,
            handle,
            cfg,
            dec_cfg,
            registry,
            conns: Slab::new(),
            topics: Topics::default(),
            timers: Timers::default(),
            dirty: Vec::new(),
            dead: Vec::new(),
            pool: BufPool::default(),
            stats: LocalStats::default(),
            next_generation: 0,
            now: Instant::now(),
            epoch: Instant::now(),
            ms: 0,
            draining: false,
        }
    }

    /// Read the clock once per turn.
    fn tick(&mut self) {
        self.now = Instant::now();
        // Milliseconds, wrapping: only differences are used.
        self.ms = self.now.duration_since(self.epoch).as_millis() as u32;
    }

    /// The worker-clock time `d` from now.
    fn after(&self, d: Duration) -> u32 {
        self.ms.wrapping_add(millis(d))
    }

    /// Arm the first heartbeat check of a newly opened connection.
    fn arm_heartbeat(&mut self, key: usize, generation: u32) {
        let first = match (self.cfg.ping_interval, self.cfg.idle_timeout) {
            (Some(p), Some(i)) => p.min(i),
            (Some(p), None) => p,
            (None, Some(i)) => i,
            (None, None) => return,
        };
        self.timers
            .add(TimerKind::Heartbeat, self.after(first), key, generation);
    }

    /// A heartbeat check came due: close an idle connection, ping a quiet
    /// one, and re-arm from its last activity.
    fn heartbeat(&mut self, key: usize) {
        let now_ms = self.ms;
        let (ping, idle) = (self.cfg.ping_interval, self.cfg.idle_timeout);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let silent = Duration::from_millis(now_ms.wrapping_sub(c.last_rx) as u64);
        let generation = c.generation;
        if idle.is_some_and(|i| silent >= i) {
            log::debug!(
                "conn {}: idle for {silent:?}, closing",
                ConnId::new(self.index, key, generation)
            );
            c.close_reason.get_or_insert(CloseReason::IdleTimeout);
            c.flags |= CLOSE_DONE;
            self.linger(key);
            self.queue_raw(key, |v| {
                encode::close_into(v, Some(close::GOING_AWAY), "idle timeout")
            });
            return;
        }
        let mut next = Duration::MAX;
        if let Some(p) = ping {
            if silent >= p {
                self.queue_raw(key, |v| encode::frame_into(v, OpCode::Ping, b""));
                next = p;
            } else {
                next = p - silent;
            }
        }
        if let Some(i) = idle {
            next = next.min(i - silent);
        }
        self.timers
            .add(TimerKind::Heartbeat, self.after(next), key, generation);
    }

    /// The slab key of a live connection with this id.
    pub fn lookup(&self, id: ConnId) -> Option<usize> {
        if id.worker() != self.index {
            return None;
        }
        let key = id.key();
        let c = self.conns.get(key)?;
        (c.generation == id.generation() && c.phase != Phase::Dead).then_some(key)
    }

    fn id_of(&self, key: usize) -> ConnId {
        ConnId::new(
            self.index,
            key,
            self.conns.get(key).map(|c| c.generation).unwrap_or(0),
        )
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.has(DIRTY) {
                c.flags |= DIRTY;
                self.dirty.push(key as u32);
            }
        }
    }

    /// Encode a message into the connection's own buffer (no shared frame).
    pub fn queue_owned(&mut self, key: usize, op: OpCode, payload: &[u8]) {
        let max = self.cfg.max_buffered;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase != Phase::Open || c.has(SLOW) {
            return;
        }
        c.out
            .push_owned(&mut self.pool, |v| encode::frame_into(v, op, payload));
        self.stats.messages_out_total += 1;
        if c.out.backlog() > max {
            c.flags |= SLOW;
        }
        self.mark_dirty(key);
    }

    /// Queue a shared frame on one connection.
    pub fn queue_shared(&mut self, key: usize, f: &LocalFrame) {
        let max = self.cfg.max_buffered;
        if let Some(c) = self.conns.get_mut(key) {
            let mut q = Queues {
                dirty: &mut self.dirty,
                pool: &mut self.pool,
                stats: &mut self.stats,
                max_buffered: max,
            };
            push_frame(c, key, f, &mut q);
        }
    }

    /// Queue bytes whatever the phase (close frames, HTTP answers).
    fn queue_raw(&mut self, key: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let max = self.cfg.max_buffered;
        if let Some(c) = self.conns.get_mut(key) {
            c.out.push_owned(&mut self.pool, fill);
            // Replies the peer triggers itself (pongs, control answers) count
            // against the limit too: a peer that sends but never reads is a
            // slow consumer like any other.
            if matches!(c.phase, Phase::Open | Phase::Closing) && c.out.backlog() > max {
                let mut q = Queues {
                    dirty: &mut self.dirty,
                    pool: &mut self.pool,
                    stats: &mut self.stats,
                    max_buffered: max,
                };
                after_push(c, key, &mut q);
                return;
            }
        }
        self.mark_dirty(key);
    }

    pub fn buffered(&self, key: usize) -> usize {
        self.conns.get(key).map(|c| c.out.len()).unwrap_or(0)
    }

    pub fn subscribe(&mut self, key: usize, topic: &str) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if !matches!(c.phase, Phase::Open) {
            return false;
        }
        if let Some(id) = self.topics.id(topic) {
            if c.subs.iter().any(|s| s.topic == id) {
                return false;
            }
        }
        let sub = self.topics.subscribe(topic, key);
        c.subs.push(sub);
        self.handle.hub().subscription_changed(topic, self.index, 1);
        true
    }

    pub fn peer_addr(&self, key: usize) -> Option<std::net::SocketAddr> {
        self.conns.get(key).and_then(|c| c.stream.peer_addr().ok())
    }

    pub fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let Some(id) = self.topics.id(topic) else {
            return false;
        };
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(i) = c.subs.iter().position(|s| s.topic == id) else {
            return false;
        };
        let sub = c.subs.swap_remove(i);
        self.drop_sub(sub);
        true
    }

    pub fn subscription_count(&self, key: usize) -> usize {
        self.conns.get(key).map(|c| c.subs.len()).unwrap_or(0)
    }

    /// Remove a subscription from its topic and fix the position recorded by
    /// the connection whose entry moved into its place.
    fn drop_sub(&mut self, sub: Sub) {
        if let Some(name) = self.topics.name(sub.topic) {
            self.handle
                .hub()
                .subscription_changed(&name, self.index, -1);
        }
        if let Some((moved, pos)) = self.topics.unsubscribe(sub) {
            if let Some(mc) = self.conns.get_mut(moved) {
                for s in mc.subs.iter_mut().filter(|s| s.topic == sub.topic) {
                    s.pos = pos;
                }
            }
        }
    }

    /// Start a close handshake from our side.
    pub fn close_conn(&mut self, key: usize, code: u16, reason: &str, why: CloseReason) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.phase {
            Phase::Open => {
                c.close_reason.get_or_insert(why);
                c.phase = Phase::Closing;
                let generation = c.generation;
                self.queue_raw(key, |v| encode::close_into(v, Some(code), reason));
                self.timers.add(
                    TimerKind::Closing,
                    self.after(self.cfg.close_timeout),
                    key,
                    generation,
                );
            }
            Phase::Http => self.kill(key, None),
            _ => {}
        }
    }

    /// The peer broke the protocol: send the close code and drop it after the flush.
    fn fail(&mut self, key: usize, e: ProtocolError) {
        log::debug!("conn {}: protocol error: {e}", self.id_of(key));
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.close_reason.get_or_insert(CloseReason::Protocol(e));
        let close_sent = c.phase == Phase::Closing;
        self.linger(key);
        if !close_sent {
            self.queue_raw(key, |v| {
                encode::close_into(v, Some(e.close_code()), e.reason())
            });
        }
    }

    /// Mark the connection for removal at the end of the turn.
    fn kill(&mut self, key: usize, reason: Option<CloseReason>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Dead {
            return;
        }
        if c.close_reason.is_none() {
            c.close_reason = reason;
        }
        c.phase = Phase::Dead;
        self.dead.push(key as u32);
    }

    /// Write an HTTP response; with `close`, end the connection after it.
    fn respond(&mut self, key: usize, resp: &Response, close: bool) {
        self.stats.refused(resp.status);
        self.queue_raw(key, |v| resp.write_to(v, close));
        if close {
            self.linger(key);
        }
    }

    /// Our last bytes are (or are about to be) queued: flush them, shut
    /// down our side and drop the connection when the peer closes, or at
    /// the close timeout whatever happens (a peer that stops reading cannot
    /// hold the connection and its queue).
    fn linger(&mut self, key: usize) {
        let at = self.after(self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(key) {
            if c.phase == Phase::Lingering || c.phase == Phase::Dead {
                return;
            }
            c.phase = Phase::Lingering;
            c.flags |= CLOSE_AFTER_FLUSH;
            c.http = None;
            let generation = c.generation;
            self.timers.add(TimerKind::Closing, at, key, generation);
        }
    }

    fn set_interest(&mut self, key: usize, writable: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self
            .registry
            .reregister(&mut c.stream, Token(key), interest)
            .is_ok()
        {
            if writable {
                c.flags |= WRITE_INTEREST;
            } else {
                c.flags &= !WRITE_INTEREST;
            }
        }
    }

    /// Write what the connection has queued (one `writev` per 64 chunks).
    fn flush(&mut self, key: usize) {
        let close_at = self.after(self.cfg.close_timeout);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Dead {
            return;
        }
        let mut slow = false;
        if c.has(SLOW) {
            c.flags &= !SLOW;
            slow = true;
            log::debug!(
                "conn {}: slow consumer ({} bytes queued)",
                ConnId::new(self.index, key, c.generation),
                c.out.len()
            );
            c.close_reason.get_or_insert(CloseReason::SlowConsumer);
            c.out.discard_unstarted(&mut self.pool);
            c.out.push_owned(&mut self.pool, |v| {
                encode::close_into(v, Some(close::POLICY_VIOLATION), "slow consumer")
            });
            if c.phase == Phase::Open {
                c.phase = Phase::Closing;
                self.timers
                    .add(TimerKind::Closing, close_at, key, c.generation);
            }
        }
        match c.out.write_to(&mut c.stream, &mut self.pool) {
            Ok((n, Flushed::All)) => {
                self.stats.bytes_out_total += n as u64;
                if c.has(CLOSE_DONE) {
                    return self.kill(key, None);
                }
                if c.has(CLOSE_AFTER_FLUSH) {
                    // The close deadline was set when it began to linger.
                    c.flags &= !CLOSE_AFTER_FLUSH;
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
                if self.conns.get(key).is_some_and(|c| c.has(WRITE_INTEREST)) {
                    self.set_interest(key, false);
                }
            }
            Ok((n, Flushed::Blocked)) => {
                self.stats.bytes_out_total += n as u64;
                if slow {
                    // Even the close frame does not fit: drop the TCP connection.
                    self.kill(key, Some(CloseReason::SlowConsumer));
                } else if !c.has(WRITE_INTEREST) {
                    self.set_interest(key, true);
                }
            }
            Err(e) => {
                log::debug!(
                    "conn {}: write: {e}",
                    ConnId::new(self.index, key, c.generation)
                );
                self.kill(key, Some(CloseReason::Abnormal));
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = mem::take(&mut self.dirty);
        for &key in &dirty {
            let key = key as usize;
            if let Some(c) = self.conns.get_mut(key) {
                c.flags &= !DIRTY;
                self.flush(key);
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// A deadline passed.
    fn expire(&mut self, e: Entry) {
        let key = e.key as usize;
        let Some(c) = self.conns.get(key) else { return };
        if c.generation != e.generation {
            return;
        }
        match (e.kind, c.phase) {
            (TimerKind::Handshake, Phase::Http) => {
                if let Some(h) = c.http.as_ref() {
                    if (h.deadline.wrapping_sub(self.ms) as i32) > 0 {
                        // A later request on this keep-alive connection moved
                        // the deadline: wait for it.
                        let (at, generation) = (h.deadline, c.generation);
                        self.timers.add(TimerKind::Handshake, at, key, generation);
                        return;
                    }
                }
                log::debug!("conn {}: handshake timeout", self.id_of(key));
                self.stats.closed_handshake_timeout_total += 1;
                self.kill(key, None);
            }
            (TimerKind::Heartbeat, Phase::Open) => self.heartbeat(key),
            (TimerKind::Closing, Phase::Closing | Phase::Lingering) => {
                log::debug!("conn {}: close timeout", self.id_of(key));
                self.kill(key, Some(CloseReason::Abnormal));
            }
            _ => {}
        }
    }

    fn broadcast(&mut self, frame: super::hub::Frame) {
        self.stats.publications_total += 1;
        let f: LocalFrame = Rc::new(frame.into_shared());
        let max = self.cfg.max_buffered;
        let mut q = Queues {
            dirty: &mut self.dirty,
            pool: &mut self.pool,
            stats: &mut self.stats,
            max_buffered: max,
        };
        for (key, c) in self.conns.iter_mut() {
            push_frame(c, key, &f, &mut q);
        }
    }

    fn publish(&mut self, topic: &str, frame: super::hub::Frame) {
        self.stats.publications_total += 1;
        let Some(id) = self.topics.id(topic) else {
            return;
        };
        let f: LocalFrame = Rc::new(frame.into_shared());
        let max = self.cfg.max_buffered;
        let mut q = Queues {
            dirty: &mut self.dirty,
            pool: &mut self.pool,
            stats: &mut self.stats,
            max_buffered: max,
        };
        for &key in self.topics.subscribers(id) {
            if let Some(c) = self.conns.get_mut(key as usize) {
                push_frame(c, key as usize, &f, &mut q);
            }
        }
    }
}

impl<H: Handler> App<H> {
    fn state_slot(&mut self, key: usize) -> &mut Option<H::Conn> {
        if self.states.len() <= key {
            self.states.resize_with(key + 1, || None);
        }
        &mut self.states[key]
    }

    /// Refuse a request with the handler's response for the error.
    fn refuse(&mut self, core: &mut Core, key: usize, e: HttpError) {
        log::debug!("conn {}: refused: {e}", core.id_of(key));
        let resp = self.handler.on_refuse(e);
        core.respond(key, &resp, true);
    }

    /// Serve what the connection has sent while it speaks HTTP: refusals,
    /// plain requests (keep-alive), or the upgrade.
    fn serve_http(&mut self, core: &mut Core, key: usize, mut hs: Box<HttpState>) {
        let cfg = core.cfg.clone();
        // Start of the current request in `hs.buf` (pipelined requests are
        // served in place; the buffer is compacted once at the end).
        let mut off = 0;
        loop {
            let (req, consumed) = match hs.parser.parse(&cfg.http, &hs.buf[off..]) {
                Ok(Some(done)) => done,
                Ok(None) => {
                    hs.buf.drain(..off);
                    if let Some(c) = core.conns.get_mut(key) {
                        c.http = Some(hs);
                    }
                    return;
                }
                Err(e) => return self.refuse(core, key, e),
            };
            let id = core.id_of(key);
            let peer = Some(hs.peer);
            if !handshake::is_upgrade(&req) {
                core.stats.http_requests_total += 1;
                let info = ConnInfo {
                    id,
                    peer,
                    protocol: None,
                };
                let resp = self
                    .handler
                    .on_http(&req, &info, &mut Context { core, key, id })
                    .for_method(req.method);
                let keep = req.keep_alive() && !resp.close && !core.draining;
                core.respond(key, &resp, !keep);
                if !keep {
                    return;
                }
                if core.buffered(key) > cfg.max_buffered {
                    // Pipelined requests whose answers are not being read.
                    log::debug!("conn {id}: pipelined answers over the buffer limit, closing");
                    return core.linger(key);
                }
                off += consumed;
                hs.parser.reset();
                // The deadline moves; the timer entry re-arms itself when it fires.
                hs.deadline = core.after(cfg.handshake_timeout);
                continue;
            }
            let acc = match handshake::validate(&req, &cfg.handshake) {
                Ok(acc) => acc,
                Err(e) => return self.refuse(core, key, e),
            };
            let info = ConnInfo {
                id,
                peer,
                protocol: acc.protocol,
            };
            let state = match self
                .handler
                .on_upgrade(&req, &info, &mut Context { core, key, id })
            {
                Ok(state) => state,
                Err(resp) => {
                    log::debug!("conn {id}: upgrade refused by handler: {}", resp.status);
                    return core.respond(key, &resp, true);
                }
            };
            let Some(c) = core.conns.get_mut(key) else {
                return;
            };
            if c.phase != Phase::Http {
                return;
            }
            c.phase = Phase::Open;
            c.flags |= UPGRADED;
            let generation = c.generation;
            c.last_rx = core.ms;
            core.arm_heartbeat(key, generation);
            core.stats.upgrades_total += 1;
            core.stats.websockets += 1;
            core.queue_raw(key, |v| handshake::write_accept(&acc, v));
            let slot = self.state_slot(key);
            *slot = Some(state);
            if let Some(mut st) = slot.take() {
                self.handler
                    .on_open(&mut st, &mut Context { core, key, id });
                *self.state_slot(key) = Some(st);
            }
            // A first frame may have come in the same packet as the request.
            if off + consumed < hs.buf.len() {
                let mut rest = mem::take(&mut hs.buf);
                self.process_ws(core, key, &mut rest[off + consumed..]);
            }
            return;
        }
    }

    /// Decode frames from `buf` and dispatch them.
    fn process_ws(&mut self, core: &mut Core, key: usize, buf: &mut [u8]) {
        let Some(c) = core.conns.get_mut(key) else {
            return;
        };
        let id = ConnId::new(core.index, key, c.generation);
        let mut dec = mem::take(&mut c.decoder);
        let mut state = self.state_slot(key).take();
        let mut off = 0;
        while off < buf.len() {
            let phase = core.conns.get(key).map(|c| c.phase).unwrap_or(Phase::Dead);
            if !matches!(phase, Phase::Open | Phase::Closing) {
                break;
            }
            let d = match dec.decode(&core.dec_cfg, &mut buf[off..]) {
                Ok(d) => d,
                Err(e) => {
                    core.fail(key, e);
                    break;
                }
            };
            off += d.consumed;
            let Some(msg) = d.message else { break };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    core.stats.messages_in_total += 1;
                    if phase == Phase::Open {
                        if let Some(st) = state.as_mut() {
                            self.handler
                                .on_message(st, msg, &mut Context { core, key, id });
                        }
                    }
                }
                Message::Ping(p) => {
                    if phase == Phase::Open {
                        core.queue_raw(key, |v| encode::frame_into(v, OpCode::Pong, p));
                    }
                }
                Message::Pong(_) => {}
                Message::Close(cf) => {
                    if let Some(c) = core.conns.get_mut(key) {
                        if phase == Phase::Open {
                            let code = cf.map(|f| f.code);
                            c.close_reason.get_or_insert(CloseReason::Client(code));
                            core.queue_raw(key, |v| encode::close_into(v, code, ""));
                        }
                    }
                    if let Some(c) = core.conns.get_mut(key) {
                        c.flags |= CLOSE_DONE;
                    }
                    core.linger(key);
                    core.mark_dirty(key);
                    break;
                }
            }
        }
        if dec.is_idle() {
            dec.release_buffers();
        }
        if let Some(c) = core.conns.get_mut(key) {
            c.decoder = dec;
        }
        *self.state_slot(key) = state;
    }
}

impl<H: Handler> Loop<H> {
    fn run(
        &mut self,
        poll: &mut Poll,
        rx: &Receiver<Command>,
        stats: &WorkerStats,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let now = Instant::now();
            let mut timeout = self.core.timers.next_timeout(
                self.core
                    .ms
                    .wrapping_add(millis(now.saturating_duration_since(self.core.now))),
            );
            let mut sooner = |t: Option<Instant>| {
                if let Some(t) = t {
                    let d = t.saturating_duration_since(now);
                    timeout = Some(timeout.map_or(d, |x| x.min(d)));
                }
            };
            sooner(self.accept_paused_until);
            sooner(self.drain_deadline);
            if !self.pending_reads.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.core.tick();

            let mut accept_ready = false;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => accept_ready = true,
                    WAKER_TOKEN => {}
                    Token(key) => {
                        if ev.is_writable() {
                            self.core.flush(key);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(key);
                        }
                    }
                }
            }
            for key in mem::take(&mut self.pending_reads) {
                self.on_readable(key);
            }
            if self.accept_paused_until.is_some_and(|t| t <= self.core.now) {
                self.accept_paused_until = None;
                accept_ready = true;
            }
            if accept_ready && self.accept_paused_until.is_none() {
                self.accept();
            }

            self.core.handle.hub().clear_notified(self.core.index);
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }

            self.core.timers.expire(self.core.ms, &mut expired);
            for e in expired.drain(..) {
                self.core.expire(e);
            }

            // Flush, reap, and take the commands this worker posted to itself
            // meanwhile (e.g. from `on_close`): its own posts do not wake it.
            loop {
                self.core.flush_dirty();
                self.reap();
                while let Ok(cmd) = rx.try_recv() {
                    self.command(cmd);
                }
                if self.core.dirty.is_empty() && self.core.dead.is_empty() {
                    break;
                }
            }
            self.core.stats.connections = self.core.conns.len() as u64;
            self.core.stats.topics = self.core.topics.len() as u64;
            self.core.stats.store(stats);

            if let Some(deadline) = self.drain_deadline {
                if self.core.conns.is_empty() {
                    return Ok(());
                }
                if self.core.now >= deadline {
                    let keys: Vec<usize> = self.core.conns.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.core.kill(k, Some(CloseReason::Shutdown));
                    }
                    self.reap();
                    self.core.stats.connections = self.core.conns.len() as u64;
                    self.core.stats.store(stats);
                    return Ok(());
                }
            }
            if self.core.conns.is_empty() {
                self.core.timers.shrink();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.core.stats.accepted_total += 1;
                    if self.distribute {
                        let n = self.core.handle.workers();
                        let target = self.next_target % n;
                        self.next_target = self.next_target.wrapping_add(1);
                        if target != self.core.index {
                            let std_stream: std::net::TcpStream = stream.into();
                            self.core
                                .handle
                                .hub()
                                .post(target, Command::Adopt(std_stream, peer));
                            continue;
                        }
                    }
                    self.adopt(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.core.stats.accept_errors_total += 1;
                    let fd_shortage = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    let now = self.core.now;
                    if self
                        .last_accept_warning
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_accept_warning = Some(now);
                        log::warn!(
                            "worker {}: accept failed: {e}; pausing accepts for {:?} ({} accept errors so far)",
                            self.core.index,
                            ACCEPT_PAUSE,
                            self.core.stats.accept_errors_total
                        );
                    }
                    let _ = fd_shortage;
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Take a freshly accepted socket into this worker.
    fn adopt(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        let core = &mut self.core;
        if core.draining || core.conns.len() >= MAX_KEY {
            return;
        }
        let _ = stream.set_nodelay(true);
        let hub = core.handle.hub().clone();
        let over = hub.open.fetch_add(1, Ordering::Relaxed) >= core.cfg.max_connections;
        if over {
            hub.open.fetch_sub(1, Ordering::Relaxed);
        }
        let deadline = core.after(core.cfg.handshake_timeout);
        let entry = core.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = core
            .registry
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            log::warn!("register: {e}");
            if !over {
                hub.open.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        core.next_generation = core.next_generation.wrapping_add(1);
        let mut conn = Conn::new(stream, core.next_generation);
        if !over {
            conn.flags |= COUNTED;
            conn.http = Some(Box::new(HttpState {
                parser: Default::default(),
                buf: Vec::new(),
                deadline,
                peer,
            }));
        }
        let generation = conn.generation;
        entry.insert(conn);
        if over {
            log::debug!(
                "refusing connection: at --max-connections ({})",
                core.cfg.max_connections
            );
            let resp = Response::text(503, "server at connection limit\n");
            core.respond(key, &resp, true);
        } else {
            core.timers
                .add(TimerKind::Handshake, deadline, key, generation);
        }
    }

    fn on_readable(&mut self, key: usize) {
        let Some(phase) = self.core.conns.get(key).map(|c| c.phase) else {
            return;
        };
        match phase {
            Phase::Dead => {}
            Phase::Http => self.read_loop(key, None, |core, app, key, bytes| {
                let Some(hs) = core.conns.get_mut(key).and_then(|c| c.http.take()) else {
                    core.kill(key, None);
                    return After::Stop;
                };
                let mut hs = hs;
                hs.buf.extend_from_slice(bytes);
                app.serve_http(core, key, hs);
                match core.conns.get(key).map(|c| c.phase) {
                    Some(Phase::Http) => After::More,
                    // Upgraded (or done) with maybe more bytes in the socket:
                    // the edge is consumed, so read on next turn in the new phase.
                    _ => After::Requeue,
                }
            }),
            Phase::Open | Phase::Closing => {
                self.read_loop(key, Some(CloseReason::Abnormal), |core, app, key, bytes| {
                    core.stats.bytes_in_total += bytes.len() as u64;
                    if let Some(c) = core.conns.get_mut(key) {
                        c.last_rx = core.ms;
                    }
                    app.process_ws(core, key, bytes);
                    match core.conns.get(key).map(|c| c.phase) {
                        Some(Phase::Open | Phase::Closing) => After::More,
                        _ => After::Requeue,
                    }
                })
            }
            // After our final bytes: read and discard until the peer closes.
            Phase::Lingering => self.read_loop(key, None, |_, _, _, _| After::More),
        }
    }

    /// Read until the socket is drained (`WouldBlock` or a short read), at
    /// most `MAX_READS_PER_EVENT` times (then resume next turn, for
    /// fairness), handing each read to `each`. EOF or an error kill the
    /// connection with `gone` as its reason.
    fn read_loop(
        &mut self,
        key: usize,
        gone: Option<CloseReason>,
        mut each: impl FnMut(&mut Core, &mut App<H>, usize, &mut [u8]) -> After,
    ) {
        let Loop {
            core,
            app,
            readbuf,
            pending_reads,
            ..
        } = self;
        for _ in 0..MAX_READS_PER_EVENT {
            let Some(c) = core.conns.get_mut(key) else {
                return;
            };
            match c.stream.read(readbuf) {
                Ok(0) => return core.kill(key, gone),
                Ok(n) => {
                    let full = n == readbuf.len();
                    match each(core, app, key, &mut readbuf[..n]) {
                        _ if !full => return,
                        After::More => {}
                        After::Requeue => break,
                        After::Stop => return,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return core.kill(key, gone),
            }
        }
        pending_reads.push(key);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Broadcast(frame) => self.core.broadcast(frame),
            Command::Publish(topic, frame) => self.core.publish(&topic, frame),
            Command::Send(id, frame) => {
                if let Some(key) = self.core.lookup(id) {
                    let f: LocalFrame = Rc::new(frame.into_shared());
                    self.core.queue_shared(key, &f);
                }
            }
            Command::Close(id, code, reason) => {
                if let Some(key) = self.core.lookup(id) {
                    self.core
                        .close_conn(key, code, &reason, CloseReason::Server(code));
                }
            }
            Command::Adopt(stream, peer) => self.adopt(TcpStream::from_std(stream), peer),
            Command::Shutdown => self.begin_drain(),
        }
    }

    /// Stop accepting and send close 1001 to every client.
    fn begin_drain(&mut self) {
        if self.core.draining {
            return;
        }
        self.core.draining = true;
        let now = self.core.now;
        self.drain_deadline = Some(
            now.checked_add(self.core.cfg.drain_timeout)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 86400)),
        );
        if let Some(mut l) = self.listener.take() {
            let _ = self.core.registry.deregister(&mut l);
        }
        let keys: Vec<(usize, Phase)> = self.core.conns.iter().map(|(k, c)| (k, c.phase)).collect();
        for (key, phase) in keys {
            match phase {
                Phase::Open => self.core.close_conn(
                    key,
                    close::GOING_AWAY,
                    "server shutting down",
                    CloseReason::Shutdown,
                ),
                Phase::Http => self.core.kill(key, None),
                _ => {}
            }
        }
        log::info!(
            "worker {}: draining {} connections",
            self.core.index,
            self.core.conns.len()
        );
    }

    /// Remove the connections that ended this turn, telling the handler.
    fn reap(&mut self) {
        while let Some(key) = self.core.dead.pop() {
            let key = key as usize;
            let Some(c) = self.core.conns.get(key) else {
                continue;
            };
            let reason = c.close_reason;
            let flags = c.flags;
            let id = ConnId::new(self.core.index, key, c.generation);
            if flags & UPGRADED != 0 {
                let reason = reason.unwrap_or(CloseReason::Abnormal);
                let s = &mut self.core.stats;
                match reason {
                    CloseReason::Client(_) => s.closed_client_total += 1,
                    CloseReason::Server(_) => s.closed_server_total += 1,
                    CloseReason::Protocol(_) => s.closed_protocol_error_total += 1,
                    CloseReason::SlowConsumer => s.closed_slow_consumer_total += 1,
                    CloseReason::IdleTimeout => s.closed_idle_timeout_total += 1,
                    CloseReason::Shutdown => s.closed_shutdown_total += 1,
                    CloseReason::Abnormal => s.closed_abnormal_total += 1,
                }
                s.websockets = s.websockets.saturating_sub(1);
                if let Some(mut st) = self.app.state_slot(key).take() {
                    let core = &mut self.core;
                    self.app
                        .handler
                        .on_close(&mut st, reason, &mut Context { core, key, id });
                }
            }
            let mut c = self.core.conns.remove(key);
            for sub in mem::take(&mut c.subs) {
                self.core.drop_sub(sub);
            }
            c.out.clear(&mut self.core.pool);
            let _ = self.core.registry.deregister(&mut c.stream);
            if flags & COUNTED != 0 {
                self.core.handle.hub().open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
