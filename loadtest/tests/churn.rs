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
    for k in [
        "missing",
        "duplicated",
        "out_of_order",
        "unexpected",
        "epoch_mismatch",
        "no_position",
        "not_caught_up",
        "http_errors",
        "errors",
    ] {
        assert_eq!(u(v, k), 0, "{k}: {v:#}");
    }
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
    // 4 rounds of 40 drops, both kinds; every one came back.
    let drops = u(&v, "drops_close") + u(&v, "drops_reset");
    assert_eq!(drops, 160, "{v:#}");
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
    assert_eq!(drops, 20, "{v:#}");
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
