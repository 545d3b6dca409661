//! The in-process broker: channel state in sharded maps, publications
//! handed to the workers through the hub.
//!
//! A channel's publications are numbered and handed to the workers under
//! its shard's lock, so every worker receives them in sequence order; the
//! frame is built under that lock too, but only publications to channels
//! of the same shard wait for it. A channel's state exists while it has
//! subscribers or history: a publication to a channel nobody listens to,
//! with history off, leaves nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::history::{AgeList, HistoryConfig, Ring, CHANNEL_OVERHEAD};
use super::presence::{self, Change, Enter, Entered, Events, Occupied, Presence, Roster};
use super::{
    Answer, Broker, Epoch, HistoryPage, Joined, Joiner, Meta, Position, Publication,
    PublishOptions, Published, Reply, Totals,
};
use crate::server::hub::{Command, Hub, MAX_WORKERS};
use crate::server::ConnId;

const SHARDS: usize = 64;

/// One channel's state.
struct Channel {
    name: Arc<str>,
    seq: u64,
    epoch: Epoch,
    /// Subscribers per worker (publications go only to workers with some).
    per_worker: Box<[u32]>,
    total: u64,
    ring: Ring,
    /// Presence (who entered), on channels that use it.
    roster: Option<Box<Roster>>,
}

impl Channel {
    /// Nothing to remember: no subscriber, no history, no presence.
    fn forgettable(&self) -> bool {
        self.total == 0 && self.ring.is_empty() && self.roster.is_none()
    }

    fn position(&self) -> Position {
        Position {
            seq: self.seq,
            epoch: self.epoch,
        }
    }
}

type Shard = HashMap<Arc<str>, Channel>;

/// The in-process [`Broker`].
pub struct LocalBroker {
    hub: Arc<Hub>,
    shards: Box<[Mutex<Shard>]>,
    history: HistoryConfig,
    ages: Mutex<AgeList>,
    clock: Instant,
    subscriptions: AtomicU64,
    active: AtomicU64,
    /// Entries held by the rings, and the bytes charged for them.
    live: AtomicUsize,
    bytes: AtomicUsize,
    evicted: AtomicU64,
}

/// FNV-1a: picks a channel's shard (the map inside hashes again).
fn shard_of(channel: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in channel.as_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h as usize % SHARDS
}

impl LocalBroker {
    /// A broker delivering through `hub`, keeping history as `history` says.
    pub(crate) fn new(hub: Arc<Hub>, history: HistoryConfig) -> LocalBroker {
        LocalBroker {
            hub,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            history,
            ages: Mutex::new(AgeList::default()),
            clock: Instant::now(),
            subscriptions: AtomicU64::new(0),
            active: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(channel)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Entries published before this are past the age limit.
    fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.history.ttl.as_millis() as u64)
    }

    /// A history entry left its ring.
    fn forget(&self, p: &Publication) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(p.cost(), Ordering::Relaxed);
    }

    /// Charge or release a channel's own overhead as its ring stops or starts
    /// being empty (`emptied`: it just became empty; `starting`: it is empty
    /// and about to take its first entry).
    fn settle_ring(&self, emptied: bool, starting: bool) {
        if emptied {
            self.bytes.fetch_sub(CHANNEL_OVERHEAD, Ordering::Relaxed);
        }
        if starting {
            self.bytes.fetch_add(CHANNEL_OVERHEAD, Ordering::Relaxed);
        }
    }

    /// Drop a ring's entries published before `cutoff`.
    fn expire(&self, ring: &mut Ring, cutoff: u64) {
        let was_empty = ring.is_empty();
        ring.expire(cutoff, |p| self.forget(p));
        self.settle_ring(!was_empty && ring.is_empty(), false);
    }

    /// The state of `channel`, created (with a new epoch) if absent.
    fn entry<'a>(&self, shard: &'a mut Shard, channel: &str) -> &'a mut Channel {
        if !shard.contains_key(channel) {
            let name: Arc<str> = Arc::from(channel);
            let workers = self.hub.workers();
            shard.insert(
                name.clone(),
                Channel {
                    name,
                    seq: 0,
                    epoch: Epoch::random(),
                    per_worker: vec![0; workers].into_boxed_slice(),
                    total: 0,
                    ring: Ring::default(),
                    roster: None,
                },
            );
        }
        match shard.get_mut(channel) {
            Some(c) => c,
            None => unreachable!("inserted above"),
        }
    }

    /// Evict history past its age, and the oldest entries while the bytes
    /// charged exceed the cap.
    fn evict(&self, now: u64) {
        let cutoff = self.cutoff(now);
        loop {
            let over = self.bytes.load(Ordering::Relaxed) > self.history.max_bytes;
            let due = {
                let mut ages = self.ages.lock().unwrap_or_else(|p| p.into_inner());
                ages.pop_due(cutoff, over)
            };
            let Some((p, aged)) = due else { return };
            let mut shard = self.shard(&p.channel);
            if let Some(ch) = shard.get_mut(&*p.channel) {
                let was_empty = ch.ring.is_empty();
                // Everything of the channel up to this entry is older: it goes
                // too (so an entry can never be stranded behind a missed one).
                let mut gone = 0;
                ch.ring.drop_through(&p, |q| {
                    self.forget(q);
                    gone += 1;
                });
                self.settle_ring(!was_empty && ch.ring.is_empty(), false);
                if !aged {
                    self.evicted.fetch_add(gone, Ordering::Relaxed);
                }
                if ch.forgettable() {
                    shard.remove(&*p.channel);
                }
            }
        }
    }
}

impl Broker for LocalBroker {
    fn publish(
        &self,
        channel: &str,
        opts: PublishOptions,
        data: &[u8],
        _later: &mut dyn FnMut() -> Reply<Published>,
    ) -> Answer<Published> {
        let mut wakes = [false; MAX_WORKERS];
        let (published, kept, now) = {
            let mut shard = self.shard(channel);
            // Read under the lock: a channel's entries are in time order.
            let now = self.now_ms();
            let ch = self.entry(&mut shard, channel);
            let (published, kept) = self.publish_in(ch, opts, data, now, &mut wakes);
            if ch.forgettable() {
                shard.remove(channel);
            }
            (published, kept, now)
        };
        self.wake(&wakes);
        if kept {
            self.evict(now);
        }
        Answer::Now(Ok(published))
    }

    fn join(&self, channel: &str, who: Joiner, since: Option<Position>) -> Answer<Joined> {
        Answer::Now(Ok(self.join_now(channel, who.worker, since)))
    }

    fn leave(&self, channel: &str, worker: usize) {
        self.leave_now(channel, worker)
    }

    fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        _later: &mut dyn FnMut() -> Reply<HistoryPage>,
    ) -> Answer<HistoryPage> {
        Answer::Now(Ok(self.history_now(channel, since, limit)))
    }

    fn channel(&self, channel: &str) -> (u64, Position) {
        let shard = self.shard(channel);
        shard.get(channel).map_or(
            (
                0,
                Position {
                    seq: 0,
                    epoch: Epoch(0),
                },
            ),
            |c| (c.total, c.position()),
        )
    }

    fn totals(&self) -> Totals {
        let channels = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
            .sum();
        Totals {
            active_channels: self.active.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            channels,
            history_entries: self.live.load(Ordering::Relaxed) as u64,
            history_bytes: self.bytes.load(Ordering::Relaxed) as u64,
            history_evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    fn maintain(&self) {
        if self.history.enabled() {
            self.evict(self.now_ms());
        }
    }

    fn presence_enter(
        &self,
        channel: &str,
        enter: Enter<'_>,
        _later: &mut dyn FnMut() -> Reply<Entered>,
    ) -> Answer<Entered> {
        let mut wakes = [false; MAX_WORKERS];
        let (entered, kept, now, added, occupied) = {
            let mut shard = self.shard(channel);
            let now = self.now_ms();
            let ch = self.entry(&mut shard, channel);
            let roster = ch
                .roster
                .get_or_insert_with(|| Box::new(Roster::new(enter.events)));
            let Some((added, occupied)) = roster.enter(&enter) else {
                if roster.is_empty() {
                    ch.roster = None;
                }
                if ch.forgettable() {
                    shard.remove(channel);
                }
                return Answer::Now(Ok(Entered::Full));
            };
            let members = if enter.member.is_some() {
                roster.snapshot()
            } else {
                Vec::new()
            };
            let mut kept = false;
            if let (true, Some((user, info))) = (added, enter.member) {
                let data = presence::member_added_data(user, info);
                let opts = PublishOptions::kept(enter.events.added);
                kept = self.publish_in(ch, opts, &data, now, &mut wakes).1;
            }
            let entered = Entered::In {
                position: ch.position(),
                members,
            };
            (entered, kept, now, added, occupied)
        };
        self.wake(&wakes);
        if kept {
            self.evict(now);
        }
        if occupied {
            enter.events.tell(channel, &Change::Occupied);
        }
        if let (true, Some((user, _))) = (added, enter.member) {
            enter
                .events
                .tell(channel, &Change::MemberAdded(user.to_string()));
        }
        Answer::Now(Ok(entered))
    }

    fn presence_leave(&self, channel: &str, conn: ConnId) {
        let mut wakes = [false; MAX_WORKERS];
        let (removed, vacated, kept, now, events) = {
            let mut shard = self.shard(channel);
            let now = self.now_ms();
            let Some(ch) = shard.get_mut(channel) else {
                return;
            };
            let Some(roster) = ch.roster.as_mut() else {
                return;
            };
            let (removed, vacated) = roster.leave(conn);
            let events = roster.events.clone();
            if roster.is_empty() {
                ch.roster = None;
            }
            let mut kept = false;
            if let Some(u) = &removed {
                let opts = PublishOptions::kept(events.removed);
                kept = self.publish_in(ch, opts, u.as_bytes(), now, &mut wakes).1;
            }
            if ch.forgettable() {
                shard.remove(channel);
            }
            (removed, vacated, kept, now, events)
        };
        self.wake(&wakes);
        if kept {
            self.evict(now);
        }
        if let Some(u) = removed {
            events.tell(channel, &Change::MemberRemoved(u));
        }
        if vacated {
            events.tell(channel, &Change::Vacated);
        }
    }

    fn presence(
        &self,
        channel: &str,
        _events: &Events,
        _later: &mut dyn FnMut() -> Reply<Presence>,
    ) -> Answer<Presence> {
        let shard = self.shard(channel);
        let p = shard
            .get(channel)
            .and_then(|c| c.roster.as_ref())
            .map_or_else(Presence::default, |r| Presence {
                subscribers: r.subscribers(),
                members: r.snapshot(),
            });
        Answer::Now(Ok(p))
    }

    fn presence_channels(
        &self,
        prefix: &str,
        _later: &mut dyn FnMut() -> Reply<Vec<Occupied>>,
    ) -> Answer<Vec<Occupied>> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let shard = s.lock().unwrap_or_else(|p| p.into_inner());
            for (name, c) in shard.iter() {
                if let Some(r) = c.roster.as_ref().filter(|_| name.starts_with(prefix)) {
                    out.push(Occupied {
                        channel: name.to_string(),
                        subscribers: r.subscribers(),
                        users: r.users(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        Answer::Now(Ok(out))
    }
}

impl LocalBroker {
    /// Publish on `ch` (its shard locked by the caller): number it, hand it
    /// to the workers with subscribers (marking them in `wakes`) and keep
    /// it. `(what it reached, whether it was kept)`.
    fn publish_in(
        &self,
        ch: &mut Channel,
        opts: PublishOptions,
        data: &[u8],
        now: u64,
        wakes: &mut [bool; MAX_WORKERS],
    ) -> (Published, bool) {
        let keep = opts.history && self.history.enabled();
        let workers = self.hub.workers().min(MAX_WORKERS);
        ch.seq += 1;
        let published = Published {
            seq: ch.seq,
            epoch: ch.epoch,
            recipients: ch.total,
        };
        if ch.total == 0 && !keep {
            return (published, false);
        }
        let p = Arc::new(Publication {
            exclude: opts.exclude,
            ..Publication::new(
                ch.name.clone(),
                ch.seq,
                ch.epoch,
                opts.format.encode(&Meta {
                    channel: &ch.name,
                    seq: ch.seq,
                    epoch: ch.epoch,
                    data,
                }),
            )
        });
        for (w, &n) in ch.per_worker.iter().enumerate().take(workers) {
            if n > 0 {
                wakes[w] = self.hub.enqueue(w, Command::Publish(p.clone())).1;
            }
        }
        if keep {
            self.settle_ring(false, ch.ring.is_empty());
            self.live.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(p.cost(), Ordering::Relaxed);
            // Into the age list under the channel's lock, so a channel's
            // entries stand there in ring order (lock order: shard, then
            // age list; `evict` never holds both).
            let live = self.live.load(Ordering::Relaxed);
            self.ages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now, Arc::downgrade(&p), live);
            ch.ring
                .push(now, p, self.history.size, |old| self.forget(old));
        }
        (published, keep)
    }

    /// Wake the workers `publish_in` marked.
    fn wake(&self, wakes: &[bool; MAX_WORKERS]) {
        let workers = self.hub.workers().min(MAX_WORKERS);
        self.hub.wake_all(&wakes[..workers]);
    }

    fn join_now(&self, channel: &str, worker: usize, since: Option<Position>) -> Joined {
        let cutoff = self.cutoff(self.now_ms());
        let mut shard = self.shard(channel);
        let ch = self.entry(&mut shard, channel);
        if let Some(c) = ch.per_worker.get_mut(worker) {
            *c += 1;
            ch.total += 1;
            if ch.total == 1 {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        let position = ch.position();
        let Some(since) = since else {
            return Joined {
                position,
                recovered: None,
                replay: Vec::new(),
            };
        };
        self.expire(&mut ch.ring, cutoff);
        let recovered = since.epoch == ch.epoch && ch.ring.covers(since.seq, ch.seq);
        Joined {
            position,
            recovered: Some(recovered),
            replay: if recovered && since.seq < ch.seq {
                ch.ring.after(since.seq, usize::MAX)
            } else {
                Vec::new()
            },
        }
    }

    fn leave_now(&self, channel: &str, worker: usize) {
        let mut shard = self.shard(channel);
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        if let Some(c) = ch.per_worker.get_mut(worker) {
            if *c > 0 {
                *c -= 1;
                ch.total -= 1;
                if ch.total == 0 {
                    self.active.fetch_sub(1, Ordering::Relaxed);
                }
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if ch.forgettable() {
            shard.remove(channel);
        }
    }

    fn history_now(&self, channel: &str, since: Option<Position>, limit: usize) -> HistoryPage {
        let cutoff = self.cutoff(self.now_ms());
        let mut shard = self.shard(channel);
        let Some(ch) = shard.get_mut(channel) else {
            return HistoryPage {
                position: Position {
                    seq: 0,
                    epoch: Epoch(0),
                },
                complete: since.is_none_or(|s| s.seq == 0),
                publications: Vec::new(),
            };
        };
        self.expire(&mut ch.ring, cutoff);
        let from = since.map_or(0, |s| s.seq);
        let known = since.is_none_or(|s| s.epoch == ch.epoch || s.epoch == Epoch(0));
        let complete = known && (since.is_none() || ch.ring.covers(from, ch.seq));
        let publications = if known {
            ch.ring.after(from, limit)
        } else {
            ch.ring.after(0, limit)
        };
        let position = ch.position();
        if ch.forgettable() {
            shard.remove(channel);
        }
        HistoryPage {
            position,
            complete,
            publications,
        }
    }
}
