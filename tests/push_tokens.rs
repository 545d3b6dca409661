//! Token lifetime (issue 8, item 13): a connection whose token expires is
//! told `token_expired` and closed with 3000; a refresh before `exp` keeps
//! it, for the same user only, and narrows its channels.

mod common;

use std::thread;
use std::time::Duration;

use common::push::*;
use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message as TMsg;
use wspush::push::auth::mint_hs256;
use wspush::push::unix_now;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn token(sub: &str, ttl: u64, channels: Option<&[&str]>) -> String {
    let chans: Option<Vec<String>> = channels.map(|c| c.iter().map(|s| s.to_string()).collect());
    mint_hs256(
        SECRET.as_bytes(),
        sub,
        Some(unix_now() + ttl),
        chans.as_deref(),
    )
}

/// Read until the close frame; its code.
fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(TMsg::Close(f)) => return f.map(|f| f.code),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn an_expired_token_is_told_and_closed_with_3000() {
    let d = Daemon::start(&["--workers", "1", "--jwt-secret", SECRET]);
    let (mut ws, _) = connect(&d, &format!("?token={}", token("u1", 2, None)));
    assert_eq!(
        op(&mut ws, json!({"op":"subscribe","channel":"a"}))["op"],
        "subscribed"
    );
    // Pushes arrive while the token is valid.
    publish(d.addr, "a", "1");
    assert_eq!(next_json(&mut ws)["seq"], 1);
    // At exp (2 s, whole seconds): the error, then close 3000.
    let v = next_json(&mut ws);
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], "token_expired");
    assert_eq!(close_code(&mut ws), Some(CloseCode::from(3000)));
}

#[test]
fn a_refresh_before_exp_keeps_the_connection_and_narrows_its_channels() {
    let d = Daemon::start(&["--workers", "2", "--jwt-secret", SECRET]);
    let (mut ws, _) = connect(&d, &format!("?token={}", token("u1", 2, Some(&["a", "b"]))));
    for ch in ["a", "b"] {
        assert_eq!(
            op(&mut ws, json!({"op":"subscribe","channel":ch}))["op"],
            "subscribed"
        );
    }
    // Another user's token, a forged one, a malformed message: refused.
    let r = op(
        &mut ws,
        json!({"op":"refresh","token":token("u2", 60, None),"id":1}),
    );
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
    let forged = mint_hs256(b"another-secret", "u1", Some(unix_now() + 60), None);
    let r = op(&mut ws, json!({"op":"refresh","token":forged}));
    assert_eq!(r["code"], "invalid_token", "{r}");
    let r = op(&mut ws, json!({"op":"refresh"}));
    assert_eq!(r["code"], "invalid_message", "{r}");
    // A good one: for u1, 60 s, only channel a.
    let fresh = token("u1", 60, Some(&["a"]));
    ws.send(TMsg::Text(
        json!({"op":"refresh","token":fresh,"id":2}).to_string(),
    ))
    .unwrap();
    let u = next_json(&mut ws);
    assert_eq!(
        u,
        json!({"op":"unsubscribed","channel":"b","reason":"the refreshed token does not allow this channel"})
    );
    let r = next_json(&mut ws);
    assert_eq!(r["op"], "refreshed", "{r}");
    assert_eq!(r["id"], 2);
    assert!(r["exp"].as_u64().unwrap() >= unix_now() + 50);
    // Past the old exp the connection lives on, subscribed to a only.
    thread::sleep(Duration::from_millis(3200));
    publish(d.addr, "b", "\"not for you\"");
    publish(d.addr, "a", "\"still here\"");
    let v = next_json(&mut ws);
    assert_eq!(
        (v["channel"].as_str(), v["data"].as_str()),
        (Some("a"), Some("still here")),
        "{v}"
    );
    let r = op(&mut ws, json!({"op":"subscribe","channel":"b"}));
    assert_eq!(r["code"], "forbidden", "{r}");
}

#[test]
fn refresh_without_tokens_configured_is_an_error() {
    let d = Daemon::start(&["--workers", "1"]);
    let (mut ws, _) = connect(&d, "");
    let r = op(&mut ws, json!({"op":"refresh","token":"x.y.z"}));
    assert_eq!(r["code"], "tokens_disabled", "{r}");
}
