//! The writer thread: publications, history reads, relays and the node's
//! heartbeat, sent to Redis in pipelines.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{cmd, Connection, Value};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::scripts::{self, META_TTL_MS};
use super::{backoff, presence, Inner, NODE_EXPIRY_MS};
use crate::broker::{
    Epoch, Format, HistoryPage, NodeInfo, Position, Published, Relay, Reply, Unavailable,
};

/// What the writer is asked to do.
pub(crate) enum Job {
    Publish {
        channel: Arc<str>,
        keep: bool,
        format: Format,
        exclude: Option<crate::server::ConnId>,
        data: Arc<[u8]>,
        reply: Reply<Published>,
    },
    History {
        channel: Arc<str>,
        since: Option<Position>,
        limit: usize,
        reply: Reply<HistoryPage>,
    },
    Relay(Relay, Reply<u64>),
    Presence(presence::Job),
}

impl Job {
    fn refuse(self, inner: &Inner, e: Unavailable) {
        match self {
            Job::Publish { reply, .. } => reply(Err(e)),
            Job::History { reply, .. } => reply(Err(e)),
            Job::Relay(_, reply) => reply(Err(e)),
            Job::Presence(p) => p.refuse(inner, e),
        }
    }
}

/// Most jobs sent in one pipeline.
const BATCH: usize = 512;
/// How often the node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long the id of a node that went silent is not handed out again
/// (connection ids carry it: a relay meant for a dead node's connection
/// must not reach a new node's).
const NODE_ID_QUARANTINE_MS: u64 = 3_600_000;

/// Pick a free node id (1..=4095) and take it.
pub(crate) fn claim_node(con: &mut Connection) -> ::redis::RedisResult<u16> {
    let claim = ::redis::Script::new(scripts::CLAIM_LUA);
    let start = (crate::broker::Epoch::random().0 % 4095) as u16;
    for i in 0..4095u16 {
        let id = (start + i) % 4095 + 1;
        let took: i64 = claim
            .key(scripts::NODES_KEY)
            .arg(id)
            .arg(NODE_ID_QUARANTINE_MS)
            .invoke(con)?;
        if took == 1 {
            return Ok(id);
        }
    }
    Err((::redis::ErrorKind::Client, "no free node id").into())
}

/// Load the scripts (after a connect: Redis may have restarted).
fn load_scripts(con: &mut Connection) -> ::redis::RedisResult<()> {
    for s in [
        scripts::PUBLISH_LUA,
        scripts::READ_LUA,
        scripts::HEARTBEAT_LUA,
        presence::PRESENCE_LUA,
    ] {
        let _: String = cmd("SCRIPT").arg("LOAD").arg(s).query(con)?;
    }
    Ok(())
}

/// One shard's connection and its reconnection schedule.
struct Link {
    con: Option<Connection>,
    attempt: u32,
    retry_at: Instant,
}

impl Job {
    /// The shard the job goes to (relays: the first; classic pub/sub
    /// reaches every node of a cluster from any master).
    fn shard(&self, inner: &Inner) -> usize {
        match self {
            Job::Publish { channel, .. } | Job::History { channel, .. } => inner.shard_of(channel),
            Job::Presence(p) => inner.shard_of(p.channel()),
            Job::Relay(..) => 0,
        }
    }
}

pub(crate) fn run(inner: Arc<Inner>, jobs: Receiver<Job>) {
    let shards = inner.topology.shards.len();
    let now = Instant::now();
    let mut links: Vec<Link> = (0..shards)
        .map(|_| Link {
            con: None,
            attempt: 0,
            retry_at: now,
        })
        .collect();
    let beat_shard = inner.shard_of("nodes");
    let mut next_beat = Instant::now();
    let renew_every = inner.config.presence_lease / 3;
    let mut next_renewal = Instant::now() + renew_every;
    let mut groups: Vec<Vec<Job>> = (0..shards).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut started = false;
    while !inner.stop.load(Ordering::Relaxed) {
        // Reconnect the shards that are due.
        let now = Instant::now();
        for (i, l) in links.iter_mut().enumerate() {
            if l.con.is_some() || now < l.retry_at {
                continue;
            }
            match connect(&inner, i) {
                Ok(c) => {
                    if started {
                        log::warn!(
                            "Redis: writer connected again to {}; publishing resumes",
                            inner.topology.shards[i]
                        );
                    }
                    l.con = Some(c);
                    l.attempt = 0;
                    inner.writer_up[i].store(true, Ordering::SeqCst);
                    inner.settle_reason();
                }
                Err(e) => {
                    inner.set_reason(&e.to_string());
                    l.retry_at = now + backoff(l.attempt);
                    l.attempt += 1;
                }
            }
        }
        started = true;
        let down = links.iter().any(|l| l.con.is_none());
        let mut wait = next_beat.saturating_duration_since(Instant::now());
        if down {
            wait = wait.min(Duration::from_millis(50));
        }
        let mut n = 0;
        match jobs.recv_timeout(wait) {
            Ok(j) => {
                groups[j.shard(&inner)].push(j);
                n += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while n < BATCH {
            match jobs.try_recv() {
                Ok(j) => {
                    groups[j.shard(&inner)].push(j);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if jobs.is_empty() {
            inner.full_warned.store(false, Ordering::Relaxed);
        }
        let beat = Instant::now() >= next_beat;
        if beat {
            next_beat = Instant::now() + HEARTBEAT;
        }
        if Instant::now() >= next_renewal {
            // This node's share of every channel it is on, after the jobs
            // already taken (which the truth the renewals carry includes).
            next_renewal = Instant::now() + renew_every;
            for r in presence::renewals(&inner) {
                groups[inner.shard_of(r.channel())].push(Job::Presence(r));
            }
        }
        for (i, l) in links.iter_mut().enumerate() {
            let batch = &mut groups[i];
            let Some(c) = l.con.as_mut() else {
                for j in batch.drain(..) {
                    j.refuse(&inner, inner.unavailable());
                }
                continue;
            };
            if let Err(e) = send(&inner, c, batch, beat && i == beat_shard) {
                log::error!(
                    "Redis: writer lost its connection to {} ({e}); its publications are refused until it is back",
                    inner.topology.shards[i]
                );
                inner.set_reason(&e.to_string());
                inner.writer_up[i].store(false, Ordering::SeqCst);
                for j in batch.drain(..) {
                    j.refuse(&inner, inner.unavailable());
                }
                l.con = None;
                l.retry_at = Instant::now() + backoff(0);
                l.attempt = 1;
            }
        }
    }
}

fn connect(inner: &Inner, shard: usize) -> ::redis::RedisResult<Connection> {
    let mut c = inner.clients[shard].get_connection_with_timeout(inner.config.timeout)?;
    c.set_read_timeout(Some(inner.config.timeout))?;
    c.set_write_timeout(Some(inner.config.timeout))?;
    load_scripts(&mut c)?;
    Ok(c)
}

/// Send the batch (and the heartbeat) in one pipeline and answer each job.
/// An error means the connection is lost; the batch is left to refuse.
fn send(
    inner: &Inner,
    con: &mut Connection,
    batch: &mut Vec<Job>,
    beat: bool,
) -> ::redis::RedisResult<()> {
    if batch.is_empty() && !beat {
        return Ok(());
    }
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    let ttl = inner.history.ttl.as_millis() as u64;
    for j in batch.iter() {
        match j {
            Job::Publish {
                channel,
                keep,
                format,
                exclude,
                data,
                ..
            } => {
                pipe.cmd("EVALSHA")
                    .arg(scripts::sha(scripts::PUBLISH_LUA))
                    .arg(2)
                    .arg(scripts::meta_key(channel))
                    .arg(scripts::history_key(channel))
                    .arg(scripts::pubsub_channel(channel))
                    .arg(&data[..])
                    .arg(if *keep { "1" } else { "0" })
                    .arg(inner.history.size.max(1))
                    .arg(ttl.max(1))
                    .arg(Epoch::random().to_string())
                    .arg(format.0)
                    .arg(META_TTL_MS)
                    .arg(if inner.topology.cluster {
                        "SPUBLISH"
                    } else {
                        "PUBLISH"
                    })
                    .arg(exclude.map_or(String::new(), |id| id.as_u64().to_string()));
            }
            Job::History {
                channel,
                since,
                limit,
                ..
            } => {
                scripts::read(
                    &mut pipe,
                    scripts::ReadMode::Read,
                    channel,
                    *since,
                    *limit,
                    ttl,
                );
            }
            Job::Relay(msg, _) => {
                let (target, body) = relay_message(msg);
                pipe.cmd("PUBLISH").arg(target).arg(body);
            }
            Job::Presence(p) => presence::push(inner, &mut pipe, p),
        }
    }
    if beat {
        let conns = inner.hub.open.load(Ordering::Relaxed);
        pipe.cmd("EVALSHA")
            .arg(scripts::sha(scripts::HEARTBEAT_LUA))
            .arg(2)
            .arg(scripts::NODES_KEY)
            .arg(scripts::NODE_CONNS_KEY)
            .arg(inner.node)
            .arg(conns)
            .arg(NODE_EXPIRY_MS);
    }
    let mut results: Vec<Value> = pipe.query(con)?;
    if results.iter().any(is_noscript) {
        // Redis restarted under us without our scripts: load them and
        // send again (nothing of a NOSCRIPT call ran).
        load_scripts(con)?;
        results = pipe.query(con)?;
    }
    let mut results = results.into_iter();
    for j in batch.drain(..) {
        let v = results.next().unwrap_or(Value::Nil);
        match j {
            Job::Publish { reply, .. } => reply(published(v)),
            Job::History {
                channel,
                since,
                reply,
                ..
            } => reply(history_page(inner, &channel, since, v)),
            Job::Relay(_, reply) => reply(match v {
                Value::Int(n) => Ok(n.max(0) as u64),
                other => Err(server_error(other)),
            }),
            Job::Presence(p) => presence::answer(inner, p, v),
        }
    }
    if beat {
        if let Some(v) = results.next() {
            update_nodes(inner, v);
        }
    }
    Ok(())
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

pub(crate) fn server_error(v: Value) -> Unavailable {
    let text = match v {
        Value::ServerError(e) => e.to_string(),
        other => format!("unexpected answer {other:?}"),
    };
    log::error!("Redis: {text}");
    Unavailable(Arc::from(format!("Redis refused: {text}")))
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn published(v: Value) -> Result<Published, Unavailable> {
    let Value::Array(items) = &v else {
        return Err(server_error(v));
    };
    let (Some(seq), Some(epoch), Some(n)) = (
        items.first().and_then(int),
        items
            .get(1)
            .and_then(text)
            .and_then(|t| t.parse::<Epoch>().ok()),
        items.get(2).and_then(int),
    ) else {
        return Err(server_error(v));
    };
    Ok(Published {
        seq: seq as u64,
        epoch,
        recipients: n.max(0) as u64,
    })
}

/// The parts of a [`scripts::READ_LUA`] answer: position, known, covered
/// and the entries `(seq, format, data)`.
pub(crate) struct Read {
    pub position: Position,
    pub known: bool,
    pub covered: bool,
    pub entries: Vec<(u64, Format, Vec<u8>)>,
}

pub(crate) fn parse_read(v: Value) -> Result<Read, Unavailable> {
    let Value::Array(items) = v else {
        return Err(server_error(v));
    };
    let seq = items.first().and_then(int).unwrap_or(0) as u64;
    let epoch = items
        .get(1)
        .and_then(text)
        .and_then(|t| t.parse::<Epoch>().ok())
        .unwrap_or(Epoch(0));
    let known = items.get(2).and_then(int) == Some(1);
    let covered = items.get(3).and_then(int) == Some(1);
    let mut entries = Vec::new();
    let mut rest = items.into_iter().skip(4);
    while let (Some(s), Some(f), Some(d)) = (rest.next(), rest.next(), rest.next()) {
        let (Some(s), Some(f)) = (int(&s), int(&f)) else {
            continue;
        };
        let d = match d {
            Value::BulkString(b) => b,
            _ => Vec::new(),
        };
        entries.push((s as u64, Format(f as u8), d));
    }
    Ok(Read {
        position: Position { seq, epoch },
        known,
        covered,
        entries,
    })
}

fn history_page(
    inner: &Inner,
    channel: &Arc<str>,
    since: Option<Position>,
    v: Value,
) -> Result<HistoryPage, Unavailable> {
    let r = parse_read(v)?;
    let _ = inner;
    let publications = r
        .entries
        .into_iter()
        .map(|(s, f, d)| Inner::publication(channel.clone(), s, r.position.epoch, f, &d, None))
        .collect();
    Ok(HistoryPage {
        position: r.position,
        complete: r.known && (since.is_none() || r.covered),
        publications,
    })
}

/// The pub/sub target and body of a relayed message (see
/// [`super::reader`] for the receiving side).
fn relay_message(msg: &Relay) -> (String, Vec<u8>) {
    match msg {
        Relay::Send(id, format, data) => {
            let mut b = format!("S {} {}\n", id.as_u64(), format.0).into_bytes();
            b.extend_from_slice(data);
            (scripts::node_channel(id.node()), b)
        }
        Relay::Close(id, code, reason) => (
            scripts::node_channel(id.node()),
            format!("C {} {code}\n{reason}", id.as_u64()).into_bytes(),
        ),
        Relay::Broadcast(format, data) => {
            let mut b = format!("B {}\n", format.0).into_bytes();
            b.extend_from_slice(data);
            (scripts::ALL_NODES.to_string(), b)
        }
    }
}

fn update_nodes(inner: &Inner, v: Value) {
    let Value::Array(items) = v else {
        return;
    };
    let now = items.first().and_then(int).unwrap_or(0);
    let pairs = |v: Option<&Value>| -> Vec<(String, i64)> {
        let Some(Value::Array(a)) = v else {
            return Vec::new();
        };
        a.chunks(2)
            .filter_map(|c| Some((text(c.first()?)?, int(c.get(1)?)?)))
            .collect()
    };
    let seen = pairs(items.get(1));
    let conns = pairs(items.get(2));
    let nodes = seen
        .into_iter()
        .filter_map(|(id, last)| {
            let id: u16 = id.parse().ok()?;
            let connections = conns
                .iter()
                .find(|(n, _)| n.parse() == Ok(id))
                .map_or(0, |(_, c)| (*c).max(0) as u64);
            Some(NodeInfo {
                id,
                connections,
                age_ms: (now - last).max(0) as u64,
                this: id == inner.node,
            })
        })
        .collect();
    *inner.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
}
