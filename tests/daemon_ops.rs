//! Operations (issue 12, part 3): secrets from files re-read on SIGHUP
//! without dropping connections, and every flag from an environment
//! variable. Through the real binary.

mod common;

use std::path::PathBuf;

use common::push::*;
use common::*;
use serde_json::json;
use wspush::push::auth::mint_hs256;
use wspush::push::unix_now;

const A: &str = "first-secret-of-at-least-32-bytes-long";
const B: &str = "second-secret-of-at-least-32-bytes-long";

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wspush-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn token(secret: &str) -> String {
    mint_hs256(secret.as_bytes(), "u1", Some(unix_now() + 600), None)
}

fn upgrade_status(d: &Daemon, secret: &str) -> u16 {
    let r = raw_exchange(
        d.addr,
        upgrade_request(&format!("/ws?token={}", token(secret)), "").as_bytes(),
    );
    status_of(&r)
}

#[test]
fn sighup_rereads_the_jwt_secret_file_and_keeps_open_connections() {
    let file = temp_file("jwt", &format!("{A}\n"));
    let path = file.to_str().unwrap();
    let d = Daemon::start(&["--workers", "2", "--jwt-secret-file", path]);
    let (mut old, _) = connect(&d, &format!("?token={}", token(A)));
    assert_eq!(upgrade_status(&d, B), 401);
    std::fs::write(&file, format!("{B}\n")).unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_logged("SIGHUP: reloaded secrets (JWT secret changed, API key unchanged)"));
    assert_eq!(
        upgrade_status(&d, A),
        401,
        "the old secret no longer admits"
    );
    assert_eq!(upgrade_status(&d, B), 101, "the new secret admits");
    // The connection made with the old secret stays open.
    assert_eq!(op(&mut old, json!({"op":"ping"}))["op"], "pong");
    // An empty file on reload is refused; the secret in force stays.
    std::fs::write(&file, "\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_logged("SIGHUP: reload refused"));
    assert_eq!(upgrade_status(&d, B), 101);
}

#[test]
fn sighup_rereads_the_api_key_file() {
    let file = temp_file("key", "key-one-that-is-long-enough-0001");
    let d = Daemon::start(&["--workers", "1", "--api-key-file", file.to_str().unwrap()]);
    let call = |key: &str| {
        http(
            d.addr,
            "POST",
            "/publish/c",
            &format!("Authorization: Bearer {key}\r\n"),
            b"x",
        )
        .0
    };
    assert_eq!(call("key-one-that-is-long-enough-0001"), 200);
    std::fs::write(&file, "key-two-that-is-long-enough-0002\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_logged("SIGHUP: reloaded secrets (JWT secret unchanged, API key changed)"));
    assert_eq!(call("key-one-that-is-long-enough-0001"), 401);
    assert_eq!(call("key-two-that-is-long-enough-0002"), 200);
}

#[test]
fn unreadable_or_empty_secret_files_refuse_to_start() {
    let empty = temp_file("empty", "\n");
    let (status, out) = run_to_exit(&["--jwt-secret-file", empty.to_str().unwrap()], &[]);
    assert!(status.is_some_and(|s| !s.success()), "{out}");
    assert!(out.contains("empty"), "{out}");
    let (status, out) = run_to_exit(&["--api-key-file", "/nonexistent/wspush-key"], &[]);
    assert!(status.is_some_and(|s| !s.success()), "{out}");
    assert!(out.contains("--api-key-file"), "{out}");
    let (status, out) = run_to_exit(&["--jwt-secret", A, "--jwt-secret-file", "/x"], &[]);
    assert!(status.is_some_and(|s| !s.success()), "{out}");
}

#[test]
fn every_flag_has_an_environment_variable() {
    let (_, help) = run_to_exit(&["--help"], &[]);
    for var in [
        "WSPUSH_LISTEN",
        "WSPUSH_WORKERS",
        "WSPUSH_MAX_CONNECTIONS",
        "WSPUSH_MAX_MESSAGE_SIZE",
        "WSPUSH_ORIGIN",
        "WSPUSH_CLIENT_PUBLISH",
        "WSPUSH_JWT_SECRET_FILE",
        "WSPUSH_API_KEY_FILE",
        "WSPUSH_HISTORY_SIZE",
        "WSPUSH_MAX_PENDING_BYTES",
    ] {
        assert!(help.contains(var), "--help does not show {var}");
    }
    // A flag given only by its variable takes effect.
    let d = Daemon::start_env(
        "127.0.0.1:0",
        &["--workers", "1"],
        &[
            ("WSPUSH_MAX_CHANNELS_PER_CONN", "1"),
            ("WSPUSH_CLIENT_PUBLISH", "a.*,b.*"),
        ],
    );
    let (mut ws, _) = connect(&d, "");
    assert_eq!(
        op(&mut ws, json!({"op":"subscribe","channel":"x"}))["op"],
        "subscribed"
    );
    let r = op(&mut ws, json!({"op":"subscribe","channel":"y"}));
    assert_eq!(r["code"], "too_many_channels", "{r}");
    for ch in ["a.1", "b.1"] {
        let r = op(&mut ws, json!({"op":"publish","channel":ch,"data":1}));
        assert_eq!(r["op"], "published", "{ch}: {r}");
    }
}
