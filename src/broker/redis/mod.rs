//! The Redis broker: several wspush nodes share each channel's order,
//! history and messages through Redis.
//!
//! Workers never talk to Redis. Two threads per node do, each with its own
//! connections:
//! - the **writer** (`writer.rs`) takes publications, relays and the node's
//!   heartbeat from a queue and sends them in pipelines (every publication
//!   waiting when a round trip starts goes in it), then calls each one's
//!   reply;
//! - the **reader** (`reader.rs`) holds the pub/sub connection and this
//!   node's channel table: which channels have local subscribers (it
//!   subscribes to a channel's pub/sub while some do), on which workers,
//!   and the last seq it delivered. It answers subscriptions (position and
//!   replay from the history in Redis), turns each message into one
//!   [`Publication`] for the workers, fills gaps from the history and, after
//!   an outage, catches up every channel before live messages.
//!
//! Because one thread both answers a worker's subscriptions and hands it
//! the channel's publications, the worker sees them in one order: no
//! publication is lost or doubled at the seam.

#[macro_use]
pub mod scripts;
mod presence;
mod reader;
pub mod topology;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::history::HistoryConfig;
use super::presence::{Enter, Entered, Events, Occupied, Presence};
use super::{
    Answer, Broker, Epoch, Format, Health, HistoryPage, Joined, Joiner, Meta, NodeInfo, Position,
    Publication, PublishOptions, Published, Relay, Reply, Totals, Unavailable,
};
use crate::server::hub::Hub;
use crate::server::ConnId;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`: one standalone Redis, or (with `cluster`)
    /// seed nodes of a Redis Cluster (the first that answers gives the
    /// masters).
    pub urls: Vec<String>,
    /// A Redis Cluster: keys and sharded pub/sub (`SSUBSCRIBE`,
    /// `SPUBLISH`) go to the master of each channel's hash slot.
    pub cluster: bool,
    /// How long a connection attempt, and any one request, may take.
    pub timeout: Duration,
    /// How long a node's share of a channel's presence outlives its last
    /// renewal (renewed every third of it): a node that dies without a word
    /// leaves its members listed at most this long.
    pub presence_lease: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            timeout: Duration::from_secs(2),
            presence_lease: Duration::from_secs(15),
        }
    }
}

/// Jobs (publications, history reads, relays) waiting for the writer at
/// most; past it new ones are refused at once.
const WRITE_QUEUE: usize = 65_536;

/// A node silent for this long is no longer listed.
const NODE_EXPIRY_MS: u64 = 6_000;

/// This node's state of one channel (held by the reader thread).
struct Chan {
    /// Local subscribers per worker.
    per_worker: Box<[u32]>,
    total: u64,
    /// The last publication delivered here.
    seq: u64,
    epoch: Epoch,
}

/// What the threads share with the broker's callers.
pub(crate) struct Inner {
    hub: Arc<Hub>,
    node: u16,
    history: HistoryConfig,
    config: RedisConfig,
    topology: topology::Topology,
    /// Per shard: commands (RESP2) and pub/sub (RESP3: messages arrive as
    /// pushes beside any other reply).
    clients: Vec<::redis::Client>,
    feed_clients: Vec<::redis::Client>,
    writer_up: Vec<AtomicBool>,
    reader_up: Vec<AtomicBool>,
    /// Why the link is down (for `/healthz`), empty when up.
    reason: Mutex<String>,
    chans: Mutex<HashMap<Arc<str>, Chan>>,
    /// This node's share of presence, per channel.
    owned: Mutex<HashMap<Arc<str>, presence::Owned>>,
    subscriptions: AtomicU64,
    nodes: Mutex<Vec<NodeInfo>>,
    stop: AtomicBool,
    /// The writer's queue was found full (warned once until it drains).
    full_warned: AtomicBool,
}

impl Inner {
    fn unavailable(&self) -> Unavailable {
        let r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        Unavailable(Arc::from(if r.is_empty() {
            "Redis is unreachable".to_string()
        } else {
            format!("Redis is unreachable: {r}")
        }))
    }

    fn set_reason(&self, why: &str) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
    }

    /// Whether every shard's writer and reader connections are up.
    fn all_up(&self) -> bool {
        self.writer_up
            .iter()
            .chain(&self.reader_up)
            .all(|u| u.load(Ordering::SeqCst))
    }

    /// Clear the reason once everything is up again.
    fn settle_reason(&self) {
        if self.all_up() {
            self.set_reason("");
        }
    }

    fn shard_of(&self, channel: &str) -> usize {
        self.topology.shard_of(channel)
    }

    /// The publication built from a message's parts.
    fn publication(
        channel: Arc<str>,
        seq: u64,
        epoch: Epoch,
        format: Format,
        data: &[u8],
        exclude: Option<ConnId>,
    ) -> Arc<Publication> {
        let e = format.encode(&Meta {
            channel: &channel,
            seq,
            epoch,
            data,
        });
        Arc::new(Publication {
            exclude,
            ..Publication::new(channel, seq, epoch, e)
        })
    }
}

/// The [`Broker`] of a node in a cluster joined through Redis.
pub struct RedisBroker {
    inner: Arc<Inner>,
    writes: Sender<writer::Job>,
    /// One reader per shard.
    reads: Vec<Sender<reader::Job>>,
}

impl RedisBroker {
    /// Connect to Redis (failing if it cannot be reached within the
    /// timeout), claim a node id and start the writer and reader threads.
    pub(crate) fn start(
        hub: Arc<Hub>,
        history: HistoryConfig,
        config: RedisConfig,
    ) -> std::io::Result<RedisBroker> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::other(format!("Redis at {what}: {e}"))
        };
        let mut first_error = None;
        let mut found = None;
        for url in &config.urls {
            let attempt = ::redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(config.timeout))
                .and_then(|mut con| {
                    let t = if config.cluster {
                        topology::Topology::discover(&mut con)?
                    } else {
                        topology::Topology::single(url)
                    };
                    Ok((t, con))
                });
            match attempt {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(err(url, &e));
                }
            }
        }
        let Some((topology, seed)) = found else {
            return Err(first_error.unwrap_or_else(|| std::io::Error::other("no Redis URL")));
        };
        let db_suffix = |url: &str| -> String {
            // The standalone URL as given (db, password); RESP3 for the feed.
            if url.contains('?') {
                format!("{url}&protocol=resp3")
            } else {
                format!("{url}?protocol=resp3")
            }
        };
        let mut clients = Vec::new();
        let mut feed_clients = Vec::new();
        for url in &topology.shards {
            clients.push(::redis::Client::open(url.as_str()).map_err(|e| err(url, &e))?);
            feed_clients
                .push(::redis::Client::open(db_suffix(url).as_str()).map_err(|e| err(url, &e))?);
        }
        // The node id is claimed on the shard that holds the node set.
        let mut con = if topology.cluster {
            let i = topology.shard_of("nodes");
            clients[i]
                .get_connection_with_timeout(config.timeout)
                .map_err(|e| err(&topology.shards[i], &e))?
        } else {
            seed
        };
        let node = writer::claim_node(&mut con).map_err(|e| err("claiming a node id", &e))?;
        ConnId::set_node(node);
        let shards = topology.shards.len();
        let inner = Arc::new(Inner {
            hub,
            node,
            history,
            config,
            topology,
            clients,
            feed_clients,
            writer_up: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            reader_up: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            reason: Mutex::new(String::new()),
            chans: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashMap::new()),
            subscriptions: AtomicU64::new(0),
            nodes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            full_warned: AtomicBool::new(false),
        });
        // Bounded: a flood of publications while Redis is slow is refused
        // (503) instead of queued without limit.
        let (wtx, wrx) = crossbeam_channel::bounded(WRITE_QUEUE);
        let w = inner.clone();
        std::thread::Builder::new()
            .name("wspush-redis-writer".into())
            .spawn(move || writer::run(w, wrx))?;
        let mut reads = Vec::new();
        for shard in 0..shards {
            let (rtx, rrx) = crossbeam_channel::unbounded();
            let r = inner.clone();
            std::thread::Builder::new()
                .name(format!("wspush-redis-reader-{shard}"))
                .spawn(move || reader::run(r, shard, rrx))?;
            reads.push(rtx);
        }
        // Every shard connected before this node takes connections.
        let deadline = std::time::Instant::now() + inner.config.timeout;
        while !inner.all_up() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !inner.all_up() {
            return Err(std::io::Error::other(format!(
                "Redis: not every shard answered within {:?}",
                inner.config.timeout
            )));
        }
        log::info!(
            "Redis broker: node {node} on {} ({} shard{})",
            if inner.topology.cluster {
                "a Redis Cluster"
            } else {
                inner.topology.shards[0].as_str()
            },
            shards,
            if shards == 1 { "" } else { "s" }
        );
        Ok(RedisBroker {
            inner,
            writes: wtx,
            reads,
        })
    }
}

impl RedisBroker {
    /// Hand a job to the writer; refused at once when its queue is full.
    fn queue<T>(&self, job: writer::Job) -> Answer<T> {
        match self.send(job) {
            Ok(()) => Answer::Later,
            Err(e) => Answer::Now(Err(e)),
        }
    }

    fn send(&self, job: writer::Job) -> Result<(), Unavailable> {
        match self.writes.try_send(job) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                if !self.inner.full_warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "Redis: {WRITE_QUEUE} requests wait for Redis; new ones are refused until they drain"
                    );
                }
                Err(Unavailable(Arc::from(
                    "too many requests waiting for Redis",
                )))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(self.inner.unavailable()),
        }
    }

    fn writer_up(&self, channel: &str) -> bool {
        self.inner.writer_up[self.inner.shard_of(channel)].load(Ordering::Relaxed)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        channel: &str,
        opts: PublishOptions,
        data: &[u8],
        later: &mut dyn FnMut() -> Reply<Published>,
    ) -> Answer<Published> {
        if !self.inner.writer_up[self.inner.shard_of(channel)].load(Ordering::Relaxed) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        let job = writer::Job::Publish {
            channel: Arc::from(channel),
            keep: opts.history && self.inner.history.enabled(),
            format: opts.format,
            exclude: opts.exclude,
            data: Arc::from(data),
            reply: later(),
        };
        self.queue(job)
    }

    fn join(&self, channel: &str, who: Joiner, since: Option<Position>) -> Answer<Joined> {
        let shard = self.inner.shard_of(channel);
        if !self.inner.reader_up[shard].load(Ordering::Relaxed) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        let job = reader::Job::Join {
            channel: Arc::from(channel),
            who,
            since,
        };
        match self.reads[shard].send(job) {
            Ok(()) => Answer::Later,
            Err(_) => Answer::Now(Err(self.inner.unavailable())),
        }
    }

    fn leave(&self, channel: &str, worker: usize) {
        let _ = self.reads[self.inner.shard_of(channel)].send(reader::Job::Leave {
            channel: Arc::from(channel),
            worker,
        });
    }

    fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        later: &mut dyn FnMut() -> Reply<HistoryPage>,
    ) -> Answer<HistoryPage> {
        if !self.inner.writer_up[self.inner.shard_of(channel)].load(Ordering::Relaxed) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        let job = writer::Job::History {
            channel: Arc::from(channel),
            since,
            limit,
            reply: later(),
        };
        self.queue(job)
    }

    fn channel(&self, channel: &str) -> (u64, Position) {
        let chans = self.inner.chans.lock().unwrap_or_else(|p| p.into_inner());
        chans.get(channel).map_or(
            (
                0,
                Position {
                    seq: 0,
                    epoch: Epoch(0),
                },
            ),
            |c| {
                (
                    c.total,
                    Position {
                        seq: c.seq,
                        epoch: c.epoch,
                    },
                )
            },
        )
    }

    fn totals(&self) -> Totals {
        let chans = self.inner.chans.lock().unwrap_or_else(|p| p.into_inner());
        Totals {
            active_channels: chans.len() as u64,
            subscriptions: self.inner.subscriptions.load(Ordering::Relaxed),
            channels: chans.len() as u64,
            // History lives in Redis.
            history_entries: 0,
            history_bytes: 0,
            history_evicted: 0,
        }
    }

    fn maintain(&self) {}

    fn node(&self) -> u16 {
        self.inner.node
    }

    fn relay(&self, msg: Relay, later: &mut dyn FnMut() -> Reply<u64>) -> Answer<u64> {
        if !self.inner.writer_up[0].load(Ordering::Relaxed) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        self.queue(writer::Job::Relay(msg, later()))
    }

    fn health(&self) -> Health {
        if self.inner.all_up() {
            Health::Ok
        } else {
            Health::Degraded(self.inner.unavailable().0.to_string())
        }
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn presence_enter(
        &self,
        channel: &str,
        enter: Enter<'_>,
        later: &mut dyn FnMut() -> Reply<Entered>,
    ) -> Answer<Entered> {
        if !self.writer_up(channel) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        let sent = presence::enter(
            &self.inner,
            channel,
            enter.conn,
            enter.member,
            enter.limit,
            enter.events,
            later(),
            |job| self.send(writer::Job::Presence(job)),
        );
        match sent {
            Ok(()) => Answer::Later,
            Err(e) => Answer::Now(Err(e)),
        }
    }

    fn presence_leave(&self, channel: &str, conn: ConnId) {
        presence::leave(&self.inner, channel, conn, |job| {
            self.send(writer::Job::Presence(job))
        });
    }

    fn presence(
        &self,
        channel: &str,
        events: &Events,
        later: &mut dyn FnMut() -> Reply<Presence>,
    ) -> Answer<Presence> {
        if !self.writer_up(channel) {
            return Answer::Now(Err(self.inner.unavailable()));
        }
        self.queue(writer::Job::Presence(presence::Job::Read {
            channel: Arc::from(channel),
            events: events.clone(),
            reply: later(),
        }))
    }

    fn presence_channels(
        &self,
        prefix: &str,
        later: &mut dyn FnMut() -> Reply<Vec<Occupied>>,
    ) -> Answer<Vec<Occupied>> {
        // A SCAN of every shard: on its own short-lived thread, never the
        // writer's (publications must not wait for a listing). At most a
        // few at once.
        static LISTINGS: AtomicU64 = AtomicU64::new(0);
        if LISTINGS.fetch_add(1, Ordering::SeqCst) >= 4 {
            LISTINGS.fetch_sub(1, Ordering::SeqCst);
            return Answer::Now(Err(Unavailable(Arc::from(
                "too many channel listings at once",
            ))));
        }
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        let reply = later();
        let spawned = std::thread::Builder::new()
            .name("wspush-redis-list".into())
            .spawn(move || {
                reply(presence::list(&inner, &prefix));
                LISTINGS.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(_) => Answer::Later,
            Err(e) => {
                LISTINGS.fetch_sub(1, Ordering::SeqCst);
                Answer::Now(Err(Unavailable(Arc::from(format!(
                    "cannot start a listing: {e}"
                )))))
            }
        }
    }
}

/// Exponential backoff between reconnection attempts, 50 ms to 2 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2_000))
}

/// A message of a channel as published by [`scripts::PUBLISH_LUA`]:
/// `seq \n epoch \n format \n excluded connection (or nothing) \n data`.
pub(crate) struct Message<'a> {
    pub seq: u64,
    pub epoch: Epoch,
    pub format: Format,
    pub exclude: Option<ConnId>,
    pub data: &'a [u8],
}

pub(crate) fn parse_message(bytes: &[u8]) -> Option<Message<'_>> {
    let mut parts = bytes.splitn(5, |&b| b == b'\n');
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let format = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let exclude = match parts.next()? {
        b"" => None,
        id => Some(ConnId::from_u64(
            std::str::from_utf8(id).ok()?.parse().ok()?,
        )),
    };
    Some(Message {
        seq,
        epoch,
        format: Format(format),
        exclude,
        data: parts.next()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_garbage_does_not() {
        let m = parse_message(b"12\n00000000000000ff\n8\n\n{\"a\":\n1}").unwrap();
        assert_eq!((m.seq, m.epoch, m.format), (12, Epoch(255), Format(8)));
        assert_eq!((m.exclude, m.data), (None, &b"{\"a\":\n1}"[..]));
        let m = parse_message(b"1\n00000000000000ff\n8\n77\nx").unwrap();
        assert_eq!(m.exclude, Some(ConnId::from_u64(77)));
        assert!(parse_message(b"x\n00000000000000ff\n8\n\n").is_none());
        assert!(parse_message(b"1\nzz\n8\n\n").is_none());
        assert!(parse_message(b"1\n00000000000000ff\n8\n").is_none());
        assert!(parse_message(b"1\n00000000000000ff\n8\nq\nx").is_none());
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }
}
