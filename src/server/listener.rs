//! Listening sockets: one SO_REUSEPORT socket per worker, or one shared.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::config::Config;

/// The bound listeners, one slot per worker (`None`: that worker does not accept).
pub(crate) struct Listeners {
    pub sockets: Vec<Option<std::net::TcpListener>>,
    pub local_addr: SocketAddr,
}

fn socket(addr: SocketAddr, reuse_port: bool, backlog: i32) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Make sure no other socket listens on `addr`, and fix its port (port 0
/// becomes the free port the kernel picks).
///
/// Linux lets any socket of the same user join a SO_REUSEPORT group, so a
/// second daemon on the same port would silently take half of the new
/// connections. The probe is a plain socket with SO_REUSEADDR (so that
/// TIME_WAIT leftovers of a previous run do not count) and without
/// SO_REUSEPORT: its `bind` fails with EADDRINUSE if any socket listens on
/// the address, with or without SO_REUSEPORT, whoever owns it. It is closed
/// before the group is bound to the port it found.
///
/// What this does not close: two servers starting in the same microseconds
/// could each probe while the other is between its probe and its bind.
fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("probe socket has no inet address"))
}

/// Bind listeners for all workers. Unless `share_port` is set, the address
/// is first [`probe`]d: a port another process listens on is an error. The
/// first socket fixes the port (so port 0 works); the others join it with
/// SO_REUSEPORT. If that is refused, only worker 0 listens and hands
/// connections to the others.
pub(crate) fn bind_all(cfg: &Config) -> io::Result<Listeners> {
    let n = cfg.workers.max(1);
    let addr = if cfg.share_port {
        cfg.listen
    } else {
        probe(cfg.listen).map_err(|e| in_use(cfg.listen, e))?
    };
    bind_group(cfg, addr, n).map_err(|e| in_use(cfg.listen, e))
}

/// Name the address in an "address in use" error.
fn in_use(addr: SocketAddr, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(
            e.kind(),
            format!("{addr}: address in use (another process listens on it): {e}"),
        )
    } else {
        e
    }
}

fn bind_group(cfg: &Config, addr: SocketAddr, n: usize) -> io::Result<Listeners> {
    // A shared port needs SO_REUSEPORT even with one worker, or no later
    // server could join it.
    if cfg.reuse_port && (n > 1 || cfg.share_port) {
        match socket(addr, true, cfg.backlog) {
            Ok(first) => {
                let local_addr = first.local_addr()?;
                let mut sockets = vec![Some(first)];
                let mut ok = true;
                for _ in 1..n {
                    match socket(local_addr, true, cfg.backlog) {
                        Ok(s) => sockets.push(Some(s)),
                        Err(e) => {
                            log::warn!("SO_REUSEPORT bind failed ({e}); one acceptor will serve all workers");
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    return Ok(Listeners {
                        sockets,
                        local_addr,
                    });
                }
                // Fall back: keep the first socket only.
                let first = sockets.swap_remove(0);
                drop(sockets);
                let mut sockets = vec![first];
                sockets.resize_with(n, || None);
                return Ok(Listeners {
                    sockets,
                    local_addr,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(e) => {
                log::warn!("SO_REUSEPORT unavailable ({e}); one acceptor will serve all workers")
            }
        }
    }
    let first = socket(addr, false, cfg.backlog)?;
    let local_addr = first.local_addr()?;
    let mut sockets = vec![Some(first)];
    sockets.resize_with(n, || None);
    Ok(Listeners {
        sockets,
        local_addr,
    })
}
