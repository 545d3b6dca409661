//! `wsload churn` against the real wspush server: subscribers are dropped
//! (close handshakes and TCP resets) and resume with `since` while the API
//! publishes; every seq must arrive once, in order, with no gap — or the gap
//! must have been announced by `recovered:false`.
//!
//! Needs the server side of issue 9 (history, `since`, `seq`/`epoch` in
//! every `subscribed` reply). Nothing here asserts a timing figure.

use serde_json::Value;

mod common;
use common::*;

fn churn(s: &Server, extra: &[&str]) -> (i32, Value) {
    let url = s.url("/ws");
    let mut args = vec!["churn", "--url", &url];
    args.extend_from_slice(extra);
    wsload(&args)
}

/// Nothing lost, repeated or reordered; every subscriber caught up.
fn assert_exact(v: &Value) {
    assert!(u(v, "expected") > 0, "{v:#}");
    assert_eq!(u(v, "delivered"), u(v, "expected"), "{v:#}");
    assert_zero(
        v,
        &[
            "missing",
            "duplicated",
            "out_of_order",
            "unexpected",
            "epoch_mismatch",
            "no_position",
            "not_caught_up",
            "http_errors",
            "errors",
        ],
    );
}

#[test]
fn churn_resumes_every_dropped_subscriber_without_loss() {
    let s = Server::start(2, &[]);
    // 200 subscribers of 2 channels each among 4, 200 publications/s for
    // 5 s (50/s per channel: the default 100-entry history covers a
    // reconnection of up to 2 s), 20 % dropped every second.
    let (code, v) = churn(
        &s,
        &[
            "--subscribers",
            "200",
            "--channels",
            "4",
            "--channels-per-sub",
            "2",
            "--rate",
            "200",
            "-d",
            "5",
            "--drop",
            "0.2",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_exact(&v);
    assert_eq!(u(&v, "live_at_start"), 200, "{v:#}");
    assert_eq!(u(&v, "published"), 1000, "{v:#}");
    assert_eq!(u(&v, "publish_ok"), 1000, "{v:#}");
    // 4 rounds of (up to, if a round finds some still resuming) 40
    // drops, both kinds; every one came back.
    let drops = u(&v, "drops_close") + u(&v, "drops_reset");
    assert!((80..=160).contains(&drops), "{v:#}");
    assert!(
        u(&v, "drops_close") > 0 && u(&v, "drops_reset") > 0,
        "{v:#}"
    );
    assert_eq!(u(&v, "reconnects"), drops, "{v:#}");
    assert_eq!(u(&v, "recovered_true"), 2 * drops, "{v:#}");
    assert_eq!(u(&v, "recovered_false"), 0, "{v:#}");
    // Every channel's last seq is its share of the publications.
    assert_eq!(v["last_seqs"], serde_json::json!([250, 250, 250, 250]));
}

#[test]
fn churn_without_history_counts_announced_gaps_only() {
    // No history: every resume is answered recovered:false; the gaps it
    // announces are excused, and the run still passes.
    let s = Server::start(1, &["--history-size", "0"]);
    let (code, v) = churn(
        &s,
        &[
            "--subscribers",
            "50",
            "--channels",
            "2",
            "--rate",
            "200",
            "-d",
            "3",
            "--drop",
            "0.2",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_exact(&v);
    let drops = u(&v, "drops_close") + u(&v, "drops_reset");
    assert!((10..=20).contains(&drops), "{v:#}");
    // A resume with nothing published since is complete even without
    // history, so the server may say recovered:true to some.
    assert!(u(&v, "recovered_false") > 0, "{v:#}");
    assert_eq!(
        u(&v, "recovered_false") + u(&v, "recovered_true"),
        drops,
        "{v:#}"
    );
    assert!(u(&v, "excused") > 0, "{v:#}");
}

#[test]
fn churn_counts_refused_publishes() {
    let s = Server::start(1, &["--api-key", "sekrit"]);
    let (code, v) = churn(
        &s,
        &[
            "--subscribers",
            "10",
            "--rate",
            "100",
            "-d",
            "0.5",
            "--drop",
            "0",
            "--api-key",
            "wrong",
            "--drain",
            "1",
        ],
    );
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(u(&v, "published"), 50, "{v:#}");
    assert_eq!(v["http_failures"]["http 401"].as_u64(), Some(50), "{v:#}");
    assert_eq!(u(&v, "delivered"), 0, "{v:#}");
    assert_eq!(u(&v, "missing"), 0, "{v:#}");
}

// ---------------------------------------------------------------------------
// A fake push server written here, with history and resume, that can be
// told to get resume wrong: the counters must count exactly what it did.
// ---------------------------------------------------------------------------

mod fake {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use crate::common::switch_protocols;
    use wspush::protocol::encode::frame_into;
    use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode, Role};

    /// What the fake does when a subscriber resumes from seq N.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Resume {
        /// recovered:true, then N+1 … current: right.
        Exact,
        /// recovered:true, then N+2 … current: one push lost when N+1 exists.
        SkipOne,
        /// recovered:true, then N … current: N delivered twice.
        RepeatOne,
        /// recovered:false with the current seq, nothing old.
        Refuse,
    }

    pub const EPOCH: &str = "00000000000000ab";

    #[derive(Default)]
    struct State {
        /// Per channel: every publication's frame, seq i at index i-1.
        history: HashMap<String, Vec<Vec<u8>>>,
        /// Subscribers: (connection id, channel, writer).
        subs: Vec<(u64, String, TcpStream)>,
        next_id: u64,
    }

    pub struct Fake {
        pub port: u16,
    }

    impl Fake {
        pub fn start(mode: Resume) -> Fake {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let st = Arc::new(Mutex::new(State::default()));
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(s) = s else { continue };
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let _ = serve(s, st, mode);
                    });
                }
            });
            Fake { port }
        }
    }

    fn text(out: &mut TcpStream, t: &str) -> std::io::Result<()> {
        let mut f = Vec::new();
        frame_into(&mut f, OpCode::Text, t.as_bytes());
        out.write_all(&f)
    }

    fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
        let mut tmp = [0u8; 16384];
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some((String::from_utf8_lossy(&buf[..p]).to_string(), p + 4));
            }
            let n = s.read(&mut tmp).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn serve(mut s: TcpStream, st: Arc<Mutex<State>>, mode: Resume) -> std::io::Result<()> {
        s.set_nodelay(true)?;
        let mut buf = Vec::new();
        let Some((head, end)) = read_head(&mut s, &mut buf) else {
            return Ok(());
        };
        if head.starts_with("POST ") {
            return api(s, st, buf);
        }
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if mode == Resume::SkipOne && path.contains("since=") {
            // Hold the resume back long enough for the publisher (200/s) to
            // publish on every channel meanwhile: each resume then has
            // something to replay, and so something to skip, however fast
            // the reconnect was.
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
        switch_protocols(&mut s, &head)?;
        let mut g = st.lock().unwrap();
        g.next_id += 1;
        let id = g.next_id;
        text(
            &mut s,
            r#"{"op":"welcome","connection":"1","user":null,"channels":[]}"#,
        )?;
        let query = path.split_once('?').map(|x| x.1).unwrap_or("");
        for kv in query.split('&') {
            let Some(v) = kv.strip_prefix("since=") else {
                continue;
            };
            let mut it = v.rsplitn(3, ':');
            let (epoch, n, ch) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            assert_eq!(epoch, EPOCH);
            resume(&mut g, &mut s, id, ch, n.parse().unwrap(), mode)?;
        }
        drop(g);
        let cfg = DecoderConfig::for_role(Role::Server);
        let mut dec = Decoder::new();
        let mut pending = buf[end..].to_vec();
        let mut tmp = vec![0u8; 16384];
        let result = 'outer: loop {
            let mut pos = 0;
            while pos < pending.len() {
                let Ok(d) = dec.decode(&cfg, &mut pending[pos..]) else {
                    break 'outer Ok(());
                };
                pos += d.consumed;
                match d.message {
                    None => break,
                    Some(Message::Text(t)) => {
                        let v: serde_json::Value = serde_json::from_str(t).unwrap();
                        assert_eq!(v["op"], "subscribe");
                        let ch = v["channel"].as_str().unwrap().to_string();
                        let mut g = st.lock().unwrap();
                        if let Some(n) = v["since"]["seq"].as_u64() {
                            assert_eq!(v["since"]["epoch"], EPOCH);
                            resume(&mut g, &mut s, id, &ch, n as usize, mode)?;
                            continue;
                        }
                        let cur = g.history.entry(ch.clone()).or_default().len();
                        text(
                            &mut s,
                            &format!(
                                r#"{{"op":"subscribed","channel":"{ch}","seq":{cur},"epoch":"{EPOCH}"}}"#
                            ),
                        )?;
                        let w = s.try_clone()?;
                        g.subs.push((id, ch, w));
                    }
                    Some(Message::Close(_)) => {
                        st.lock().unwrap().subs.retain(|x| x.0 != id);
                        let _ = s.write_all(&[0x88, 0x02, 0x03, 0xe8]);
                        break 'outer Ok(());
                    }
                    Some(_) => {}
                }
            }
            pending.clear();
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break Ok(()),
                Ok(n) => pending.extend_from_slice(&tmp[..n]),
            }
        };
        st.lock().unwrap().subs.retain(|x| x.0 != id);
        result
    }

    /// Resume `ch` from seq `n` the way `mode` says, then subscribe.
    fn resume(
        g: &mut State,
        s: &mut TcpStream,
        id: u64,
        ch: &str,
        n: usize,
        mode: Resume,
    ) -> std::io::Result<()> {
        let hist = g.history.entry(ch.to_string()).or_default().clone();
        let cur = hist.len();
        let ok = mode != Resume::Refuse;
        text(
            s,
            &format!(
                r#"{{"op":"subscribed","channel":"{ch}","seq":{cur},"epoch":"{EPOCH}","recovered":{ok}}}"#
            ),
        )?;
        if ok {
            let from = match mode {
                Resume::SkipOne => n + 1,
                Resume::RepeatOne => n.saturating_sub(1),
                _ => n,
            };
            for f in hist.iter().skip(from) {
                s.write_all(f)?;
            }
        }
        let w = s.try_clone()?;
        g.subs.push((id, ch.to_string(), w));
        Ok(())
    }

    /// `POST /publish/CH` (keep-alive): a seq, the push to every subscriber.
    fn api(mut s: TcpStream, st: Arc<Mutex<State>>, mut buf: Vec<u8>) -> std::io::Result<()> {
        loop {
            let Some((head, end)) = read_head(&mut s, &mut buf) else {
                return Ok(());
            };
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut tmp = [0u8; 4096];
            while buf.len() < end + len {
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
            buf.drain(..end + len);
            let path = head.split(' ').nth(1).unwrap_or("");
            let ch = path.strip_prefix("/publish/").unwrap().to_string();
            let mut g = st.lock().unwrap();
            let h = g.history.entry(ch.clone()).or_default();
            let seq = h.len() + 1;
            let mut f = Vec::new();
            let push = format!(r#"{{"channel":"{ch}","seq":{seq},"data":{body}}}"#);
            frame_into(&mut f, OpCode::Text, push.as_bytes());
            h.push(f.clone());
            let mut n = 0;
            for (_, c, w) in g.subs.iter_mut() {
                if *c == ch && w.write_all(&f).is_ok() {
                    n += 1;
                }
            }
            drop(g);
            let answer = format!(r#"{{"channel":"{ch}","seq":{seq},"recipients":{n}}}"#);
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )?;
        }
    }
}

fn churn_fake(mode: fake::Resume, extra: &[&str]) -> (i32, Value) {
    let f = fake::Fake::start(mode);
    let url = format!("ws://127.0.0.1:{}/ws", f.port);
    let mut args = vec![
        "churn",
        "--url",
        &url,
        "--subscribers",
        "20",
        "--channels",
        "3",
        "--channels-per-sub",
        "2",
        "--rate",
        "200",
        "-d",
        "2.5",
        "--drop",
        "0.25",
        "--reset-share",
        "0.5",
        "--drain",
        "2",
    ];
    args.extend_from_slice(extra);
    wsload(&args)
}

#[test]
fn churn_against_a_faithful_fake_is_exact() {
    // Resumed in the upgrade request, then by subscribe messages.
    for extra in [&[][..], &["--resume-op"][..]] {
        let (code, v) = churn_fake(fake::Resume::Exact, extra);
        assert_eq!(code, 0, "{v:#}");
        assert_exact(&v);
        // 2 rounds of 5 drops, each resuming 2 channels.
        let drops = u(&v, "drops_close") + u(&v, "drops_reset");
        assert!((5..=10).contains(&drops), "{v:#}");
        assert_eq!(u(&v, "reconnects"), drops, "{v:#}");
        assert_eq!(u(&v, "recovered_true"), 2 * drops, "{v:#}");
        assert_eq!(v["last_seqs"], serde_json::json!([167, 167, 166]));
    }
}

#[test]
fn churn_counts_a_push_skipped_on_resume_as_missing() {
    let (code, v) = churn_fake(fake::Resume::SkipOne, &[]);
    assert_eq!(code, 1, "{v:#}");
    // One push lost per resume that had something to replay.
    let m = u(&v, "missing");
    assert!((1..=20).contains(&m), "{v:#}");
    assert_eq!(u(&v, "delivered") + m, u(&v, "expected"), "{v:#}");
    assert_eq!(u(&v, "duplicated"), 0, "{v:#}");
    assert_eq!(u(&v, "out_of_order"), 0, "{v:#}");
}

#[test]
fn churn_counts_a_push_repeated_on_resume_as_duplicated() {
    let (code, v) = churn_fake(fake::Resume::RepeatOne, &["--resume-op"]);
    assert_eq!(code, 1, "{v:#}");
    // One repeat per resumed channel.
    assert_eq!(u(&v, "duplicated"), 2 * u(&v, "reconnects"), "{v:#}");
    assert!(u(&v, "reconnects") >= 5, "{v:#}");
    assert_eq!(u(&v, "missing"), 0, "{v:#}");
    assert_eq!(u(&v, "delivered"), u(&v, "expected"), "{v:#}");
}

#[test]
fn churn_excuses_gaps_announced_by_recovered_false() {
    let (code, v) = churn_fake(fake::Resume::Refuse, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_exact(&v);
    assert_eq!(u(&v, "recovered_false"), 2 * u(&v, "reconnects"), "{v:#}");
    assert!(u(&v, "reconnects") >= 5, "{v:#}");
    assert_eq!(u(&v, "recovered_true"), 0, "{v:#}");
    // What the subscribers missed while away is excused, not expected:
    // expected + excused = what 20 subscribers present throughout would
    // owe (subscriber i holds channels i and i+1 mod 3, from seq 0).
    let last = [167, 167, 166];
    let owed: u64 = (0..20).map(|i| last[i % 3] + last[(i + 1) % 3]).sum();
    assert_eq!(u(&v, "expected") + u(&v, "excused"), owed, "{v:#}");
}
