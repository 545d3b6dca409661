//! The reader thread: this node's channel table, its pub/sub connection,
//! the answers to subscriptions and the delivery of every message to the
//! workers, in seq order, once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{cmd, Connection, PushKind, Value};
use crossbeam_channel::Receiver;

use super::scripts;
use super::writer::{parse_read, Read};
use super::{backoff, parse_message, Chan, Inner};
use crate::broker::{Epoch, Format, Joined, Joiner, Meta, Position, Unavailable};
use crate::server::hub::Command;
use crate::server::ConnId;

/// What the reader is asked to do.
pub(crate) enum Job {
    Join {
        channel: Arc<str>,
        who: Joiner,
        since: Option<Position>,
    },
    Leave {
        channel: Arc<str>,
        worker: usize,
    },
}

/// How long the reader waits for a message before it looks at its jobs.
const POLL: Duration = Duration::from_millis(5);
/// Most jobs handled in one go.
const BATCH: usize = 1024;

pub(crate) fn run(inner: Arc<Inner>, shard: usize, jobs: Receiver<Job>) {
    let mut attempt = 0u32;
    while !inner.stop.load(Ordering::Relaxed) {
        match session(&inner, shard, &jobs, &mut attempt) {
            Ok(()) => return,
            Err(e) => {
                if inner.reader_up[shard].swap(false, Ordering::SeqCst) {
                    log::error!(
                        "Redis: subscriber connection to {} lost ({e}); subscriptions wait, deliveries resume when it is back",
                        inner.topology.shards[shard]
                    );
                }
                inner.set_reason(&e.to_string());
                // Subscriptions asked meanwhile are refused; leaves count.
                while let Ok(j) = jobs.try_recv() {
                    match j {
                        Job::Join { channel, who, .. } => {
                            post(&inner, who.worker, joined_err(&inner, who, channel))
                        }
                        Job::Leave { channel, worker } => {
                            leave(&inner, &channel, worker);
                        }
                    }
                }
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

fn joined_err(inner: &Inner, who: Joiner, channel: Arc<str>) -> Command {
    Command::Joined(who.conn, channel, Err(inner.unavailable()))
}

fn post(inner: &Inner, worker: usize, cmd: Command) {
    inner.hub.post(worker, cmd);
}

/// A connection left `channel`: true if the channel has no local
/// subscriber left (its entry is gone).
fn leave(inner: &Inner, channel: &str, worker: usize) -> bool {
    let mut chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = chans.get_mut(channel) else {
        return false;
    };
    if let Some(n) = c.per_worker.get_mut(worker) {
        if *n > 0 {
            *n -= 1;
            c.total -= 1;
            inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if c.total == 0 {
        chans.remove(channel);
        return true;
    }
    false
}

/// A pub/sub connection speaking RESP3: messages arrive as pushes, and
/// `SUBSCRIBE` / `SSUBSCRIBE` (sharded, on a Redis Cluster) are answered
/// by a push confirming each channel.
pub(crate) struct Feed {
    con: Connection,
    /// Messages read while waiting for a confirmation.
    early: VecDeque<(String, Vec<u8>)>,
    sharded: bool,
}

impl Feed {
    fn open(inner: &Inner, shard: usize) -> ::redis::RedisResult<Feed> {
        let timeout = inner.config.timeout;
        let con = inner.feed_clients[shard].get_connection_with_timeout(timeout)?;
        con.set_write_timeout(Some(timeout))?;
        con.set_read_timeout(Some(timeout))?;
        Ok(Feed {
            con,
            early: VecDeque::new(),
            sharded: inner.topology.cluster,
        })
    }

    fn message(kind: &PushKind, data: Vec<Value>) -> Option<(String, Vec<u8>)> {
        if !matches!(kind, PushKind::Message | PushKind::SMessage) {
            return None;
        }
        let mut it = data.into_iter();
        let ch = match it.next()? {
            Value::BulkString(b) => String::from_utf8(b).ok()?,
            Value::SimpleString(s) => s,
            _ => return None,
        };
        let body = match it.next()? {
            Value::BulkString(b) => b,
            _ => return None,
        };
        Some((ch, body))
    }

    /// (Un)subscribe one channel and wait for Redis to confirm it.
    fn change(&mut self, channel: &str, on: bool, sharded: bool) -> ::redis::RedisResult<()> {
        let (name, want) = match (on, sharded) {
            (true, true) => ("SSUBSCRIBE", PushKind::SSubscribe),
            (true, false) => ("SUBSCRIBE", PushKind::Subscribe),
            (false, true) => ("SUNSUBSCRIBE", PushKind::SUnsubscribe),
            (false, false) => ("UNSUBSCRIBE", PushKind::Unsubscribe),
        };
        self.con
            .send_packed_command(&cmd(name).arg(channel).get_packed_command())?;
        loop {
            match self.con.recv_response()? {
                Value::Push { kind, data } if kind == want => {
                    if matches!(data.first(), Some(Value::BulkString(b)) if b == channel.as_bytes())
                    {
                        return Ok(());
                    }
                }
                Value::Push { kind, data } => {
                    if let Some(m) = Self::message(&kind, data) {
                        self.early.push_back(m);
                    }
                }
                Value::ServerError(e) => return Err(e.into()),
                _ => {}
            }
        }
    }

    /// Subscribe a channel of ours (sharded on a cluster).
    fn subscribe(&mut self, channel: &str) -> ::redis::RedisResult<()> {
        let sharded = self.sharded;
        self.change(channel, true, sharded)
    }

    fn unsubscribe(&mut self, channel: &str) -> ::redis::RedisResult<()> {
        let sharded = self.sharded;
        self.change(channel, false, sharded)
    }

    /// The next message; `None` when none came within the read timeout.
    fn next(&mut self) -> ::redis::RedisResult<Option<(String, Vec<u8>)>> {
        if let Some(m) = self.early.pop_front() {
            return Ok(Some(m));
        }
        loop {
            match self.con.recv_response() {
                Ok(Value::Push { kind, data }) => {
                    if let Some(m) = Self::message(&kind, data) {
                        return Ok(Some(m));
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn set_read_timeout(&self, t: Duration) -> ::redis::RedisResult<()> {
        self.con.set_read_timeout(Some(t))
    }
}

/// One connected period: subscribe, catch up, then serve until an error.
fn session(
    inner: &Arc<Inner>,
    shard: usize,
    jobs: &Receiver<Job>,
    attempt: &mut u32,
) -> ::redis::RedisResult<()> {
    let timeout = inner.config.timeout;
    let mut feed = Feed::open(inner, shard)?;
    let mut data = inner.clients[shard].get_connection_with_timeout(timeout)?;
    data.set_read_timeout(Some(timeout))?;
    data.set_write_timeout(Some(timeout))?;
    let _: String = cmd("SCRIPT")
        .arg("LOAD")
        .arg(scripts::READ_LUA)
        .query(&mut data)?;
    if shard == 0 {
        // Messages for this node, and broadcasts: classic pub/sub, which a
        // cluster delivers from any master.
        feed.change(&scripts::node_channel(inner.node), true, false)?;
        feed.change(scripts::ALL_NODES, true, false)?;
    }
    let names: Vec<Arc<str>> = {
        let chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
        chans
            .keys()
            .filter(|k| inner.shard_of(k) == shard)
            .cloned()
            .collect()
    };
    for n in &names {
        feed.subscribe(&scripts::pubsub_channel(n))?;
    }
    catch_up(inner, &mut data, &names)?;
    if !inner.reader_up[shard].swap(true, Ordering::SeqCst) && *attempt > 0 {
        log::warn!(
            "Redis: subscriber connected again to {}; {} channels caught up",
            inner.topology.shards[shard],
            names.len()
        );
    }
    inner.settle_reason();
    *attempt = 0;
    feed.set_read_timeout(POLL)?;
    let mut batch = Vec::with_capacity(64);
    loop {
        if inner.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            feed.set_read_timeout(timeout)?;
            handle_jobs(inner, &mut feed, &mut data, &mut batch)?;
            feed.set_read_timeout(POLL)?;
        }
        // Every message that is there, then the jobs again.
        loop {
            match feed.next()? {
                Some((name, body)) => on_message(inner, &mut data, &name, &body)?,
                None => break,
            }
            if !jobs.is_empty() {
                break;
            }
        }
    }
}

/// The read script for `channel` (a subscription's: it creates the stream
/// if absent): after `after`, at most `limit` entries.
fn read_cmd(
    inner: &Inner,
    pipe: &mut ::redis::Pipeline,
    channel: &str,
    after: Option<Position>,
    limit: usize,
) {
    let ttl = inner.history.ttl.as_millis() as u64;
    scripts::read(pipe, scripts::ReadMode::Join, channel, after, limit, ttl);
}

fn reads(
    data: &mut Connection,
    pipe: &::redis::Pipeline,
) -> ::redis::RedisResult<Vec<Result<Read, Unavailable>>> {
    let values: Vec<Value> = pipe.query(data)?;
    Ok(values.into_iter().map(parse_read).collect())
}

fn history_limit(inner: &Inner) -> usize {
    inner.history.size.max(1)
}

/// After a (re)connect: every channel catches up from the last seq this
/// node delivered, or is reset when the history no longer covers it.
fn catch_up(inner: &Inner, data: &mut Connection, names: &[Arc<str>]) -> ::redis::RedisResult<()> {
    for chunk in names.chunks(256) {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        let mut asked = Vec::with_capacity(chunk.len());
        for name in chunk {
            let at = {
                let chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
                chans.get(name).map(|c| Position {
                    seq: c.seq,
                    epoch: c.epoch,
                })
            };
            if let Some(at) = at {
                read_cmd(inner, &mut pipe, name, Some(at), history_limit(inner));
                asked.push((name.clone(), at));
            }
        }
        let results = reads(data, &pipe)?;
        for ((name, at), r) in asked.into_iter().zip(results) {
            let Ok(r) = r else { continue };
            if r.known && r.covered {
                for (s, f, d) in r.entries.iter().filter(|e| e.0 > at.seq) {
                    deliver(inner, &name, *s, r.position.epoch, *f, d, None);
                }
            } else {
                log::warn!(
                    "Redis: {name}: history does not cover {}:{} (now {}:{}); subscribers are told",
                    at.seq,
                    at.epoch,
                    r.position.seq,
                    r.position.epoch
                );
                reset(inner, &name, r.position);
            }
        }
    }
    Ok(())
}

/// A subscription being answered: channel, who, since, the index of its
/// read in the pipeline (if any), whether the channel is new here.
type PendingJoin = (Arc<str>, Joiner, Option<Position>, Option<usize>, bool);

/// Subscriptions and leaves, in their order; Redis reads for the
/// subscriptions that need one go in one pipeline.
fn handle_jobs(
    inner: &Inner,
    ps: &mut Feed,
    data: &mut Connection,
    batch: &mut Vec<Job>,
) -> ::redis::RedisResult<()> {
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    let workers = inner.hub.workers();
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    // Joins in order, with the index of their read (if any).
    let mut joins: Vec<PendingJoin> = Vec::new();
    let mut fresh: HashMap<Arc<str>, usize> = HashMap::new();
    let mut n_reads = 0;
    let mut left: Vec<Arc<str>> = Vec::new();
    for job in batch.drain(..) {
        match job {
            Job::Join {
                channel,
                who,
                since,
            } => {
                let new = {
                    let mut chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
                    let new = !chans.contains_key(&channel);
                    let c = chans.entry(channel.clone()).or_insert_with(|| Chan {
                        per_worker: vec![0; workers].into_boxed_slice(),
                        total: 0,
                        seq: 0,
                        epoch: Epoch(0),
                    });
                    if let Some(n) = c.per_worker.get_mut(who.worker) {
                        *n += 1;
                        c.total += 1;
                        inner.subscriptions.fetch_add(1, Ordering::Relaxed);
                    }
                    new
                };
                if new && !fresh.contains_key(&channel) {
                    subscribe.push(scripts::pubsub_channel(&channel));
                    // The channel's position, read after the SUBSCRIBE.
                    fresh.insert(channel.clone(), usize::MAX);
                }
                let needs_read = since.is_some() || fresh.contains_key(&channel);
                let idx = needs_read.then(|| {
                    let limit = if since.is_some() {
                        history_limit(inner)
                    } else {
                        0
                    };
                    read_cmd(inner, &mut pipe, &channel, since, limit);
                    n_reads += 1;
                    n_reads - 1
                });
                joins.push((channel, who, since, idx, new));
            }
            Job::Leave { channel, worker } => {
                if leave(inner, &channel, worker) {
                    left.push(channel);
                }
            }
        }
    }
    // The reads go after the SUBSCRIBE is confirmed: every publication
    // after the position read is then on its way to us.
    for ch in &subscribe {
        ps.subscribe(ch)?;
    }
    let results = if n_reads > 0 {
        reads(data, &pipe)?
    } else {
        Vec::new()
    };
    for (channel, who, since, idx, new) in joins {
        let answer = match idx.map(|i| &results[i]) {
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(r)) => {
                if new {
                    let mut chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = chans.get_mut(&channel) {
                        if c.epoch == Epoch(0) {
                            c.seq = r.position.seq;
                            c.epoch = r.position.epoch;
                        }
                    }
                }
                Ok(joined(&channel, since, r))
            }
            None => {
                let chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
                Ok(chans.get(&channel).map_or(
                    Joined {
                        position: Position {
                            seq: 0,
                            epoch: Epoch(0),
                        },
                        recovered: None,
                        replay: Vec::new(),
                    },
                    |c| Joined {
                        position: Position {
                            seq: c.seq,
                            epoch: c.epoch,
                        },
                        recovered: None,
                        replay: Vec::new(),
                    },
                ))
            }
        };
        if answer.is_err() {
            // Not subscribed after all: undo the count.
            if leave(inner, &channel, who.worker) {
                left.push(channel.clone());
            }
        }
        post(
            inner,
            who.worker,
            Command::Joined(who.conn, channel, answer),
        );
    }
    // Channels nobody here subscribes to any more (unless joined again).
    let chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
    for ch in left {
        if !chans.contains_key(&ch) {
            unsubscribe.push(scripts::pubsub_channel(&ch));
        }
    }
    drop(chans);
    unsubscribe.sort();
    unsubscribe.dedup();
    for ch in &unsubscribe {
        ps.unsubscribe(ch)?;
    }
    Ok(())
}

/// A subscription's answer from a read of the channel.
fn joined(channel: &Arc<str>, since: Option<Position>, r: &Read) -> Joined {
    let Some(since) = since else {
        return Joined {
            position: r.position,
            recovered: None,
            replay: Vec::new(),
        };
    };
    let recovered = since.epoch == r.position.epoch && r.known && r.covered;
    Joined {
        position: r.position,
        recovered: Some(recovered),
        replay: if recovered {
            r.entries
                .iter()
                .filter(|e| e.0 > since.seq && e.0 <= r.position.seq)
                .map(|(s, f, d)| {
                    Inner::publication(channel.clone(), *s, r.position.epoch, *f, d, None)
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Hand one publication to the workers with subscribers of its channel.
fn deliver(
    inner: &Inner,
    channel: &Arc<str>,
    seq: u64,
    epoch: Epoch,
    format: Format,
    data: &[u8],
    exclude: Option<ConnId>,
) {
    let mut chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = chans.get_mut(channel) else {
        return;
    };
    if seq <= c.seq && epoch == c.epoch {
        return;
    }
    c.seq = seq;
    c.epoch = epoch;
    let p = Inner::publication(channel.clone(), seq, epoch, format, data, exclude);
    for (w, &n) in c.per_worker.iter().enumerate() {
        if n > 0 {
            inner.hub.post(w, Command::Publish(p.clone()));
        }
    }
}

/// Tell every local subscriber of `channel` that its stream goes on from
/// `position` (what came between is lost).
fn reset(inner: &Inner, channel: &Arc<str>, position: Position) {
    let mut chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = chans.get_mut(channel) else {
        return;
    };
    c.seq = position.seq;
    c.epoch = position.epoch;
    for (w, &n) in c.per_worker.iter().enumerate() {
        if n > 0 {
            inner.hub.post(w, Command::Reset(channel.clone(), position));
        }
    }
}

fn on_message(
    inner: &Inner,
    data: &mut Connection,
    name: &str,
    body: &[u8],
) -> ::redis::RedisResult<()> {
    let Some(channel) = scripts::channel_of(name) else {
        relayed(inner, body);
        return Ok(());
    };
    let Some(super::Message {
        seq,
        epoch,
        format,
        exclude,
        data: payload,
    }) = parse_message(body)
    else {
        log::error!("Redis: unreadable message on {name} ({} bytes)", body.len());
        return Ok(());
    };
    let (name, at) = {
        let chans = inner.chans.lock().unwrap_or_else(|p| p.into_inner());
        let Some((k, c)) = chans.get_key_value(channel) else {
            return Ok(());
        };
        (
            k.clone(),
            Position {
                seq: c.seq,
                epoch: c.epoch,
            },
        )
    };
    if epoch != at.epoch {
        // A new stream (Redis lost the old one): say so, then go on.
        log::warn!(
            "Redis: {name}: stream {} replaced by {epoch} at seq {seq}; subscribers are told",
            at.epoch
        );
        reset(
            inner,
            &name,
            Position {
                seq: seq - 1,
                epoch,
            },
        );
    } else if seq <= at.seq {
        return Ok(());
    } else if seq > at.seq + 1 {
        // Missed messages: the history may have them.
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        read_cmd(inner, &mut pipe, &name, Some(at), history_limit(inner));
        let r = reads(data, &pipe)?.pop();
        match r {
            Some(Ok(r)) if r.known && r.covered => {
                for (s, f, d) in r.entries.iter().filter(|e| e.0 > at.seq && e.0 < seq) {
                    deliver(inner, &name, *s, epoch, *f, d, None);
                }
            }
            _ => {
                log::warn!(
                    "Redis: {name}: gap {}..{seq} not in history; subscribers are told",
                    at.seq + 1
                );
                reset(
                    inner,
                    &name,
                    Position {
                        seq: seq - 1,
                        epoch,
                    },
                );
            }
        }
    }
    deliver(inner, &name, seq, epoch, format, payload, exclude);
    Ok(())
}

/// A message relayed to this node: a send, a close or a broadcast.
fn relayed(inner: &Inner, body: &[u8]) {
    let (head, rest) = match body.iter().position(|&b| b == b'\n') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split(' ');
    let kind = parts.next();
    let a = parts.next().and_then(|v| v.parse::<u64>().ok());
    let b = parts.next().and_then(|v| v.parse::<u64>().ok());
    let frame = |format: u64| {
        Format(format as u8)
            .encode(&Meta {
                channel: "",
                seq: 0,
                epoch: Epoch(0),
                data: rest,
            })
            .frame
    };
    match (kind, a, b) {
        (Some("S"), Some(id), Some(format)) => {
            let id = ConnId::from_u64(id);
            if id.is_local() {
                inner
                    .hub
                    .post(id.worker(), Command::Send(id, frame(format)));
            }
        }
        (Some("C"), Some(id), Some(code)) => {
            let id = ConnId::from_u64(id);
            if id.is_local() {
                let reason = String::from_utf8_lossy(rest);
                inner.hub.post(
                    id.worker(),
                    Command::Close(id, code as u16, Arc::from(&*reason)),
                );
            }
        }
        (Some("B"), Some(format), None) => {
            let f = frame(format);
            let p = Arc::new(crate::broker::Publication::broadcast(f));
            inner.hub.post_all(|| Command::Broadcast(p.clone()));
        }
        _ => log::error!("Redis: unreadable relayed message ({} bytes)", body.len()),
    }
}
