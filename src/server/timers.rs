//! Per-worker deadlines. Handshake and close deadlines all have the same
//! length, so they are pushed in time order and a FIFO queue per kind is a
//! sorted list: adding is O(1), expiring pops from the front. Heartbeat
//! checks (one per open connection, re-armed from its last activity) live
//! in a binary heap. An entry whose connection has moved on (checked by
//! generation and state) is skipped when it comes due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

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
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub at: Instant,
    pub key: u32,
    pub generation: u32,
    pub kind: TimerKind,
}

/// FIFO deadline queues, one per kind.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    handshake: VecDeque<Entry>,
    closing: VecDeque<Entry>,
    heartbeat: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Timers {
    pub fn add(&mut self, kind: TimerKind, at: Instant, key: usize, generation: u32) {
        let e = Entry {
            at,
            key: key as u32,
            generation,
            kind,
        };
        match kind {
            TimerKind::Handshake => self.handshake.push_back(e),
            TimerKind::Closing => self.closing.push_back(e),
            TimerKind::Heartbeat => self.heartbeat.push(Reverse((at, key as u32, generation))),
        }
    }

    /// Time until the earliest deadline, if any.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let hb = self.heartbeat.peek().map(|Reverse((at, _, _))| *at);
        [
            self.handshake.front().map(|e| e.at),
            self.closing.front().map(|e| e.at),
            hb,
        ]
        .into_iter()
        .flatten()
        .map(|at| at.saturating_duration_since(now))
        .min()
    }

    /// Pop every entry due at `now` into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Entry>) {
        for q in [&mut self.handshake, &mut self.closing] {
            while q.front().is_some_and(|e| e.at <= now) {
                if let Some(e) = q.pop_front() {
                    out.push(e);
                }
            }
        }
        while self
            .heartbeat
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            if let Some(Reverse((at, key, generation))) = self.heartbeat.pop() {
                out.push(Entry {
                    at,
                    key,
                    generation,
                    kind: TimerKind::Heartbeat,
                });
            }
        }
    }

    /// Drop entries (e.g. on a full drain) to give the memory back when queues are empty.
    pub fn shrink(&mut self) {
        if self.handshake.is_empty() && self.handshake.capacity() > 1024 {
            self.handshake = VecDeque::new();
        }
        if self.closing.is_empty() && self.closing.capacity() > 1024 {
            self.closing = VecDeque::new();
        }
        if self.heartbeat.is_empty() && self.heartbeat.capacity() > 1024 {
            self.heartbeat = BinaryHeap::new();
        }
    }
}
