//! One backpressure policy (issue 8, item 3): replies a client causes
//! itself stop the worker from reading that client while they pile up (TCP
//! pushes back on the sender); pushes a subscriber cannot take make it a
//! slow consumer (1008). Through the real binary.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use wspush::protocol::{encode, OpCode};

fn masked(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode::masked_frame_into(&mut v, true, op, payload, [9, 8, 7, 6]);
    v
}

/// Write `bytes` from another thread (the test reads meanwhile).
fn write_in_background(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = stream.try_clone().unwrap();
    w.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    std::thread::spawn(move || w.write_all(&bytes).expect("the server reads on"))
}

#[test]
fn pipelined_control_pings_are_all_answered_under_a_small_buffer_limit() {
    // 20,000 {"op":"ping"} in one write (~600 KB) against --max-buffered 64 KiB:
    // every pong arrives, nothing is closed.
    let d = Daemon::start(&["--workers", "1", "--max-buffered", "65536"]);
    let mut c = RawWs::connect(d.addr, "/ws");
    let (op, welcome) = c.next().expect("welcome");
    assert_eq!(op, OpCode::Text);
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    let mut all = Vec::new();
    for i in 0..20_000 {
        all.extend(masked(
            OpCode::Text,
            format!(r#"{{"op":"ping","id":{i}}}"#).as_bytes(),
        ));
    }
    let writer = write_in_background(&c.stream, all);
    for i in 0..20_000 {
        let (op, p) = c.next().unwrap_or_else(|| panic!("EOF after {i} pongs"));
        assert_eq!(op, OpCode::Text, "pong {i}");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["op"], "pong", "{v}");
        assert_eq!(v["id"], i, "pongs in order");
    }
    writer.join().unwrap();
    c.send(OpCode::Text, br#"{"op":"ping","id":"last"}"#, true);
    let (_, p) = c.next().expect("still open");
    assert!(String::from_utf8_lossy(&p).contains("last"));
}

#[test]
fn large_pipelined_echoes_are_all_delivered() {
    // Four 400 KB echoes in one write with the default 1 MiB limit.
    let d = Daemon::start(&["--workers", "1"]);
    let mut c = RawWs::connect(d.addr, "/echo");
    let mut all = Vec::new();
    for i in 0..4u8 {
        all.extend(masked(OpCode::Binary, &vec![i; 400_000]));
    }
    let writer = write_in_background(&c.stream, all);
    for i in 0..4u8 {
        let (op, p) = c.next().unwrap_or_else(|| panic!("EOF before echo {i}"));
        assert_eq!(op, OpCode::Binary);
        assert_eq!(p.len(), 400_000);
        assert!(p.iter().all(|&b| b == i), "echo {i} intact");
    }
    writer.join().unwrap();
}

/// Large replies go straight to the socket when nothing is queued before
/// them; a client with a small receive window that reads only later makes
/// the socket take part of one: the rest is queued, and every echo still
/// arrives whole, byte for byte, in order.
#[test]
fn large_echoes_to_a_client_reading_late_arrive_whole_and_in_order() {
    let d = Daemon::start(&["--workers", "1"]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&d.addr.into()).unwrap();
    let mut c = RawWs::from_stream(sock.into(), "/echo");
    // Loopback takes ~3 MB before the socket is full: the 1 MB echoes
    // from the fourth on are taken in part.
    let mut sizes = vec![300_000usize, 70_000, 20_000];
    sizes.extend([1_000_000; 8]);
    sizes.push(17_000);
    let body = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (j * 31 + i * 7) as u8).collect() };
    let mut all = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        all.extend(masked(OpCode::Binary, &body(i, n)));
    }
    let writer = write_in_background(&c.stream, all);
    // Let the server fill what the socket takes before anything is read.
    std::thread::sleep(Duration::from_millis(300));
    for (i, &n) in sizes.iter().enumerate() {
        let (op, p) = c.next().unwrap_or_else(|| panic!("EOF before echo {i}"));
        assert_eq!((op, p.len()), (OpCode::Binary, n), "echo {i}");
        assert!(p == body(i, n), "echo {i} intact");
    }
    writer.join().unwrap();
}

#[test]
fn a_sender_that_never_reads_is_stopped_by_tcp_not_by_memory() {
    // The client sends up to 40 MB of echo requests and reads nothing: the
    // server stops reading it once its echoes pass the limit (and the kernel
    // buffers are full), so the client's writes stall long before 40 MB, the
    // server's memory stays bounded, and other clients are served meanwhile.
    let d = Daemon::start(&["--workers", "1", "--max-buffered", "65536"]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_send_buffer_size(65536).unwrap();
    sock.connect(&d.addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    let mut c = RawWs::from_stream(stream, "/echo");
    let frame = masked(OpCode::Binary, &[1u8; 1000]);
    // Non-blocking writes: count what the kernel takes until it takes nothing
    // for a while (the server stopped reading), bounded by 40 MB.
    c.stream.set_nonblocking(true).unwrap();
    let mut all = Vec::with_capacity(frame.len() * 40_000);
    for _ in 0..40_000 {
        all.extend_from_slice(&frame);
    }
    let mut sent = 0;
    let mut idle_rounds = 0;
    while sent < all.len() && idle_rounds < 200 {
        match c.stream.write(&all[sent..]) {
            Ok(n) => {
                sent += n;
                idle_rounds = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle_rounds += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write failed after {sent} bytes: {e}"),
        }
    }
    assert!(
        sent < all.len(),
        "the server kept reading a client that never reads ({sent} bytes taken)"
    );
    // What the server itself read: its echoes went on into the kernel's
    // send buffer (autotuned to a few MB on loopback) until that was full,
    // then it stopped; the rest of `sent` waits in the kernel's receive buffer.
    let (_, stats) = common::push::get_json(d.addr, "/stats");
    let read = stats["bytes"]["in"].as_u64().unwrap();
    assert!(
        read < 12 << 20,
        "the server read {read} bytes from a client that never reads"
    );
    let rss = rss_kib(d.child.id());
    assert!(
        rss < 64 * 1024,
        "server RSS {rss} KiB for one stalled client"
    );
    // Other clients are served meanwhile.
    let mut other = ws(&d, "/echo");
    other
        .send(tungstenite::Message::Text("hello".into()))
        .unwrap();
    assert_eq!(other.read().unwrap().into_text().unwrap(), "hello");
    // The stalled client was not closed: once it reads, everything it sent
    // comes back and the connection goes on.
    c.stream.set_nonblocking(false).unwrap();
    let whole = sent / frame.len();
    let writer = {
        let rest = all[sent..(whole + 1) * frame.len()].to_vec();
        write_in_background(&c.stream, rest)
    };
    for i in 0..=whole {
        let (op, p) = c.next().unwrap_or_else(|| panic!("EOF after {i} echoes"));
        assert_eq!(op, OpCode::Binary);
        assert_eq!(p.len(), 1000);
    }
    writer.join().unwrap();
    assert!(!d.logged("slow consumer"), "not treated as a slow consumer");
}

#[test]
fn a_slow_reader_of_pipelined_answers_is_served_past_the_request_deadline() {
    // 100 pipelined `GET /` (23 KB answers each, 2.3 MB) read at ~600 KB/s
    // take about 4 s, past a 1 s request deadline: a client reading its
    // answers is making progress, and every answer arrives.
    let d = Daemon::start(&[
        "--workers",
        "1",
        "--max-buffered",
        "65536",
        "--handshake-timeout",
        "1s",
    ]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16384).unwrap();
    sock.connect(&d.addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = Vec::new();
    for _ in 0..100 {
        req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let mut answers = 0;
    while answers < 100 {
        std::thread::sleep(Duration::from_millis(25));
        use std::io::Read;
        let n = s.read(&mut buf).expect("the server keeps the connection");
        assert!(n > 0, "closed after {answers} answers");
        got.extend_from_slice(&buf[..n]);
        answers = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    }
    assert_eq!(answers, 100);
}
