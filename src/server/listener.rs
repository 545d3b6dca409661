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
    // Linux hands TCP_NODELAY down to every accepted socket: one
    // `setsockopt` here instead of one per connection.
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Whether accepted sockets inherit TCP_NODELAY from the listener (so the
/// worker need not set it on each).
pub(crate) const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

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
/// Two servers starting in the same microseconds could each probe while the
/// other is between its probe and its bind; on Linux [`joined_by_others`],
/// checked once the group listens, closes that window.
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
    if cfg.share_port {
        return bind_group(cfg, cfg.listen, n).map_err(|e| in_use(cfg.listen, e));
    }
    let addr = probe(cfg.listen).map_err(|e| in_use(cfg.listen, e))?;
    let listeners = bind_group(cfg, addr, n).map_err(|e| in_use(cfg.listen, e))?;
    if joined_by_others(&listeners) {
        // Dropping `listeners` closes ours; the other server (if it saw us
        // too) gives up as well: never two in one group.
        return Err(in_use(
            cfg.listen,
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process joined the SO_REUSEPORT group while it was bound",
            ),
        ));
    }
    Ok(listeners)
}

/// Whether a listening socket that is not ours shares our exact address
/// (which is what joining a SO_REUSEPORT group takes), from the kernel's
/// table (/proc/net/tcp or tcp6) and the inodes of our sockets.
///
/// Checked after our group listens, this closes the probe's window: of two
/// servers that both passed the probe, each binds before it checks, so at
/// least the later one to check sees the other and gives up. If the table
/// cannot be read, the probe alone stands.
#[cfg(target_os = "linux")]
fn joined_by_others(listeners: &Listeners) -> bool {
    let ours: Vec<u64> = listeners
        .sockets
        .iter()
        .flatten()
        .filter_map(inode)
        .collect();
    foreign_listeners(listeners.local_addr, &ours).is_some_and(|n| n > 0)
}

#[cfg(not(target_os = "linux"))]
fn joined_by_others(_: &Listeners) -> bool {
    false
}

/// The inode of a socket, as /proc/net/tcp shows it.
#[cfg(target_os = "linux")]
fn inode(s: &std::net::TcpListener) -> Option<u64> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = s.as_fd().try_clone_to_owned().ok()?;
    std::fs::File::from(fd).metadata().ok().map(|m| m.ino())
}

/// How many sockets listen on exactly `addr` whose inode is not in `ours`;
/// `None` if the kernel's table cannot be read.
#[cfg(target_os = "linux")]
fn foreign_listeners(addr: SocketAddr, ours: &[u64]) -> Option<usize> {
    // The table prints each 32-bit word of the address as the host-order
    // integer of its bytes, and the port in hex: `0100007F:2329`.
    let words = |octets: &[u8]| -> String {
        octets
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    let (table, ip) = match addr {
        SocketAddr::V4(a) => ("/proc/net/tcp", words(&a.ip().octets())),
        SocketAddr::V6(a) => ("/proc/net/tcp6", words(&a.ip().octets())),
    };
    let local = format!("{ip}:{:04X}", addr.port());
    let file = std::fs::File::open(table).ok()?;
    count_listeners(file, &local, ours).ok()
}

/// Bytes of the kernel's table read at a time.
#[cfg(target_os = "linux")]
const TABLE_CHUNK: usize = 16 << 10;

/// The lines of a /proc/net/tcp table that listen on `local` with an inode
/// not in `ours`, read line by line through a small buffer: on a busy host
/// the table holds every socket (megabytes of TIME_WAIT entries), and one
/// allocation that large, once freed, raises glibc's mmap threshold for the
/// rest of the process, so the workers' connection tables would then grow
/// inside the heap and leave every outgrown copy resident.
#[cfg(target_os = "linux")]
fn count_listeners(table: impl io::Read, local: &str, ours: &[u64]) -> io::Result<usize> {
    use std::io::BufRead as _;
    const LISTEN: &str = "0A";
    let mut r = io::BufReader::with_capacity(TABLE_CHUNK, table);
    let mut line = String::with_capacity(256);
    let mut n = 0;
    let mut first = true;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(n);
        }
        if std::mem::take(&mut first) {
            continue; // the header
        }
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        let mut f = line.split_whitespace();
        if f.nth(1) != Some(local) || f.nth(1) != Some(LISTEN) {
            continue;
        }
        if f.nth(5)
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| !ours.contains(&i))
        {
            n += 1;
        }
    }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_table_shows_our_listener_by_inode() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(addr) else {
                continue; // no IPv6 here
            };
            let local = l.local_addr().unwrap();
            let ino = inode(&l).expect("inode of a socket");
            let Some(n) = foreign_listeners(local, &[]) else {
                return; // no /proc/net here: nothing to check
            };
            assert_eq!(n, 1, "{local}: our listener is in the table");
            assert_eq!(foreign_listeners(local, &[ino]), Some(0), "{local}");
        }
    }

    /// A big table (a busy host: 200,000 sockets, about 30 MB) is read
    /// through a small buffer, never whole; the listeners in it are counted.
    #[test]
    fn a_big_table_is_read_in_small_pieces() {
        struct Table {
            line: u64,
            lines: u64,
            pending: Vec<u8>,
            largest_read: usize,
        }
        impl io::Read for Table {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.largest_read = self.largest_read.max(buf.len());
                if self.pending.is_empty() && self.line <= self.lines {
                    let l = self.line;
                    self.pending = if l == 0 {
                        b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_vec()
                    } else {
                        // Every 50,000th line listens on our address; one of
                        // those is our own socket (inode 7).
                        let (local, st, inode) = match l % 50_000 {
                            0 => ("0100007F:2329", "0A", if l == 100_000 { 7 } else { l }),
                            _ => ("0100007F:D431", "06", l),
                        };
                        format!("{l:>6}: {local} 0100007F:2329 {st} 00000000:00000000 03:00000A2B 00000000     0        0 {inode} 2 0000000000000000 100 0 0 10 0\n").into_bytes()
                    };
                    self.line += 1;
                }
                let n = self.pending.len().min(buf.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                Ok(n)
            }
        }
        let mut t = Table {
            line: 0,
            lines: 200_000,
            pending: Vec::new(),
            largest_read: 0,
        };
        let n = count_listeners(&mut t, "0100007F:2329", &[7]).unwrap();
        assert_eq!(n, 3, "4 listeners on the address, one of them ours");
        assert!(
            t.largest_read <= TABLE_CHUNK,
            "the table was read {} bytes at a time",
            t.largest_read
        );
        let l = b"   0: 0100007F:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99 1";
        assert_eq!(
            count_listeners(&b"header\n"[..], "0100007F:2329", &[]).unwrap(),
            0
        );
        assert_eq!(
            count_listeners(
                &[&b"header\n"[..], &l[..]].concat()[..],
                "0100007F:2329",
                &[]
            )
            .unwrap(),
            1
        );
        assert_eq!(
            count_listeners(
                &[&b"header\n"[..], &l[..]].concat()[..],
                "0100007F:2329",
                &[99]
            )
            .unwrap(),
            0
        );
        assert_eq!(
            count_listeners(
                &[&b"header\n"[..], &l[..]].concat()[..],
                "0100007F:232A",
                &[]
            )
            .unwrap(),
            0
        );
    }

    /// Accepted sockets have TCP_NODELAY without a `setsockopt` of their
    /// own: the listener's is inherited.
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        const { assert!(NODELAY_INHERITED) };
        let l = socket("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(
            a.nodelay().unwrap(),
            "TCP_NODELAY inherited from the listener"
        );
    }

    /// The probe's window, made to happen: another SO_REUSEPORT listener
    /// (not ours) is already on the address when our group binds, as if a
    /// second server had passed its probe at the same instant. The group
    /// binds (the kernel lets it join), and the check after it sees the
    /// stranger.
    #[test]
    fn a_stranger_in_our_reuseport_group_is_seen() {
        let cfg = Config {
            workers: 2,
            ..Config::default()
        };
        let stranger = socket("127.0.0.1:0".parse().unwrap(), true, 16).unwrap();
        let addr = stranger.local_addr().unwrap();
        if foreign_listeners(addr, &[]).is_none() {
            return; // no /proc/net here
        }
        let ours = bind_group(&cfg, addr, 2).expect("SO_REUSEPORT lets the group join");
        assert_eq!(ours.sockets.iter().flatten().count(), 2);
        assert!(joined_by_others(&ours), "the stranger is seen");
        drop(stranger);
        assert!(!joined_by_others(&ours), "alone again");
        // And the whole bind refuses the address while the group is there.
        let err = bind_all(&Config {
            listen: addr,
            ..cfg
        })
        .err()
        .expect("address in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }
}
