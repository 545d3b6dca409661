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

/// Bind listeners for all workers. The first socket fixes the port (so port
/// 0 works); the others join it with SO_REUSEPORT. If that is refused, only
/// worker 0 listens and hands connections to the others.
pub(crate) fn bind_all(cfg: &Config) -> io::Result<Listeners> {
    let n = cfg.workers.max(1);
    if cfg.reuse_port && n > 1 {
        match socket(cfg.listen, true, cfg.backlog) {
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
            Err(e) => {
                log::warn!("SO_REUSEPORT unavailable ({e}); one acceptor will serve all workers")
            }
        }
    }
    let first = socket(cfg.listen, false, cfg.backlog)?;
    let local_addr = first.local_addr()?;
    let mut sockets = vec![Some(first)];
    sockets.resize_with(n, || None);
    Ok(Listeners {
        sockets,
        local_addr,
    })
}
