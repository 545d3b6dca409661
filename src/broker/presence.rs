//! Presence: who is on a channel, across every node.
//!
//! A channel's presence is its subscriber count and, on channels whose
//! subscribers say who they are, its members: users (several connections
//! of one user are one member) with their info. The broker owns it beside
//! the channel's order, because the member events it publishes
//! (`added`, `removed`) are publications of the channel like any other:
//! a joining connection gets a snapshot valid at a position and then every
//! publication after that position, so it never misses or repeats a member.
//!
//! - [`LocalBroker`](super::LocalBroker) keeps it in the channel's state,
//!   under the channel's lock.
//! - The Redis broker keeps it per node, with expiry: each node owns the
//!   subscribers and members of its own connections and renews a lease on
//!   every channel it is on; when a node dies without a word, the first
//!   live node to renew its own lease on the channel removes the dead
//!   node's share and publishes `removed` for the users it alone held.
//!   There is no shared set that leaks ghosts.
//!
//! Member events travel as data in the formats the caller names
//! ([`Events`]): `added` with `user \n info`, `removed` with `user` (see
//! [`member_added_data`] and [`parse_member_event`]).

use std::sync::Arc;

use super::{Format, Position};
use crate::server::ConnId;

/// A presence member: a user id and its info (JSON text, `null` if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id.
    pub user: String,
    /// The info as given when the user's first connection entered.
    pub info: String,
}

/// A change of a channel's presence, for an [`Observer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The channel has its first subscriber (in the whole cluster).
    Occupied,
    /// The channel's last subscriber left (in the whole cluster).
    Vacated,
    /// A user is a member now.
    MemberAdded(String),
    /// A user is no longer a member (its last connection left, or its
    /// node died).
    MemberRemoved(String),
}

/// Told of every change a node sees or causes (e.g. webhooks). Called on
/// whatever thread the broker is on; it must not block.
pub type Observer = Arc<dyn Fn(&str, &Change) + Send + Sync>;

/// How a channel's presence is reported.
#[derive(Clone)]
pub struct Events {
    /// The format of the publication announcing a member (data:
    /// [`member_added_data`]).
    pub added: Format,
    /// The format of the publication announcing a member left (data: the
    /// user id).
    pub removed: Format,
    /// Told of every change.
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("added", &self.added)
            .field("removed", &self.removed)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Events {
    /// Tell the observer, if any.
    pub fn tell(&self, channel: &str, change: &Change) {
        if let Some(o) = &self.observer {
            o(channel, change);
        }
    }
}

/// A connection enters a channel's presence.
#[derive(Debug, Clone, Copy)]
pub struct Enter<'a> {
    /// The connection.
    pub conn: ConnId,
    /// The member it is (`(user, info)`), on a channel with members.
    pub member: Option<(&'a str, &'a str)>,
    /// Most members the channel may have: a new user beyond it is refused.
    pub limit: usize,
    /// How changes are reported.
    pub events: &'a Events,
}

/// The answer to [`Enter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entered {
    /// Counted. With a member, `members` is the snapshot (sorted by user,
    /// including this one) valid at `position`: subscribe from there (with
    /// `since`) to see every later change once.
    In {
        /// Where the snapshot stands in the channel's stream.
        position: Position,
        /// The members (empty without a member).
        members: Vec<Member>,
    },
    /// Refused: the user would be one member too many. Nothing changed.
    Full,
}

/// A channel's presence as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Subscribers counted by presence (every node).
    pub subscribers: u64,
    /// Members, sorted by user.
    pub members: Vec<Member>,
}

/// An occupied channel, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    /// The channel.
    pub channel: String,
    /// Subscribers counted by presence (every node).
    pub subscribers: u64,
    /// Members (users).
    pub users: u64,
}

/// The data of an `added` publication.
pub fn member_added_data(user: &str, info: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(user.len() + 1 + info.len());
    d.extend_from_slice(user.as_bytes());
    d.push(b'\n');
    d.extend_from_slice(info.as_bytes());
    d
}

/// `(user, info)` of an `added` publication's data (`info` empty for a
/// `removed` one's). User ids never hold a newline: [`valid_user`].
pub fn parse_member_event(data: &[u8]) -> (&str, &str) {
    let s = std::str::from_utf8(data).unwrap_or("");
    s.split_once('\n').unwrap_or((s, ""))
}

/// Whether a user id can be a member: 1 to 128 bytes, no control
/// characters (the member events separate fields with a newline).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control)
}

/// One channel's presence on the in-process broker (held in the channel's
/// state, under its lock).
#[derive(Debug)]
pub(crate) struct Roster {
    /// Connections that entered, and as which user.
    conns: std::collections::HashMap<ConnId, Option<Box<str>>>,
    /// user → (info, connections), sorted by user for snapshots.
    members: std::collections::BTreeMap<String, (String, u32)>,
    /// How the channel was entered (the first entry's events).
    pub events: Events,
}

impl Roster {
    pub fn new(events: &Events) -> Roster {
        Roster {
            conns: Default::default(),
            members: Default::default(),
            events: events.clone(),
        }
    }

    /// Count a connection in; `(added, occupied)` or `None` when full (or
    /// when it had entered already: `(false, false)`).
    pub fn enter(&mut self, e: &Enter<'_>) -> Option<(bool, bool)> {
        if self.conns.contains_key(&e.conn) {
            return Some((false, false));
        }
        let mut added = false;
        if let Some((user, info)) = e.member {
            let full = self.members.len() >= e.limit;
            match self.members.get_mut(user) {
                Some(m) => m.1 += 1,
                None if full => return None,
                None => {
                    self.members.insert(user.to_string(), (info.to_string(), 1));
                    added = true;
                }
            }
        }
        self.conns.insert(e.conn, e.member.map(|(u, _)| u.into()));
        Some((added, self.conns.len() == 1))
    }

    /// Count a connection out; `(the user it removed, vacated)`.
    pub fn leave(&mut self, conn: ConnId) -> (Option<String>, bool) {
        let Some(user) = self.conns.remove(&conn) else {
            return (None, false);
        };
        let mut removed = None;
        if let Some(u) = user {
            if let Some(m) = self.members.get_mut(&*u) {
                m.1 -= 1;
                if m.1 == 0 {
                    self.members.remove(&*u);
                    removed = Some(u.into());
                }
            }
        }
        (removed, self.conns.is_empty())
    }

    pub fn snapshot(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(u, (i, _))| Member {
                user: u.clone(),
                info: i.clone(),
            })
            .collect()
    }

    pub fn subscribers(&self) -> u64 {
        self.conns.len() as u64
    }

    pub fn users(&self) -> u64 {
        self.members.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_are_one_member_and_the_limit_counts_users() {
        let events = Events {
            added: Format(20),
            removed: Format(21),
            observer: None,
        };
        let e = |conn: u64, member: Option<(&'static str, &'static str)>| Enter {
            conn: ConnId::from_u64(conn),
            member,
            limit: 1,
            events: &events,
        };
        let mut r = Roster::new(&events);
        assert_eq!(r.enter(&e(1, Some(("1", "{\"n\":1}")))), Some((true, true)));
        assert_eq!(
            r.enter(&e(1, Some(("1", "x")))),
            Some((false, false)),
            "again"
        );
        assert_eq!(r.enter(&e(2, Some(("1", "ignored")))), Some((false, false)));
        assert_eq!(r.enter(&e(3, Some(("2", "null")))), None, "full");
        assert_eq!(r.enter(&e(4, None)), Some((false, false)));
        assert_eq!((r.subscribers(), r.users()), (3, 1));
        assert_eq!(
            r.snapshot(),
            vec![Member {
                user: "1".into(),
                info: "{\"n\":1}".into()
            }]
        );
        assert_eq!(r.leave(ConnId::from_u64(1)), (None, false));
        assert_eq!(r.leave(ConnId::from_u64(4)), (None, false));
        assert_eq!(r.leave(ConnId::from_u64(3)), (None, false), "never entered");
        assert_eq!(r.leave(ConnId::from_u64(2)), (Some("1".into()), true));
        assert!(r.is_empty());
    }

    #[test]
    fn member_event_data_round_trips() {
        let d = member_added_data("u-1", "{\"a\":\"x\\ny\"}");
        assert_eq!(parse_member_event(&d), ("u-1", "{\"a\":\"x\\ny\"}"));
        assert_eq!(parse_member_event(b"u-2"), ("u-2", ""));
        assert!(valid_user("a@b.c") && !valid_user("") && !valid_user("a\nb"));
        assert!(!valid_user(&"x".repeat(129)));
    }
}
