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
use super::{
    Answer, Broker, Epoch, HistoryPage, Joined, Joiner, Meta, Position, Publication,
    PublishOptions, Published, Reply, Totals,
};
use crate::server::hub::{Command, Hub, MAX_WORKERS};

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
}

impl Channel {
    /// Nothing to remember: no subscriber and no history.
    fn forgettable(&self) -> bool {
        self.total == 0 && self.ring.is_empty()
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
        let keep = opts.history && self.history.enabled();
        let workers = self.hub.workers().min(MAX_WORKERS);
        let mut wakes = [false; MAX_WORKERS];
        let mut kept = false;
        let now;
        let published = {
            let mut shard = self.shard(channel);
            // Read under the lock: a channel's entries are in time order.
            now = self.now_ms();
            let ch = self.entry(&mut shard, channel);
            ch.seq += 1;
            let published = Published {
                seq: ch.seq,
                epoch: ch.epoch,
                recipients: ch.total,
            };
            if ch.total > 0 || keep {
                let p = Arc::new(Publication {
                    exclude: opts.exclude,
                    ..Publication::new(
                        ch.name.clone(),
                        ch.seq,
                        ch.epoch,
                        opts.format.encode(&Meta {
                            channel,
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
                    // Into the age list under the channel's lock, so a
                    // channel's entries stand there in ring order (lock
                    // order: shard, then age list; `evict` never holds both).
                    let live = self.live.load(Ordering::Relaxed);
                    self.ages.lock().unwrap_or_else(|p| p.into_inner()).push(
                        now,
                        Arc::downgrade(&p),
                        live,
                    );
                    kept = true;
                    ch.ring
                        .push(now, p, self.history.size, |old| self.forget(old));
                }
            }
            if ch.forgettable() {
                shard.remove(channel);
            }
            published
        };
        self.hub.wake_all(&wakes[..workers]);
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
}

impl LocalBroker {
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
