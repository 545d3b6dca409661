//! One worker: a mio loop on its own thread that owns its connections.
//!
//! Each turn: poll; handle socket events (accept, read → decode → handler,
//! write when the socket drains); drain the hub's commands (broadcasts,
//! publications, targeted sends, closes) into connection queues; expire
//! deadlines; then flush every connection that has output, one `writev`
//! each; then remove the connections that ended.

use std::io;
use std::mem;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::config::Config;
use super::conn::{Conn, HttpState, Phase, COUNTED, UPGRADED};
use super::core::{Cause, Core};
use super::dispatch::App;
use super::handler::{CloseReason, Context, Handler};
use super::hub::{self, Command, ConnId, Handle, WorkerPart, WorkerStats, WAKER_TOKEN};
use super::outbuf::LocalFrame;
use super::response::Response;
use super::timers::{millis, TimerKind};
use super::transport;
use crate::protocol::close;

const LISTENER: Token = Token(usize::MAX - 2);
/// Reads per readiness event before yielding to other connections.
const MAX_READS_PER_EVENT: usize = 16;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often worker 0 runs the broker's upkeep (history expiry).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
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
                states: Vec::with_capacity(super::timers::reserve_for::<Option<H::Conn>>()),
            },
            readbuf: vec![0; cfg.read_buffer.max(4096)],
            listener,
            distribute,
            next_target: 0,
            accept_paused_until: None,
            last_accept_warning: None,
            drain_deadline: None,
            last_upkeep: Instant::now(),
        };
        lp.run(&mut poll, &rx, &stats)
    }
}

struct Loop<H: Handler> {
    core: Core,
    app: App<H>,
    readbuf: Vec<u8>,
    listener: Option<TcpListener>,
    distribute: bool,
    next_target: usize,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    drain_deadline: Option<Instant>,
    last_upkeep: Instant,
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
            if self.core.index == 0 {
                // Worker 0 runs the broker's upkeep about once a second.
                sooner(Some(self.last_upkeep + UPKEEP_EVERY));
            }
            sooner(self.drain_deadline);
            if !self.core.pending_reads.is_empty() {
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
            for key in mem::take(&mut self.core.pending_reads) {
                self.resume(key as usize);
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
            self.core.deliver_run();

            if self.core.index == 0 && self.core.now >= self.last_upkeep + UPKEEP_EVERY {
                self.last_upkeep = self.core.now;
                self.core.handle.broker().maintain();
            }

            self.core.timers.expire(self.core.ms, &mut expired);
            for e in expired.drain(..) {
                if e.kind == TimerKind::App {
                    self.app.timer(&mut self.core, e);
                } else {
                    self.core.expire(e);
                }
            }

            // Flush, reap, and take the commands this worker posted to itself
            // meanwhile (e.g. from `on_close`): its own posts do not wake it.
            loop {
                self.core.flush_dirty();
                self.reap();
                while let Ok(cmd) = rx.try_recv() {
                    self.command(cmd);
                }
                self.core.deliver_run();
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
        if !super::listener::NODELAY_INHERITED {
            let _ = stream.set_nodelay(true);
        }
        let hub = core.handle.hub().clone();
        let over = hub.open.fetch_add(1, Ordering::Relaxed) >= core.cfg.max_connections;
        if over {
            hub.open.fetch_sub(1, Ordering::Relaxed);
        }
        // Over the limit, a few plain HTTP connections (the backend's API
        // calls, health checks) are still served from the reserve.
        let reserve = over && hub.reserve.fetch_add(1, Ordering::Relaxed) < core.cfg.http_reserve;
        let slot = match (over, reserve) {
            (true, true) => Some(hub::ReserveSlot(hub.clone())),
            (true, false) => {
                hub.reserve.fetch_sub(1, Ordering::Relaxed);
                None
            }
            _ => None,
        };
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
        if !over || reserve {
            if !over {
                conn.flags |= COUNTED;
            }
            conn.http = Some(Box::new(HttpState {
                parser: Default::default(),
                buf: Vec::new(),
                deadline,
                peer,
                head_checked: false,
                reserve: slot,
                awaiting: None,
            }));
        }
        #[cfg(feature = "tls")]
        if let Some(acceptor) = core.cfg.tls.as_ref() {
            match acceptor.accept() {
                Ok(t) => conn.tls = Some(t),
                Err(e) => {
                    log::warn!("TLS state for a new connection: {e}");
                    let _ = core.registry.deregister(&mut conn.stream);
                    if !over {
                        hub.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
        let generation = conn.generation;
        entry.insert(conn);
        if over && !reserve {
            log::debug!(
                "refusing connection: at --max-connections ({}) and the HTTP reserve is full",
                core.cfg.max_connections
            );
            let resp = Response::text(503, "server at connection limit\n");
            core.respond(key, &resp, true);
        } else {
            core.timers
                .add(TimerKind::Handshake, deadline, key, generation);
        }
    }

    /// Read again from a connection whose read was cut short for fairness or
    /// paused by backpressure; an HTTP connection first serves the requests
    /// it had already received.
    fn resume(&mut self, key: usize) {
        let leftover = self.core.conns.get(key).is_some_and(|c| {
            c.phase == Phase::Http && c.http.as_ref().is_some_and(|h| !h.buf.is_empty())
        });
        if leftover && !self.core.paused(key) {
            let before = self.core.held(key);
            if let Some(hs) = self.core.conns.get_mut(key).and_then(|c| c.http.take()) {
                self.app.serve_http(&mut self.core, key, hs, &mut []);
            }
            self.core.settle_pending(key, before);
        }
        self.on_readable(key);
    }

    fn on_readable(&mut self, key: usize) {
        let Some(phase) = self.core.conns.get(key).map(|c| c.phase) else {
            return;
        };
        if self.core.paused(key) {
            // Backpressure: its own replies are not being read. The flush
            // that drains them schedules a read.
            return;
        }
        if self
            .core
            .conns
            .get(key)
            .is_some_and(|c| c.http.as_ref().is_some_and(|h| h.awaiting.is_some()))
        {
            // A deferred answer is still to come; its arrival reads on.
            return;
        }
        match phase {
            Phase::Dead => {}
            Phase::Http => self.read_loop(key, None, |core, app, key, bytes| {
                let before = core.held(key);
                let Some(hs) = core.conns.get_mut(key).and_then(|c| c.http.take()) else {
                    core.kill(key, None);
                    return After::Stop;
                };
                app.serve_http(core, key, hs, bytes);
                core.settle_pending(key, before);
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
                    let before = core.held(key);
                    app.process_ws(core, key, bytes);
                    core.settle_pending(key, before);
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
            core, app, readbuf, ..
        } = self;
        for _ in 0..MAX_READS_PER_EVENT {
            let Some(c) = core.conns.get_mut(key) else {
                return;
            };
            let read = transport::read(c, readbuf);
            if transport::wants_write(c) {
                // TLS has handshake bytes or an alert to send.
                core.mark_dirty(key);
            }
            match read {
                Ok((0, _)) => return core.kill(key, gone),
                Ok((n, more)) => {
                    let full = more;
                    match each(core, app, key, &mut readbuf[..n]) {
                        _ if !full || core.paused(key) => return,
                        After::More => {}
                        After::Requeue => break,
                        After::Stop => return,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        // A TLS protocol error (the alert is already sent).
                        log::debug!("conn {}: TLS: {e}", core.id_of(key));
                    }
                    return core.kill(key, gone);
                }
            }
        }
        core.pending_reads.push(key as u32);
    }

    fn command(&mut self, cmd: Command) {
        let cmd = match cmd {
            Command::Broadcast(p) => return self.core.stage(p, true),
            Command::Publish(p) => return self.core.stage(p, false),
            other => other,
        };
        // Anything else comes after the publications drained before it.
        self.core.deliver_run();
        match cmd {
            Command::Broadcast(_) | Command::Publish(_) => {}
            Command::Send(id, frame) => {
                if let Some(key) = self.core.lookup(id) {
                    let f: LocalFrame = Rc::new(frame.into_shared());
                    self.core.queue_shared(key, &f, Cause::Push);
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
            Command::Joined(id, topic, answer) => {
                if let Some(key) = self.core.joined(id, &topic, &answer) {
                    self.app.joined(&mut self.core, key, &topic, answer);
                }
            }
            Command::Reset(topic, position) => {
                for key in self.core.reset(&topic, position) {
                    self.app.reset(&mut self.core, key, &topic, position);
                }
            }
            Command::Notify(id, value) => {
                if let Some(key) = self.core.lookup(id) {
                    self.app.notify(&mut self.core, key, value);
                }
            }
            Command::Respond(id, resp) => {
                if let Some(key) = self.core.lookup(id) {
                    if self.app.answer(&mut self.core, key, *resp) {
                        self.resume(key);
                    }
                }
            }
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
            let reason = c.close_reason.get();
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
            let held = self.core.held(key);
            if held > 0 {
                self.core
                    .handle
                    .hub()
                    .pending
                    .fetch_sub(held, Ordering::Relaxed);
            }
            self.core.deflate.forget(key);
            let mut c = self.core.conns.remove(key);
            for sub in self.core.subs.take(&mut c.subs) {
                self.core.drop_sub(sub);
            }
            c.out.clear(&mut self.core.pool);
            // No `deregister`: closing the socket (dropping `c`; nothing
            // holds a duplicate of it) removes it from the epoll set, so an
            // `epoll_ctl` per connection is saved. Other systems are told.
            #[cfg(not(target_os = "linux"))]
            let _ = self.core.registry.deregister(&mut c.stream);
            if flags & COUNTED != 0 {
                self.core.handle.hub().open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
