//! Where a channel lives: one standalone Redis, or the master of its hash
//! slot in a Redis Cluster (read once at start with `CLUSTER SLOTS`).

use ::redis::{cmd, Value};

/// The hash slots of a cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of a channel's keys (all tagged `{channel}`): CRC16
/// (XMODEM) of the tag, as Redis Cluster computes it. The tag ends at the
/// channel's first `}`, as Redis reads `wspush:{…}`.
pub fn slot(channel: &str) -> u16 {
    let tag = channel.split('}').next().unwrap_or(channel);
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// The shards: each a master's URL, and which slots it serves.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `redis://host:port[/db]` of each shard.
    pub shards: Vec<String>,
    /// `(first slot, last slot, shard)`, sorted.
    ranges: Vec<(u16, u16, usize)>,
    /// A cluster (sharded pub/sub) or one standalone Redis.
    pub cluster: bool,
}

impl Topology {
    /// One standalone Redis: every channel on it.
    pub fn single(url: &str) -> Topology {
        Topology {
            shards: vec![url.to_string()],
            ranges: vec![(0, SLOTS - 1, 0)],
            cluster: false,
        }
    }

    /// The masters of the cluster `con` belongs to.
    pub fn discover(con: &mut ::redis::Connection) -> ::redis::RedisResult<Topology> {
        let v: Value = cmd("CLUSTER").arg("SLOTS").query(con)?;
        let Value::Array(entries) = v else {
            return Err((
                ::redis::ErrorKind::Client,
                "CLUSTER SLOTS: unexpected answer",
            )
                .into());
        };
        let mut shards: Vec<String> = Vec::new();
        let mut ranges = Vec::new();
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let url = format!("redis://{host}:{port}");
            let shard = match shards.iter().position(|s| *s == url) {
                Some(i) => i,
                None => {
                    shards.push(url);
                    shards.len() - 1
                }
            };
            ranges.push((*a as u16, *b as u16, shard));
        }
        ranges.sort();
        let covered: u32 = ranges.iter().map(|r| (r.1 - r.0) as u32 + 1).sum();
        if covered != SLOTS as u32 {
            return Err((
                ::redis::ErrorKind::Client,
                "the cluster does not serve every hash slot",
            )
                .into());
        }
        Ok(Topology {
            shards,
            ranges,
            cluster: true,
        })
    }

    /// The shard serving `channel`.
    pub fn shard_of(&self, channel: &str) -> usize {
        let s = slot(channel);
        let i = self.ranges.partition_point(|r| r.1 < s);
        self.ranges.get(i).map_or(0, |r| r.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(slot("123456789"), 0x31c3 % SLOTS);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("news"), slot("news}whatever"));
        let t = Topology::single("redis://x");
        assert_eq!(t.shard_of("anything"), 0);
    }
}
