//! A worker's topic table: which of its connections subscribe to what.
//!
//! Each topic keeps a dense list of subscriber keys (fan-out walks a plain
//! slice); each connection keeps `(topic, position)` pairs so that
//! unsubscribing is O(subscriptions of that connection), not O(subscribers).
//!
//! A new subscriber starts after the channel position the broker gave it
//! (`start`). Publications up to that position may still be on their way
//! to this worker (queued before the subscription, when other local
//! connections already subscribed): the subscriber waits in `joining` and
//! enters the subscriber list with the first publication after its start,
//! so it gets no publication twice (after a replay) and none from before
//! its subscription.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

pub(crate) struct Topic {
    pub name: Arc<str>,
    pub subscribers: Vec<u32>,
    /// Subscribers waiting for the first publication after their start.
    joining: Vec<(u32, u64)>,
    /// The last sequence number delivered on this worker.
    seen: u64,
    /// The channel's epoch when the topic was created here: publications of
    /// another (earlier) stream still queued for this worker are dropped.
    epoch: u64,
}

#[derive(Default)]
pub(crate) struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    list: Slab<Topic>,
}

/// Position flag: the subscription waits in the topic's `joining` list.
const JOINING: u32 = 1 << 31;

/// The start of a subscription whose broker answer has not come yet: it
/// receives nothing until [`Topics::subscribe`] places it again.
pub(crate) const PENDING: u64 = u64::MAX;

/// One subscription held by a connection: topic id and position in its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    pub topic: u32,
    pub pos: u32,
}

/// The subscription lists of a worker's connections, kept beside the
/// connections: a connection holds only a 4-byte handle ([`NO_SUBS`] when it
/// has none), so an idle connection pays nothing for subscriptions it does
/// not have, and one with subscriptions pays what an inline `Vec` did.
#[derive(Default)]
pub(crate) struct SubLists {
    lists: Slab<Vec<Sub>>,
}

/// The handle of a connection without subscriptions.
pub(crate) const NO_SUBS: u32 = u32::MAX;

impl SubLists {
    /// The subscriptions behind handle `h`.
    pub fn get(&self, h: u32) -> &[Sub] {
        self.lists.get(h as usize).map_or(&[], Vec::as_slice)
    }

    /// The subscriptions behind handle `h`, to update positions.
    pub fn get_mut(&mut self, h: u32) -> &mut [Sub] {
        self.lists
            .get_mut(h as usize)
            .map_or(&mut [], Vec::as_mut_slice)
    }

    /// Add a subscription; the first one creates the list.
    pub fn push(&mut self, h: &mut u32, sub: Sub) {
        match self.lists.get_mut(*h as usize) {
            Some(v) => v.push(sub),
            None => *h = self.lists.insert(vec![sub]) as u32,
        }
    }

    /// Remove the `i`-th subscription; the last one frees the list.
    pub fn swap_remove(&mut self, h: &mut u32, i: usize) -> Sub {
        let v = &mut self.lists[*h as usize];
        let sub = v.swap_remove(i);
        if v.is_empty() {
            self.lists.remove(*h as usize);
            *h = NO_SUBS;
        }
        sub
    }

    /// Take every subscription (the connection is going).
    pub fn take(&mut self, h: &mut u32) -> Vec<Sub> {
        let h = std::mem::replace(h, NO_SUBS);
        self.lists.try_remove(h as usize).unwrap_or_default()
    }
}

impl Topics {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The name of topic `id`.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.list.get(id as usize).map(|t| t.name.clone())
    }

    pub fn subscribers(&self, id: u32) -> &[u32] {
        self.list
            .get(id as usize)
            .map(|t| t.subscribers.as_slice())
            .unwrap_or(&[])
    }

    pub fn subscriber_count(&self, name: &str) -> usize {
        self.id(name)
            .and_then(|id| self.list.get(id as usize))
            .map(|t| t.subscribers.len() + t.joining.len())
            .unwrap_or(0)
    }

    /// Number of topics with at least one local subscriber.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Add `key` to `name`, receiving publications after `start` of the
    /// stream `epoch`; returns the subscription to record on the connection.
    pub fn subscribe(&mut self, name: &str, key: usize, start: u64, epoch: u64) -> Sub {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = self.list.insert(Topic {
                    name: name.clone(),
                    subscribers: Vec::new(),
                    joining: Vec::new(),
                    seen: 0,
                    epoch,
                }) as u32;
                self.by_name.insert(name, id);
                id
            }
        };
        let t = &mut self.list[id as usize];
        if t.epoch == 0 {
            // Created by a subscription still waiting for its answer.
            t.epoch = epoch;
        }
        if start <= t.seen {
            // Nothing before its start can still arrive.
            t.subscribers.push(key as u32);
            return Sub {
                topic: id,
                pos: (t.subscribers.len() - 1) as u32,
            };
        }
        t.joining.push((key as u32, start));
        Sub {
            topic: id,
            pos: (t.joining.len() - 1) as u32 | JOINING,
        }
    }

    /// Remove the subscription `sub`. If another connection's entry moved into
    /// its place, returns that connection's key and its new position.
    pub fn unsubscribe(&mut self, sub: Sub) -> Option<(usize, u32)> {
        let t = self.list.get_mut(sub.topic as usize)?;
        let pos = (sub.pos & !JOINING) as usize;
        let moved = if sub.pos & JOINING != 0 {
            if pos >= t.joining.len() {
                return None;
            }
            t.joining.swap_remove(pos);
            t.joining.get(pos).map(|&(k, _)| (k as usize, sub.pos))
        } else {
            if pos >= t.subscribers.len() {
                return None;
            }
            t.subscribers.swap_remove(pos);
            t.subscribers.get(pos).map(|&k| (k as usize, sub.pos))
        };
        if t.subscribers.is_empty() && t.joining.is_empty() {
            let name = t.name.clone();
            self.by_name.remove(&name);
            self.list.remove(sub.topic as usize);
        }
        moved
    }

    /// Publication `seq` of topic `id` is about to be delivered: joiners
    /// whose start is before it become subscribers. `moved(key, pos)` is
    /// told every connection whose recorded position changed.
    /// False if the publication belongs to another stream than the topic's
    /// (queued before the channel was forgotten and begun anew): not for
    /// these subscribers.
    #[inline]
    pub fn deliver(
        &mut self,
        id: u32,
        seq: u64,
        epoch: u64,
        moved: impl FnMut(usize, u32),
    ) -> bool {
        let Some(t) = self.list.get_mut(id as usize) else {
            return false;
        };
        if t.epoch != epoch {
            return false;
        }
        t.seen = t.seen.max(seq);
        if !t.joining.is_empty() {
            Self::promote(t, seq, moved);
        }
        true
    }

    /// Topic `id`'s stream starts again at `seq` of `epoch` (a new stream,
    /// or a gap nobody can fill): every subscription not still pending
    /// becomes a subscriber from there. `moved(key, pos)` as in `deliver`.
    pub fn reset(&mut self, id: u32, seq: u64, epoch: u64, moved: impl FnMut(usize, u32)) {
        let Some(t) = self.list.get_mut(id as usize) else {
            return;
        };
        t.epoch = epoch;
        t.seen = seq;
        if !t.joining.is_empty() {
            // Pending ones (start PENDING) stay; all others enter.
            Self::promote(t, PENDING, moved);
        }
    }

    /// Keys of the connections receiving topic `id` (not those pending).
    pub fn members(&self, id: u32) -> Vec<usize> {
        self.list.get(id as usize).map_or_else(Vec::new, |t| {
            t.subscribers
                .iter()
                .map(|&k| k as usize)
                .chain(
                    t.joining
                        .iter()
                        .filter(|&&(_, s)| s != PENDING)
                        .map(|&(k, _)| k as usize),
                )
                .collect()
        })
    }

    #[cold]
    fn promote(t: &mut Topic, seq: u64, mut moved: impl FnMut(usize, u32)) {
        let mut waiting = Vec::new();
        for (key, start) in std::mem::take(&mut t.joining) {
            if start < seq {
                t.subscribers.push(key);
                moved(key as usize, (t.subscribers.len() - 1) as u32);
            } else {
                waiting.push((key, start));
                moved(key as usize, (waiting.len() - 1) as u32 | JOINING);
            }
        }
        t.joining = waiting;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joiners_enter_with_the_first_publication_after_their_start() {
        let mut t = Topics::default();
        let a = t.subscribe("c", 1, 0, 9);
        assert_eq!(
            a.pos, 0,
            "nothing seen yet and start 0: a subscriber at once"
        );
        assert!(t.deliver(a.topic, 1, 9, |_, _| panic!("no joiner")));
        t.deliver(a.topic, 2, 9, |_, _| panic!("no joiner"));
        // A publication of another stream is not delivered.
        assert!(!t.deliver(a.topic, 3, 8, |_, _| panic!("no joiner")));
        // Publications 3..=5 may still be queued for this worker.
        let b = t.subscribe("c", 2, 5, 9);
        assert!(b.pos & JOINING != 0);
        assert_eq!(t.subscribers(a.topic), [1]);
        assert_eq!(t.subscriber_count("c"), 2);
        let mut moves = Vec::new();
        for seq in 3..=5 {
            t.deliver(a.topic, seq, 9, |k, p| moves.push((k, p)));
            assert_eq!(t.subscribers(a.topic), [1], "not before its start ({seq})");
        }
        moves.clear();
        t.deliver(a.topic, 6, 9, |k, p| moves.push((k, p)));
        assert_eq!(t.subscribers(a.topic), [1, 2]);
        assert_eq!(moves, [(2, 1)]);
        // Caught up: the next subscriber at the current position joins at once.
        let c = t.subscribe("c", 3, 6, 9);
        assert_eq!(c.pos, 2);
    }

    #[test]
    fn pending_subscriptions_wait_and_a_reset_admits_the_others() {
        let mut t = Topics::default();
        let p = t.subscribe("c", 1, PENDING, 0);
        assert!(p.pos & JOINING != 0);
        assert_eq!(t.members(p.topic), Vec::<usize>::new());
        // The answer comes: placed again at its start, the epoch taken.
        t.unsubscribe(p);
        let a = t.subscribe("c", 1, 3, 7);
        let q = t.subscribe("c", 2, PENDING, 7);
        assert!(t.deliver(a.topic, 4, 7, |_, _| {}));
        assert_eq!(t.subscribers(a.topic), [1]);
        // A new stream: seq 1 of epoch 8.
        assert!(!t.deliver(a.topic, 1, 8, |_, _| {}));
        t.reset(a.topic, 0, 8, |_, _| {});
        assert!(t.deliver(a.topic, 1, 8, |_, _| {}));
        assert_eq!(t.members(a.topic), [1]);
        assert_eq!(t.subscriber_count("c"), 2, "the pending one still counts");
        let _ = q;
    }

    #[test]
    fn unsubscribing_a_joiner_and_the_last_subscriber_forgets_the_topic() {
        let mut t = Topics::default();
        let a = t.subscribe("c", 1, 4, 1);
        let b = t.subscribe("c", 2, 4, 1);
        assert_eq!(t.unsubscribe(a), Some((2, JOINING)));
        let b = Sub { pos: JOINING, ..b };
        assert_eq!(t.unsubscribe(b), None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.id("c"), None);
    }
}
