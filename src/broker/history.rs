//! History: per channel, a ring of its most recent publications bounded by
//! count and age; over all channels, a list in publication order that
//! enforces the process-wide byte cap by evicting the oldest entries first.
//!
//! The rings own the publications; the age list holds weak references, so
//! an entry a ring dropped (by count) frees its memory at once and leaves
//! only a dead slot in the age list, which is compacted away.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Publication;

/// Bytes charged per history entry on top of its frame and channel name:
/// the publication value, the frame's allocation and reference counts, the
/// ring and age-list slots (measured ~150 B; charged with room to spare).
pub const ENTRY_OVERHEAD: usize = 256;

/// Bytes charged once for a channel while its history is not empty: its
/// state, map entry, name and ring allocation, which a channel without
/// subscribers keeps only for its history (measured: ~640 B per channel
/// holding one small entry, all charges together ~690 B).
pub const CHANNEL_OVERHEAD: usize = 384;

/// Limits of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Publications kept per channel (0 turns history off). Default 100.
    pub size: usize,
    /// How long a publication is kept. Default 5 minutes.
    pub ttl: Duration,
    /// Bytes charged to history over all channels (see
    /// [`Publication::cost`]); past it the oldest entries go first.
    /// Default 64 MiB.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(300),
            max_bytes: 64 << 20,
        }
    }
}

impl HistoryConfig {
    /// Whether publications are recorded at all.
    pub fn enabled(&self) -> bool {
        self.size > 0 && self.max_bytes > 0 && !self.ttl.is_zero()
    }
}

/// One channel's recent publications, oldest first, contiguous in sequence
/// numbers. Milliseconds on the broker's clock say when each was published.
#[derive(Default)]
pub(crate) struct Ring {
    entries: VecDeque<(u64, Arc<Publication>)>,
}

impl Ring {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append `p`; entries it pushes out (the oldest when the ring is full,
    /// or all of them after a gap) are handed to `gone`.
    pub fn push(
        &mut self,
        at: u64,
        p: Arc<Publication>,
        size: usize,
        mut gone: impl FnMut(&Publication),
    ) {
        if self.entries.back().is_some_and(|(_, b)| b.seq + 1 != p.seq) {
            // A publication was made without history in between: what is
            // held no longer leads up to the present, and never will again.
            for (_, old) in self.entries.drain(..) {
                gone(&old);
            }
        }
        self.entries.push_back((at, p));
        while self.entries.len() > size {
            if let Some((_, old)) = self.entries.pop_front() {
                gone(&old);
            }
        }
    }

    /// Drop entries published before `cutoff`; each one is handed to `gone`.
    pub fn expire(&mut self, cutoff: u64, mut gone: impl FnMut(&Publication)) {
        while let Some((at, _)) = self.entries.front() {
            if *at >= cutoff {
                break;
            }
            if let Some((_, p)) = self.entries.pop_front() {
                gone(&p);
            }
        }
    }

    /// Drop `p` and every older entry (if `p` is in this ring: same
    /// publication, not another epoch's); each is handed to `gone`.
    pub fn drop_through(&mut self, p: &Arc<Publication>, mut gone: impl FnMut(&Publication)) {
        // Entries are contiguous in seq: `p` can only be at one index.
        let Some((_, front)) = self.entries.front() else {
            return;
        };
        let held = p
            .seq
            .checked_sub(front.seq)
            .and_then(|i| self.entries.get(i as usize))
            .is_some_and(|(_, e)| Arc::ptr_eq(e, p));
        if !held {
            return;
        }
        while let Some((_, e)) = self.entries.pop_front() {
            gone(&e);
            if Arc::ptr_eq(&e, p) {
                break;
            }
        }
    }

    /// Whether the ring holds every publication after `since` up to
    /// `current` (the channel's latest sequence number).
    pub fn covers(&self, since: u64, current: u64) -> bool {
        if since == current {
            return true;
        }
        match (self.entries.front(), self.entries.back()) {
            (Some((_, f)), Some((_, b))) => {
                since < current && f.seq <= since + 1 && b.seq == current
            }
            _ => false,
        }
    }

    /// Publications after `since`, oldest first, at most `limit`.
    pub fn after(&self, since: u64, limit: usize) -> Vec<Arc<Publication>> {
        let start = match self.entries.front() {
            Some((_, f)) if since >= f.seq => (since - f.seq + 1) as usize,
            _ => 0,
        };
        self.entries
            .iter()
            .skip(start)
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// Every history entry in publication order (weakly), for the byte cap and
/// the age limit across all channels.
#[derive(Default)]
pub(crate) struct AgeList {
    list: VecDeque<(u64, Weak<Publication>)>,
}

impl AgeList {
    /// Record an entry; `live` is the number of entries the rings hold, so
    /// dead slots are compacted away once they outnumber the live ones.
    pub fn push(&mut self, at: u64, p: Weak<Publication>, live: usize) {
        if self.list.len() > 2 * live + 1024 {
            self.list.retain(|(_, w)| w.strong_count() > 0);
        }
        self.list.push_back((at, p));
    }

    /// The oldest entry if it must go: published before `cutoff`, or any
    /// entry while `over` (the byte cap is exceeded). Dead slots are
    /// skipped. Returns the entry and whether it went for its age.
    pub fn pop_due(&mut self, cutoff: u64, over: bool) -> Option<(Arc<Publication>, bool)> {
        while let Some((at, w)) = self.list.front() {
            let expired = *at < cutoff;
            if w.strong_count() == 0 {
                self.list.pop_front();
                continue;
            }
            if !expired && !over {
                return None;
            }
            let p = w.upgrade();
            self.list.pop_front();
            if let Some(p) = p {
                return Some((p, expired));
            }
        }
        None
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Encoded, Epoch};
    use crate::server::Frame;

    fn publication(seq: u64) -> Arc<Publication> {
        let e = Encoded::whole(Frame::text(&format!("m{seq}")));
        Arc::new(Publication::new(Arc::from("c"), seq, Epoch(7), e))
    }

    #[test]
    fn ring_is_bounded_and_covers_only_contiguous_ranges() {
        let mut r = Ring::default();
        for s in 1..=5 {
            let mut dropped = Vec::new();
            r.push(s * 10, publication(s), 3, |p| dropped.push(p.seq));
            let expect: Vec<u64> = (s > 3).then(|| s - 3).into_iter().collect();
            assert_eq!(dropped, expect);
        }
        // Holds 3, 4, 5.
        assert!(r.covers(2, 5));
        assert!(r.covers(4, 5));
        assert!(r.covers(5, 5));
        assert!(!r.covers(1, 5), "2 is gone");
        assert!(!r.covers(2, 6), "6 is not held");
        assert!(!r.covers(6, 5), "a future position");
        let seqs: Vec<u64> = r.after(3, 10).iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [4, 5]);
        let seqs: Vec<u64> = r.after(0, 2).iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [3, 4]);
        let mut gone = Vec::new();
        r.expire(45, |p| gone.push(p.seq));
        assert_eq!(gone, [3, 4]);
        assert!(!r.covers(3, 5));
        // A gap (a publication without history) empties the ring.
        let mut dropped = Vec::new();
        r.push(70, publication(7), 3, |p| dropped.push(p.seq));
        assert_eq!(dropped, [5]);
        assert!(!r.covers(5, 7));
        assert_eq!(r.after(0, 10).len(), 1);
    }

    #[test]
    fn age_list_pops_expired_or_over_cap_and_skips_dead_slots() {
        let a = publication(1);
        let b = publication(2);
        let mut l = AgeList::default();
        l.push(10, Arc::downgrade(&a), 2);
        l.push(20, Arc::downgrade(&b), 2);
        assert!(l.pop_due(5, false).is_none());
        drop(a);
        // The dead slot is skipped; b is not due until 20.
        assert!(l.pop_due(15, false).is_none());
        assert_eq!(l.len(), 1);
        let (p, aged) = l.pop_due(15, true).unwrap();
        assert_eq!((p.seq, aged), (2, false));
        assert!(l.pop_due(100, true).is_none());
    }
}
