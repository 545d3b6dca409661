//! A connection's bytes in and out: straight to the socket, or through TLS
//! when the server has a certificate. The worker reads and writes only
//! through these two functions.

use std::io::{self, IoSlice, Read, Write};

use super::conn::Conn;
use super::outbuf::{BufPool, Flushed};

/// Read plaintext into `buf`. `Ok((0, _))` is the end of the stream;
/// `Err(WouldBlock)`: nothing more now. The flag says more may be ready
/// without a new readiness event (TLS holds decrypted bytes or the socket
/// was not drained), so the caller should read again.
pub(crate) fn read(c: &mut Conn, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    #[cfg(feature = "tls")]
    if let Some(tls) = c.tls.as_deref_mut() {
        return super::tls::read(tls, &mut c.stream, buf).map(|n| (n, n > 0));
    }
    let n = c.stream.read(buf)?;
    Ok((n, n == buf.len()))
}

/// Write what the connection has queued (one `writev` per 64 chunks; under
/// TLS, encrypted and written until the socket is full).
pub(crate) fn write(c: &mut Conn, pool: &mut BufPool) -> io::Result<(usize, Flushed)> {
    #[cfg(feature = "tls")]
    if let Some(tls) = c.tls.as_deref_mut() {
        let mut sink = super::tls::Sink {
            tls,
            sock: &mut c.stream,
        };
        let (n, flushed) = c.out.write_to(&mut sink, pool)?;
        if flushed == Flushed::All {
            return match sink.drain() {
                // Plaintext taken before the handshake ends waits inside
                // rustls: not yet sent (a final answer must not be followed
                // by our FIN before it went out).
                Ok(()) if sink.tls.is_handshaking() => Ok((n, Flushed::Blocked)),
                Ok(()) => Ok((n, Flushed::All)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((n, Flushed::Blocked)),
                Err(e) => Err(e),
            };
        }
        return Ok((n, flushed));
    }
    c.out.write_to(&mut c.stream, pool)
}

/// Write `parts` straight to the socket, ahead of the queue (which must be
/// empty); returns the bytes the socket took. Under TLS nothing is written
/// (0): its records are built in its own buffers anyway, so the message is
/// queued as usual. An error also answers 0, and the next flush meets it.
pub(crate) fn write_through(c: &mut Conn, parts: &[IoSlice<'_>]) -> usize {
    debug_assert!(c.out.is_empty(), "write-through behind queued bytes");
    #[cfg(feature = "tls")]
    if c.tls.is_some() {
        return 0;
    }
    loop {
        match c.stream.write_vectored(parts) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

/// Whether TLS has bytes of its own to send (handshake, alerts).
pub(crate) fn wants_write(c: &Conn) -> bool {
    #[cfg(feature = "tls")]
    if let Some(tls) = c.tls.as_deref() {
        return tls.wants_write();
    }
    let _ = c;
    false
}

/// Before our side of the TCP connection is shut down: say so in TLS.
pub(crate) fn close_notify(c: &mut Conn) {
    #[cfg(feature = "tls")]
    if let Some(tls) = c.tls.as_deref_mut() {
        tls.send_close_notify();
        let _ = (super::tls::Sink {
            tls,
            sock: &mut c.stream,
        })
        .drain();
    }
    let _ = c;
}
