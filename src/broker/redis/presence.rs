//! Presence in Redis, owned per node with expiry.
//!
//! Each node keeps the truth about its own connections ([`Owned`]: which
//! connections entered a channel, as which user) and tells Redis its share
//! of the channel: its subscriber count and the users it holds. A channel
//! `C` has, beside its stream (all with the hash tag `{C}`):
//! - `wspush:{C}:o`, a sorted set: node → lease end (ms); a node renews
//!   its lease on every channel it is on every third of
//!   [`RedisConfig::presence_lease`](super::RedisConfig);
//! - `wspush:{C}:s`, a hash: node → its subscribers;
//! - `wspush:{C}:n:<node>`, a hash: the users that node holds;
//! - `wspush:{C}:c`, a hash: user → how many nodes hold it;
//! - `wspush:{C}:u`, a hash: user → info (the members).
//!
//! Every script first removes the share of nodes whose lease ended (a node
//! that died without a word): their users lose a holder, and a user no live
//! node holds any more is removed, with its `removed` publication. Every
//! change is idempotent and the renewal sends the node's whole share, so a
//! lost request or a Redis that lost its data is mended at the next renewal.
//! All keys expire two leases after the last node left.

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::Value;

use super::scripts::{self, META_TTL_MS};
use super::Inner;
use crate::broker::presence::{Change, Entered, Events, Member, Occupied, Presence};
use crate::broker::{Epoch, Position, Reply, Unavailable};
use crate::server::ConnId;

/// `KEYS`: meta, history, owners, subscribers, node users, holders,
/// members. `ARGV`: mode (`enter`, `leave`, `renew`, `read`), node, lease
/// ms, added format, removed format, pub/sub channel, keep, history size,
/// history ttl ms, new epoch, meta ttl ms, publishing command, node key
/// prefix, node subscribers, then per mode: `enter`: user, info, limit;
/// `leave`: user (the node's last connection of it) or ''; `renew`: the
/// node's users and infos, in pairs.
///
/// Returns `{status, seq, epoch, occupied, vacated, {added}, {removed},
/// subscribers, {user, info, ...}}`: status 1, or 0 when `enter` found
/// the channel full (nothing changed but the purge).
pub static PRESENCE_LUA: &str = concat!(
    wspush_publish_lua!(),
    r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local mode, node, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local added, removed = {}, {}
local function announce(fmt, data)
  publish(KEYS[1], KEYS[2], ARGV[6], data, ARGV[7], ARGV[8], ARGV[9], ARGV[10], fmt, ARGV[11], ARGV[12], '')
end
local function add(user, info)
  if redis.call('HSETNX', KEYS[5], user, 1) == 1 then
    if redis.call('HINCRBY', KEYS[6], user, 1) == 1 then
      redis.call('HSET', KEYS[7], user, info)
      announce(ARGV[4], user .. '\n' .. info)
      table.insert(added, user)
    end
  end
end
local function drop(nodekey, user)
  if redis.call('HDEL', nodekey, user) == 1 then
    if redis.call('HINCRBY', KEYS[6], user, -1) <= 0 then
      redis.call('HDEL', KEYS[6], user)
      redis.call('HDEL', KEYS[7], user)
      announce(ARGV[5], user)
      table.insert(removed, user)
    end
  end
end
local function drop_node(id, nodekey)
  for _, u in ipairs(redis.call('HKEYS', nodekey)) do drop(nodekey, u) end
  redis.call('DEL', nodekey)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
for _, d in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  drop_node(d, ARGV[13] .. d)
end
local occupied, vacated, status = 0, 0, 1
if mode ~= 'read' then
  local before = redis.call('ZCARD', KEYS[3])
  local subs = tonumber(ARGV[14])
  if mode == 'enter' and ARGV[15] ~= '' then
    local user = ARGV[15]
    if redis.call('HEXISTS', KEYS[5], user) == 0 and redis.call('HEXISTS', KEYS[7], user) == 0
       and redis.call('HLEN', KEYS[7]) >= tonumber(ARGV[17]) then
      status = 0
    else
      add(user, ARGV[16])
    end
  elseif mode == 'leave' and ARGV[15] ~= '' then
    drop(KEYS[5], ARGV[15])
  elseif mode == 'renew' then
    local keep = {}
    for i = 15, #ARGV, 2 do
      keep[ARGV[i]] = true
      add(ARGV[i], ARGV[i + 1])
    end
    for _, u in ipairs(redis.call('HKEYS', KEYS[5])) do
      if not keep[u] then drop(KEYS[5], u) end
    end
  end
  if status == 1 and subs > 0 then
    redis.call('HSET', KEYS[4], node, subs)
    redis.call('ZADD', KEYS[3], now + lease, node)
    if before == 0 then occupied = 1 end
    for i = 3, 7 do redis.call('PEXPIRE', KEYS[i], 2 * lease) end
  elseif status == 1 then
    drop_node(node, KEYS[5])
    if before > 0 and redis.call('ZCARD', KEYS[3]) == 0 then vacated = 1 end
  end
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[10]
  seq = 0
  redis.call('HSET', KEYS[1], 'seq', 0, 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[4])) do total = total + tonumber(n) end
local members = {}
if mode == 'read' or (mode == 'enter' and ARGV[15] ~= '') then
  members = redis.call('HGETALL', KEYS[7])
end
return {status, seq, epoch, occupied, vacated, added, removed, total, members}
"#
);

/// `KEYS`: owners, subscribers, members. Returns `{live nodes,
/// subscribers on them, members}`.
pub static OCCUPANCY_LUA: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local subs = 0
for _, n in ipairs(live) do subs = subs + tonumber(redis.call('HGET', KEYS[2], n) or '0') end
return {#live, subs, redis.call('HLEN', KEYS[3])}
"#;

fn key(channel: &str, part: &str) -> String {
    format!("wspush:{{{channel}}}:{part}")
}

/// The owners key of a channel, and the channel of an owners key.
pub fn owners_key(channel: &str) -> String {
    key(channel, "o")
}

fn channel_of_owners(k: &str) -> Option<&str> {
    k.strip_prefix("wspush:{")?.strip_suffix("}:o")
}

/// This node's connections on one channel.
pub(crate) struct Owned {
    /// Connections that entered, and as which user.
    conns: HashMap<ConnId, Option<Arc<str>>>,
    /// Users: info and connections.
    users: HashMap<Arc<str>, (Arc<str>, u32)>,
    events: Events,
}

/// What the writer sends for presence.
pub(crate) enum Job {
    Enter {
        channel: Arc<str>,
        conn: ConnId,
        member: Option<(Arc<str>, Arc<str>)>,
        limit: usize,
        subs: u64,
        events: Events,
        reply: Reply<Entered>,
    },
    Leave {
        channel: Arc<str>,
        /// The user this node no longer holds, if any.
        user: Option<Arc<str>>,
        subs: u64,
        events: Events,
    },
    Renew {
        channel: Arc<str>,
        subs: u64,
        users: Vec<(Arc<str>, Arc<str>)>,
        events: Events,
    },
    Read {
        channel: Arc<str>,
        events: Events,
        reply: Reply<Presence>,
    },
}

impl Job {
    pub fn channel(&self) -> &str {
        match self {
            Job::Enter { channel, .. }
            | Job::Leave { channel, .. }
            | Job::Renew { channel, .. }
            | Job::Read { channel, .. } => channel,
        }
    }

    /// Not sent (Redis is unreachable): answer with `e`; an entry the node
    /// counted is taken back.
    pub fn refuse(self, inner: &Inner, e: Unavailable) {
        match self {
            Job::Enter {
                channel,
                conn,
                reply,
                ..
            } => {
                undo(inner, &channel, conn);
                reply(Err(e))
            }
            Job::Read { reply, .. } => reply(Err(e)),
            // The node's truth already changed; the next renewal tells Redis.
            Job::Leave { .. } | Job::Renew { .. } => {}
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection enters: count it in this node's truth and queue the job
/// with `send` under the same lock, so that jobs reach Redis in the order
/// the truth changed. On a refusal the entry is taken back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn enter(
    inner: &Inner,
    channel: &str,
    conn: ConnId,
    member: Option<(&str, &str)>,
    limit: usize,
    events: &Events,
    reply: Reply<Entered>,
    send: impl FnOnce(Job) -> Result<(), Unavailable>,
) -> Result<(), Unavailable> {
    let mut owned = lock(&inner.owned);
    let o = owned.entry(Arc::from(channel)).or_insert_with(|| Owned {
        conns: HashMap::new(),
        users: HashMap::new(),
        events: events.clone(),
    });
    let user: Option<Arc<str>> = member.map(|(u, _)| Arc::from(u));
    let info: Option<Arc<str>> = member.map(|(_, i)| Arc::from(i));
    o.conns.insert(conn, user.clone());
    if let (Some(u), Some(i)) = (&user, &info) {
        o.users.entry(u.clone()).or_insert_with(|| (i.clone(), 0)).1 += 1;
    }
    let job = Job::Enter {
        channel: Arc::from(channel),
        conn,
        member: user.zip(info),
        limit,
        subs: o.conns.len() as u64,
        events: events.clone(),
        reply,
    };
    let sent = send(job);
    drop(owned);
    if sent.is_err() {
        undo(inner, channel, conn);
    }
    sent
}

/// A connection leaves: if it had entered, take it out of this node's
/// truth and queue the job telling Redis with `send` (under the lock, as
/// [`enter`]). A refused job is mended by the next renewal.
pub(crate) fn leave(
    inner: &Inner,
    channel: &str,
    conn: ConnId,
    send: impl FnOnce(Job) -> Result<(), Unavailable>,
) {
    let mut owned = lock(&inner.owned);
    let Some(o) = owned.get_mut(channel) else {
        return;
    };
    let Some(user) = o.conns.remove(&conn) else {
        return;
    };
    let mut gone = None;
    if let Some(u) = user {
        if let Some(e) = o.users.get_mut(&u) {
            e.1 -= 1;
            if e.1 == 0 {
                o.users.remove(&u);
                gone = Some(u);
            }
        }
    }
    let subs = o.conns.len() as u64;
    let events = o.events.clone();
    if subs == 0 {
        owned.remove(channel);
    }
    let _ = send(Job::Leave {
        channel: Arc::from(channel),
        user: gone,
        subs,
        events,
    });
}

/// Take back an entry Redis did not count (full, or unreachable).
fn undo(inner: &Inner, channel: &str, conn: ConnId) {
    let mut owned = lock(&inner.owned);
    let Some(o) = owned.get_mut(channel) else {
        return;
    };
    if let Some(Some(u)) = o.conns.remove(&conn) {
        if let Some(e) = o.users.get_mut(&u) {
            e.1 -= 1;
            if e.1 == 0 {
                o.users.remove(&u);
            }
        }
    }
    if o.conns.is_empty() {
        owned.remove(channel);
    }
}

/// The renewals of every channel this node is on.
pub(crate) fn renewals(inner: &Inner) -> Vec<Job> {
    lock(&inner.owned)
        .iter()
        .map(|(ch, o)| Job::Renew {
            channel: ch.clone(),
            subs: o.conns.len() as u64,
            users: o
                .users
                .iter()
                .map(|(u, (i, _))| (u.clone(), i.clone()))
                .collect(),
            events: o.events.clone(),
        })
        .collect()
}

/// Queue the job's script on `pipe`.
pub(crate) fn push(inner: &Inner, pipe: &mut ::redis::Pipeline, job: &Job) {
    let channel = job.channel();
    let (mode, events, subs) = match job {
        Job::Enter { events, subs, .. } => ("enter", events, *subs),
        Job::Leave { events, subs, .. } => ("leave", events, *subs),
        Job::Renew { events, subs, .. } => ("renew", events, *subs),
        Job::Read { events, .. } => ("read", events, 0),
    };
    let c = pipe.cmd("EVALSHA");
    c.arg(scripts::sha(PRESENCE_LUA))
        .arg(7)
        .arg(scripts::meta_key(channel))
        .arg(scripts::history_key(channel))
        .arg(owners_key(channel))
        .arg(key(channel, "s"))
        .arg(key(channel, &format!("n:{}", inner.node)))
        .arg(key(channel, "c"))
        .arg(key(channel, "u"))
        .arg(mode)
        .arg(inner.node)
        .arg(inner.config.presence_lease.as_millis().max(1) as u64)
        .arg(events.added.0)
        .arg(events.removed.0)
        .arg(scripts::pubsub_channel(channel))
        .arg(if inner.history.enabled() { "1" } else { "0" })
        .arg(inner.history.size.max(1))
        .arg((inner.history.ttl.as_millis() as u64).max(1))
        .arg(Epoch::random().to_string())
        .arg(META_TTL_MS)
        .arg(if inner.topology.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        })
        .arg(key(channel, "n:"))
        .arg(subs);
    match job {
        Job::Enter { member, limit, .. } => {
            let (u, i) = member.as_ref().map_or(("", ""), |(u, i)| (&**u, &**i));
            c.arg(u).arg(i).arg(*limit);
        }
        Job::Leave { user, .. } => {
            c.arg(user.as_deref().unwrap_or(""));
        }
        Job::Renew { users, .. } => {
            for (u, i) in users {
                c.arg(&**u).arg(&**i);
            }
        }
        Job::Read { .. } => {}
    }
}

/// The parts of a [`PRESENCE_LUA`] answer.
struct Answer {
    ok: bool,
    position: Position,
    occupied: bool,
    vacated: bool,
    added: Vec<String>,
    removed: Vec<String>,
    subscribers: u64,
    members: Vec<Member>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(super::writer::text).collect(),
        _ => Vec::new(),
    }
}

fn parse(v: Value) -> Result<Answer, Unavailable> {
    let Value::Array(items) = &v else {
        return Err(super::writer::server_error(v));
    };
    let int = |i: usize| items.get(i).and_then(super::writer::int).unwrap_or(0);
    let Some(epoch) = items
        .get(2)
        .and_then(super::writer::text)
        .and_then(|t| t.parse::<Epoch>().ok())
    else {
        return Err(super::writer::server_error(v));
    };
    let flat = strings(items.get(8));
    let mut members: Vec<Member> = flat
        .chunks(2)
        .filter_map(|p| {
            Some(Member {
                user: p.first()?.clone(),
                info: p.get(1)?.clone(),
            })
        })
        .collect();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(Answer {
        ok: int(0) == 1,
        position: Position {
            seq: int(1).max(0) as u64,
            epoch,
        },
        occupied: int(3) == 1,
        vacated: int(4) == 1,
        added: strings(items.get(5)),
        removed: strings(items.get(6)),
        subscribers: int(7).max(0) as u64,
        members,
    })
}

/// Tell the observer what changed, in order: occupied, added, removed,
/// vacated.
fn tell(events: &Events, channel: &str, a: &Answer) {
    if a.occupied {
        events.tell(channel, &Change::Occupied);
    }
    for u in &a.added {
        events.tell(channel, &Change::MemberAdded(u.clone()));
    }
    for u in &a.removed {
        events.tell(channel, &Change::MemberRemoved(u.clone()));
    }
    if a.vacated {
        events.tell(channel, &Change::Vacated);
    }
}

/// Answer the job with its script's result.
pub(crate) fn answer(inner: &Inner, job: Job, v: Value) {
    let a = parse(v);
    match job {
        Job::Enter {
            channel,
            conn,
            member,
            events,
            reply,
            ..
        } => match a {
            Ok(a) if a.ok => {
                tell(&events, &channel, &a);
                reply(Ok(Entered::In {
                    position: a.position,
                    members: if member.is_some() {
                        a.members
                    } else {
                        Vec::new()
                    },
                }))
            }
            Ok(a) => {
                tell(&events, &channel, &a);
                undo(inner, &channel, conn);
                reply(Ok(Entered::Full))
            }
            Err(e) => {
                undo(inner, &channel, conn);
                reply(Err(e))
            }
        },
        Job::Leave {
            channel, events, ..
        }
        | Job::Renew {
            channel, events, ..
        } => {
            if let Ok(a) = a {
                tell(&events, &channel, &a);
            }
        }
        Job::Read {
            channel,
            events,
            reply,
        } => reply(a.map(|a| {
            tell(&events, &channel, &a);
            Presence {
                subscribers: a.subscribers,
                members: a.members,
            }
        })),
    }
}

/// Most channels a listing returns.
const MAX_LISTED: usize = 10_000;

/// Occupied channels starting with `prefix` on every shard (a SCAN of the
/// owners keys, then their occupancy), on the calling thread.
pub(crate) fn list(inner: &Inner, prefix: &str) -> Result<Vec<Occupied>, Unavailable> {
    let fail = |e: ::redis::RedisError| {
        log::warn!("Redis: listing channels: {e}");
        Unavailable(Arc::from(format!("Redis: {e}")))
    };
    let mut pattern = String::from("wspush:{");
    for ch in prefix.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push_str("*}:o");
    let mut out = Vec::new();
    for client in &inner.clients {
        let mut con = client
            .get_connection_with_timeout(inner.config.timeout)
            .map_err(fail)?;
        con.set_read_timeout(Some(inner.config.timeout))
            .map_err(fail)?;
        let mut cursor = 0u64;
        let mut names = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
                .map_err(fail)?;
            names.extend(
                keys.iter()
                    .filter_map(|k| channel_of_owners(k))
                    .filter(|c| c.starts_with(prefix))
                    .map(str::to_string),
            );
            cursor = next;
            if cursor == 0 || names.len() >= MAX_LISTED {
                break;
            }
        }
        for chunk in names.chunks(256) {
            let mut pipe = ::redis::pipe();
            for ch in chunk {
                pipe.cmd("EVAL")
                    .arg(OCCUPANCY_LUA)
                    .arg(3)
                    .arg(owners_key(ch))
                    .arg(key(ch, "s"))
                    .arg(key(ch, "u"));
            }
            let counts: Vec<(u64, u64, u64)> = pipe.query(&mut con).map_err(fail)?;
            for (ch, (live, subs, users)) in chunk.iter().zip(counts) {
                if live > 0 && subs > 0 {
                    out.push(Occupied {
                        channel: ch.clone(),
                        subscribers: subs,
                        users,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.channel.cmp(&b.channel));
    out.truncate(MAX_LISTED);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_keys_round_trip() {
        assert_eq!(
            owners_key("pusher/1/presence-a"),
            "wspush:{pusher/1/presence-a}:o"
        );
        assert_eq!(
            channel_of_owners(&owners_key("pusher/1/presence-a")),
            Some("pusher/1/presence-a")
        );
        assert_eq!(channel_of_owners("wspush:{x}:m"), None);
    }
}
