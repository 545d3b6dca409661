//! The JSON the service speaks with clients: control messages in, replies
//! and push envelopes out. Push envelopes are built once per publication.

use serde_json::Value;

use crate::broker::{Encoded, Epoch, Format, Meta, Position};
use crate::server::Frame;

/// A client's control message.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `{"op":"subscribe","channel":"x"}`, resuming after
    /// `"since":{"seq":N,"epoch":"E"}` when given.
    Subscribe(String, Option<Position>),
    /// `{"op":"unsubscribe","channel":"x"}`
    Unsubscribe(String),
    /// `{"op":"publish","channel":"x","data":...}` (data as JSON text)
    Publish(String, String),
    /// `{"op":"ping"}`
    Ping,
    /// `{"op":"refresh","token":"JWT"}`: a fresh token before `exp`.
    Refresh(String),
}

/// A control message that could not be understood: error code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadControl {
    /// Machine-readable code, e.g. `invalid_json`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: &'static str,
}

/// A parsed control message with the client's optional correlation `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The message.
    pub control: Result<Control, BadControl>,
    /// The `id` field, echoed in the reply (JSON text).
    pub id: Option<String>,
}

fn bad(code: &'static str, message: &'static str) -> Result<Control, BadControl> {
    Err(BadControl { code, message })
}

/// Deepest nesting of arrays and objects the data of a push may have, on
/// every path (client publish and the HTTP API). The envelope adds one
/// level, so a push stays within serde_json's default limit (128) and far
/// within Python's (about 1000): what a server relays, its clients can parse.
pub const MAX_JSON_DEPTH: usize = 100;

/// What a message or body nested too deeply is told.
pub const DEPTH_RULE: &str = "JSON nested deeper than 100 levels";

/// Whether the JSON text nests arrays and objects deeper than `max`: one
/// pass counting `[` and `{` outside strings, stopping as soon as it is
/// over. It does not validate; the parser that runs after it does.
pub fn nested_deeper_than(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parse a text message from a client. Its data may nest
/// [`MAX_JSON_DEPTH`] levels inside the message object.
pub fn parse(text: &str) -> Parsed {
    if nested_deeper_than(text.as_bytes(), MAX_JSON_DEPTH + 1) {
        return Parsed {
            control: bad("invalid_json", DEPTH_RULE),
            id: None,
        };
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return Parsed {
                control: bad("invalid_json", "message is not valid JSON"),
                id: None,
            }
        }
    };
    let Value::Object(mut o) = v else {
        return Parsed {
            control: bad("invalid_message", "message must be a JSON object"),
            id: None,
        };
    };
    let id = o.get("id").map(|v| v.to_string());
    let channel = || -> Result<String, BadControl> {
        match o.get("channel") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(BadControl {
                code: "invalid_message",
                message: "missing string field \"channel\"",
            }),
        }
    };
    let control = match o.get("op").and_then(Value::as_str) {
        Some("subscribe") => match (channel(), o.get("since").map(since_of)) {
            (Ok(c), None) => Ok(Control::Subscribe(c, None)),
            (Ok(c), Some(Some(p))) => Ok(Control::Subscribe(c, Some(p))),
            (Err(e), _) => Err(e),
            (_, Some(None)) => bad("invalid_message", SINCE_RULE),
        },
        Some("unsubscribe") => channel().map(Control::Unsubscribe),
        Some("publish") => match (channel(), o.remove("data")) {
            (Ok(c), Some(d)) => Ok(Control::Publish(c, d.to_string())),
            (Err(e), _) => Err(e),
            (_, None) => bad("invalid_message", "missing field \"data\""),
        },
        Some("ping") => Ok(Control::Ping),
        Some("refresh") => match o.get("token") {
            Some(Value::String(t)) => Ok(Control::Refresh(t.clone())),
            _ => bad("invalid_message", "missing string field \"token\""),
        },
        Some(_) => bad("unknown_op", "unknown op"),
        None => bad("invalid_message", "missing string field \"op\""),
    };
    Parsed { control, id }
}

/// What a malformed `since` is told.
pub const SINCE_RULE: &str = "since must be {\"seq\":N,\"epoch\":\"<16 hex digits>\"}";

/// A resume position from `{"seq":N,"epoch":"E"}`.
fn since_of(v: &Value) -> Option<Position> {
    let seq = v.get("seq")?.as_u64()?;
    let epoch = v.get("epoch")?.as_str()?.parse::<Epoch>().ok()?;
    Some(Position { seq, epoch })
}

/// A resume position from the query form `N:E` (after the channel name).
pub fn since_query(v: &str) -> Option<(&str, Position)> {
    let mut it = v.rsplitn(3, ':');
    let epoch = it.next()?.parse::<Epoch>().ok()?;
    let seq = it.next()?.parse::<u64>().ok()?;
    let channel = it.next()?;
    Some((channel, Position { seq, epoch }))
}

/// Append `,"id":<id>` when the client gave one.
fn with_id(mut s: String, id: Option<&str>) -> String {
    if let Some(id) = id {
        s.pop();
        s.push_str(",\"id\":");
        s.push_str(id);
        s.push('}');
    }
    s
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"op":"<op>","channel":"x"}` (+ id).
pub fn reply_channel(op: &str, channel: &str, id: Option<&str>) -> String {
    with_id(
        format!("{{\"op\":\"{op}\",\"channel\":{}}}", json_str(channel)),
        id,
    )
}

/// `{"op":"subscribed","channel":"x","seq":S,"epoch":"E"}`, plus
/// `"recovered":true|false` for a resume (+ id).
pub fn reply_subscribed(
    channel: &str,
    position: Position,
    recovered: Option<bool>,
    id: Option<&str>,
) -> String {
    let recovered = match recovered {
        Some(r) => format!(",\"recovered\":{r}"),
        None => String::new(),
    };
    with_id(
        format!(
            "{{\"op\":\"subscribed\",\"channel\":{},\"seq\":{},\"epoch\":\"{}\"{recovered}}}",
            json_str(channel),
            position.seq,
            position.epoch
        ),
        id,
    )
}

/// `{"op":"published","channel":"x","seq":N}` (+ id).
pub fn reply_published(channel: &str, seq: u64, id: Option<&str>) -> String {
    with_id(
        format!(
            "{{\"op\":\"published\",\"channel\":{},\"seq\":{seq}}}",
            json_str(channel)
        ),
        id,
    )
}

/// `{"op":"refreshed","exp":N}` (+ id); `null` for a token without `exp`.
pub fn reply_refreshed(exp: Option<u64>, id: Option<&str>) -> String {
    let exp = exp.map_or_else(|| "null".to_string(), |e| e.to_string());
    with_id(format!("{{\"op\":\"refreshed\",\"exp\":{exp}}}"), id)
}

/// `{"op":"unsubscribed","channel":"x","reason":"..."}`: the server ended
/// a subscription (e.g. a refreshed token no longer allows the channel).
pub fn unsubscribed_by_server(channel: &str, reason: &str) -> String {
    format!(
        "{{\"op\":\"unsubscribed\",\"channel\":{},\"reason\":{}}}",
        json_str(channel),
        json_str(reason)
    )
}

/// `{"op":"pong"}` (+ id).
pub fn reply_pong(id: Option<&str>) -> String {
    with_id("{\"op\":\"pong\"}".to_string(), id)
}

/// `{"op":"error","code":"...","message":"..."}` (+ id).
pub fn reply_error(code: &str, message: &str, id: Option<&str>) -> String {
    with_id(
        format!(
            "{{\"op\":\"error\",\"code\":{},\"message\":{}}}",
            json_str(code),
            json_str(message)
        ),
        id,
    )
}

/// The first message on a `/ws` connection.
pub fn welcome(connection: u64, user: Option<&str>, channels: &[String]) -> String {
    let user = user.map(json_str).unwrap_or_else(|| "null".into());
    let chans: Vec<String> = channels.iter().map(|c| json_str(c)).collect();
    format!(
        "{{\"op\":\"welcome\",\"connection\":\"{connection}\",\"user\":{user},\"channels\":[{}]}}",
        chans.join(",")
    )
}

/// The push for a channel publication: `{"channel":"x","seq":N,"data":D}`,
/// encoded once into a shared frame. `data` is JSON text; the returned
/// payload range is where it lies in the frame.
pub fn channel_push(channel: &str, seq: u64, data: &str) -> Encoded {
    let mut s = String::with_capacity(channel.len() + data.len() + 40);
    s.push_str("{\"channel\":");
    s.push_str(&json_str(channel));
    s.push_str(",\"seq\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"data\":");
    let start = s.len();
    s.push_str(data);
    let end = s.len();
    s.push('}');
    let frame = Frame::text(&s);
    let header = frame.len() - s.len();
    Encoded {
        frame,
        payload: header + start..header + end,
    }
}

/// Publications of a channel: the data is JSON text, wrapped by [`channel_push`].
pub const CHANNEL: Format = Format(8);
/// Targeted pushes (a user, a connection): wrapped by [`direct_push`].
pub const DIRECT: Format = Format(9);
/// Broadcasts: wrapped by [`broadcast_push`].
pub const BROADCAST: Format = Format(10);

fn data_text<'a>(m: &Meta<'a>) -> &'a str {
    std::str::from_utf8(m.data).unwrap_or("null")
}

/// Register the push service's formats (idempotent).
pub fn register_formats() {
    CHANNEL.register(|m| channel_push(m.channel, m.seq, data_text(m)));
    DIRECT.register(|m| Encoded::whole(direct_push(data_text(m))));
    BROADCAST.register(|m| Encoded::whole(broadcast_push(data_text(m))));
}

/// The push for a broadcast: `{"broadcast":true,"data":D}`.
pub fn broadcast_push(data: &str) -> Frame {
    Frame::text(&format!("{{\"broadcast\":true,\"data\":{data}}}"))
}

/// The push for a targeted send: `{"direct":true,"data":D}`.
pub fn direct_push(data: &str) -> Frame {
    Frame::text(&format!("{{\"direct\":true,\"data\":{data}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_and_rejects_garbage() {
        assert_eq!(
            parse(r#"{"op":"subscribe","channel":"a"}"#).control,
            Ok(Control::Subscribe("a".into(), None))
        );
        assert_eq!(
            parse(
                r#"{"op":"subscribe","channel":"a","since":{"seq":4,"epoch":"00000000000000ff"}}"#
            )
            .control,
            Ok(Control::Subscribe(
                "a".into(),
                Some(Position {
                    seq: 4,
                    epoch: Epoch(255)
                })
            ))
        );
        for bad_since in [
            r#"{"seq":-1,"epoch":"00000000000000ff"}"#,
            r#"{"seq":1,"epoch":"ff"}"#,
            r#"{"seq":1}"#,
            r#"7"#,
        ] {
            let m = format!(r#"{{"op":"subscribe","channel":"a","since":{bad_since}}}"#);
            assert_eq!(
                parse(&m).control.unwrap_err().code,
                "invalid_message",
                "{m}"
            );
        }
        assert_eq!(
            since_query("a:b:3:00000000000000ff"),
            Some((
                "a:b",
                Position {
                    seq: 3,
                    epoch: Epoch(255)
                }
            ))
        );
        assert_eq!(since_query("a:x:00000000000000ff"), None);
        assert_eq!(since_query("3:00000000000000ff"), None);
        assert_eq!(
            parse(r#"{"op":"unsubscribe","channel":"a"}"#).control,
            Ok(Control::Unsubscribe("a".into()))
        );
        assert_eq!(
            parse(r#"{"op":"publish","channel":"a","data":{"k":[1,2]}}"#).control,
            Ok(Control::Publish("a".into(), r#"{"k":[1,2]}"#.into()))
        );
        let p = parse(r#"{"op":"ping","id":7}"#);
        assert_eq!(p.control, Ok(Control::Ping));
        assert_eq!(p.id.as_deref(), Some("7"));
        assert_eq!(parse("nope").control.unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").control.unwrap_err().code, "invalid_message");
        assert_eq!(
            parse(r#"{"op":"dance"}"#).control.unwrap_err().code,
            "unknown_op"
        );
        assert_eq!(
            parse(r#"{"op":"subscribe"}"#).control.unwrap_err().code,
            "invalid_message"
        );
        assert_eq!(
            parse(r#"{"op":"publish","channel":"a"}"#)
                .control
                .unwrap_err()
                .code,
            "invalid_message"
        );
    }

    fn nest(depth: usize, inner: &str) -> String {
        "[".repeat(depth) + inner + &"]".repeat(depth)
    }

    #[test]
    fn depth_scan_counts_outside_strings_only() {
        assert!(!nested_deeper_than(b"1", 0));
        assert!(nested_deeper_than(b"[]", 0));
        assert!(!nested_deeper_than(nest(5, "").as_bytes(), 5));
        assert!(nested_deeper_than(nest(6, "").as_bytes(), 5));
        assert!(nested_deeper_than(br#"{"a":[{"b":[]}]}"#, 3));
        assert!(!nested_deeper_than(br#"{"a":[{"b":[]}]}"#, 4));
        // Brackets inside strings, escaped quotes and backslashes.
        assert!(!nested_deeper_than(
            br#"["[[[[{{{{", "\"[[[[", "\\", "]]]"]"#,
            1
        ));
        assert!(nested_deeper_than(br#"["\\",["x"]]"#, 1));
        // Siblings do not add up.
        assert!(!nested_deeper_than(b"[[],[],[[]],[]]", 3));
    }

    #[test]
    fn client_messages_follow_the_depth_limit() {
        let msg = |d| {
            format!(
                r#"{{"op":"publish","channel":"a","data":{}}}"#,
                nest(d, "1")
            )
        };
        assert!(matches!(
            parse(&msg(MAX_JSON_DEPTH)).control,
            Ok(Control::Publish(..))
        ));
        let e = parse(&msg(MAX_JSON_DEPTH + 1)).control.unwrap_err();
        assert_eq!((e.code, e.message), ("invalid_json", DEPTH_RULE));
        let e = parse(&msg(500_000)).control.unwrap_err();
        assert_eq!(e.message, DEPTH_RULE);
    }

    #[test]
    fn envelopes_are_valid_json() {
        for s in [
            reply_channel("subscribed", "a", Some("\"x\"")),
            reply_published("a", 3, None),
            reply_pong(Some("1")),
            reply_error("forbidden", "no \"quotes\" here", None),
            welcome(42, Some("u\"1"), &["a".into(), "b".into()]),
        ] {
            let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(v.is_object());
        }
        let e = channel_push("a", 5, "{\"x\":1}");
        let v: Value = serde_json::from_slice(&e.frame.bytes()[2..]).unwrap();
        assert_eq!(v["seq"], 5);
        assert_eq!(v["data"]["x"], 1);
        assert_eq!(&e.frame.bytes()[e.payload], b"{\"x\":1}");
        let s = reply_subscribed(
            "a",
            Position {
                seq: 3,
                epoch: Epoch(1),
            },
            Some(false),
            Some("9"),
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["epoch"], "0000000000000001");
        assert_eq!(v["recovered"], false);
        assert_eq!(v["id"], 9);
    }
}
