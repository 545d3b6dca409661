//! Signatures, exactly as the Pusher clients and SDKs make them:
//! HMAC-SHA256 in lowercase hex, compared in constant time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::app::{App, Apps};
use crate::protocol::http::percent_decode;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `msg` with `secret`, lowercase hex.
pub fn hmac_hex(secret: &[u8], msg: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(msg);
    hex(&mac.finalize().into_bytes())
}

/// Whether `sig_hex` is the HMAC-SHA256 of `msg` (constant-time compare).
pub fn verify(secret: &[u8], msg: &[u8], sig_hex: &str) -> bool {
    let Some(sig) = unhex(sig_hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(msg);
    mac.verify_slice(&sig).is_ok()
}

/// MD5 of `body`, lowercase hex (`body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Check a subscription's `auth` (`key:signature`) over `socket_id:channel`
/// (plus `:channel_data` on presence channels: the exact string received).
pub fn channel_auth(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), &'static str> {
    let Some((key, sig)) = auth.split_once(':') else {
        return Err("auth must be key:signature");
    };
    if key != app.key {
        return Err("auth names another app's key");
    }
    let mut msg = format!("{socket_id}:{channel}");
    if let Some(d) = channel_data {
        msg.push(':');
        msg.push_str(d);
    }
    if verify(&app.secret, msg.as_bytes(), sig) {
        Ok(())
    } else {
        Err("invalid signature")
    }
}

/// Check a `pusher:signin`'s `auth` over `socket_id::user::user_data`.
pub fn signin_auth(
    app: &App,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), &'static str> {
    let Some((key, sig)) = auth.split_once(':') else {
        return Err("auth must be key:signature");
    };
    if key != app.key {
        return Err("auth names another app's key");
    }
    let msg = format!("{socket_id}::user::{user_data}");
    if verify(&app.secret, msg.as_bytes(), sig) {
        Ok(())
    } else {
        Err("invalid signature")
    }
}

/// Why a signed API request was refused: (HTTP status, message).
pub type Refusal = (u16, String);

/// Most a request's `auth_timestamp` may differ from the server's clock.
pub const MAX_SKEW_SECS: u64 = 600;

/// Check a signed HTTP API request: `auth_key` (an app's key; when the path
/// names an app, that app's), `auth_timestamp` within
/// [`MAX_SKEW_SECS`], `auth_version` 1.0 if present, `body_md5` (required
/// with a body; checked whenever present) and `auth_signature` = HMAC of
/// `METHOD\nPATH\n` and the other query parameters, keys lowercased and
/// sorted, values decoded. The signature over the parameters exactly as
/// received (undecoded) is accepted too: the SDKs sign what they send.
pub fn verify_request<'a>(
    apps: &'a Apps,
    path_app: Option<&str>,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<&'a std::sync::Arc<App>, Refusal> {
    let mut decoded: Vec<(String, String)> = Vec::new();
    let mut raw: Vec<(String, &str)> = Vec::new();
    let mut signature = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)
            .ok_or_else(|| (400, format!("bad escape in query parameter {k:?}")))?
            .to_ascii_lowercase();
        let value = percent_decode(v)
            .ok_or_else(|| (400, format!("bad escape in query parameter {key}")))?;
        if key == "auth_signature" {
            signature = Some(value);
            continue;
        }
        raw.push((key.clone(), v));
        decoded.push((key, value));
    }
    let get = |name: &str| {
        decoded
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(signature) = signature else {
        return Err((401, "missing auth_signature".into()));
    };
    let Some(key) = get("auth_key") else {
        return Err((401, "missing auth_key".into()));
    };
    let Some(app) = apps.by_key(key) else {
        return Err((401, format!("unknown auth_key {key:?}")));
    };
    if let Some(id) = path_app {
        if app.id != id {
            return Err((
                403,
                format!("auth_key {key:?} does not belong to app {id:?}"),
            ));
        }
    }
    let ts = get("auth_timestamp")
        .ok_or_else(|| (401, "missing auth_timestamp".to_string()))?
        .parse::<u64>()
        .map_err(|_| (401, "auth_timestamp is not a number".to_string()))?;
    if ts.abs_diff(now) > MAX_SKEW_SECS {
        return Err((
            401,
            format!(
                "auth_timestamp {ts} is more than {MAX_SKEW_SECS} s from the server's time ({now}): check the clock"
            ),
        ));
    }
    if let Some(v) = get("auth_version") {
        if v != "1.0" {
            return Err((401, format!("auth_version {v:?} is not supported (1.0)")));
        }
    }
    match get("body_md5") {
        Some(m) if !m.eq_ignore_ascii_case(&md5_hex(body)) => {
            return Err((401, "body_md5 does not match the body".into()))
        }
        None if !body.is_empty() => {
            return Err((
                401,
                "missing body_md5 (a request with a body must sign it)".into(),
            ))
        }
        _ => {}
    }
    decoded.sort();
    raw.sort();
    let sign = |pairs: Vec<String>| format!("{method}\n{path}\n{}", pairs.join("&"));
    let a = sign(decoded.iter().map(|(k, v)| format!("{k}={v}")).collect());
    let b = sign(raw.iter().map(|(k, v)| format!("{k}={v}")).collect());
    if verify(&app.secret, a.as_bytes(), &signature)
        || (a != b && verify(&app.secret, b.as_bytes(), &signature))
    {
        Ok(app)
    } else {
        Err((401, "invalid auth_signature".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // From Pusher's documentation (authenticating users).
        let app = App::parse("1:278d425bdf160c739803:7ad3773142a6692b25b8").unwrap();
        let sig = hmac_hex(&app.secret, b"1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let auth = format!("{}:{sig}", app.key);
        assert!(channel_auth(&app, "1234.1234", "private-foobar", None, &auth).is_ok());
        assert!(channel_auth(&app, "1234.1235", "private-foobar", None, &auth).is_err());
        assert!(channel_auth(&app, "1234.1234", "private-foobar", None, "x").is_err());
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn request_signature() {
        let apps = Apps::parse(&["3:key:secret".into()]).unwrap();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = md5_hex(body);
        let q = format!("auth_key=key&auth_timestamp=1000&auth_version=1.0&body_md5={md5}");
        let sig = hmac_hex(b"secret", format!("POST\n/apps/3/events\n{q}").as_bytes());
        let full = format!("{q}&auth_signature={sig}");
        let ok = verify_request(
            &apps,
            Some("3"),
            "POST",
            "/apps/3/events",
            Some(&full),
            body,
            1100,
        );
        assert!(ok.is_ok());
        let late = verify_request(
            &apps,
            Some("3"),
            "POST",
            "/apps/3/events",
            Some(&full),
            body,
            1700,
        );
        assert_eq!(late.unwrap_err().0, 401);
        let other = verify_request(
            &apps,
            Some("3"),
            "POST",
            "/apps/3/events",
            Some(&full),
            b"{}",
            1000,
        );
        assert_eq!(other.unwrap_err().0, 401);
        let wrong_app = verify_request(
            &apps,
            Some("4"),
            "POST",
            "/apps/3/events",
            Some(&full),
            body,
            1000,
        );
        assert_eq!(wrong_app.unwrap_err().0, 403);
    }
}
