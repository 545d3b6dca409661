//! Issue 8 regressions through the real binary: secrets and keys checked at
//! start, nonsense flags refused, one daemon per port, HEAD without a body,
//! token claims, IPv4-mapped loopback, signals, and one JSON depth limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// Read one response head (through the blank line) from `s`, byte by byte
/// so that nothing after it is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "EOF in a response head: {head:?}"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
}

// Item 4.
#[test]
fn head_answers_carry_the_get_headers_and_no_body_on_a_keep_alive_connection() {
    let d = Daemon::start(&["--workers", "1"]);
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for path in ["/", "/healthz", "/stats", "/metrics", "/", "/healthz"] {
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 "), "HEAD {path}: {head}");
        let head_len = content_length(&head);
        assert!(head_len > 0, "HEAD {path}: {head}");
        // The next bytes on the connection are the GET's answer, not a body.
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let get = read_head(&mut s);
        assert!(
            get.starts_with("HTTP/1.1 200 "),
            "GET {path} after HEAD: {get}"
        );
        let get_len = content_length(&get);
        let mut body = vec![0u8; get_len];
        s.read_exact(&mut body).unwrap();
        if path == "/" || path == "/healthz" {
            // Fixed bodies: HEAD announced exactly GET's length.
            assert_eq!(head_len, get_len, "{path}");
        }
        let strip = |h: &str| -> String {
            h.lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
                .collect()
        };
        assert_eq!(
            strip(&head),
            strip(&get),
            "{path}: HEAD and GET heads differ"
        );
    }
    // A refused method answered to HEAD has no body either.
    s.write_all(
        b"HEAD /publish/x HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 405 "));
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200 "));
}
