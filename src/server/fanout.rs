//! Fan-out: a worker delivers publications and broadcasts to its
//! connections.
//!
//! Publications reach the worker as hub commands. Those drained in one
//! turn that follow each other on the same topic (a busy channel's burst)
//! form a *run*: their frames are copied once, back to back, into one
//! shared chunk, and each subscriber gets that chunk — one reference, one
//! queue entry and one contiguous write per subscriber for the whole run,
//! instead of one of each per publication. Consecutive broadcasts form runs
//! the same way. Any other command delivers the pending run first, so every
//! connection sees the commands' order.
//!
//! Within a run the frames are the ones a single delivery would queue:
//! a subscriber that enters mid-run (a joiner whose start lies inside it)
//! gets only the publications after its start, and a connection with
//! permessage-deflate gets each publication's compressed frame (deflated
//! once per publication for all workers).

use std::mem;
use std::rc::Rc;
use std::sync::Arc;

use super::compress;
use super::core::{moved, push_frame, Core, Queued, Queues};
use super::handler::CloseReason;
use super::outbuf::{LocalFrame, OWNED_CHUNK};
use crate::broker::Publication;

/// Publications staged for delivery at the end of the command drain.
#[derive(Default)]
pub(crate) struct Run {
    pubs: Vec<Arc<Publication>>,
    /// A run of broadcasts (to every connection), else of one topic.
    broadcast: bool,
    /// Bytes of the staged frames: a run stays one chunk of at most
    /// `OWNED_CHUNK` bytes, because only the chunk being written escapes
    /// the backpressure limit.
    bytes: usize,
    /// Per delivered publication: its index in `pubs` and how many of the
    /// topic's subscribers (in list order) it reaches. Kept for reuse.
    live: Vec<(usize, usize)>,
}

impl Run {
    fn admits(&self, p: &Publication, broadcast: bool) -> bool {
        let Some(first) = self.pubs.first() else {
            return true;
        };
        broadcast == self.broadcast
            && (broadcast
                || (Arc::ptr_eq(&first.channel, &p.channel) || first.channel == p.channel)
                    && first.epoch == p.epoch)
            && first.exclude == p.exclude
            && self.bytes + p.frame().bytes().len() <= OWNED_CHUNK
    }
}

/// What one recipient of a run gets.
struct Frames<'a> {
    run: &'a [Arc<Publication>],
    live: &'a [(usize, usize)],
    /// All live frames back to back (the frame itself for a single one).
    whole: LocalFrame,
    /// Each live frame alone, built on first need (joiners, deflate).
    single: Vec<LocalFrame>,
    /// Each live frame compressed, built on first need.
    deflated: Vec<compress::Lazy>,
}

impl Frames<'_> {
    /// Queue what subscriber number `i` (in list order; `usize::MAX`
    /// never joined mid-run) gets on `c`.
    #[inline]
    fn push(
        &mut self,
        c: &mut super::conn::Conn,
        key: usize,
        i: usize,
        dz: &mut compress::Worker,
        q: &mut Queues<'_>,
    ) {
        let all = self.live.first().map_or(0, |l| l.1);
        if c.deflate == 0 && i < all {
            if push_frame(c, key, &self.whole, q) != Queued::Dropped {
                q.stats.messages_out_total += self.live.len() as u64 - 1;
            }
            return;
        }
        if self.single.is_empty() {
            self.single = if self.live.len() == 1 {
                vec![self.whole.clone()]
            } else {
                let run = self.run;
                self.live
                    .iter()
                    .map(|&(j, _)| Rc::new(run[j].frame().clone().into_shared()))
                    .collect()
            };
            self.deflated = self
                .live
                .iter()
                .map(|_| compress::Lazy::default())
                .collect();
        }
        for (n, &(j, reach)) in self.live.iter().enumerate() {
            if i >= reach {
                continue;
            }
            let plain = &self.single[n];
            if c.deflate == 0 {
                push_frame(c, key, plain, q);
            } else {
                let p = &self.run[j];
                let make = |dz: &mut compress::Worker| p.deflated_with(|f| dz.shared_frame(f));
                compress::push_deflated(c, key, plain, &mut self.deflated[n], dz, make, q);
            }
        }
    }
}

impl Core {
    /// A publication (`broadcast`: to every connection) from the hub: it
    /// joins the pending run, or delivers that run and starts the next.
    /// A close frame is delivered at once (it closes its subscribers).
    pub(crate) fn stage(&mut self, p: Arc<Publication>, broadcast: bool) {
        if !self.run.admits(&p, broadcast) {
            self.deliver_run();
        }
        if !broadcast && p.frame().as_close().is_some() {
            self.deliver_run();
            return self.close_subscribers(&p);
        }
        self.run.bytes += p.frame().bytes().len();
        self.run.broadcast = broadcast;
        self.run.pubs.push(p);
    }

    /// Deliver the pending run (at the end of a command drain, and before
    /// any command other than a publication).
    pub(crate) fn deliver_run(&mut self) {
        if self.run.pubs.is_empty() {
            return;
        }
        let mut run = mem::take(&mut self.run);
        self.stats.publications_total += run.pubs.len() as u64;
        if run.broadcast {
            self.broadcast_run(&mut run);
        } else {
            self.publish_run(&mut run);
        }
        run.pubs.clear();
        run.live.clear();
        run.bytes = 0;
        self.run = run;
    }

    fn publish_run(&mut self, run: &mut Run) {
        let first = &run.pubs[0];
        let Some(id) = self.topics.id(&first.channel) else {
            return;
        };
        // Joiners whose start a publication passes enter the subscriber
        // list (at its end) before it is delivered: publication j reaches
        // the first `reach` subscribers.
        for (j, p) in run.pubs.iter().enumerate() {
            if self.enter(id, p) {
                run.live.push((j, self.topics.subscribers(id).len()));
            }
        }
        if !run.live.is_empty() {
            let skip = first.exclude.and_then(|id| self.lookup(id));
            self.fan_out(run, Some((id, skip)));
        }
    }

    fn broadcast_run(&mut self, run: &mut Run) {
        run.live
            .extend((0..run.pubs.len()).map(|j| (j, usize::MAX)));
        self.fan_out(run, None);
    }

    /// Queue the run on the subscribers of `topic` but the excluded one, or
    /// (`None`) on every connection.
    fn fan_out(&mut self, run: &Run, topic: Option<(u32, Option<usize>)>) {
        let mut frames = Frames {
            whole: whole(&run.pubs, &run.live),
            run: &run.pubs,
            live: &run.live,
            single: Vec::new(),
            deflated: Vec::new(),
        };
        let mut q = Queues {
            dirty: &mut self.dirty,
            pool: &mut self.pool,
            stats: &mut self.stats,
            max_buffered: self.cfg.max_buffered,
        };
        let (conns, dz) = (&mut self.conns, &mut self.deflate);
        let Some((id, skip)) = topic else {
            for (key, c) in conns.iter_mut() {
                frames.push(c, key, 0, dz, &mut q);
            }
            return;
        };
        for (i, &key) in self.topics.subscribers(id).iter().enumerate() {
            let key = key as usize;
            if skip == Some(key) {
                continue;
            }
            if let Some(c) = conns.get_mut(key) {
                frames.push(c, key, i, dz, &mut q);
            }
        }
    }

    /// Publication `p` of topic `id` is about to be delivered: joiners it
    /// passes enter. False if it belongs to another stream than the topic's.
    fn enter(&mut self, id: u32, p: &Publication) -> bool {
        let (conns, subs) = (&self.conns, &mut self.subs);
        self.topics.deliver(id, p.seq, p.epoch.0, |key, pos| {
            moved(conns, subs, id, key, pos)
        })
    }

    /// A close frame published on a topic closes its subscribers.
    fn close_subscribers(&mut self, p: &Publication) {
        self.stats.publications_total += 1;
        let Some(id) = self.topics.id(&p.channel) else {
            return;
        };
        let current = self.enter(id, p);
        let Some((code, reason)) = p.frame().as_close().filter(|_| current) else {
            return;
        };
        let skip = p.exclude.and_then(|id| self.lookup(id));
        let keys: Vec<usize> = self
            .topics
            .subscribers(id)
            .iter()
            .map(|&k| k as usize)
            .filter(|&k| skip != Some(k))
            .collect();
        let reason = reason.to_string();
        for key in keys {
            self.close_conn(key, code, &reason, CloseReason::Server(code));
        }
    }
}

/// The live frames of a run back to back, as one shared chunk (a single
/// frame is shared as it is).
fn whole(pubs: &[Arc<Publication>], live: &[(usize, usize)]) -> LocalFrame {
    if let [(j, _)] = live {
        return Rc::new(pubs[*j].frame().clone().into_shared());
    }
    // One exact-size allocation written in place (as `encode::shared`
    // does): a Vec converted to an `Arc` would allocate and copy twice.
    let len = live
        .iter()
        .map(|&(j, _)| pubs[j].frame().bytes().len())
        .sum();
    let mut arc: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
    // Always `Some`: the Arc was just created and has no other owner.
    if let Some(buf) = Arc::get_mut(&mut arc) {
        let mut at = 0;
        for &(j, _) in live {
            let f = pubs[j].frame().bytes();
            buf[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
    }
    Rc::new(arc)
}
