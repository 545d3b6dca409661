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

/// Publications the worker drains in one turn go out as runs (a channel's
/// consecutive frames back to back, one chunk per subscriber). Pipelined
/// bursts that mix two channels reach a subscriber of both in publication
/// order and a subscriber of one with exactly its channel's.
#[test]
fn pipelined_bursts_on_two_channels_arrive_in_publication_order() {
    use common::push::{connect, next_json, publish_pipelined};
    // Per burst: 5 on `a`, 3 on `b`, interleaved.
    const PATTERN: [&str; 8] = ["a", "a", "a", "b", "a", "b", "b", "a"];
    let d = Daemon::start(&["--workers", "1"]);
    let (mut both, _) = connect(&d, "?channel=a&channel=b");
    let (mut only_b, _) = connect(&d, "?channel=b");
    let mut expected = Vec::new();
    let mut seq = std::collections::HashMap::new();
    for round in 0..20 {
        let batch: Vec<(&str, String)> = PATTERN
            .iter()
            .enumerate()
            .map(|(k, ch)| (*ch, format!("\"{round}-{k}\"")))
            .collect();
        let answers = publish_pipelined(d.addr, &batch);
        for ((ch, data), a) in batch.iter().zip(answers) {
            let n = seq.entry(*ch).or_insert(0u64);
            *n += 1;
            assert_eq!(a["seq"], *n, "{a}");
            expected.push((ch.to_string(), *n, data.trim_matches('"').to_string()));
        }
    }
    let read = |ws: &mut common::push::Ws, n: usize| -> Vec<(String, u64, String)> {
        (0..n)
            .map(|_| {
                let m = next_json(ws);
                (
                    m["channel"].as_str().unwrap_or("?").to_string(),
                    m["seq"].as_u64().unwrap_or(0),
                    m["data"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(read(&mut both, expected.len()), expected);
    let only: Vec<_> = expected.iter().filter(|e| e.0 == "b").cloned().collect();
    assert_eq!(read(&mut only_b, only.len()), only);
    // Nothing more for either: the next publication is the next message.
    publish_pipelined(d.addr, &[("b", "\"end\"".to_string())]);
    assert_eq!(
        read(&mut both, 1)[0],
        ("b".to_string(), 61, "end".to_string())
    );
    assert_eq!(
        read(&mut only_b, 1)[0],
        ("b".to_string(), 61, "end".to_string())
    );
}

/// Connections subscribing while two publishers keep pipelined bursts
/// flowing on their channel get exactly the publications after the
/// position of their `subscribed` answer — none twice, none missing —
/// including those whose start falls inside a run being delivered.
#[test]
fn joiners_during_bursts_get_exactly_what_follows_their_position() {
    use common::push::{connect_raw, next_json, publish_pipelined};
    const ROUNDS: usize = 150;
    const BURST: usize = 8;
    let d = Daemon::start(&["--workers", "1"]);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let joiners = thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for round in 0..ROUNDS {
                    let batch: Vec<(&str, String)> = (0..BURST)
                        .map(|k| ("a", format!("\"{round}-{k}\"")))
                        .collect();
                    publish_pipelined(d.addr, &batch);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut joined = Vec::new();
        while done.load(std::sync::atomic::Ordering::SeqCst) < 2 && joined.len() < 400 {
            let (ws, welcome) = connect_raw(&d, "?channel=a");
            assert_eq!(welcome["op"], "welcome");
            joined.push(ws);
        }
        joined
    });
    let total = (2 * ROUNDS * BURST) as u64;
    assert!(
        joiners.len() >= 10,
        "joined while publishing: {}",
        joiners.len()
    );
    let mut inside = 0;
    for (i, mut ws) in joiners.into_iter().enumerate() {
        let r = next_json(&mut ws);
        assert_eq!(r["op"], "subscribed", "{r}");
        let start = r["seq"].as_u64().unwrap();
        if start > 0 && start < total {
            inside += 1;
        }
        for want in start + 1..=total {
            let m = next_json(&mut ws);
            assert_eq!(
                (m["channel"].as_str(), m["seq"].as_u64()),
                (Some("a"), Some(want)),
                "joiner {i} (start {start}): {m}"
            );
        }
    }
    assert!(inside >= 5, "joined between publications: {inside}");
}
