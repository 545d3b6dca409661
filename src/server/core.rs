//! A worker's connections and everything it does to them: queueing
//! (one backpressure policy), flushing, closing, heartbeats, deadlines,
//! subscriptions (publications are delivered by [`super::fanout`]). The event loop
//! ([`super::worker`]) drives it; callbacks reach it through [`Context`].

use std::io::IoSlice;
use std::mem;
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};
use slab::Slab;

use super::compress;
use super::config::Config;
use super::conn::{
    Conn, Phase, CLOSE_AFTER_FLUSH, CLOSE_DONE, DIRTY, PAUSED, SLOW, WRITE_INTEREST,
};
use super::handler::CloseReason;
use super::hub::{ConnId, Handle, LocalStats};
use super::outbuf::{BufPool, Flushed, LocalFrame};
use super::response::Response;
use super::timers::{millis, reserve_for, Entry, TimerKind, Timers};
use super::topics::{Sub, SubLists, Topics, PENDING};
use super::transport;
use crate::broker::{Answer, Joined, Joiner, Position, Unavailable};
use crate::protocol::frame::MAX_HEADER_LEN;
use crate::protocol::{close, encode, DecoderConfig, OpCode, ProtocolError, Role};

/// Replies at least this large go straight to the socket when nothing is
/// queued before them: one `writev` of header and payload instead of a copy
/// of the payload into a buffer (at this size a write per message costs
/// less than the copy, and the end-of-turn flush would write it anyway).
const WRITE_THROUGH_MIN: usize = 16 << 10;

/// Everything of a worker except the application: connections, topics,
/// timers, queues, counters. Callbacks reach it through [`Context`].
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) handle: Handle,
    pub(crate) cfg: Arc<Config>,
    pub(crate) dec_cfg: DecoderConfig,
    pub(crate) registry: Registry,
    pub(crate) conns: Slab<Conn>,
    pub(crate) topics: Topics,
    /// The connections' subscription lists (`Conn::subs` is a handle).
    pub(crate) subs: SubLists,
    pub(crate) timers: Timers,
    pub(crate) dirty: Vec<u32>,
    pub(crate) dead: Vec<u32>,
    pub(crate) pool: BufPool,
    pub(crate) stats: LocalStats,
    pub(crate) next_generation: u32,
    pub(crate) now: Instant,
    /// Start of the worker's millisecond clock (for `Conn::last_rx`).
    pub(crate) epoch: Instant,
    /// `now` on that clock.
    pub(crate) ms: u32,
    pub(crate) draining: bool,
    /// Connections to read from at the start of the next turn: cut short
    /// for fairness, or no longer paused by backpressure.
    pub(crate) pending_reads: Vec<u32>,
    /// When the receive budget was last reported exhausted (once a second).
    pub(crate) last_budget_warning: Option<Instant>,
    /// permessage-deflate: codecs and the RSV1 decoder configuration.
    pub(crate) deflate: compress::Worker,
    /// Publications drained this turn, not yet delivered ([`super::fanout`]).
    pub(crate) run: super::fanout::Run,
}

/// Who caused bytes to be queued on a connection: the one thing the
/// backpressure policy ([`admit`]) asks besides the byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Pushed at the peer (publications, broadcasts, sends from elsewhere):
    /// a peer that cannot keep up is a slow consumer and is closed (1008); a
    /// push client resumes from history, so nothing is skipped silently.
    Push,
    /// The peer's own doing (echoes, replies, pongs, HTTP answers): past the
    /// limit the worker stops reading from it until its queue drains below
    /// half the limit, so TCP pushes back on the sender instead of a close.
    Reply,
}

/// What became of bytes offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued, under the limit (or written at once to get under it).
    Ok,
    /// Queued, but the connection is over the limit: reading from it is
    /// paused (a reply) or it will be closed as a slow consumer (a push).
    Backpressure,
    /// Not queued: the connection is not open or is being closed.
    Dropped,
}

/// Connection `key`'s subscription to topic `id` now sits at `pos` in the
/// topic's lists (as `Topics::deliver`, `reset` and `unsubscribe` say).
pub(super) fn moved(conns: &Slab<Conn>, subs: &mut SubLists, id: u32, key: usize, pos: u32) {
    if let Some(c) = conns.get(key) {
        if let Some(s) = subs.get_mut(c.subs).iter_mut().find(|s| s.topic == id) {
            s.pos = pos;
        }
    }
}

/// Queue a shared frame on an open connection (a push) and mark it for the flush.
#[inline]
pub(super) fn push_frame(c: &mut Conn, key: usize, f: &LocalFrame, q: &mut Queues<'_>) -> Queued {
    if c.phase != Phase::Open || c.has(SLOW) {
        return Queued::Dropped;
    }
    c.out.push_shared(f, q.pool);
    q.stats.messages_out_total += 1;
    admit(c, key, Cause::Push, q)
}

/// What a push needs besides the connection: the dirty list, the buffer
/// pool, the counters and the limit.
pub(super) struct Queues<'a> {
    pub(super) dirty: &'a mut Vec<u32>,
    pub(super) pool: &'a mut BufPool,
    pub(super) stats: &'a mut LocalStats,
    pub(super) max_buffered: usize,
}

/// The backpressure policy, for every byte queued on a connection: mark it
/// for the end-of-turn flush; if its backlog (bytes behind the chunk being
/// written) passed `max_buffered`, try the write at once, and only if the
/// peer still cannot take the bytes, act on the cause: close a push
/// recipient as a slow consumer, stop reading from a peer that caused its
/// own backlog.
#[inline]
pub(super) fn admit(c: &mut Conn, key: usize, cause: Cause, q: &mut Queues<'_>) -> Queued {
    if !c.has(DIRTY) {
        c.flags |= DIRTY;
        q.dirty.push(key as u32);
    }
    if c.out.len() <= q.max_buffered || c.out.backlog() <= q.max_buffered {
        return Queued::Ok;
    }
    if let Ok((n, _)) = transport::write(c, q.pool) {
        q.stats.bytes_out_total += n as u64;
    }
    if c.out.backlog() <= q.max_buffered {
        return Queued::Ok;
    }
    match cause {
        Cause::Push => c.flags |= SLOW,
        Cause::Reply => c.flags |= PAUSED,
    }
    Queued::Backpressure
}

impl Core {
    pub(crate) fn new(index: usize, cfg: Arc<Config>, handle: Handle, registry: Registry) -> Self {
        let dec_cfg = DecoderConfig {
            role: Role::Server,
            max_frame_size: cfg.max_message_size as u64,
            max_message_size: cfg.max_message_size as u64,
            allowed_rsv: 0,
        };
        Core {
            index,
            handle,
            deflate: compress::Worker::new(&cfg, &dec_cfg),
            run: Default::default(),
            cfg,
            dec_cfg,
            registry,
            conns: Slab::with_capacity(reserve_for::<Conn>()),
            topics: Topics::default(),
            subs: SubLists::default(),
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
            pending_reads: Vec::new(),
            last_budget_warning: None,
        }
    }

    /// Read the clock once per turn.
    pub(crate) fn tick(&mut self) {
        self.now = Instant::now();
        // Milliseconds, wrapping: only differences are used.
        self.ms = self.now.duration_since(self.epoch).as_millis() as u32;
    }

    /// The worker-clock time `d` from now.
    pub(crate) fn after(&self, d: Duration) -> u32 {
        self.ms.wrapping_add(millis(d))
    }

    /// When an open connection's first heartbeat check is due (after it
    /// opened), if it has heartbeats.
    fn first_heartbeat(&self) -> Option<Duration> {
        match (self.cfg.ping_interval, self.cfg.idle_timeout) {
            (Some(p), Some(i)) => Some(p.min(i)),
            (p, i) => p.or(i),
        }
    }

    /// Whether a connection's handshake deadline entry, still queued when
    /// it opens, doubles as its first heartbeat check: it comes due at most
    /// `handshake_timeout` after the connection opened, so no later than
    /// the first check would. Then an open connection holds one timer entry
    /// (12 bytes) instead of two; the check re-arms itself in the
    /// heartbeat heap from the connection's last activity.
    pub(crate) fn handshake_entry_checks_heartbeat(&self) -> bool {
        self.first_heartbeat()
            .is_some_and(|first| self.cfg.handshake_timeout <= first)
    }

    /// Arm the first heartbeat check of a newly opened connection (unless
    /// its handshake deadline entry does it).
    pub(crate) fn arm_heartbeat(&mut self, key: usize, generation: u32) {
        let Some(first) = self.first_heartbeat() else {
            return;
        };
        if self.handshake_entry_checks_heartbeat() {
            return;
        }
        self.timers
            .add(TimerKind::Heartbeat, self.after(first), key, generation);
    }

    /// A heartbeat check came due: close an idle connection, ping a quiet
    /// one, and re-arm from its last activity.
    pub(crate) fn heartbeat(&mut self, key: usize) {
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
            self.queue_control(key, |v| {
                encode::close_into(v, Some(close::GOING_AWAY), "idle timeout")
            });
            return;
        }
        let mut next = Duration::MAX;
        if let Some(p) = ping {
            if silent >= p {
                self.queue_control(key, |v| encode::frame_into(v, OpCode::Ping, b""));
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
    pub(crate) fn lookup(&self, id: ConnId) -> Option<usize> {
        if id.worker() != self.index {
            return None;
        }
        let key = id.key();
        let c = self.conns.get(key)?;
        (id.is_local() && id.same_generation(c.generation) && c.phase != Phase::Dead).then_some(key)
    }

    pub(crate) fn id_of(&self, key: usize) -> ConnId {
        ConnId::new(
            self.index,
            key,
            self.conns.get(key).map(|c| c.generation).unwrap_or(0),
        )
    }

    pub(crate) fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.has(DIRTY) {
                c.flags |= DIRTY;
                self.dirty.push(key as u32);
            }
        }
    }

    fn queues(&mut self) -> (&mut Slab<Conn>, Queues<'_>) {
        let max_buffered = self.cfg.max_buffered;
        (
            &mut self.conns,
            Queues {
                dirty: &mut self.dirty,
                pool: &mut self.pool,
                stats: &mut self.stats,
                max_buffered,
            },
        )
    }

    /// [`Core::queues`] and the deflate state.
    #[cfg(feature = "deflate")]
    fn deflate_queues(&mut self) -> (&mut Slab<Conn>, &mut compress::Worker, Queues<'_>) {
        let max_buffered = self.cfg.max_buffered;
        (
            &mut self.conns,
            &mut self.deflate,
            Queues {
                dirty: &mut self.dirty,
                pool: &mut self.pool,
                stats: &mut self.stats,
                max_buffered,
            },
        )
    }

    /// Encode a data message for an open connection into its own buffer (a
    /// reply: the connection's own callback sent it).
    pub(crate) fn queue_owned(&mut self, key: usize, op: OpCode, payload: &[u8]) -> Queued {
        match self.conns.get(key) {
            Some(c) if c.phase == Phase::Open && !c.has(SLOW) => {}
            _ => return Queued::Dropped,
        }
        self.stats.messages_out_total += 1;
        #[cfg(feature = "deflate")]
        if self.conns.get(key).is_some_and(|c| c.deflate != 0) {
            let (conns, dz, mut q) = self.deflate_queues();
            if let Some(c) = conns.get_mut(key) {
                return compress::push_one(c, key, op, payload, Cause::Reply, dz, &mut q);
            }
        }
        if payload.len() >= WRITE_THROUGH_MIN {
            if let Some(c) = self.conns.get_mut(key).filter(|c| c.out.is_empty()) {
                // Nothing queued before it: header and payload straight to
                // the socket, without copying the payload into a buffer.
                let mut head = [0u8; MAX_HEADER_LEN];
                let h = encode::frame_header(&mut head, op, payload.len());
                let parts = [IoSlice::new(&head[..h]), IoSlice::new(payload)];
                let n = transport::write_through(c, &parts);
                self.stats.bytes_out_total += n as u64;
                if n == h + payload.len() {
                    return Queued::Ok;
                }
                // The socket took part of it: the rest is queued.
                return self.queue_raw(key, Cause::Reply, |v| {
                    v.extend_from_slice(&head[n.min(h)..h]);
                    v.extend_from_slice(&payload[n.saturating_sub(h)..]);
                });
            }
        }
        self.queue_raw(key, Cause::Reply, |v| encode::frame_into(v, op, payload))
    }

    /// Queue a shared frame on one open connection.
    pub(crate) fn queue_shared(&mut self, key: usize, f: &LocalFrame, cause: Cause) -> Queued {
        let (conns, mut q) = self.queues();
        let Some(c) = conns.get_mut(key) else {
            return Queued::Dropped;
        };
        #[cfg(feature = "deflate")]
        if c.deflate != 0 && c.phase == Phase::Open && !c.has(SLOW) {
            // One recipient: compress for it alone.
            if let Some((op, payload)) = compress::split_frame(f) {
                let (conns, dz, mut q) = self.deflate_queues();
                if let Some(c) = conns.get_mut(key) {
                    q.stats.messages_out_total += 1;
                    return compress::push_one(c, key, op, payload, cause, dz, &mut q);
                }
                return Queued::Dropped;
            }
        }
        if cause == Cause::Push {
            return push_frame(c, key, f, &mut q);
        }
        if c.phase != Phase::Open || c.has(SLOW) {
            return Queued::Dropped;
        }
        c.out.push_shared(f, q.pool);
        q.stats.messages_out_total += 1;
        admit(c, key, cause, &mut q)
    }

    /// Queue bytes whatever the phase (HTTP answers, pongs, close frames),
    /// under the policy for `cause`.
    pub(crate) fn queue_raw(
        &mut self,
        key: usize,
        cause: Cause,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Queued {
        let (conns, mut q) = self.queues();
        let Some(c) = conns.get_mut(key) else {
            return Queued::Dropped;
        };
        c.out.push_owned(q.pool, fill);
        admit(c, key, cause, &mut q)
    }

    /// Queue a frame of our own (close, ping): a few bytes the peer did not
    /// ask for and the policy does not judge.
    pub(crate) fn queue_control(&mut self, key: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        if let Some(c) = self.conns.get_mut(key) {
            c.out.push_owned(&mut self.pool, fill);
        }
        self.mark_dirty(key);
    }

    /// Whether reading from the connection is paused by the policy.
    pub(crate) fn paused(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|c| c.has(PAUSED))
    }

    pub(crate) fn buffered(&self, key: usize) -> usize {
        self.conns.get(key).map(|c| c.out.len()).unwrap_or(0)
    }

    /// Subscribe an open connection to `topic` through the broker; with
    /// `since`, the publications after it come back for replay when the
    /// history holds them. `None` if it already was subscribed or is not
    /// open. A later answer arrives as [`Core::joined`]; until then the
    /// subscription is pending (it receives nothing).
    pub(crate) fn subscribe(
        &mut self,
        key: usize,
        topic: &str,
        since: Option<Position>,
    ) -> Option<Answer<Joined>> {
        let c = self.conns.get(key)?;
        if !matches!(c.phase, Phase::Open) {
            return None;
        }
        if let Some(id) = self.topics.id(topic) {
            if self.subs.get(c.subs).iter().any(|s| s.topic == id) {
                return None;
            }
        }
        let who = Joiner {
            worker: self.index,
            conn: self.id_of(key),
        };
        let answer = self.handle.broker().join(topic, who, since);
        let sub = match &answer {
            Answer::Now(Ok(j)) => {
                self.topics
                    .subscribe(topic, key, j.position.seq, j.position.epoch.0)
            }
            Answer::Now(Err(_)) => return Some(answer),
            Answer::Later => self.topics.subscribe(topic, key, PENDING, 0),
        };
        if let Some(c) = self.conns.get_mut(key) {
            self.subs.push(&mut c.subs, sub);
        }
        Some(answer)
    }

    /// The broker's later answer to a subscription: place it at its start,
    /// or (refused) drop it without telling the broker, which never counted
    /// it. The connection's key, if it is still there and was waiting.
    pub(crate) fn joined(
        &mut self,
        id: ConnId,
        topic: &str,
        answer: &Result<Joined, Unavailable>,
    ) -> Option<usize> {
        let key = self.lookup(id)?;
        let tid = self.topics.id(topic)?;
        let c = self.conns.get_mut(key)?;
        let i = self.subs.get(c.subs).iter().position(|s| s.topic == tid)?;
        let sub = self.subs.swap_remove(&mut c.subs, i);
        self.forget_sub(sub);
        if let Ok(j) = answer {
            let sub = self
                .topics
                .subscribe(topic, key, j.position.seq, j.position.epoch.0);
            if let Some(c) = self.conns.get_mut(key) {
                self.subs.push(&mut c.subs, sub);
            }
        }
        Some(key)
    }

    /// A channel's stream starts again at `position`: the keys of the
    /// subscribers to tell.
    pub(crate) fn reset(&mut self, topic: &str, position: Position) -> Vec<usize> {
        let Some(id) = self.topics.id(topic) else {
            return Vec::new();
        };
        let (conns, subs) = (&self.conns, &mut self.subs);
        self.topics
            .reset(id, position.seq, position.epoch.0, |key, pos| {
                moved(conns, subs, id, key, pos)
            });
        self.topics.members(id)
    }

    pub(crate) fn peer_addr(&self, key: usize) -> Option<std::net::SocketAddr> {
        self.conns.get(key).and_then(|c| c.stream.peer_addr().ok())
    }

    pub(crate) fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let Some(id) = self.topics.id(topic) else {
            return false;
        };
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(i) = self.subs.get(c.subs).iter().position(|s| s.topic == id) else {
            return false;
        };
        let sub = self.subs.swap_remove(&mut c.subs, i);
        self.drop_sub(sub);
        true
    }

    /// Bytes a connection holds in partially received data: its request
    /// buffer and its decoder's assembly buffers.
    pub(crate) fn held(&self, key: usize) -> usize {
        self.conns.get(key).map_or(0, |c| {
            c.http.as_ref().map_or(0, |h| h.buf.capacity()) + c.decoder.buffered_capacity()
        })
    }

    /// Account the change in what a connection holds since `before` (see
    /// [`Core::held`]) against the process-wide `max_pending_bytes`; a
    /// connection whose growth passes it is refused (HTTP 503, or close
    /// 1009) and its partial data freed, so the budget holds.
    pub(crate) fn settle_pending(&mut self, key: usize, before: usize) {
        let after = self.held(key);
        // Per read: the usual case (a whole message, nothing kept) touches
        // no shared counter.
        if after == before {
            return;
        }
        let pending = &self.handle.hub().pending;
        if after < before {
            pending.fetch_sub(before - after, Ordering::Relaxed);
            return;
        }
        let total = pending.fetch_add(after - before, Ordering::Relaxed) + (after - before);
        if total <= self.cfg.max_pending_bytes {
            return;
        }
        self.stats.pending_refusals_total += 1;
        let now = self.now;
        if self
            .last_budget_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_budget_warning = Some(now);
            log::warn!(
                "conn {}: refused: {total} bytes held in partial receptions, over --max-pending-bytes ({}); {} refusals on this worker",
                self.id_of(key),
                self.cfg.max_pending_bytes,
                self.stats.pending_refusals_total
            );
        }
        match self.conns.get(key).map(|c| c.phase) {
            Some(Phase::Http) => {
                let resp = Response::text(503, "server busy: receive budget exhausted\n")
                    .header("Retry-After", "1");
                self.respond(key, &resp, true);
            }
            Some(Phase::Open | Phase::Closing) => {
                self.fail(key, ProtocolError::MessageTooLarge);
                if let Some(c) = self.conns.get_mut(key) {
                    c.decoder = Default::default();
                }
            }
            _ => {}
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.http = None;
        }
        let freed = after - self.held(key);
        self.handle
            .hub()
            .pending
            .fetch_sub(freed, Ordering::Relaxed);
    }

    /// Arm an application timer for an open connection.
    pub(crate) fn set_timer(&mut self, key: usize, after: Duration) {
        let at = self.after(after);
        if let Some(c) = self.conns.get(key) {
            if c.phase == Phase::Open {
                self.timers.add(TimerKind::App, at, key, c.generation);
            }
        }
    }

    /// Names of the topics a connection is subscribed to.
    pub(crate) fn topics_of(&self, key: usize) -> Vec<Arc<str>> {
        self.conns.get(key).map_or_else(Vec::new, |c| {
            self.subs
                .get(c.subs)
                .iter()
                .filter_map(|s| self.topics.name(s.topic))
                .collect()
        })
    }

    pub(crate) fn subscription_count(&self, key: usize) -> usize {
        self.conns
            .get(key)
            .map(|c| self.subs.get(c.subs).len())
            .unwrap_or(0)
    }

    /// Remove a subscription from its topic and fix the position recorded by
    /// the connection whose entry moved into its place.
    pub(crate) fn drop_sub(&mut self, sub: Sub) {
        if let Some(name) = self.topics.name(sub.topic) {
            self.handle.broker().leave(&name, self.index);
        }
        self.forget_sub(sub);
    }

    /// Remove a subscription from its topic only (the broker is not told).
    fn forget_sub(&mut self, sub: Sub) {
        if let Some((key, pos)) = self.topics.unsubscribe(sub) {
            moved(&self.conns, &mut self.subs, sub.topic, key, pos);
        }
    }

    /// Start a close handshake from our side.
    pub(crate) fn close_conn(&mut self, key: usize, code: u16, reason: &str, why: CloseReason) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.phase {
            Phase::Open => {
                c.close_reason.get_or_insert(why);
                c.phase = Phase::Closing;
                let generation = c.generation;
                self.queue_control(key, |v| encode::close_into(v, Some(code), reason));
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
    pub(crate) fn fail(&mut self, key: usize, e: ProtocolError) {
        log::debug!("conn {}: protocol error: {e}", self.id_of(key));
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.close_reason.get_or_insert(CloseReason::Protocol(e));
        let close_sent = c.phase == Phase::Closing;
        self.linger(key);
        if !close_sent {
            self.queue_control(key, |v| {
                encode::close_into(v, Some(e.close_code()), e.reason())
            });
        }
    }

    /// Mark the connection for removal at the end of the turn.
    pub(crate) fn kill(&mut self, key: usize, reason: Option<CloseReason>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Dead {
            return;
        }
        if c.close_reason.is_none() {
            c.close_reason.set(reason);
        }
        c.phase = Phase::Dead;
        self.dead.push(key as u32);
    }

    /// Write an HTTP response; with `close`, end the connection after it.
    pub(crate) fn respond(&mut self, key: usize, resp: &Response, close: bool) {
        self.stats.refused(resp.status);
        self.queue_raw(key, Cause::Reply, |v| resp.write_to(v, close));
        if close {
            self.linger(key);
        }
    }

    /// Our last bytes are (or are about to be) queued: flush them, shut
    /// down our side and drop the connection when the peer closes, or at
    /// the close timeout whatever happens (a peer that stops reading cannot
    /// hold the connection and its queue).
    pub(crate) fn linger(&mut self, key: usize) {
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

    pub(crate) fn set_interest(&mut self, key: usize, writable: bool) {
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
    pub(crate) fn flush(&mut self, key: usize) {
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
        let written = transport::write(c, &mut self.pool);
        let paused = c.has(PAUSED);
        if let (Ok((n, _)), Some(h)) = (&written, c.http.as_mut()) {
            if *n > 0 && paused {
                // A client reading the answers to its pipelined requests is
                // making progress: its request deadline moves with it.
                h.deadline = self.ms.wrapping_add(millis(self.cfg.handshake_timeout));
            }
        }
        if c.has(PAUSED) && c.out.backlog() <= self.cfg.max_buffered / 2 {
            c.flags &= !PAUSED;
            self.pending_reads.push(key as u32);
        }
        match written {
            Ok((n, Flushed::All)) => {
                self.stats.bytes_out_total += n as u64;
                if c.has(CLOSE_DONE) {
                    return self.kill(key, None);
                }
                if c.has(CLOSE_AFTER_FLUSH) {
                    // The close deadline was set when it began to linger.
                    c.flags &= !CLOSE_AFTER_FLUSH;
                    transport::close_notify(c);
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

    pub(crate) fn flush_dirty(&mut self) {
        self.pool.expect_queues(self.dirty.len(), self.ms);
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
    pub(crate) fn expire(&mut self, e: Entry) {
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
            (TimerKind::Handshake, Phase::Open) if self.handshake_entry_checks_heartbeat() => {
                self.heartbeat(key)
            }
            (TimerKind::Closing, Phase::Closing | Phase::Lingering) => {
                log::debug!("conn {}: close timeout", self.id_of(key));
                self.kill(key, Some(CloseReason::Abnormal));
            }
            _ => {}
        }
    }
}
