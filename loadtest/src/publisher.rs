//! The HTTP publisher's connection, shared by `wsload push` and `wsload
//! churn`: one keep-alive HTTP/1.1 connection to the API on which
//! `POST /publish/CHANNEL` requests are pipelined (the server answers them in
//! order). What a request carries and what an answer means is the mode's.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};

use crate::wire::{self, HttpReply};

/// Token of the publisher's connection in its worker's poll.
pub const TOKEN: Token = Token(usize::MAX - 1);

/// `POST /publish/{channel}` with `body` (and `Authorization: Bearer` when
/// there is an API key); returns the request and where its body starts.
pub fn request(
    host: &str,
    api_key: Option<&str>,
    channel: &str,
    content_type: &str,
    body: &[u8],
) -> (Vec<u8>, usize) {
    let mut r = Vec::new();
    r.extend_from_slice(b"POST /publish/");
    r.extend_from_slice(channel.as_bytes());
    r.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    r.extend_from_slice(host.as_bytes());
    if let Some(k) = api_key {
        r.extend_from_slice(b"\r\nAuthorization: Bearer ");
        r.extend_from_slice(k.as_bytes());
    }
    r.extend_from_slice(b"\r\nContent-Type: ");
    r.extend_from_slice(content_type.as_bytes());
    r.extend_from_slice(b"\r\nContent-Length: ");
    r.extend_from_slice(body.len().to_string().as_bytes());
    r.extend_from_slice(b"\r\n\r\n");
    let body_at = r.len();
    r.extend_from_slice(body);
    (r, body_at)
}

/// A signed Pusher `POST /apps/ID/events` with `data` (ASCII without
/// quotes or backslashes) on `channel`, as the server SDKs make it.
pub fn pusher_request(
    host: &str,
    app: &crate::engine::PusherApp,
    channel: &str,
    data: &[u8],
) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    use md5::{Digest, Md5};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut body = Vec::with_capacity(data.len() + 64);
    body.extend_from_slice(b"{\"name\":\"bench\",\"channel\":\"");
    body.extend_from_slice(channel.as_bytes());
    body.extend_from_slice(b"\",\"data\":\"");
    body.extend_from_slice(data);
    body.extend_from_slice(b"\"}");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = format!("/apps/{}/events", app.id);
    let q = format!(
        "auth_key={}&auth_timestamp={ts}&auth_version=1.0&body_md5={}",
        app.key,
        hex(&Md5::digest(&body))
    );
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(app.secret.as_bytes()).expect("any key length");
    mac.update(format!("POST\n{path}\n{q}").as_bytes());
    let sig = hex(&mac.finalize().into_bytes());
    let mut r = format!(
        "POST {path}?{q}&auth_signature={sig} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

/// One answer, in the order of the requests.
pub struct Answer {
    pub status: u16,
    pub seq: Option<u64>,
    pub recipients: Option<u64>,
}

/// Why the connection can no longer be used.
pub enum Failure {
    Write(io::Error),
    Read(io::Error),
    /// The server closed the connection.
    Closed,
    /// An answer that does not parse, or that the mode refused.
    Bad(&'static str),
}

/// The connection, with what is queued to send and what is read and not
/// parsed yet.
pub struct Connection {
    sock: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
}

impl Connection {
    /// Connect (blocking, up to `timeout_ns`), then register with `poll`
    /// under [`TOKEN`] for both directions.
    pub fn open(addr: SocketAddr, timeout_ns: u64, poll: &Poll) -> io::Result<Connection> {
        let std =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_nanos(timeout_ns.max(1)))?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut sock = TcpStream::from_std(std);
        poll.registry()
            .register(&mut sock, TOKEN, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Connection {
            sock,
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Queue a request; [`Connection::flush`] sends it.
    pub fn send(&mut self, req: &[u8]) {
        self.wbuf.extend_from_slice(req);
    }

    /// Write what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), Failure> {
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Write(e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// Readable or writable: send what is queued, read until the socket is
    /// empty and hand every complete answer to `on_answer`, which may refuse
    /// it (the connection is then unusable).
    pub fn service(
        &mut self,
        scratch: &mut [u8],
        mut on_answer: impl FnMut(Answer) -> Result<(), &'static str>,
    ) -> Result<(), Failure> {
        self.flush()?;
        loop {
            match self.sock.read(scratch) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    self.parse(&mut on_answer)?;
                    if n < scratch.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Read(e)),
            }
        }
    }

    fn parse(
        &mut self,
        on_answer: &mut impl FnMut(Answer) -> Result<(), &'static str>,
    ) -> Result<(), Failure> {
        let mut off = 0;
        loop {
            match wire::parse_http_reply(&self.rbuf[off..]) {
                HttpReply::Partial => break,
                HttpReply::Bad(why) => return Err(Failure::Bad(why)),
                HttpReply::Done {
                    status,
                    seq,
                    recipients,
                    consumed,
                } => {
                    off += consumed;
                    on_answer(Answer {
                        status,
                        seq,
                        recipients,
                    })
                    .map_err(Failure::Bad)?;
                }
            }
        }
        self.rbuf.drain(..off);
        Ok(())
    }

    /// Stop the poll's events for this connection (the socket stays open
    /// until the connection is dropped).
    pub fn deregister(&mut self, poll: &Poll) {
        let _ = poll.registry().deregister(&mut self.sock);
    }
}

#[cfg(test)]
mod tests {
    use super::request;

    #[test]
    fn requests_with_and_without_an_api_key() {
        let (r, at) = request("h:1", None, "news", "text/plain", b"xy");
        let want = "POST /publish/news HTTP/1.1\r\nHost: h:1\r\n\
                    Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nxy";
        assert_eq!(String::from_utf8(r).unwrap(), want);
        assert_eq!(at, want.len() - 2);
        let (r, _) = request("h:1", Some("k"), "c", "application/json", b"{}");
        let want = "POST /publish/c HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer k\r\n\
                    Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(String::from_utf8(r).unwrap(), want);
    }
}
