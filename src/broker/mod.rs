//! The broker: the one place that owns the order of every channel, its
//! sequence numbers, its epoch, its history and who subscribes to it.
//!
//! A publication's path: the caller (HTTP API, client publish, an embedder's
//! [`Handle`](crate::server::Handle) or [`Context`](crate::server::Context))
//! asks the broker to publish; the broker assigns the channel's next
//! sequence number, has the frame encoded once, records it in the channel's
//! history and hands the same [`Publication`] value to every worker with
//! subscribers (through the hub's channels, under the channel's lock, so
//! every worker sees a channel's publications in sequence order). Workers
//! queue its frame on each subscriber.
//!
//! [`Broker`] is the boundary a second implementation (Redis) plugs in
//! behind; [`local::LocalBroker`] is the in-process one.

pub mod history;
pub mod local;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use crate::server::Frame;

pub use local::LocalBroker;

/// The identity of a channel's stream: a random id, new whenever the
/// stream's continuity is lost (first use, a restart, the channel's state
/// forgotten after its last subscriber and history entry went away). A
/// sequence number means something only together with its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A fresh random epoch (never 0).
    pub fn random() -> Epoch {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS once per process; the counter
        // and the clock make every call differ.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        Epoch(h.finish().max(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = ();
    /// Exactly 16 hex digits, as [`Epoch`]'s `Display` writes them.
    fn from_str(s: &str) -> Result<Epoch, ()> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        u64::from_str_radix(s, 16).map(Epoch).map_err(|_| ())
    }
}

/// A place in a channel's stream: the last sequence number seen, in an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Sequence number (the first publication is 1; 0 means none yet).
    pub seq: u64,
    /// The stream's epoch.
    pub epoch: Epoch,
}

/// One publication, as every worker and the history hold it: built once,
/// shared by reference count.
pub struct Publication {
    /// The channel (topic) it was published on.
    pub channel: Arc<str>,
    /// Its sequence number in the channel.
    pub seq: u64,
    /// The channel's epoch.
    pub epoch: Epoch,
    frame: Frame,
    payload: Range<u32>,
    /// The permessage-deflate frame, built once by the first worker with a
    /// recipient that negotiated it (`None` inside: not worth it).
    #[cfg(feature = "deflate")]
    deflated: std::sync::OnceLock<Option<Arc<[u8]>>>,
}

impl Publication {
    /// A publication of `encoded` as `seq` of `channel` in `epoch`.
    pub fn new(channel: Arc<str>, seq: u64, epoch: Epoch, encoded: Encoded) -> Publication {
        Publication {
            channel,
            seq,
            epoch,
            frame: encoded.frame,
            payload: encoded.payload.start as u32..encoded.payload.end as u32,
            #[cfg(feature = "deflate")]
            deflated: std::sync::OnceLock::new(),
        }
    }

    /// The compressed (RSV1) frame for recipients that negotiated
    /// permessage-deflate without context takeover: `make` deflates the
    /// plain frame on the first call, outside any lock of the broker;
    /// every later call (any worker) gets the same bytes. `None`: not
    /// compressed (too small, not smaller, or no `deflate` feature).
    pub fn deflated_with(
        &self,
        make: impl FnOnce(&[u8]) -> Option<Arc<[u8]>>,
    ) -> Option<Arc<[u8]>> {
        #[cfg(feature = "deflate")]
        return self
            .deflated
            .get_or_init(|| make(self.frame.bytes()))
            .clone();
        #[cfg(not(feature = "deflate"))]
        {
            let _ = make;
            None
        }
    }

    /// The encoded frame every recipient gets (header and payload).
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The application data inside the frame (for the push service: the
    /// `data` value of its envelope), e.g. for a history listing.
    pub fn payload(&self) -> &[u8] {
        let r = self.payload.start as usize..self.payload.end as usize;
        self.frame.bytes().get(r).unwrap_or(&[])
    }

    /// Bytes of memory a history entry of this publication is charged
    /// (frame, channel name and a fixed overhead for the structures).
    pub fn cost(&self) -> usize {
        self.frame.len() + self.channel.len() + history::ENTRY_OVERHEAD
    }
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("seq", &self.seq)
            .field("epoch", &self.epoch)
            .field("frame", &self.frame)
            .finish()
    }
}

/// A frame built for a publication and where its application data lies
/// inside the frame's bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The complete frame.
    pub frame: Frame,
    /// The byte range of the application data within `frame.bytes()`.
    pub payload: Range<usize>,
}

impl Encoded {
    /// A frame whose whole payload is the application data.
    pub fn whole(frame: Frame) -> Encoded {
        let payload = crate::protocol::encode::header_len(frame.bytes())..frame.len();
        Encoded { frame, payload }
    }
}

/// How a publication is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Record it in the channel's history (when history is enabled).
    pub history: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions { history: true }
    }
}

/// What a publication reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The topic's sequence number of this publication (1, 2, 3, ...).
    pub seq: u64,
    /// The channel's epoch.
    pub epoch: Epoch,
    /// Subscribers of the topic (all workers) when it was published.
    pub recipients: u64,
}

/// The answer to a subscription: where the subscriber starts, and with a
/// resume position, whether the gap could be recovered.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The channel's last publication when the subscription took effect:
    /// live publications start at `position.seq + 1`.
    pub position: Position,
    /// With `since`: whether every publication after it is in `replay`.
    pub recovered: Option<bool>,
    /// The publications after `since` up to `position.seq`, in order
    /// (empty unless recovered).
    pub replay: Vec<Arc<Publication>>,
}

/// A page of a channel's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's current position.
    pub position: Position,
    /// Whether the history still holds every publication after `since`
    /// (false: some were evicted or expired, or the epoch is unknown).
    pub complete: bool,
    /// Publications after `since`, oldest first, at most `limit`.
    pub publications: Vec<Arc<Publication>>,
}

/// Counts over all channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Channels with at least one subscriber.
    pub active_channels: u64,
    /// Subscriptions (all workers).
    pub subscriptions: u64,
    /// Channels whose state is held (subscribers or history).
    pub channels: u64,
    /// Publications held in history.
    pub history_entries: u64,
    /// Bytes charged to history (see [`Publication::cost`]).
    pub history_bytes: u64,
    /// History entries evicted by the byte cap before their time.
    pub history_evicted: u64,
}

/// The broker boundary: everything workers and the push layer ask of
/// channel order, subscriptions and history.
pub trait Broker: Send + Sync + 'static {
    /// Publish on `channel`: assign the next sequence number, build the
    /// frame with `make(seq)` (only when someone will use it), record it
    /// and hand it to every worker with subscribers.
    fn publish(
        &self,
        channel: &str,
        opts: PublishOptions,
        make: &mut dyn FnMut(u64) -> Encoded,
    ) -> Published;

    /// A connection on `worker` subscribes to `channel`; with `since`, the
    /// publications after it are returned for replay when the history holds
    /// all of them.
    fn join(&self, channel: &str, worker: usize, since: Option<Position>) -> Joined;

    /// A connection on `worker` unsubscribed from `channel` (or went away).
    fn leave(&self, channel: &str, worker: usize);

    /// Publications of `channel` after `since` (all held when `None`), at most `limit`.
    fn history(&self, channel: &str, since: Option<Position>, limit: usize) -> HistoryPage;

    /// `(subscribers on all workers, current position)` of a channel.
    fn channel(&self, channel: &str) -> (u64, Position);

    /// Counts over all channels.
    fn totals(&self) -> Totals;

    /// Periodic upkeep (expire history by age); called about once a second.
    fn maintain(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_random_and_round_trip() {
        let a = Epoch::random();
        let b = Epoch::random();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 16);
        assert_eq!(s.parse::<Epoch>(), Ok(a));
        assert!("xyz".parse::<Epoch>().is_err());
        assert!("00000000000000001".parse::<Epoch>().is_err());
        assert!("+000000000000001".parse::<Epoch>().is_err());
    }

    #[test]
    fn payload_is_the_data_inside_the_frame() {
        let e = Encoded::whole(Frame::text("hello"));
        let p = Publication::new(Arc::from("c"), 1, Epoch(1), e);
        assert_eq!(p.payload(), b"hello");
    }

    #[cfg(feature = "deflate")]
    #[test]
    fn deflated_frame_is_built_once_for_all_workers() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let p = Arc::new(Publication::new(
            Arc::from("c"),
            1,
            Epoch(1),
            Encoded::whole(Frame::text(&"x".repeat(1000))),
        ));
        let calls = Arc::new(AtomicUsize::new(0));
        let got: Vec<Option<Arc<[u8]>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let (p, calls) = (p.clone(), calls.clone());
                    s.spawn(move || {
                        p.deflated_with(|plain| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(plain, p.frame().bytes());
                            Some(Arc::from(vec![i as u8; 3]))
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let first = got[0].clone().unwrap();
        assert!(got
            .iter()
            .all(|g| g.as_ref().is_some_and(|g| Arc::ptr_eq(g, &first))));
    }
}
