//! The hub: how any thread reaches the workers. Plain message passing: a
//! command goes over the worker's `crossbeam-channel` and wakes its poll
//! only if it is not already awake. The order of channels is the broker's
//! ([`crate::broker`]); the hub only keeps broadcasts in one order.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::response::Response;
use crate::broker::{
    Answer, Broker, Format, Joined, Position, Publication, PublishOptions, Published, Relay, Reply,
    Unavailable,
};
use crate::protocol::encode;
use crate::protocol::OpCode;

/// Most workers a server can have (the worker index takes 8 bits of a [`ConnId`]).
pub const MAX_WORKERS: usize = 256;

/// A connection's id, unique across workers and the nodes of a cluster:
/// worker index (8 bits), node id (12 bits, 0 on a single node), slab key
/// (24 bits) and a per-worker generation (20 bits). An id of a closed
/// connection does not match a later connection that reuses its slot
/// (until its generation wraps, after a million reuses of that slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// This process's node id (set once by a cluster broker at start).
static NODE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Largest node id.
pub const MAX_NODE: u16 = 0xfff;
const GENERATION_BITS: u32 = 20;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

impl ConnId {
    pub(crate) fn new(worker: usize, key: usize, generation: u32) -> Self {
        let node = NODE.load(Ordering::Relaxed) as u64 & MAX_NODE as u64;
        ConnId(
            ((worker as u64) << 56)
                | (node << 44)
                | (((key as u64) & 0xff_ffff) << GENERATION_BITS)
                | (generation & GENERATION_MASK) as u64,
        )
    }

    /// Set this process's node id (connection ids made after carry it).
    pub(crate) fn set_node(node: u16) {
        NODE.store(node & MAX_NODE, Ordering::Relaxed);
    }

    /// This process's node id.
    pub fn this_node() -> u16 {
        NODE.load(Ordering::Relaxed)
    }

    /// The index of the worker that owns the connection.
    pub fn worker(self) -> usize {
        (self.0 >> 56) as usize
    }

    /// The node that owns the connection (0 on a single node).
    pub fn node(self) -> u16 {
        ((self.0 >> 44) & MAX_NODE as u64) as u16
    }

    /// Whether the connection is (or was) on this node.
    pub fn is_local(self) -> bool {
        self.node() == Self::this_node()
    }

    pub(crate) fn key(self) -> usize {
        ((self.0 >> GENERATION_BITS) & 0xff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        self.0 as u32 & GENERATION_MASK
    }

    /// Whether `generation` (a connection slot's full counter) is this id's.
    pub(crate) fn same_generation(self, generation: u32) -> bool {
        generation & GENERATION_MASK == self.generation()
    }

    /// The id as a number (stable for the life of the connection).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from [`ConnId::as_u64`].
    pub fn from_u64(v: u64) -> Self {
        ConnId(v)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A complete WebSocket frame, encoded once and shared by reference count
/// with every connection that queues it.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Arc<[u8]>);

impl Frame {
    /// A text message frame.
    pub fn text(text: &str) -> Frame {
        Frame(encode::shared(OpCode::Text, text.as_bytes()))
    }

    /// A binary message frame.
    pub fn binary(data: &[u8]) -> Frame {
        Frame(encode::shared(OpCode::Binary, data))
    }

    /// A frame with the given opcode and payload.
    pub fn new(opcode: OpCode, payload: &[u8]) -> Frame {
        Frame(encode::shared(opcode, payload))
    }

    /// A close frame. Published on a topic, it closes every subscriber with
    /// this code and reason (a proper close handshake) instead of being
    /// queued as data.
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut v = Vec::new();
        encode::close_into(&mut v, Some(code), reason);
        Frame(Arc::from(v))
    }

    /// The code and reason of a close frame; `None` for any other frame.
    pub fn as_close(&self) -> Option<(u16, &str)> {
        let b = &self.0;
        if b.first()? & 0x0f != OpCode::Close as u8 {
            return None;
        }
        let p = b.get(encode::header_len(b)..)?;
        let code = u16::from_be_bytes([*p.first()?, *p.get(1)?]);
        Some((code, std::str::from_utf8(&p[2..]).unwrap_or("")))
    }

    /// Wrap bytes that already hold one or more complete, unmasked frames.
    pub fn from_encoded(bytes: Arc<[u8]>) -> Frame {
        Frame(bytes)
    }

    /// The encoded bytes (header and payload).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length of the encoded bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame has no bytes (never true for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_shared(self) -> Arc<[u8]> {
        self.0
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

/// What a worker is asked to do from outside its loop.
pub(crate) enum Command {
    /// Queue on every open connection.
    Broadcast(Arc<Publication>),
    /// Queue on every subscriber of the publication's channel.
    Publish(Arc<Publication>),
    /// Queue on one connection.
    Send(ConnId, Frame),
    /// Close one connection with a code and reason.
    Close(ConnId, u16, Arc<str>),
    /// Take over a connection accepted by another worker.
    Adopt(std::net::TcpStream, std::net::SocketAddr),
    /// Begin the graceful shutdown.
    Shutdown,
    /// The broker's later answer to a subscription.
    Joined(ConnId, Arc<str>, Result<Joined, Unavailable>),
    /// A channel's stream was lost (a new epoch) or has a gap history no
    /// longer covers: its subscribers start again at this position.
    Reset(Arc<str>, Position),
    /// The deferred answer to an HTTP request.
    Respond(ConnId, Box<Response>),
    /// A value for a connection's handler ([`Handle::notify`]).
    Notify(ConnId, Box<dyn std::any::Any + Send>),
}

struct Link {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
    notified: AtomicBool,
}

/// The worker's side of its link: its poll, receiver and wake flag.
pub(crate) struct WorkerPart {
    pub poll: mio::Poll,
    pub rx: Receiver<Command>,
    pub stats: Arc<WorkerStats>,
}

/// Token of the waker in every worker's poll.
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 1);

thread_local! {
    /// The hub (by address) and worker index of the current thread, if it
    /// runs a worker loop. Both count: an embedder may run several servers.
    static CURRENT_WORKER: Cell<(usize, usize)> = const { Cell::new((0, usize::MAX)) };
}

/// Mark the current thread as running worker `index` of `hub` (its own
/// posts need no wake: it drains its channel before it sleeps).
pub(crate) fn set_current_worker(hub: &Hub, index: usize) {
    CURRENT_WORKER.with(|c| c.set((hub as *const Hub as usize, index)));
}

pub(crate) struct Hub {
    links: Vec<Link>,
    /// Broadcasts pass this lock while they are handed to the workers, so
    /// every worker sees them in one order.
    broadcast_order: Mutex<()>,
    /// Connections counted against `max_connections`, all workers.
    pub open: AtomicUsize,
    /// The limit `open` is held to.
    pub max_connections: usize,
    /// HTTP connections accepted over the limit from the reserve.
    pub reserve: AtomicUsize,
    /// Bytes held in partially received messages and request bodies.
    pub pending: AtomicUsize,
    pub stopping: AtomicBool,
    pub stats: Vec<Arc<WorkerStats>>,
    pub started: Instant,
}

impl Hub {
    /// A hub for `n` workers, and each worker's part of it.
    pub fn new(n: usize, max_connections: usize) -> std::io::Result<(Arc<Hub>, Vec<WorkerPart>)> {
        let mut links = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        let mut stats = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let s = Arc::new(WorkerStats::default());
            links.push(Link {
                tx,
                waker,
                notified: AtomicBool::new(false),
            });
            stats.push(s.clone());
            parts.push(WorkerPart { poll, rx, stats: s });
        }
        let hub = Hub {
            links,
            broadcast_order: Mutex::new(()),
            open: AtomicUsize::new(0),
            max_connections,
            reserve: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stats,
            started: Instant::now(),
        };
        Ok((Arc::new(hub), parts))
    }

    pub fn workers(&self) -> usize {
        self.links.len()
    }

    /// Hand a command to one worker, waking it unless it is awake already.
    pub fn post(&self, worker: usize, cmd: Command) -> bool {
        let (sent, wake) = self.enqueue(worker, cmd);
        if wake {
            self.wake(worker);
        }
        sent
    }

    /// Queue a command; returns (sent, the worker must be woken). Waking is
    /// a syscall: callers holding the order lock do it after releasing it.
    pub(crate) fn enqueue(&self, worker: usize, cmd: Command) -> (bool, bool) {
        let Some(link) = self.links.get(worker) else {
            return (false, false);
        };
        if link.tx.send(cmd).is_err() {
            return (false, false);
        }
        let own = CURRENT_WORKER.with(|c| c.get()) == (self as *const Hub as usize, worker);
        (true, !own && !link.notified.swap(true, Ordering::SeqCst))
    }

    fn wake(&self, worker: usize) {
        if let Some(link) = self.links.get(worker) {
            if let Err(e) = link.waker.wake() {
                log::error!("waking worker {worker}: {e}");
            }
        }
    }

    /// Wake the workers whose flag is set (after [`Hub::enqueue`]).
    pub(crate) fn wake_all(&self, wakes: &[bool]) {
        for (w, &wake) in wakes.iter().enumerate() {
            if wake {
                self.wake(w);
            }
        }
    }

    /// Called by worker `index` before it drains its channel.
    pub fn clear_notified(&self, index: usize) {
        if let Some(link) = self.links.get(index) {
            link.notified.store(false, Ordering::SeqCst);
        }
    }

    /// Hand a command to every worker, in the one global order.
    pub fn post_all(&self, make: impl Fn() -> Command) {
        let mut wakes = [false; MAX_WORKERS];
        {
            let _order = self
                .broadcast_order
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (w, wake) in wakes.iter_mut().enumerate().take(self.links.len()) {
                *wake = self.enqueue(w, make()).1;
            }
        }
        self.wake_all(&wakes[..self.links.len()]);
    }
}

/// A place in the HTTP reserve (connections served over `max_connections`),
/// given back when dropped.
pub(crate) struct ReserveSlot(pub Arc<Hub>);

impl Drop for ReserveSlot {
    fn drop(&mut self) {
        self.0.reserve.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ReserveSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReserveSlot")
    }
}

/// A cheap, cloneable handle to a running server, usable from any thread.
#[derive(Clone)]
pub struct Handle {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.hub.workers())
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        Handle { hub, broker }
    }

    /// The broker that orders this server's channels and keeps their history.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Queue `frame` on every open WebSocket connection of every worker
    /// (of every node, in a cluster).
    pub fn broadcast(&self, frame: Frame) {
        if self.broker.node() != 0 {
            let msg = Relay::Broadcast(Format::FRAME, frame.into_shared());
            if let Answer::Now(Err(e)) = self.broker.relay(msg, &mut || Box::new(|_| {})) {
                log::warn!("broadcast not relayed: {e}");
            }
            return;
        }
        self.broadcast_here(frame);
    }

    /// Queue `frame` on every open WebSocket connection of this node.
    pub(crate) fn broadcast_here(&self, frame: Frame) {
        let p = Arc::new(Publication::broadcast(frame));
        self.hub.post_all(|| Command::Broadcast(p.clone()));
    }

    /// Publish `frame` to every connection subscribed to `topic` (all
    /// workers), through the broker: it gets the topic's next sequence
    /// number and enters its history. A broker that answers later (Redis)
    /// publishes it unless the answer is lost with its connection.
    pub fn publish(&self, topic: &str, frame: Frame) -> Answer<Published> {
        self.publish_with(topic, PublishOptions::default(), frame.bytes(), &mut || {
            Box::new(|_| {})
        })
    }

    /// The one publishing entry point: `data` is built into a frame by
    /// `opts.format` (with the sequence number the broker assigns); a
    /// broker that answers later calls the reply made by `later`.
    pub fn publish_with(
        &self,
        topic: &str,
        opts: PublishOptions,
        data: &[u8],
        later: &mut dyn FnMut() -> Reply<Published>,
    ) -> Answer<Published> {
        self.broker.publish(topic, opts, data, later)
    }

    /// Answer a deferred HTTP request (see [`Response::deferred`]).
    pub fn respond(&self, id: ConnId, resp: Response) -> bool {
        self.hub
            .post(id.worker(), Command::Respond(id, Box::new(resp)))
    }

    /// The response to an HTTP request on connection `conn` that asks the
    /// broker something: `call` asks (with the reply maker a broker that
    /// answers later uses); `render` makes the response now, or later,
    /// when the broker's reply comes ([`Response::deferred`] meanwhile).
    pub fn answer<T: 'static>(
        &self,
        conn: ConnId,
        call: impl FnOnce(&mut dyn FnMut() -> Reply<T>) -> Answer<T>,
        render: impl Fn(Result<T, crate::broker::Unavailable>) -> Response + Send + Clone + 'static,
    ) -> Response {
        let later = render.clone();
        let mut reply = || -> Reply<T> {
            let (handle, render) = (self.clone(), later.clone());
            Box::new(move |r| {
                handle.respond(conn, render(r));
            })
        };
        match call(&mut reply) {
            Answer::Now(r) => render(r),
            Answer::Later => Response::deferred(),
        }
    }

    /// Hand `value` to the handler of connection `id`, on its worker
    /// ([`Handler::on_notify`](crate::server::Handler::on_notify)): how
    /// work done on another thread (a broker's later answer, a lookup)
    /// comes back to a connection. False if the worker is gone; a
    /// connection that has closed meanwhile never sees it.
    pub fn notify(&self, id: ConnId, value: Box<dyn std::any::Any + Send>) -> bool {
        self.hub.post(id.worker(), Command::Notify(id, value))
    }

    /// `(subscribers on all workers, last sequence number)` of a topic.
    pub fn topic_info(&self, topic: &str) -> (u64, u64) {
        let (n, p) = self.broker.channel(topic);
        (n, p.seq)
    }

    /// `(topics with subscribers, total subscriptions)`.
    pub fn topic_totals(&self) -> (u64, u64) {
        let t = self.broker.totals();
        (t.active_channels, t.subscriptions)
    }

    /// Queue `frame` on one connection. False if the id names no worker;
    /// a connection that has gone away silently drops it.
    pub fn send(&self, id: ConnId, frame: Frame) -> bool {
        if !id.is_local() {
            let msg = Relay::Send(id, Format::FRAME, frame.into_shared());
            return !matches!(
                self.broker.relay(msg, &mut || Box::new(|_| {})),
                Answer::Now(Err(_))
            );
        }
        self.hub.post(id.worker(), Command::Send(id, frame))
    }

    /// Close one connection with `code` and `reason`.
    pub fn close(&self, id: ConnId, code: u16, reason: &str) -> bool {
        if !id.is_local() {
            let msg = Relay::Close(id, code, Arc::from(reason));
            return !matches!(
                self.broker.relay(msg, &mut || Box::new(|_| {})),
                Answer::Now(Err(_))
            );
        }
        self.hub
            .post(id.worker(), Command::Close(id, code, Arc::from(reason)))
    }

    /// Begin the graceful shutdown: stop accepting, send close 1001 to every
    /// client, and let the workers exit once their clients are gone or the
    /// drain timeout passes.
    pub fn shutdown(&self) {
        if !self.hub.stopping.swap(true, Ordering::SeqCst) {
            self.hub.post_all(|| Command::Shutdown);
        }
    }

    /// Whether [`Handle::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.hub.stopping.load(Ordering::SeqCst)
    }

    /// `(WebSocket connections held, --max-connections)`: at the limit new
    /// WebSockets get 503 (plain HTTP requests are still served from a
    /// small reserve).
    pub fn capacity(&self) -> (usize, usize) {
        (
            self.hub.open.load(Ordering::Relaxed),
            self.hub.max_connections,
        )
    }

    /// Bytes held in partially received messages and request bodies, all
    /// workers (bounded by `max_pending_bytes`).
    pub fn pending_bytes(&self) -> usize {
        self.hub.pending.load(Ordering::Relaxed)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.hub.workers()
    }

    /// A snapshot of the counters of every worker.
    pub fn stats(&self) -> Stats {
        let workers: Vec<WorkerStats> = self.hub.stats.iter().map(|s| s.snapshot()).collect();
        let mut total = WorkerStats::default();
        for w in &workers {
            total.add(w);
        }
        Stats {
            uptime_secs: self.hub.started.elapsed().as_secs_f64(),
            total,
            workers,
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of one worker (or their sum). Live values are atomics
        /// updated by the worker once per loop turn; [`Handle::stats`]
        /// returns plain snapshots.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl WorkerStats {
            /// A copy of the current values.
            pub fn snapshot(&self) -> WorkerStats {
                WorkerStats { $($name: AtomicU64::new(self.$name.load(Ordering::Relaxed)),)* }
            }

            fn add(&mut self, o: &WorkerStats) {
                $(*self.$name.get_mut() += o.$name.load(Ordering::Relaxed);)*
            }

            /// `(name, value)` for every counter.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }

        /// Plain counters kept by a worker during a turn.
        #[derive(Debug, Default, Clone)]
        pub(crate) struct LocalStats {
            $(pub $name: u64,)*
        }

        impl LocalStats {
            pub fn store(&self, s: &WorkerStats) {
                $(s.$name.store(self.$name, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    /// Connections currently held (any state).
    connections,
    /// Connections currently open as WebSockets.
    websockets,
    /// Topics with at least one subscriber on this worker.
    topics,
    /// Connections accepted since start.
    accepted_total,
    /// WebSocket upgrades completed since start.
    upgrades_total,
    /// Plain HTTP requests answered.
    http_requests_total,
    /// Data messages received.
    messages_in_total,
    /// Bytes received (after the upgrade).
    bytes_in_total,
    /// Frames queued for sending (one per recipient).
    messages_out_total,
    /// Bytes written to sockets.
    bytes_out_total,
    /// Broadcasts and publications handled by this worker.
    publications_total,
    /// Closed after the client's close frame.
    closed_client_total,
    /// Closed by the server (application or API).
    closed_server_total,
    /// Closed for a protocol error.
    closed_protocol_error_total,
    /// Closed as slow consumers.
    closed_slow_consumer_total,
    /// Closed at the handshake deadline.
    closed_handshake_timeout_total,
    /// Closed while the server shut down.
    closed_shutdown_total,
    /// Dropped without a close frame (reset, EOF, close-wait timeout).
    closed_abnormal_total,
    /// Closed for silence past the idle timeout.
    closed_idle_timeout_total,
    /// Refused with HTTP 400.
    refused_400_total,
    /// Refused with HTTP 401.
    refused_401_total,
    /// Refused with HTTP 403.
    refused_403_total,
    /// Refused with HTTP 404.
    refused_404_total,
    /// Refused with HTTP 405.
    refused_405_total,
    /// Refused with HTTP 413.
    refused_413_total,
    /// Refused with HTTP 426.
    refused_426_total,
    /// Refused with HTTP 431.
    refused_431_total,
    /// Refused with HTTP 503 (over --max-connections).
    refused_503_total,
    /// Refused with another 4xx/5xx status.
    refused_other_total,
    /// accept() failures for lack of file descriptors or memory.
    accept_errors_total,
    /// Receptions refused because `max_pending_bytes` was reached.
    pending_refusals_total,
}

impl LocalStats {
    /// Count a refusal (or an error answer) by status.
    pub fn refused(&mut self, status: u16) {
        match status {
            400 => self.refused_400_total += 1,
            401 => self.refused_401_total += 1,
            403 => self.refused_403_total += 1,
            404 => self.refused_404_total += 1,
            405 => self.refused_405_total += 1,
            413 => self.refused_413_total += 1,
            426 => self.refused_426_total += 1,
            431 => self.refused_431_total += 1,
            503 => self.refused_503_total += 1,
            s if s >= 400 => self.refused_other_total += 1,
            _ => {}
        }
    }
}

/// A snapshot of the server's counters.
#[derive(Debug)]
pub struct Stats {
    /// Seconds since the server was built.
    pub uptime_secs: f64,
    /// Sum over all workers.
    pub total: WorkerStats,
    /// One entry per worker.
    pub workers: Vec<WorkerStats>,
}

impl Stats {
    /// A counter's total by name (`None` if there is no such counter).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.total
            .fields()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}
