//! Per-worker deadlines. Every timeout of a kind has the same length, so
//! deadlines are pushed in time order and a FIFO queue per kind is a sorted
//! list: adding is O(1), expiring pops from the front, and an entry whose
//! connection has moved on (checked by generation and state) is skipped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The kinds of deadline a connection can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The request head must be complete by then.
    Handshake,
    /// Our close frame was sent (or a final HTTP answer): the peer must be
    /// gone by then.
    Closing,
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
        }
    }

    /// Time until the earliest deadline, if any.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        [self.handshake.front(), self.closing.front()]
            .into_iter()
            .flatten()
            .map(|e| e.at.saturating_duration_since(now))
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
    }

    /// Drop entries (e.g. on a full drain) to give the memory back when queues are empty.
    pub fn shrink(&mut self) {
        if self.handshake.is_empty() && self.handshake.capacity() > 1024 {
            self.handshake = VecDeque::new();
        }
        if self.closing.is_empty() && self.closing.capacity() > 1024 {
            self.closing = VecDeque::new();
        }
    }
}
