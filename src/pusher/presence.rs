//! Membership: who is on which Pusher channel of this node, and which
//! connections each signed-in user has.
//!
//! All of it lives here, in one struct, so that a scale-out can replace it
//! with per-node ownership (each node owns and expires the members of its
//! own connections; a channel's members are the union over live nodes)
//! without touching the protocol code. Today it is this node's state only.
//!
//! Every change runs a caller's closure under the channel's lock, so a
//! subscription and the `member_added` it publishes are ordered with every
//! other join and leave of the channel: a joining socket's snapshot and the
//! member events it receives afterwards never miss or repeat a member.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::push::envelope::json_str;
use crate::server::ConnId;

const SHARDS: usize = 32;

/// A channel's state on this node.
#[derive(Debug, Default)]
struct Channel {
    /// Subscribed connections.
    subscribers: u64,
    /// Presence members by user id, in join order of first connection.
    members: HashMap<String, Member>,
}

#[derive(Debug)]
struct Member {
    /// `user_info` as received (JSON text), or `null`.
    info: String,
    /// Connections of this user on the channel (tabs).
    conns: u32,
}

/// What a join changed.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    /// The channel had no subscriber before (`channel_occupied`).
    pub occupied: bool,
    /// This was the user's first connection on the presence channel
    /// (`member_added`).
    pub member_added: bool,
}

/// What a leave changed.
#[derive(Debug, Clone, Copy)]
pub struct Left {
    /// The channel has no subscriber left (`channel_vacated`).
    pub vacated: bool,
    /// That was the user's last connection on the presence channel
    /// (`member_removed`).
    pub member_removed: bool,
}

/// A presence member as the join names it.
#[derive(Debug, Clone, Copy)]
pub struct MemberRef<'a> {
    /// `user_id`.
    pub user_id: &'a str,
    /// `user_info` (JSON text) or `null`.
    pub info: &'a str,
}

/// Channels and members of this node (keys are broker topics).
#[derive(Debug)]
pub struct Membership {
    shards: Vec<Mutex<HashMap<String, Channel>>>,
    users: Mutex<HashMap<String, Vec<ConnId>>>,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Membership {
    fn shard(&self, topic: &str) -> MutexGuard<'_, HashMap<String, Channel>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(topic);
        lock(&self.shards[(h as usize) % SHARDS])
    }

    /// A connection joins `topic` (as `member` on a presence channel).
    /// `then` runs under the channel's lock with what changed and the
    /// presence snapshot (`{"presence":{...}}`) including the new member.
    /// `None` (nothing changed) when a new member would make more than
    /// `max_members`.
    pub fn join<R>(
        &self,
        topic: &str,
        member: Option<MemberRef<'_>>,
        max_members: usize,
        then: impl FnOnce(Joined, Option<String>) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(topic);
        if let (Some(m), Some(ch)) = (member, shard.get(topic)) {
            if !ch.members.contains_key(m.user_id) && ch.members.len() >= max_members {
                return None;
            }
        }
        let ch = shard.entry(topic.to_string()).or_default();
        ch.subscribers += 1;
        let occupied = ch.subscribers == 1;
        let mut member_added = false;
        let snapshot = member.map(|m| {
            match ch.members.get_mut(m.user_id) {
                Some(existing) => existing.conns += 1,
                None => {
                    member_added = true;
                    ch.members.insert(
                        m.user_id.to_string(),
                        Member {
                            info: m.info.to_string(),
                            conns: 1,
                        },
                    );
                }
            }
            snapshot(ch)
        });
        Some(then(
            Joined {
                occupied,
                member_added,
            },
            snapshot,
        ))
    }

    /// A connection leaves `topic` (as `user_id` on a presence channel);
    /// `then` runs under the channel's lock.
    pub fn leave<R>(&self, topic: &str, user_id: Option<&str>, then: impl FnOnce(Left) -> R) -> R {
        let mut shard = self.shard(topic);
        let mut left = Left {
            vacated: false,
            member_removed: false,
        };
        if let Some(ch) = shard.get_mut(topic) {
            ch.subscribers = ch.subscribers.saturating_sub(1);
            if let Some(u) = user_id {
                if let Some(m) = ch.members.get_mut(u) {
                    m.conns -= 1;
                    if m.conns == 0 {
                        ch.members.remove(u);
                        left.member_removed = true;
                    }
                }
            }
            if ch.subscribers == 0 {
                shard.remove(topic);
                left.vacated = true;
            }
        }
        then(left)
    }

    /// The presence snapshot of `topic`, if it has members.
    pub fn snapshot(&self, topic: &str) -> String {
        let shard = self.shard(topic);
        match shard.get(topic) {
            Some(ch) => snapshot(ch),
            None => snapshot(&Channel::default()),
        }
    }

    /// `(subscribers, presence members)` of `topic` on this node.
    pub fn counts(&self, topic: &str) -> (u64, usize) {
        let shard = self.shard(topic);
        shard
            .get(topic)
            .map_or((0, 0), |c| (c.subscribers, c.members.len()))
    }

    /// The user ids on presence channel `topic`.
    pub fn user_ids(&self, topic: &str) -> Vec<String> {
        let shard = self.shard(topic);
        let mut ids: Vec<String> = shard
            .get(topic)
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Occupied topics starting with `prefix`: `(topic, subscribers, members)`.
    pub fn channels(&self, prefix: &str) -> Vec<(String, u64, usize)> {
        let mut out = Vec::new();
        for s in &self.shards {
            for (t, c) in lock(s).iter() {
                if t.starts_with(prefix) {
                    out.push((t.clone(), c.subscribers, c.members.len()));
                }
            }
        }
        out.sort();
        out
    }

    /// A connection signed in as `user` (key: app id and user id).
    pub fn sign_in(&self, user: &str, conn: ConnId) {
        lock(&self.users)
            .entry(user.to_string())
            .or_default()
            .push(conn);
    }

    /// A signed-in connection went away.
    pub fn sign_out(&self, user: &str, conn: ConnId) {
        let mut users = lock(&self.users);
        if let Some(v) = users.get_mut(user) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The connections signed in as `user`.
    pub fn user_conns(&self, user: &str) -> Vec<ConnId> {
        lock(&self.users).get(user).cloned().unwrap_or_default()
    }
}

/// `{"presence":{"ids":[...],"hash":{id:info},"count":N}}`.
fn snapshot(ch: &Channel) -> String {
    let mut ids: Vec<(&String, &Member)> = ch.members.iter().collect();
    ids.sort_by(|a, b| a.0.cmp(b.0));
    let list: Vec<String> = ids.iter().map(|(id, _)| json_str(id)).collect();
    let hash: Vec<String> = ids
        .iter()
        .map(|(id, m)| format!("{}:{}", json_str(id), m.info))
        .collect();
    format!(
        "{{\"presence\":{{\"ids\":[{}],\"hash\":{{{}}},\"count\":{}}}}}",
        list.join(","),
        hash.join(","),
        ids.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_are_one_member() {
        let m = Membership::default();
        let a = MemberRef {
            user_id: "1",
            info: r#"{"name":"a"}"#,
        };
        let (j, s) = m.join("t", Some(a), 100, |j, s| (j, s.unwrap())).unwrap();
        assert!(j.occupied && j.member_added);
        assert_eq!(
            s,
            r#"{"presence":{"ids":["1"],"hash":{"1":{"name":"a"}},"count":1}}"#
        );
        let j = m.join("t", Some(a), 1, |j, _| j).unwrap();
        assert!(!j.occupied && !j.member_added);
        let b = MemberRef {
            user_id: "2",
            info: "null",
        };
        assert!(m.join("t", Some(b), 1, |j, _| j).is_none(), "full");
        assert_eq!(m.counts("t"), (2, 1));
        let l = m.leave("t", Some("1"), |l| l);
        assert!(!l.vacated && !l.member_removed);
        let l = m.leave("t", Some("1"), |l| l);
        assert!(l.vacated && l.member_removed);
        assert_eq!(m.counts("t"), (0, 0));
    }
}
