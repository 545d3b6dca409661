//! `wsload push` against the real wspush push service at small counts:
//! every subscriber of the channel gets every publication once and in order,
//! every publish answer names all subscribers as recipients, and a refused
//! publish is counted as an error.
//!
//! Nothing here asserts a timing figure; only counts.

use serde_json::Value;

mod common;
use common::*;

/// Zero loss; every subscriber got every seq once, in order, seq rising by
/// one per publication; every answer said recipients = subscribers.
/// With `--procs K`, each process sees its own last subscriber: K fan-out
/// samples per publication.
fn assert_clean(v: &Value, subs: u64, procs: u64) {
    let published = u(v, "published");
    assert_eq!(u(v, "opened"), subs, "{v:#}");
    assert_eq!(u(v, "subscribers"), subs, "{v:#}");
    assert_eq!(u(v, "deliveries"), published * subs, "{v:#}");
    assert_eq!(u(v, "expected_deliveries"), published * subs);
    assert_eq!(
        u(v, "fanout_samples"),
        published * procs,
        "every publication reached its last subscriber: {v:#}"
    );
    assert_zero(
        v,
        &[
            "lost",
            "duplicated",
            "out_of_order",
            "mismatched",
            "recipients_mismatched",
            "failed",
            "errors",
        ],
    );
}

#[test]
fn push_at_a_fixed_rate_reaches_every_subscriber_once_in_order() {
    let s = Server::start(1, &[]);
    // 400/s for 0.5 s: publications at go + 0, 2.5 ms, ... 497.5 ms.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url("/ws"),
        "-c",
        "50",
        "--rate",
        "400",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "published"), 200, "{v:#}");
    assert_clean(&v, 50, 1);
    // The channel's seq goes on from 200; a second run checks against it.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url("/ws"),
        "-c",
        "50",
        "--rate",
        "400",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_clean(&v, 50, 1);
}

#[test]
fn push_with_a_window_over_threads_processes_and_workers() {
    let s = Server::start(2, &[]);
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url("/ws"),
        "--channel",
        "news.eu-1",
        "-c",
        "40",
        "--window",
        "4",
        "-d",
        "0.5",
        "--threads",
        "2",
        "--procs",
        "2",
        "--sources",
        "3",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert!(u(&v, "published") >= 4, "{v:#}");
    assert_clean(&v, 40, 2);
}

#[test]
fn push_with_an_api_key_and_refused_publishes() {
    let s = Server::start(1, &["--api-key", "sekrit"]);
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url("/ws"),
        "-c",
        "10",
        "--rate",
        "100",
        "-d",
        "0.3",
        "--api-key",
        "sekrit",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(u(&v, "published"), 30, "{v:#}");
    assert_clean(&v, 10, 1);
    // A wrong key: every publish refused with 401, nothing delivered, and
    // the run fails.
    let (code, v) = wsload(&[
        "push",
        "--url",
        &s.url("/ws"),
        "-c",
        "10",
        "--rate",
        "100",
        "-d",
        "0.3",
        "--api-key",
        "wrong",
        "--drain",
        "0.5",
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(u(&v, "published"), 30, "{v:#}");
    assert_eq!(
        v["failures"]["publish: http 401"].as_u64(),
        Some(30),
        "{v:#}"
    );
    assert_eq!(u(&v, "deliveries"), 0, "{v:#}");
    assert_eq!(u(&v, "lost"), 300, "{v:#}");
}
