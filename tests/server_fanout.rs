//! Fan-out over real sockets: the `/broadcast` room across 4 workers with
//! 2,000 tungstenite clients, and a slow consumer that must not hurt anyone.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;

use common::*;
use tungstenite::Message as TMsg;

#[test]
fn broadcast_room_2000_clients_4_workers_same_order_exactly_once() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250; // 2,000 clients
    const PER_PUBLISHER: usize = 25; // one publisher per thread: 200 messages
    let total = THREADS * PER_PUBLISHER;
    let d = Daemon::start(&["--workers", "4"]);
    let addr = d.addr;
    let url = d.url("/broadcast");
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            let url = url.clone();
            thread::spawn(move || {
                let mut clients: Vec<_> = (0..PER_THREAD)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        tungstenite::client(url.as_str(), s).expect("handshake").0
                    })
                    .collect();
                barrier.wait(); // everyone is subscribed
                for i in 0..PER_PUBLISHER {
                    clients[0].send(TMsg::Text(format!("p{t}-{i}"))).unwrap();
                }
                let mut seqs = Vec::with_capacity(PER_THREAD);
                for c in clients.iter_mut() {
                    let mut got = Vec::with_capacity(total);
                    while got.len() < total {
                        match c.read().expect("delivery") {
                            TMsg::Text(s) => got.push(s),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    seqs.push(got);
                }
                seqs
            })
        })
        .collect();
    let all: Vec<Vec<String>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    let first = &all[0];
    let distinct: HashSet<&String> = first.iter().collect();
    assert_eq!(distinct.len(), total, "every message exactly once");
    for t in 0..THREADS {
        let mine: Vec<usize> = first
            .iter()
            .filter_map(|m| {
                m.strip_prefix(&format!("p{t}-"))
                    .and_then(|s| s.parse().ok())
            })
            .collect();
        assert_eq!(
            mine,
            (0..PER_PUBLISHER).collect::<Vec<_>>(),
            "publisher {t} order kept"
        );
    }
    for (i, seq) in all.iter().enumerate() {
        assert_eq!(seq, first, "client {i} saw a different order");
    }
}

#[test]
fn slow_consumer_is_cut_off_and_others_get_everything() {
    const MESSAGES: usize = 10_000;
    const BATCH: usize = 100;
    let d = Daemon::start(&["--workers", "2", "--max-buffered", "65536"]);
    let url = d.url("/broadcast");

    // A client with a tiny receive buffer that never reads after the handshake.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&d.addr.into()).unwrap();
    let stalled_stream: TcpStream = sock.into();
    stalled_stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut stalled, _) = tungstenite::client(url.as_str(), stalled_stream).unwrap();

    let payload = "x".repeat(1000);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut c = ws(&d, "/broadcast");
            thread::spawn(move || {
                let mut n = 0usize;
                while n < MESSAGES {
                    match c.read().expect("good client keeps receiving") {
                        TMsg::Text(s) => {
                            let seq: usize = s[..s.find(' ').unwrap()].parse().unwrap();
                            assert_eq!(seq, n, "no gap, no reordering");
                            n += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                n
            })
        })
        .collect();
    let mut publisher = ws(&d, "/broadcast");
    for b in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            publisher
                .send(TMsg::Text(format!("{} {payload}", b * BATCH + i)))
                .unwrap();
        }
        for _ in 0..BATCH {
            assert!(matches!(publisher.read().unwrap(), TMsg::Text(_)));
        }
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), MESSAGES);
    }
    // The stalled client got a prefix, then was cut off.
    let mut got = 0usize;
    let ended = loop {
        match stalled.read() {
            Ok(TMsg::Text(_)) => got += 1,
            Ok(TMsg::Close(f)) => break format!("close {:?}", f.map(|f| u16::from(f.code))),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break format!("error {e}"),
        }
    };
    assert!(
        got < MESSAGES,
        "slow consumer was never cut off ({got} messages, ended by {ended})"
    );
    assert!(d.wait_logged("slow consumer"), "slow consumer is logged");
}
