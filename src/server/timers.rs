//! Per-worker deadlines, on the worker's millisecond clock (`u32`,
//! wrapping: deadlines are compared by signed difference, so any timeout
//! under 24 days is exact).
//!
//! Handshake and close deadlines all have the same length, so they are
//! pushed in time order and a FIFO queue per kind is a sorted list: adding is
//! O(1), expiring pops from the front. Heartbeat checks (one per open
//! connection, re-armed from its last activity) live in a binary heap; the
//! first check of a connection is its handshake deadline entry when that is
//! due no later (see `Core::handshake_entry_checks_heartbeat`). An
//! entry whose connection has moved on (checked by generation and state) is
//! skipped when it comes due. Each entry is 12 bytes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// The kinds of deadline a connection can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The request head must be complete by then.
    Handshake,
    /// Our close frame was sent (or a final HTTP answer): the peer must be
    /// gone by then.
    Closing,
    /// Check an open connection's silence: ping it, or close it as idle.
    Heartbeat,
    /// A deadline the application asked for ([`Context::set_timer`](super::Context::set_timer)).
    App,
}

/// A deadline as stored in the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    at: u32,
    key: u32,
    generation: u32,
}

/// `a` is due at or before `b` on the wrapping clock.
fn not_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// Heap order: earliest deadline on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Earliest(Slot);

impl Ord for Earliest {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.0.at.wrapping_sub(self.0.at) as i32).cmp(&0)
    }
}

impl PartialOrd for Earliest {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A deadline that came due.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub key: u32,
    pub generation: u32,
    pub kind: TimerKind,
}

/// Milliseconds of `d`, capped so wrapping comparisons stay exact.
pub(crate) fn millis(d: Duration) -> u32 {
    d.as_millis().min(i32::MAX as u128) as u32
}

/// Address space reserved up front for each of a worker's per-connection
/// tables (connections, handler states, deadline queues). Only the pages
/// actually used become resident; reserving it at once, past the
/// allocator's mmap threshold, spares the table its growth through small
/// heap blocks, each of which would stay resident as garbage once outgrown.
/// Growth past it is a `mremap`, which copies nothing.
pub(crate) const TABLE_RESERVE: usize = 256 << 10;

/// Entries of `T` that fit in [`TABLE_RESERVE`].
pub(crate) fn reserve_for<T>() -> usize {
    TABLE_RESERVE / std::mem::size_of::<T>().max(1)
}

/// FIFO deadline queues for handshakes and closes, a heap for heartbeats.
#[derive(Debug)]
pub(crate) struct Timers {
    handshake: VecDeque<Slot>,
    closing: VecDeque<Slot>,
    heartbeat: BinaryHeap<Earliest>,
    app: BinaryHeap<Earliest>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            handshake: VecDeque::with_capacity(reserve_for::<Slot>()),
            closing: VecDeque::with_capacity(reserve_for::<Slot>()),
            heartbeat: BinaryHeap::with_capacity(reserve_for::<Slot>()),
            app: BinaryHeap::new(),
        }
    }
}

/// A drained FIFO queue gives back what a burst made resident.
fn release_if_drained(q: &mut VecDeque<Slot>) {
    if q.is_empty() && q.capacity() > reserve_for::<Slot>() {
        *q = VecDeque::with_capacity(reserve_for::<Slot>());
    }
}

impl Timers {
    /// Add a deadline at `at` (worker clock, ms).
    pub fn add(&mut self, kind: TimerKind, at: u32, key: usize, generation: u32) {
        let s = Slot {
            at,
            key: key as u32,
            generation,
        };
        match kind {
            TimerKind::Handshake => self.handshake.push_back(s),
            TimerKind::Closing => self.closing.push_back(s),
            TimerKind::Heartbeat => self.heartbeat.push(Earliest(s)),
            TimerKind::App => self.app.push(Earliest(s)),
        }
    }

    /// Time from `now` until the earliest deadline, if any.
    pub fn next_timeout(&self, now: u32) -> Option<Duration> {
        [
            self.handshake.front(),
            self.closing.front(),
            self.heartbeat.peek().map(|e| &e.0),
            self.app.peek().map(|e| &e.0),
        ]
        .into_iter()
        .flatten()
        .map(|s| Duration::from_millis((s.at.wrapping_sub(now) as i32).max(0) as u64))
        .min()
    }

    /// Pop every entry due at `now` into `out`.
    pub fn expire(&mut self, now: u32, out: &mut Vec<Entry>) {
        for (q, kind) in [
            (&mut self.handshake, TimerKind::Handshake),
            (&mut self.closing, TimerKind::Closing),
        ] {
            let mut popped = false;
            while q.front().is_some_and(|s| not_after(s.at, now)) {
                if let Some(s) = q.pop_front() {
                    popped = true;
                    out.push(Entry {
                        key: s.key,
                        generation: s.generation,
                        kind,
                    });
                }
            }
            if popped {
                // After a burst of handshakes, their entries all expire
                // within one handshake timeout: the queue's pages go back.
                release_if_drained(q);
            }
        }
        for (h, kind) in [
            (&mut self.heartbeat, TimerKind::Heartbeat),
            (&mut self.app, TimerKind::App),
        ] {
            while h.peek().is_some_and(|e| not_after(e.0.at, now)) {
                if let Some(Earliest(s)) = h.pop() {
                    out.push(Entry {
                        key: s.key,
                        generation: s.generation,
                        kind,
                    });
                }
            }
        }
    }

    /// Give memory back when the queues are empty.
    pub fn shrink(&mut self) {
        release_if_drained(&mut self.handshake);
        release_if_drained(&mut self.closing);
        if self.heartbeat.is_empty() && self.heartbeat.capacity() > reserve_for::<Slot>() {
            self.heartbeat = BinaryHeap::with_capacity(reserve_for::<Slot>());
        }
        if self.app.is_empty() && self.app.capacity() > 1024 {
            self.app = BinaryHeap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_order_across_the_wrap() {
        let mut t = Timers::default();
        let base = u32::MAX - 50;
        t.add(TimerKind::Heartbeat, base.wrapping_add(100), 1, 0);
        t.add(TimerKind::Heartbeat, base.wrapping_add(10), 2, 0);
        t.add(TimerKind::Handshake, base.wrapping_add(60), 3, 0);
        assert_eq!(t.next_timeout(base), Some(Duration::from_millis(10)));
        let mut out = Vec::new();
        t.expire(base.wrapping_add(9), &mut out);
        assert!(out.is_empty());
        t.expire(base.wrapping_add(70), &mut out);
        let keys: Vec<u32> = out.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![3, 2]);
        out.clear();
        t.expire(base.wrapping_add(100), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, 1);
        assert_eq!(t.next_timeout(base), None);
    }

    #[test]
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 12);
    }
}

#[cfg(test)]
mod overdue {
    use super::*;

    #[test]
    fn an_overdue_deadline_means_no_sleep() {
        let mut t = Timers::default();
        t.add(TimerKind::Heartbeat, 1000, 1, 0);
        assert_eq!(t.next_timeout(1001), Some(Duration::ZERO));
        assert_eq!(t.next_timeout(999), Some(Duration::from_millis(1)));
    }
}
