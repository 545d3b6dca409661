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
//! [`Broker`] is the boundary: [`local::LocalBroker`] is the in-process
//! implementation; `redis::RedisBroker` (feature `redis`) joins several
//! nodes through Redis. A broker may answer a publication, a subscription
//! or a history read at once ([`Answer::Now`]) or later, from its own
//! threads ([`Answer::Later`]): workers never wait for it.

pub mod format;
pub mod history;
pub mod local;
pub mod presence;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use crate::server::{ConnId, Frame};

pub use format::{Format, Meta};
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
    /// A connection that must not receive it (`PublishOptions::exclude`).
    pub(crate) exclude: Option<ConnId>,
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
            exclude: None,
            #[cfg(feature = "deflate")]
            deflated: std::sync::OnceLock::new(),
        }
    }

    /// A broadcast: the frame for every connection, one value shared by
    /// all workers (so it is deflated once, like a publication).
    pub(crate) fn broadcast(frame: Frame) -> Publication {
        Publication::new(Arc::from(""), 0, Epoch(0), Encoded::whole(frame))
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

/// How a publication is built and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Record it in the channel's history (when history is enabled).
    pub history: bool,
    /// How its frame is built from its data.
    pub format: Format,
    /// A subscriber that must not receive it (e.g. the sender of a Pusher
    /// client event, or the `socket_id` of a trigger: Echo's `toOthers()`).
    pub exclude: Option<ConnId>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            history: true,
            format: Format::FRAME,
            exclude: None,
        }
    }
}

impl PublishOptions {
    /// Kept in history (when enabled), built by `format`.
    pub const fn kept(format: Format) -> Self {
        PublishOptions {
            history: true,
            format,
            exclude: None,
        }
    }

    /// Never kept in history (e.g. a user's private topic), built by `format`.
    pub const fn unkept(format: Format) -> Self {
        PublishOptions {
            history: false,
            format,
            exclude: None,
        }
    }
}

/// The broker cannot take the request now (e.g. Redis is unreachable);
/// nothing was published or subscribed. The text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub Arc<str>);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a later answer goes (called once, on a broker thread).
pub type Reply<T> = Box<dyn FnOnce(Result<T, Unavailable>) + Send>;

/// A broker's answer: now, or later through the [`Reply`] it asked for.
#[derive(Debug)]
pub enum Answer<T> {
    /// The answer.
    Now(Result<T, Unavailable>),
    /// The reply will be called with it.
    Later,
}

/// Who subscribes: the connection and its worker (a later [`Joined`]
/// reaches the worker as a command and the handler's
/// [`on_joined`](crate::server::Handler::on_joined)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joiner {
    /// The worker running the connection.
    pub worker: usize,
    /// The connection.
    pub conn: ConnId,
}

/// A message for connections that may live on another node.
#[derive(Debug, Clone)]
pub enum Relay {
    /// Queue a message (built by `format` from `data`) on one connection.
    Send(ConnId, Format, Arc<[u8]>),
    /// Close one connection with a code and reason.
    Close(ConnId, u16, Arc<str>),
    /// Queue a message on every open WebSocket of every node.
    Broadcast(Format, Arc<[u8]>),
}

/// The broker's link to its backend, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working (always, for the in-process broker).
    Ok,
    /// Up, but publications are refused: the reason.
    Degraded(String),
}

/// A node of a cluster as the broker last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id (the one its connection ids carry).
    pub id: u16,
    /// WebSocket connections it held at its last heartbeat.
    pub connections: u64,
    /// Seconds since its last heartbeat.
    pub age_ms: u64,
    /// This node.
    pub this: bool,
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
    /// Publish `data` on `channel`: assign the next sequence number, build
    /// the frame with `opts.format` (once, and only when someone will use
    /// it), record it and hand it to every worker with subscribers. A
    /// broker that answers later calls `later()` for the reply it will use.
    fn publish(
        &self,
        channel: &str,
        opts: PublishOptions,
        data: &[u8],
        later: &mut dyn FnMut() -> Reply<Published>,
    ) -> Answer<Published>;

    /// A connection subscribes to `channel`; with `since`, the publications
    /// after it are returned for replay when the history holds all of them.
    /// [`Answer::Later`]: the worker receives the answer as a command.
    fn join(&self, channel: &str, who: Joiner, since: Option<Position>) -> Answer<Joined>;

    /// A connection on `worker` unsubscribed from `channel` (or went away).
    fn leave(&self, channel: &str, worker: usize);

    /// Publications of `channel` after `since` (all held when `None`), at most `limit`.
    fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        later: &mut dyn FnMut() -> Reply<HistoryPage>,
    ) -> Answer<HistoryPage>;

    /// `(subscribers on this node's workers, last known position)` of a channel.
    fn channel(&self, channel: &str) -> (u64, Position);

    /// Counts over all channels (this node).
    fn totals(&self) -> Totals;

    /// Periodic upkeep (expire history by age); called about once a second.
    fn maintain(&self);

    /// This node's id in its cluster (0: a single node); connection ids
    /// carry it.
    fn node(&self) -> u16 {
        0
    }

    /// Deliver a message to connections on other nodes (or, for a
    /// broadcast, on every node including this one). The answer is the
    /// number of nodes that took it. A single node has no other: `Now(Ok(0))`.
    fn relay(&self, msg: Relay, later: &mut dyn FnMut() -> Reply<u64>) -> Answer<u64> {
        let _ = (msg, later);
        Answer::Now(Ok(0))
    }

    /// Whether the broker's backend works.
    fn health(&self) -> Health {
        Health::Ok
    }

    /// The nodes of the cluster (empty for a single node).
    fn nodes(&self) -> Vec<NodeInfo> {
        Vec::new()
    }

    /// A connection enters `channel`'s presence ([`presence`]): it is
    /// counted as a subscriber and, with a member, as that user. A user's
    /// first connection anywhere publishes `enter.events.added`; the
    /// answer's snapshot is valid at its position, so the connection
    /// subscribes with that position as `since`. Entering twice counts once.
    fn presence_enter(
        &self,
        channel: &str,
        enter: presence::Enter<'_>,
        later: &mut dyn FnMut() -> Reply<presence::Entered>,
    ) -> Answer<presence::Entered>;

    /// Connection `conn` leaves `channel`'s presence (nothing if it had not
    /// entered); a user's last connection anywhere publishes the `removed`
    /// event the channel was entered with. Changes go to its observer.
    fn presence_leave(&self, channel: &str, conn: ConnId);

    /// `channel`'s presence (`events`: how the removal of a dead node's
    /// members, found on the way, is announced).
    fn presence(
        &self,
        channel: &str,
        events: &presence::Events,
        later: &mut dyn FnMut() -> Reply<presence::Presence>,
    ) -> Answer<presence::Presence>;

    /// Channels whose name starts with `prefix` that have presence
    /// subscribers, sorted by name.
    fn presence_channels(
        &self,
        prefix: &str,
        later: &mut dyn FnMut() -> Reply<Vec<presence::Occupied>>,
    ) -> Answer<Vec<presence::Occupied>>;
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
