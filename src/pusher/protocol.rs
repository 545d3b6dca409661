//! The Pusher Channels protocol (version 7): messages, channel names and
//! the error and close codes as pusher-js interprets them (4000-4099: do
//! not reconnect; 4100-4199: reconnect after backing off; 4200-4299:
//! reconnect now; 4300-4399: an error that does not close).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::push::envelope::json_str;

/// The app key names no app (close, no reconnect).
pub const APP_UNKNOWN: u16 = 4001;
/// Protocol version not supported (close, no reconnect).
pub const VERSION_UNSUPPORTED: u16 = 4007;
/// The connection is not authorized any more (terminated by the backend).
pub const UNAUTHORIZED: u16 = 4009;
/// Over capacity: reconnect after backing off.
pub const OVER_CAPACITY: u16 = 4100;
/// No pong in time: reconnect now.
pub const PONG_NOT_RECEIVED: u16 = 4201;
/// A client event was refused or over the rate limit (the connection stays).
pub const CLIENT_EVENT_REJECTED: u16 = 4301;

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 164;
/// Longest event name.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Whether `name` is a valid channel name: `^#?[-a-zA-Z0-9_=@,.;]+$`, at
/// most 164 characters.
pub fn valid_channel(name: &str) -> bool {
    let body = name.strip_prefix('#').unwrap_or(name);
    name.len() <= MAX_CHANNEL_LEN
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b))
}

/// The kind of a channel, from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No prefix (or `cache-`): anyone may subscribe.
    Public,
    /// `private-` (and `private-cache-`): a signature is needed.
    Private,
    /// `private-encrypted-`: signed; the server relays ciphertext and
    /// refuses client events.
    Encrypted,
    /// `presence-` (and `presence-cache-`): signed with the member's data.
    Presence,
    /// `#server-to-user-{id}`: only the signed-in user `id`.
    ServerToUser,
}

impl ChannelKind {
    /// The kind of `name`.
    pub fn of(name: &str) -> ChannelKind {
        if name.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else if name.starts_with('#') {
            ChannelKind::ServerToUser
        } else {
            ChannelKind::Public
        }
    }
}

/// Whether `name` is a cache channel (the last event is kept and sent to
/// new subscribers).
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// A message from a client: `{"event":..., "channel":..., "data":...}`.
#[derive(Debug)]
pub struct ClientMessage {
    /// The event name.
    pub event: String,
    /// The channel, for client events.
    pub channel: Option<String>,
    /// `data` as received (a JSON string or object).
    pub data: Option<Box<RawValue>>,
}

/// Parse a client message.
pub fn parse(text: &str) -> Result<ClientMessage, String> {
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let event = match fields.remove("event") {
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map_err(|_| "event must be a string".to_string())?,
        None => return Err("missing event".into()),
    };
    let channel = match fields.remove("channel") {
        Some(raw) => Some(
            serde_json::from_str::<String>(raw.get())
                .map_err(|_| "channel must be a string".to_string())?,
        ),
        None => None,
    };
    Ok(ClientMessage {
        event,
        channel,
        data: fields.remove("data"),
    })
}

/// The fields of a message's `data` object (it may also arrive as a JSON
/// string holding the object).
pub fn data_fields(data: Option<&RawValue>) -> Result<BTreeMap<String, Box<RawValue>>, String> {
    let Some(raw) = data else {
        return Err("missing data".into());
    };
    let parsed: Result<BTreeMap<String, Box<RawValue>>, _> = serde_json::from_str(raw.get());
    match parsed {
        Ok(m) => Ok(m),
        Err(_) => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|_| "data must be an object".to_string())?;
            serde_json::from_str(&s).map_err(|_| "data must be an object".to_string())
        }
    }
}

/// A string field of a data object.
pub fn str_field(m: &BTreeMap<String, Box<RawValue>>, name: &str) -> Option<String> {
    m.get(name)
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// The `data` of a client event as the JSON string every recipient gets:
/// a string is kept, any other value is passed on as its exact text.
pub fn data_as_string(raw: &RawValue) -> String {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(_) => raw.get().to_string(),
        Err(_) => json_str(raw.get()),
    }
}

/// An event frame: `data_json` is the `data` already as a JSON string literal.
pub fn event(event: &str, channel: Option<&str>, data_json: &str, user_id: Option<&str>) -> String {
    let mut s = String::with_capacity(48 + event.len() + data_json.len());
    s.push_str("{\"event\":");
    s.push_str(&json_str(event));
    if let Some(c) = channel {
        s.push_str(",\"channel\":");
        s.push_str(&json_str(c));
    }
    s.push_str(",\"data\":");
    s.push_str(data_json);
    if let Some(u) = user_id {
        s.push_str(",\"user_id\":");
        s.push_str(&json_str(u));
    }
    s.push('}');
    s
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = format!(
        "{{\"socket_id\":{},\"activity_timeout\":{activity_timeout}}}",
        json_str(socket_id)
    );
    event(
        "pusher:connection_established",
        None,
        &json_str(&data),
        None,
    )
}

/// `pusher:error` (`code` null for a malformed message).
pub fn error(code: Option<u16>, message: &str) -> String {
    let code = code.map_or("null".to_string(), |c| c.to_string());
    format!(
        "{{\"event\":\"pusher:error\",\"data\":{{\"code\":{code},\"message\":{}}}}}",
        json_str(message)
    )
}

/// `pusher:pong`.
pub const PONG: &str = "{\"event\":\"pusher:pong\",\"data\":\"{}\"}";
/// `pusher:ping`.
pub const PING: &str = "{\"event\":\"pusher:ping\",\"data\":\"{}\"}";

/// `pusher_internal:subscription_succeeded`; `data` is the JSON (`{}` or
/// the presence snapshot).
pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &json_str(data),
        None,
    )
}

/// `pusher:subscription_error` with `{"type","error","status"}`.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    let data = format!(
        "{{\"type\":{},\"error\":{},\"status\":{status}}}",
        json_str(kind),
        json_str(error)
    );
    event(
        "pusher:subscription_error",
        Some(channel),
        &json_str(&data),
        None,
    )
}

/// `pusher:cache_miss`.
pub fn cache_miss(channel: &str) -> String {
    event("pusher:cache_miss", Some(channel), "\"{}\"", None)
}

/// `pusher:signin_success` with the user data as signed.
pub fn signin_success(user_data: &str) -> String {
    let data = format!("{{\"user_data\":{}}}", json_str(user_data));
    event("pusher:signin_success", None, &json_str(&data), None)
}

/// The socket id of a connection: `digits.digits`.
pub fn socket_id(conn: u64) -> String {
    format!("{}.{}", conn >> 32, conn & 0xffff_ffff)
}

/// The connection of a socket id (None if it is not one of ours in form).
pub fn parse_socket_id(s: &str) -> Option<u64> {
    let (a, b) = s.split_once('.')?;
    if a.is_empty() || b.is_empty() || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let a: u64 = a.parse().ok()?;
    let b: u64 = b.parse().ok()?;
    (a <= u32::MAX as u64 && b <= u32::MAX as u64).then_some((a << 32) | b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(valid_channel("private-a=b@c,d.e;f_g-h"));
        assert!(valid_channel("#server-to-user-1"));
        assert!(!valid_channel("#"));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel(&"a".repeat(165)));
        assert!(valid_channel(&"a".repeat(164)));
        let id = (7u64 << 56) | (3 << 32) | 9;
        assert_eq!(parse_socket_id(&socket_id(id)), Some(id));
        assert_eq!(parse_socket_id("1."), None);
        assert_eq!(parse_socket_id("x.1"), None);
        assert_eq!(
            ChannelKind::of("private-encrypted-x"),
            ChannelKind::Encrypted
        );
        assert!(is_cache("presence-cache-x") && !is_cache("x-cache-"));
    }

    #[test]
    fn messages() {
        let m = parse(r#"{"event":"client-x","channel":"private-a","data":{"b": 1}}"#).unwrap();
        assert_eq!(m.channel.as_deref(), Some("private-a"));
        assert_eq!(
            data_as_string(m.data.as_deref().unwrap()),
            r#""{\"b\": 1}""#
        );
        let m = parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#).unwrap();
        let f = data_fields(m.data.as_deref()).unwrap();
        assert_eq!(str_field(&f, "channel").as_deref(), Some("a"));
        assert!(parse("[]").is_err());
        assert!(parse(r#"{"event":1}"#).is_err());
    }
}
