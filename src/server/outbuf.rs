//! A connection's output queue: shared frames (the same bytes for every
//! recipient of a broadcast) and owned buffers (replies to this connection
//! alone), written with one `writev` per loop turn.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;
use std::sync::Arc;

/// A frame shared by the recipients on one worker: one atomic reference per
/// worker, plain reference counts per recipient.
pub(crate) type LocalFrame = Rc<Arc<[u8]>>;

pub(crate) enum Chunk {
    Shared(LocalFrame),
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(f) => f,
            Chunk::Owned(v) => v,
        }
    }
}

/// Reusable buffers of a worker: owned reply buffers and whole output
/// queues, so replies do not allocate per message and an idle connection
/// holds no queue at all.
#[derive(Default)]
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
    // Boxed on purpose: a connection holds its queue as one pointer, and the
    // pool hands the same allocation back and forth.
    #[allow(clippy::vec_box)]
    queues: Vec<Box<Queue>>,
    /// Where runs of small frames are gathered into one contiguous write.
    scratch: Vec<u8>,
    /// Most connections with output in one turn over the last second, and
    /// when that peak was seen (worker milliseconds): the pool keeps that
    /// many queues, so a broadcast to 10,000 connections allocates no queue
    /// turn after turn, and a second after the last one it shrinks again.
    peak: usize,
    peak_at: u32,
}

const POOL_MAX_BUFFERS: usize = 256;
/// A reply buffer is kept for reuse up to a frame of 64 KiB of payload and
/// its header: a 64 KiB echo reuses its buffer instead of allocating one.
const POOL_MAX_CAPACITY: usize = (64 << 10) + crate::protocol::frame::MAX_HEADER_LEN;
/// Queues kept however quiet the worker is; more while recent turns had
/// more connections with output (`BufPool::expect_queues`).
const POOL_MIN_QUEUES: usize = 1024;
/// How long a peak of connections with output keeps its queues pooled.
const POOL_PEAK_MS: u32 = 1000;
const QUEUE_MAX_KEPT_CHUNKS: usize = 64;

impl BufPool {
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    pub fn give(&mut self, mut v: Vec<u8>) {
        if v.capacity() <= POOL_MAX_CAPACITY && self.free.len() < POOL_MAX_BUFFERS {
            v.clear();
            self.free.push(v);
        }
    }

    /// Before a turn's flush: `n` connections have output now. Pools as
    /// many queues as the busiest turn of the last second had, and lets go
    /// of the rest.
    pub fn expect_queues(&mut self, n: usize, now_ms: u32) {
        if n >= self.peak || now_ms.wrapping_sub(self.peak_at) > POOL_PEAK_MS {
            self.peak = n;
            self.peak_at = now_ms;
        }
        let keep = self.peak.max(POOL_MIN_QUEUES);
        if self.queues.len() > keep {
            self.queues.truncate(keep);
            self.queues.shrink_to(keep);
        }
    }

    fn take_queue(&mut self) -> Box<Queue> {
        self.queues.pop().unwrap_or_default()
    }

    fn give_queue(&mut self, mut q: Box<Queue>) {
        for c in q.chunks.drain(..) {
            if let Chunk::Owned(v) = c {
                self.give(v);
            }
        }
        q.offset = 0;
        q.bytes = 0;
        if q.chunks.capacity() <= QUEUE_MAX_KEPT_CHUNKS
            && self.queues.len() < self.peak.max(POOL_MIN_QUEUES)
        {
            self.queues.push(q);
        }
    }
}

/// An owned chunk takes appended replies until it holds this much.
pub(crate) const OWNED_CHUNK: usize = 64 << 10;

/// Most chunks gathered into one `writev`.
const MAX_IOV: usize = 64;

/// The chunks of a connection that has output.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Unsent bytes in all chunks.
    bytes: usize,
}

/// Unsent output of one connection: nothing at all (one pointer) while the
/// connection has none, a pooled queue while it has.
#[derive(Default)]
pub(crate) struct OutQueue {
    q: Option<Box<Queue>>,
}

/// Result of a flush.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything was written.
    All,
    /// The socket is full; wait for WRITABLE.
    Blocked,
}

impl OutQueue {
    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.bytes)
    }

    /// Unsent bytes behind the chunk currently being written: what counts
    /// against `max_buffered` (a single large message may always drain).
    pub fn backlog(&self) -> usize {
        let Some(q) = &self.q else { return 0 };
        match q.chunks.front() {
            Some(c) => q.bytes - (c.bytes().len() - q.offset),
            None => 0,
        }
    }

    fn queue(&mut self, pool: &mut BufPool) -> &mut Queue {
        self.q.get_or_insert_with(|| pool.take_queue())
    }

    pub fn push_shared(&mut self, f: &LocalFrame, pool: &mut BufPool) {
        let q = self.queue(pool);
        q.bytes += f.len();
        q.chunks.push_back(Chunk::Shared(f.clone()));
    }

    /// Append bytes produced by `fill` to the owned buffer at the tail
    /// (starting one from the pool if the tail is shared or absent).
    pub fn push_owned(&mut self, pool: &mut BufPool, fill: impl FnOnce(&mut Vec<u8>)) {
        let q = self.q.get_or_insert_with(|| pool.take_queue());
        // A new owned chunk once the tail one holds 64 KiB: only the front
        // chunk escapes the backlog limit, so it must not grow without end.
        if !matches!(q.chunks.back(), Some(Chunk::Owned(v)) if v.len() < OWNED_CHUNK) {
            q.chunks.push_back(Chunk::Owned(pool.take()));
        }
        if let Some(Chunk::Owned(v)) = q.chunks.back_mut() {
            let before = v.len();
            fill(v);
            q.bytes += v.len() - before;
        }
    }

    /// Drop everything not yet started, keeping the partly written front
    /// chunk so the stream stays frame-aligned.
    pub fn discard_unstarted(&mut self, pool: &mut BufPool) {
        let Some(q) = self.q.as_mut() else { return };
        let keep = if q.offset > 0 { 1 } else { 0 };
        while q.chunks.len() > keep {
            if let Some(Chunk::Owned(v)) = q.chunks.pop_back() {
                pool.give(v);
            }
        }
        q.bytes = q
            .chunks
            .front()
            .map(|c| c.bytes().len() - q.offset)
            .unwrap_or(0);
        if q.chunks.is_empty() {
            self.clear(pool);
        }
    }

    /// Write as much as the socket takes, `MAX_IOV` chunks per `writev`.
    /// Returns bytes written and whether everything went; a drained queue
    /// goes back to the pool.
    pub fn write_to<W: Write>(
        &mut self,
        w: &mut W,
        pool: &mut BufPool,
    ) -> io::Result<(usize, Flushed)> {
        let mut written = 0;
        let Some(q) = self.q.as_mut() else {
            return Ok((0, Flushed::All));
        };
        while !q.chunks.is_empty() {
            let mut scratch = std::mem::take(&mut pool.scratch);
            let result = if q.chunks.len() == 1 {
                // The usual case (a reply, a 101, one push): a plain write,
                // without filling a 64-entry iovec array first.
                w.write(&q.chunks[0].bytes()[q.offset..])
            } else if q.gather(&mut scratch) {
                // A run of small frames (a chat room, a burst of pushes): one
                // contiguous buffer costs the kernel far less than an iovec
                // per 30-byte frame.
                w.write(&scratch)
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (i, c) in q.chunks.iter().take(MAX_IOV).enumerate() {
                    let b = c.bytes();
                    iov[i] = IoSlice::new(if i == 0 { &b[q.offset..] } else { b });
                    n = i + 1;
                }
                w.write_vectored(&iov[..n])
            };
            scratch.clear();
            pool.scratch = scratch;
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    q.consume(k, pool);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((written, Flushed::Blocked))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.clear(pool);
        Ok((written, Flushed::All))
    }

    /// Release everything (drained, or connection gone).
    pub fn clear(&mut self, pool: &mut BufPool) {
        if let Some(q) = self.q.take() {
            pool.give_queue(q);
        }
    }
}

/// Frames up to this size are gathered rather than given an iovec each.
const SMALL_CHUNK: usize = 2048;
/// Most bytes gathered into one write.
const GATHER_MAX: usize = 64 << 10;

impl Queue {
    /// Copy the leading run of small chunks (at least two) into `out`;
    /// false if the queue does not start with such a run.
    fn gather(&self, out: &mut Vec<u8>) -> bool {
        let mut it = self.chunks.iter();
        let (Some(a), Some(b)) = (it.next(), it.next()) else {
            return false;
        };
        if a.bytes().len() - self.offset > SMALL_CHUNK || b.bytes().len() > SMALL_CHUNK {
            return false;
        }
        out.clear();
        for (i, c) in self.chunks.iter().enumerate() {
            let bytes = if i == 0 {
                &c.bytes()[self.offset..]
            } else {
                c.bytes()
            };
            if i > 0 && (bytes.len() > SMALL_CHUNK || out.len() + bytes.len() > GATHER_MAX) {
                break;
            }
            out.extend_from_slice(bytes);
        }
        true
    }

    fn consume(&mut self, mut k: usize, pool: &mut BufPool) {
        self.bytes -= k;
        while k > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.offset;
            if k < left {
                self.offset += k;
                return;
            }
            k -= left;
            self.offset = 0;
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                pool.give(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls: usize,
        block_after: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == self.block_after {
                self.calls = 0;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = (self.cap - n).min(b.len());
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_64_kib_reply_buffer_is_reused() {
        let mut pool = BufPool::default();
        let mut v = pool.take();
        crate::protocol::encode::frame_into(&mut v, crate::protocol::OpCode::Binary, &[7; 65536]);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        assert!(cap >= 65536 + 10, "one allocation holds header and payload");
        pool.give(v);
        let again = pool.take();
        assert_eq!(
            (again.as_ptr(), again.capacity()),
            (ptr, cap),
            "kept, not freed"
        );
        assert!(again.is_empty());
    }

    #[test]
    fn the_queue_pool_follows_the_busiest_turn_of_the_last_second() {
        let mut pool = BufPool::default();
        let f: LocalFrame = Rc::new(Arc::from(&b"x"[..]));
        let turn = |pool: &mut BufPool, n: usize, ms: u32| {
            pool.expect_queues(n, ms);
            let mut qs: Vec<OutQueue> = (0..n).map(|_| OutQueue::default()).collect();
            for q in &mut qs {
                q.push_shared(&f, pool);
            }
            for q in &mut qs {
                q.clear(pool);
            }
        };
        turn(&mut pool, 5000, 0);
        assert_eq!(
            pool.queues.len(),
            5000,
            "every queue of a 5,000-wide turn kept"
        );
        turn(&mut pool, 10, 500);
        assert_eq!(pool.queues.len(), 5000, "within the second");
        turn(&mut pool, 10, 1600);
        assert_eq!(pool.queues.len(), POOL_MIN_QUEUES, "a quiet second later");
    }

    #[test]
    fn partial_writes_keep_order_and_counts() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let shared: LocalFrame = Rc::new(Arc::from(&b"SHARED"[..]));
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"ab"));
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"cd"));
        q.push_shared(&shared, &mut pool);
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"ef"));
        assert_eq!(q.len(), 12);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 3,
            calls: 0,
            block_after: 2,
        };
        let (n, f) = q.write_to(&mut w, &mut pool).unwrap();
        assert_eq!((n, f), (6, Flushed::Blocked));
        assert_eq!(q.len(), 6);
        // Appending while the tail is partly written must not corrupt order.
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"gh"));
        loop {
            if q.write_to(&mut w, &mut pool).unwrap().1 == Flushed::All {
                break;
            }
        }
        assert_eq!(w.out, b"abcdSHAREDefgh");
        assert!(q.is_empty());
    }

    #[test]
    fn discard_keeps_partly_written_front() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let f: LocalFrame = Rc::new(Arc::from(&b"0123456789"[..]));
        q.push_shared(&f, &mut pool);
        q.push_shared(&f, &mut pool);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 4,
            calls: 0,
            block_after: 1,
        };
        let _ = q.write_to(&mut w, &mut pool).unwrap();
        assert_eq!(q.backlog(), 10);
        q.discard_unstarted(&mut pool);
        assert_eq!(q.len(), 6);
        assert_eq!(q.backlog(), 0);
    }
}
