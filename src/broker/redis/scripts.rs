//! The Lua scripts that keep a channel's order and history in Redis, and
//! the names of its keys.
//!
//! A channel `C` owns three names, all with the hash tag `{C}` so that on
//! Redis Cluster they live on one shard:
//! - `wspush:{C}:m`, a hash: `seq` (the last sequence number) and `epoch`
//!   (16 hex digits, the stream's identity);
//! - `wspush:{C}:h`, a stream: the history, one entry per publication with
//!   the id `<seq>-0` and the fields `t` (ms, Redis's clock), `f` (format)
//!   and `d` (data); capped at the history size, expired with the channel's
//!   history TTL;
//! - `wspush:{C}:p`, the pub/sub channel nodes subscribe to while they
//!   have local subscribers.
//!
//! A publication is one script (`PUBLISH_LUA`): INCR the seq, create the
//! epoch if the stream is new (and drop a history of a previous stream),
//! XADD with its seq as id, trim, PUBLISH `seq \n epoch \n format \n
//! excluded connection \n data`.
//! Being one script makes it atomic: no reader ever sees a seq without its
//! history entry or a history entry whose message was not yet published.
//! A stream keyed by seq (not a list) lets a resume read exactly the
//! entries after a position with one XRANGE, whatever was trimmed.

/// How long a channel's seq and epoch outlive its last publication or
/// subscription (ms): past it a channel starts a new stream.
pub const META_TTL_MS: u64 = 24 * 3600 * 1000;

/// The body of a publication, shared by [`PUBLISH_LUA`] and
/// [`PRESENCE_LUA`](super::presence::PRESENCE_LUA): `publish(meta,
/// history, pubsub channel, data, keep ('1'/'0'), history size, history
/// ttl ms, new epoch, format, meta ttl ms, publishing command, excluded
/// connection)` returns `seq, epoch, receivers`.
macro_rules! wspush_publish_lua {
    () => {
        r#"
local function publish(meta, hist, pubsub, data, keep, size, ttl, newepoch, fmt, metattl, command, exclude)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local epoch
  if redis.call('HSETNX', meta, 'epoch', newepoch) == 1 then
    epoch = newepoch
    redis.call('DEL', hist)
    if seq ~= 1 then
      seq = 1
      redis.call('HSET', meta, 'seq', 1)
    end
  else
    epoch = redis.call('HGET', meta, 'epoch')
  end
  redis.call('PEXPIRE', meta, metattl)
  if keep == '1' then
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    redis.call('XADD', hist, 'MAXLEN', size, seq .. '-0', 't', now, 'f', fmt, 'd', data)
    redis.call('PEXPIRE', hist, ttl)
  end
  local n = redis.call(command, pubsub, seq .. '\n' .. epoch .. '\n' .. fmt .. '\n' .. exclude .. '\n' .. data)
  return seq, epoch, n
end
"#
    };
}

/// `KEYS`: meta, history. `ARGV`: pubsub channel, data, keep (0/1),
/// history size, history ttl ms, new epoch, format, meta ttl ms, and the
/// publishing command (`PUBLISH`, or `SPUBLISH` on a Redis Cluster: the
/// channel shares the keys' hash slot, so its shard delivers it), and the
/// connection that must not receive it (decimal id, or empty).
/// Returns `{seq, epoch, receivers}`.
pub static PUBLISH_LUA: &str = concat!(
    wspush_publish_lua!(),
    r#"
local seq, epoch, n = publish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
return {seq, epoch, n}
"#
);

/// `KEYS`: meta, history. `ARGV`: mode (`join`: create the stream if
/// absent; `read`: change nothing), after (seq, or '' for none), epoch of
/// `after` ('' for any), limit, history ttl ms, new epoch, meta ttl ms.
/// Returns `{seq, epoch, known, covered, s1, f1, d1, s2, f2, d2, ...}`:
/// `known`: `after`'s epoch is the stream's; `covered`: every publication
/// after `after` is in the entries (when known); the entries are after
/// `after` when known, else the oldest held, young ones only, at most
/// `limit`.
pub static READ_LUA: &str = r#"
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if ARGV[1] == 'join' then
    epoch = ARGV[6]
    seq = 0
    redis.call('HSET', KEYS[1], 'seq', 0, 'epoch', epoch)
    redis.call('DEL', KEYS[2])
  else
    epoch = ''
  end
end
if ARGV[1] == 'join' then
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
local out = {seq, epoch, 0, 0}
local after = tonumber(ARGV[2] ~= '' and ARGV[2] or '0')
local known = ARGV[2] == '' or ARGV[3] == '' or ARGV[3] == epoch
if known then out[3] = 1 end
if not known then after = 0 end
if after >= seq then
  out[4] = 1
  return out
end
if tonumber(ARGV[4]) == 0 then return out end
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[5])
local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[4]))
local first = true
for _, e in ipairs(entries) do
  local f = e[2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  if tonumber(fields['t']) >= cutoff then
    local s = tonumber(string.match(e[1], '^(%d+)'))
    if first then
      if s == after + 1 then out[4] = 1 end
      first = false
    end
    table.insert(out, s)
    table.insert(out, fields['f'])
    table.insert(out, fields['d'])
  end
end
return out
"#;

/// `KEYS`: node set, node info hash. `ARGV`: node id, connections,
/// expiry ms. Returns `{now_ms, {id, last_ms, ...}, {id, conns, ...}}` of
/// the nodes heard within the expiry. Ids silent for a day are forgotten
/// (until then [`CLAIM_LUA`] does not hand them out again).
pub static HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf', 'WITHSCORES')
return {now, live, redis.call('HGETALL', KEYS[2])}
"#;

/// `KEYS`: node set. `ARGV`: candidate id, quarantine ms. 1 if the id was
/// free (never used, or silent for longer than the quarantine, so that
/// connection ids of a dead node are not taken for a new node's) and is
/// now taken, else 0.
pub static CLAIM_LUA: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and tonumber(last) > now - tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return 1
"#;

/// The SHA1 a script is called by (`EVALSHA`), computed once per script.
pub fn sha(script: &'static str) -> &'static str {
    use std::sync::OnceLock;
    static SHAS: [OnceLock<String>; 6] = [const { OnceLock::new() }; 6];
    let i = [
        PUBLISH_LUA,
        READ_LUA,
        HEARTBEAT_LUA,
        CLAIM_LUA,
        super::presence::PRESENCE_LUA,
        super::presence::OCCUPANCY_LUA,
    ]
    .iter()
    .position(|s| std::ptr::eq(*s, script))
    .expect("one of this module's scripts");
    SHAS[i].get_or_init(|| ::redis::Script::new(script).get_hash().to_string())
}

/// What [`read`] may do to a channel that has no stream yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// A subscription: create the stream (its epoch) if absent.
    Join,
    /// A history listing: change nothing.
    Read,
}

/// Queue a [`READ_LUA`] call on `pipe`: publications of `channel` after
/// `after` (its epoch `Epoch(0)`: any), at most `limit`, none older than
/// `ttl_ms`.
pub fn read(
    pipe: &mut ::redis::Pipeline,
    mode: ReadMode,
    channel: &str,
    after: Option<crate::broker::Position>,
    limit: usize,
    ttl_ms: u64,
) {
    use crate::broker::Epoch;
    let epoch = match after {
        Some(p) if p.epoch != Epoch(0) => p.epoch.to_string(),
        _ => String::new(),
    };
    pipe.cmd("EVALSHA")
        .arg(sha(READ_LUA))
        .arg(2)
        .arg(meta_key(channel))
        .arg(history_key(channel))
        .arg(match mode {
            ReadMode::Join => "join",
            ReadMode::Read => "read",
        })
        .arg(after.map_or(String::new(), |p| p.seq.to_string()))
        .arg(epoch)
        .arg(limit)
        .arg(ttl_ms.max(1))
        .arg(match mode {
            ReadMode::Join => Epoch::random().to_string(),
            ReadMode::Read => String::new(),
        })
        .arg(META_TTL_MS);
}

/// The meta key of a channel.
pub fn meta_key(channel: &str) -> String {
    format!("wspush:{{{channel}}}:m")
}

/// The history key of a channel.
pub fn history_key(channel: &str) -> String {
    format!("wspush:{{{channel}}}:h")
}

/// The pub/sub channel of a channel.
pub fn pubsub_channel(channel: &str) -> String {
    format!("wspush:{{{channel}}}:p")
}

/// The channel of a pub/sub channel name, if it is one of ours.
pub fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix("wspush:{")?.strip_suffix("}:p")
}

/// The set of live nodes (scored by their last heartbeat, ms).
pub const NODES_KEY: &str = "wspush:{nodes}";
/// Connections per node (same hash tag: one script updates both).
pub const NODE_CONNS_KEY: &str = "wspush:{nodes}:conns";
/// Messages for every node (broadcasts).
pub const ALL_NODES: &str = "wspush:all";

/// Messages for one node (sends and closes to its connections).
pub fn node_channel(node: u16) -> String {
    format!("wspush:node:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_channel_hash_tag_and_round_trip() {
        assert_eq!(meta_key("a.b"), "wspush:{a.b}:m");
        assert_eq!(history_key("a.b"), "wspush:{a.b}:h");
        assert_eq!(channel_of(&pubsub_channel("#user:x")), Some("#user:x"));
        assert_eq!(channel_of("wspush:node:3"), None);
        assert_eq!(sha(READ_LUA), ::redis::Script::new(READ_LUA).get_hash());
        assert_ne!(sha(READ_LUA), sha(PUBLISH_LUA));
    }
}
