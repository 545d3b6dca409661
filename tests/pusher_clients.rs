//! The Pusher protocol and HTTP API driven by the real clients: pusher-js
//! and laravel-echo under Node, the `pusher` Node SDK and the `pusher`
//! Python SDK as backends (`tests/pusher/scenarios.mjs`, `tests/pusher/api.py`).
//!
//! Dependencies are pinned in `tests/pusher/package.json` and
//! `tests/pusher/requirements.txt`; `.ci/run` installs them. Without them
//! (no `node`, no `tests/pusher/node_modules`, no Python `pusher`) each
//! test prints `SKIPPED` and passes, unless `WSPUSH_REQUIRE_PUSHER_CLIENTS=1`
//! (set by `.ci/run`), which makes that a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const APP: &str = "1:app-key:app-secret";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

/// Whether the clients can run; panics under `WSPUSH_REQUIRE_PUSHER_CLIENTS=1`.
fn clients_or_skip(python: bool) -> bool {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("node".to_string());
    }
    for m in ["pusher-js", "laravel-echo", "pusher"] {
        if !dir()
            .join("node_modules")
            .join(m)
            .join("package.json")
            .exists()
        {
            missing.push(format!(
                "tests/pusher/node_modules/{m} (npm ci --prefix tests/pusher)"
            ));
        }
    }
    if python {
        let py_ok = Command::new("python3")
            .args(["-c", "import pusher"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !py_ok {
            missing.push(
                "python3 module pusher (pip install -r tests/pusher/requirements.txt)".into(),
            );
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("WSPUSH_REQUIRE_PUSHER_CLIENTS").as_deref() == Ok("1") {
        panic!(
            "WSPUSH_REQUIRE_PUSHER_CLIENTS=1 but missing: {}",
            missing.join(", ")
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: Pusher clients missing ({}); set WSPUSH_REQUIRE_PUSHER_CLIENTS=1 to fail instead",
        missing.join(", ")
    );
    false
}

/// Run one scenario against `d`; panics with its output and the daemon's
/// log when it fails.
fn scenario(d: &Daemon, case: &str, arg: Option<&str>) -> String {
    let mut cmd = Command::new("node");
    cmd.arg(dir().join("scenarios.mjs"))
        .arg(d.addr.port().to_string())
        .arg(case);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let out = run_bounded(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("ok {case}")),
        "scenario {case} failed:\n{stdout}\n{stderr}\n--- daemon log ---\n{}",
        d.log_text()
    );
    stdout
}

fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    if !wait_until(limit, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    child.wait_with_output().expect("node output")
}

fn daemon(extra: &[&str]) -> Daemon {
    let mut args = vec!["--pusher-app", APP, "--workers", "2"];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

#[test]
fn public_private_and_encrypted_channels() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    for case in ["public", "private", "encrypted"] {
        scenario(&d, case, None);
    }
}

#[test]
fn echo_error_on_a_bad_signature() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    scenario(&d, "bad_signature", None);
    assert!(d.wait_logged("refused: invalid signature"));
}

#[test]
fn presence_here_joining_leaving_with_two_tabs() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    scenario(&d, "presence", None);
}

#[test]
fn whisper_and_its_rate_limit() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&["--pusher-client-events"]);
    scenario(&d, "whisper", None);
    scenario(&d, "rate_limit", None);
    // Without the flag client events are refused with 4301.
    let off = daemon(&[]);
    scenario(&off, "whisper_refused", None);
}

#[test]
fn to_others_excludes_the_socket() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    scenario(&d, "to_others", None);
}

#[test]
fn every_api_call_of_the_node_sdk() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    scenario(&d, "api_node", None);
    assert!(d.wait_logged("terminating the connections of user \"u1\" (1 here)"));
}

#[test]
fn every_api_call_of_the_python_sdk() {
    if !clients_or_skip(true) {
        return;
    }
    let d = daemon(&[]);
    let out = scenario(&d, "api_python", None);
    assert!(out.contains("python sdk: every call ok"), "{out}");
}

#[test]
fn unknown_app_key_is_refused_with_4001() {
    if !clients_or_skip(false) {
        return;
    }
    let d = daemon(&[]);
    scenario(&d, "unknown_app", None);
}

#[test]
fn webhooks_signed_and_in_order() {
    if !clients_or_skip(false) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let d = daemon(&["--pusher-client-events", "--pusher-webhook", &url]);
    scenario(&d, "webhooks", Some(&port.to_string()));
}

#[test]
fn presence_across_two_nodes_with_one_killed() {
    if !clients_or_skip(false) || !common::redis::available() {
        return;
    }
    let r = common::redis::Redis::start();
    let url = r.url();
    let args = ["--redis", url.as_str(), "--presence-lease", "3s"];
    let a = daemon(&args);
    let mut b = daemon(&args);
    let arg = format!("{},{}", b.addr.port(), b.child.id());
    scenario(&a, "presence_cluster", Some(&arg));
    assert!(
        b.wait_exit(Duration::from_secs(5)).is_some(),
        "node B was killed"
    );
}
