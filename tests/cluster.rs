//! Several real `wspush` processes joined through a real `redis-server`:
//! one order per channel across nodes, pushes to users and connections
//! on other nodes, resume on another node, Redis outages.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::push::{connect, connect_raw, get_json, http, json, next_json, publish, Ws};
use common::redis::{self, Redis, RedisCluster};
use common::{wait_until, Daemon, IO_TIMEOUT};
use serde_json::Value;
use tungstenite::Message as TMsg;
use wspush::push::auth::mint_hs256;
use wspush::push::unix_now;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn node(r: &Redis, extra: &[&str]) -> Daemon {
    let url = r.url();
    let mut args = vec!["--redis", url.as_str(), "--workers", "2"];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

/// `POST /publish/{channel}`; (status, body).
fn try_publish(addr: SocketAddr, channel: &str, data: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        &format!("/publish/{channel}"),
        "Content-Type: application/json\r\n",
        data.as_bytes(),
    )
}

/// Read publications of `channel` until `n` arrived; other messages are
/// returned apart.
fn collect(ws: &mut Ws, n: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut pubs, mut other) = (Vec::new(), Vec::new());
    while pubs.len() < n {
        let m = next_json(ws);
        if m.get("seq").is_some() && m.get("op").is_none() {
            pubs.push(m);
        } else {
            other.push(m);
        }
    }
    (pubs, other)
}

#[test]
fn a_publication_on_any_node_reaches_every_node_once_in_seq_order() {
    if !redis::available() {
        return;
    }
    let r = Redis::start();
    let nodes: Vec<Daemon> = (0..3).map(|_| node(&r, &[])).collect();
    let mut subs = Vec::new();
    for d in &nodes {
        for ch in ["news", "news", "sport"] {
            let (ws, _) = connect(d, &format!("?channel={ch}"));
            subs.push((ch, ws));
        }
    }
    // Three publishers, one per node, each alternating two channels.
    const EACH: usize = 60;
    let answers = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (addr, answers) = (d.addr, answers.clone());
            std::thread::spawn(move || {
                for k in 0..EACH {
                    let ch = if k % 2 == 0 { "news" } else { "sport" };
                    let a = publish(addr, ch, &format!("{{\"p\":{i},\"k\":{k}}}"));
                    answers.lock().unwrap().push(a);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    for ch in ["news", "sport"] {
        let mut seqs: Vec<u64> = answers
            .iter()
            .filter(|a| a["channel"] == ch)
            .map(|a| a["seq"].as_u64().unwrap())
            .collect();
        seqs.sort();
        let want: Vec<u64> = (1..=(3 * EACH / 2) as u64).collect();
        assert_eq!(seqs, want, "{ch}: one order across nodes");
    }
    for (ch, ws) in &mut subs {
        let (pubs, other) = collect(ws, 3 * EACH / 2);
        assert!(other.is_empty(), "{other:?}");
        let seqs: Vec<u64> = pubs.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (1..=(3 * EACH / 2) as u64).collect();
        assert_eq!(seqs, want, "{ch}: every publication once, in order");
        let ids: HashSet<(u64, u64)> = pubs
            .iter()
            .map(|p| {
                assert_eq!(p["channel"], *ch);
                (
                    p["data"]["p"].as_u64().unwrap(),
                    p["data"]["k"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ids.len(), 3 * EACH / 2);
        // Nothing more than that.
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            matches!(ws.read(), Err(_) | Ok(TMsg::Ping(_))),
            "no extra message"
        );
    }
    // Each node knows the others.
    let (st, n) = get_json(nodes[0].addr, "/nodes");
    assert_eq!(st, 200);
    assert_eq!(n["nodes"].as_array().unwrap().len(), 3, "{n}");
}

fn token(sub: &str) -> String {
    mint_hs256(SECRET.as_bytes(), sub, Some(unix_now() + 600), None)
}

#[test]
fn user_and_connection_pushes_reach_other_nodes() {
    if !redis::available() {
        return;
    }
    let r = Redis::start();
    let a = node(&r, &["--jwt-secret", SECRET]);
    let b = node(&r, &["--jwt-secret", SECRET]);
    let (mut on_a, _) = connect(&a, &format!("?token={}", token("alice")));
    let (mut on_b, welcome) = connect(&b, &format!("?token={}", token("alice")));
    let (mut bob, _) = connect(&b, &format!("?token={}", token("bob")));
    let b_id = welcome["connection"].as_str().unwrap().to_string();
    // The user's subscription on each node is answered through Redis:
    // wait until both nodes hear the user topic.
    let sent = wait_until(Duration::from_secs(10), || {
        let (st, body) = http(
            a.addr,
            "POST",
            "/users/alice/send",
            "Content-Type: application/json\r\n",
            b"{\"hi\":1}",
        );
        assert_eq!(st, 200, "{body}");
        json(&body)["nodes"].as_u64() == Some(2)
    });
    assert!(sent, "alice's topic is heard by both nodes");
    let m = next_json(&mut on_a);
    assert_eq!(m["direct"], true, "{m}");
    assert_eq!(m["data"]["hi"], 1);
    let m = next_json(&mut on_b);
    assert_eq!(m["data"]["hi"], 1, "{m}");
    // One connection on node B, pushed and closed through node A.
    let (st, body) = http(
        a.addr,
        "POST",
        &format!("/send/{b_id}"),
        "Content-Type: application/json\r\n",
        b"{\"only\":\"you\"}",
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["relayed"], true);
    // (Earlier retries of the user push may still be queued for on_b.)
    loop {
        let m = next_json(&mut on_b);
        if m["data"]["only"] == "you" {
            break;
        }
        assert_eq!(m["data"]["hi"], 1, "{m}");
    }
    let (st, _) = http(a.addr, "DELETE", &format!("/connections/{b_id}"), "", b"");
    assert_eq!(st, 200);
    let closed = loop {
        match on_b.read() {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(closed, Some(1000));
    // Bob on B saw none of it.
    bob.get_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(matches!(bob.read(), Err(_) | Ok(TMsg::Ping(_))));
    // A connection id of a node that does not exist: 404.
    let ghost = (4000u64 << 44) | 1;
    let (st, body) = http(
        a.addr,
        "POST",
        &format!("/send/{ghost}"),
        "Content-Type: application/json\r\n",
        b"1",
    );
    assert_eq!(st, 404, "{body}");
}

#[test]
fn a_client_resumes_on_another_node_from_the_redis_history() {
    if !redis::available() {
        return;
    }
    let r = Redis::start();
    let a = node(&r, &[]);
    let b = node(&r, &[]);
    let (mut c, _) = connect(&a, "?channel=feed");
    for i in 1..=3 {
        publish(a.addr, "feed", &i.to_string());
    }
    let (pubs, _) = collect(&mut c, 3);
    let epoch = publish(a.addr, "other", "0")["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pubs[2]["seq"], 3);
    drop(c);
    let feed_epoch = get_json(b.addr, "/history/feed").1["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(feed_epoch, epoch, "every channel has its own epoch");
    for i in 4..=7 {
        publish(b.addr, "feed", &i.to_string());
    }
    let (mut c, _) = connect_raw(&b, &format!("?since=feed:3:{feed_epoch}"));
    let s = next_json(&mut c);
    assert_eq!(s["op"], "subscribed", "{s}");
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(s["seq"], 7);
    let (pubs, _) = collect(&mut c, 4);
    let data: Vec<u64> = pubs.iter().map(|p| p["data"].as_u64().unwrap()).collect();
    assert_eq!(data, [4, 5, 6, 7]);
    publish(a.addr, "feed", "8");
    let (pubs, _) = collect(&mut c, 1);
    assert_eq!(pubs[0]["seq"], 8, "live after the replay");
    // The history API of either node reads the same stream.
    let (_, h) = get_json(a.addr, &format!("/history/feed?since=5&epoch={feed_epoch}"));
    assert_eq!(h["complete"], true, "{h}");
    let seqs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8]);
    // A position of another epoch is not recovered.
    let (mut c, _) = connect_raw(&b, "?since=feed:3:00000000000000aa");
    let s = next_json(&mut c);
    assert_eq!(s["recovered"], false, "{s}");
    assert_eq!(s["seq"], 8);
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn redis_killed_mid_stream_loses_nothing_it_stored() {
    if !redis::available() {
        return;
    }
    let mut r = Redis::start_with(true);
    let a = node(&r, &[]);
    let b = node(&r, &[]);
    let mut subs: Vec<Ws> = Vec::new();
    for d in [&a, &b, &a, &b] {
        subs.push(connect(d, "?channel=ticks").0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let (stop, results) = (stop.clone(), results.clone());
        let addrs = [a.addr, b.addr];
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (st, body) = try_publish(addrs[k as usize % 2], "ticks", &k.to_string());
                results.lock().unwrap().push((k, st, body));
                k += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    r.kill();
    // During the outage: refusals with a JSON reason, /healthz degraded,
    // clients connected, no busy loop.
    assert!(wait_until(Duration::from_secs(10), || {
        http(a.addr, "GET", "/healthz", "", b"").0 == 503
    }));
    let mut body = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let (st, b) = http(b.addr, "GET", "/healthz", "", b"");
        body = b;
        st == 503
    }));
    assert!(body.contains("degraded"), "{body}");
    let (st, body) = try_publish(a.addr, "ticks", "\"probe\"");
    assert_eq!(st, 503, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{body}"
    );
    let before = cpu_secs(a.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_secs(a.child.id()) - before;
    assert!(
        used < 0.5,
        "no busy loop while Redis is down ({used} s of CPU in 1 s)"
    );
    r.restart();
    assert!(wait_until(Duration::from_secs(15), || {
        http(a.addr, "GET", "/healthz", "", b"").0 == 200
            && http(b.addr, "GET", "/healthz", "", b"").0 == 200
    }));
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let results = results.lock().unwrap();
    let accepted: Vec<u64> = results
        .iter()
        .filter(|(_, st, _)| *st == 200)
        .map(|(k, _, _)| *k)
        .collect();
    let refused = results.iter().filter(|(_, st, _)| *st == 503).count();
    assert!(refused > 0, "some publications met the outage");
    assert!(accepted.len() > 50, "{} accepted", accepted.len());
    for (_, st, body) in results.iter() {
        assert!(*st == 200 || *st == 503, "{st} {body}");
    }
    let last_seq = results
        .iter()
        .filter(|(_, st, _)| *st == 200)
        .map(|(_, _, b)| json(b)["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let attempted: HashSet<u64> = results.iter().map(|(k, _, _)| *k).collect();
    for ws in &mut subs {
        let mut got = Vec::new();
        let mut last = 0;
        while last < last_seq {
            let m = next_json(ws);
            assert!(
                m.get("op").is_none(),
                "no reset with a persistent Redis: {m}"
            );
            let seq = m["seq"].as_u64().unwrap();
            assert!(seq > last, "seq goes forward: {seq} after {last}");
            last = seq;
            got.push(m["data"].as_u64().unwrap());
        }
        let unique: HashSet<u64> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "nothing twice");
        for k in &accepted {
            assert!(unique.contains(k), "accepted publication {k} delivered");
        }
        for k in &got {
            // A publication stored just as Redis died may be answered 503
            // yet delivered: it must at least be one that was sent.
            assert!(attempted.contains(k), "{k} was published");
        }
    }
    for d in [&a, &b] {
        let lost = d.log_text().matches("writer lost its connection").count();
        assert_eq!(lost, 1, "said once per state change");
        assert!(d.logged("subscriber connected again"));
    }
}

#[test]
fn a_stream_lost_with_redis_is_announced_before_its_new_messages() {
    if !redis::available() {
        return;
    }
    let mut r = Redis::start();
    let a = node(&r, &[]);
    let (mut c, _) = connect(&a, "?channel=x");
    for i in 1..=3 {
        publish(a.addr, "x", &i.to_string());
    }
    let (pubs, _) = collect(&mut c, 3);
    let old_epoch = publish(a.addr, "x", "4")["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pubs[2]["seq"], 3);
    let _ = next_json(&mut c);
    r.restart();
    // The first request after the restart may meet the dead connection
    // (503, nothing stored): a publisher retries, as Retry-After says.
    let mut p = Value::Null;
    assert!(wait_until(Duration::from_secs(15), || {
        let (st, body) = try_publish(a.addr, "x", "5");
        if st == 200 {
            p = json(&body);
        }
        st == 200
    }));
    assert_eq!(p["seq"], 1, "a new stream starts at 1: {p}");
    assert_ne!(p["epoch"].as_str().unwrap(), old_epoch);
    let reset = next_json(&mut c);
    assert_eq!(reset["op"], "subscribed", "{reset}");
    assert_eq!(reset["recovered"], false);
    assert_eq!(reset["epoch"], p["epoch"], "{reset}");
    assert_eq!(reset["seq"], 0);
    let m = next_json(&mut c);
    assert_eq!(m["seq"], 1, "{m}");
    assert_eq!(m["data"], 5);
    let _ = IO_TIMEOUT;
}

#[test]
fn a_redis_cluster_keeps_each_channel_in_order_across_shards_and_a_master_restart() {
    if !redis::available() {
        return;
    }
    let mut rc = RedisCluster::start();
    let url = rc.url();
    let a = Daemon::start(&["--redis", &url, "--workers", "2"]);
    let b = Daemon::start(&["--redis", &url, "--workers", "2"]);
    const CHANNELS: usize = 24;
    let query: Vec<String> = (0..CHANNELS).map(|c| format!("channel=c{c}")).collect();
    let query = format!("?{}", query.join("&"));
    let mut subs: Vec<Ws> = [&a, &b, &a, &b]
        .iter()
        .map(|d| connect(d, &query).0)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let publishers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(p, addr)| {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = k * 2 + p as u64;
                    let ch = format!("c{}", k as usize % CHANNELS);
                    let (st, body) = try_publish(addr, &ch, &id.to_string());
                    results.lock().unwrap().push((id, ch, st, body));
                    k += 1;
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    rc.masters[1].kill();
    std::thread::sleep(Duration::from_millis(1500));
    rc.masters[1].restart();
    assert!(rc.wait_ok(), "the cluster is whole again");
    assert!(wait_until(Duration::from_secs(15), || {
        http(a.addr, "GET", "/healthz", "", b"").0 == 200
            && http(b.addr, "GET", "/healthz", "", b"").0 == 200
    }));
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let results = results.lock().unwrap();
    let refused = results.iter().filter(|r| r.2 == 503).count();
    assert!(
        refused > 0,
        "the restarted master's channels met the outage"
    );
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut accepted = HashSet::new();
    let mut shards_seen = HashSet::new();
    for (id, ch, st, body) in results.iter() {
        assert!(*st == 200 || *st == 503, "{st} {body}");
        if *st == 200 {
            let seq = json(body)["seq"].as_u64().unwrap();
            let e = last.entry(ch.clone()).or_default();
            *e = (*e).max(seq);
            accepted.insert(*id);
        }
        shards_seen.insert(ch.clone());
    }
    assert_eq!(last.len(), CHANNELS, "every channel took publications");
    let attempted: HashSet<u64> = results.iter().map(|r| r.0).collect();
    for ws in &mut subs {
        let mut at: std::collections::HashMap<String, u64> = Default::default();
        let mut got = HashSet::new();
        while last
            .iter()
            .any(|(ch, &s)| at.get(ch).copied().unwrap_or(0) < s)
        {
            let m = next_json(ws);
            assert!(
                m.get("op").is_none(),
                "no reset with persistent masters: {m}"
            );
            let ch = m["channel"].as_str().unwrap().to_string();
            let seq = m["seq"].as_u64().unwrap();
            let prev = at.insert(ch.clone(), seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "{ch}: every seq once, in order");
            assert!(got.insert(m["data"].as_u64().unwrap()), "nothing twice");
        }
        for id in &accepted {
            assert!(got.contains(id), "accepted publication {id} delivered");
        }
        for id in &got {
            assert!(attempted.contains(id));
        }
    }
}

#[test]
fn a_publish_flood_while_redis_stalls_is_refused_not_queued_without_limit() {
    if !redis::available() {
        return;
    }
    let r = Redis::start();
    let a = node(&r, &["--client-publish", "flood", "--redis-timeout", "20s"]);
    let mut c = common::RawWs::connect(a.addr, "/ws");
    let welcome = c.next().unwrap();
    assert!(String::from_utf8_lossy(&welcome.1).contains("welcome"));
    // Redis stops answering writes for a while; the node's writer waits on
    // its pipeline and the flood piles up behind it.
    r.cli(&["CLIENT", "PAUSE", "4000", "WRITE"]);
    let n = 80_000;
    let mut out = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut v = Vec::new();
        for i in 0..n {
            let m = format!("{{\"op\":\"publish\",\"channel\":\"flood\",\"data\":{i}}}");
            wspush::protocol::encode::masked_frame_into(
                &mut v,
                true,
                wspush::protocol::OpCode::Text,
                m.as_bytes(),
                [1, 2, 3, 4],
            );
            if v.len() > 64 << 10 {
                out.write_all(&v).unwrap();
                v.clear();
            }
        }
        out.write_all(&v).unwrap();
    });
    let (mut published, mut refused) = (0, 0);
    while published + refused < n {
        let (_, text) = c.next().expect("a reply");
        let m = json(&String::from_utf8_lossy(&text));
        match m["op"].as_str() {
            Some("published") => published += 1,
            Some("error") => {
                assert_eq!(m["code"], "unavailable", "{m}");
                refused += 1;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    writer.join().unwrap();
    assert!(refused > 0, "some of the flood was refused");
    assert!(
        published >= 60_000,
        "what was queued was published ({published})"
    );
    assert!(a.logged("requests wait for Redis"), "said so");
    // Redis and the node carry on.
    publish(a.addr, "after", "1");
}

#[test]
fn signals_reach_a_node_with_redis_threads_running() {
    if !redis::available() {
        return;
    }
    let r = Redis::start();
    let mut a = node(&r, &[]);
    // The Redis broker's threads start before the signal thread: a SIGHUP
    // must still reload (not kill), a SIGTERM drain and exit 0.
    a.signal(libc::SIGHUP);
    assert!(a.wait_logged("SIGHUP"), "{}", a.log_text());
    assert_eq!(http(a.addr, "GET", "/healthz", "", b"").0, 200, "still up");
    a.signal(libc::SIGTERM);
    let st = a.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(st.success(), "{st:?}");
}
