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

/// Reusable owned buffers of a worker, so replies do not allocate per message.
#[derive(Default)]
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
}

const POOL_MAX_BUFFERS: usize = 256;
const POOL_MAX_CAPACITY: usize = 64 << 10;

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
}

/// Most chunks gathered into one `writev`.
const MAX_IOV: usize = 64;

/// Unsent output of one connection.
#[derive(Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Unsent bytes in all chunks.
    bytes: usize,
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
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Unsent bytes behind the chunk currently being written: what counts
    /// against `max_buffered` (a single large message may always drain).
    pub fn backlog(&self) -> usize {
        match self.chunks.front() {
            Some(c) => self.bytes - (c.bytes().len() - self.offset),
            None => 0,
        }
    }

    pub fn push_shared(&mut self, f: &LocalFrame) {
        self.bytes += f.len();
        self.chunks.push_back(Chunk::Shared(f.clone()));
    }

    /// Append bytes produced by `fill` to the owned buffer at the tail
    /// (starting one from the pool if the tail is shared or absent).
    pub fn push_owned(&mut self, pool: &mut BufPool, fill: impl FnOnce(&mut Vec<u8>)) {
        if !matches!(self.chunks.back(), Some(Chunk::Owned(_))) {
            self.chunks.push_back(Chunk::Owned(pool.take()));
        }
        if let Some(Chunk::Owned(v)) = self.chunks.back_mut() {
            let before = v.len();
            fill(v);
            self.bytes += v.len() - before;
        }
    }

    /// Drop everything not yet started, keeping the partly written front
    /// chunk so the stream stays frame-aligned.
    pub fn discard_unstarted(&mut self, pool: &mut BufPool) {
        let keep = if self.offset > 0 { 1 } else { 0 };
        while self.chunks.len() > keep {
            if let Some(c) = self.chunks.pop_back() {
                if let Chunk::Owned(v) = c {
                    pool.give(v);
                }
            }
        }
        self.bytes = self
            .chunks
            .front()
            .map(|c| c.bytes().len() - self.offset)
            .unwrap_or(0);
        if self.chunks.is_empty() {
            self.offset = 0;
        }
    }

    /// Write as much as the socket takes, `MAX_IOV` chunks per `writev`.
    /// Returns bytes written and whether everything went.
    pub fn write_to<W: Write>(
        &mut self,
        w: &mut W,
        pool: &mut BufPool,
    ) -> io::Result<(usize, Flushed)> {
        let mut written = 0;
        while !self.chunks.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                n = i + 1;
            }
            match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    self.consume(k, pool);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((written, Flushed::Blocked))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Give the deque's memory back: an idle connection holds no buffer.
        self.chunks = VecDeque::new();
        self.offset = 0;
        Ok((written, Flushed::All))
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

    /// Release everything (connection gone).
    pub fn clear(&mut self, pool: &mut BufPool) {
        for c in self.chunks.drain(..) {
            if let Chunk::Owned(v) = c {
                pool.give(v);
            }
        }
        self.chunks = VecDeque::new();
        self.offset = 0;
        self.bytes = 0;
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
    fn partial_writes_keep_order_and_counts() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let shared: LocalFrame = Rc::new(Arc::from(&b"SHARED"[..]));
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"ab"));
        q.push_owned(&mut pool, |v| v.extend_from_slice(b"cd"));
        q.push_shared(&shared);
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
        q.push_shared(&f);
        q.push_shared(&f);
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
