//! Authentication for the push service: HS256 JSON Web Tokens for clients,
//! API keys for the backend, and the `Authorization: Bearer` header.
//!
//! All cryptography comes from the `hmac` and `sha2` crates; signatures and
//! keys are compared in constant time (`Mac::verify_slice`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes (a guard against absurd inputs; real
/// tokens are a few hundred bytes).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a client token must carry beyond a valid signature.
///
/// The rule, the same in `--help` and the README: `sub` (a non-empty
/// string) is always required; `exp` is required unless non-expiring tokens
/// are explicitly allowed (`--allow-non-expiring-tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenRules {
    /// Accept tokens without an `exp` claim (they never expire).
    pub allow_no_exp: bool,
}

/// Claims of a verified client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `sub` claim: the user id of the connection (never empty).
    pub sub: String,
    /// The `exp` claim: expiry, in seconds since the Unix epoch (`None` only
    /// when [`TokenRules::allow_no_exp`] let a token without one pass).
    pub exp: Option<u64>,
    /// The `channels` claim: the channels (exact names or `prefix*`
    /// patterns) the connection may subscribe to; `None`: no restriction.
    pub channels: Option<Vec<String>>,
}

impl Claims {
    /// Whether the `channels` claim (if any) allows `channel`. Entries are exact names or
    /// prefix patterns ending in `*` (e.g. `chat.*` matches `chat.room1`, `*` matches all).
    pub fn allows(&self, channel: &str) -> bool {
        match &self.channels {
            None => true,
            Some(list) => list.iter().any(|p| pattern_matches(p, channel)),
        }
    }
}

/// Whether one `channels` entry (exact name or `prefix*`) matches `channel`.
fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// Why a token or key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token was offered.
    Missing,
    /// The token is not a well-formed JWT (parts, base64url, JSON, claim types).
    Malformed,
    /// The signature does not match the secret.
    BadSignature,
    /// `exp` has passed, or `nbf` has not yet come.
    Expired,
    /// The header names an algorithm other than HS256 (e.g. `none`).
    UnsupportedAlgorithm,
    /// No `sub` claim, or an empty one.
    NoSubject,
    /// No `exp` claim, and non-expiring tokens are not allowed.
    NoExpiry,
}

impl AuthError {
    /// A short human-readable description, fit for an HTTP error body.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "bad token signature",
            AuthError::Expired => "token expired or not yet valid",
            AuthError::UnsupportedAlgorithm => "unsupported token algorithm (only HS256)",
            AuthError::NoSubject => "token has no sub (user id) claim",
            AuthError::NoExpiry => "token has no exp claim (non-expiring tokens are refused)",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthError {}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Decode one base64url (no padding) part into a JSON object.
fn json_object(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(AuthError::Malformed),
    }
}

/// A NumericDate claim (seconds since the epoch; fractions allowed by RFC
/// 7519 and rounded down here). Negative or non-numeric: malformed.
fn numeric_date(v: &Value) -> Result<u64, AuthError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f.floor() as u64),
        _ => Err(AuthError::Malformed),
    }
}

/// Verify an HS256 JWT: three base64url (no padding) parts, header {"alg":"HS256"} (typ optional),
/// signature over `header.payload`, `exp` (seconds since the Unix epoch) > now_unix, `nbf` <= now when present.
/// `sub` must be a non-empty string ([`AuthError::NoSubject`]); `exp` must be present unless
/// `rules` allow tokens without it ([`AuthError::NoExpiry`]); `channels` an array of strings
/// if present. Claims of the wrong type are Malformed.
///
/// Checks, in order: presence, shape, header (`alg`), signature, claims.
/// A header with a `crit` member is refused as unsupported (RFC 7515 §4.1.11).
pub fn verify_hs256(
    token: &str,
    secret: &[u8],
    now_unix: u64,
    rules: TokenRules,
) -> Result<Claims, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };

    let header = json_object(h64)?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(_)) => return Err(AuthError::UnsupportedAlgorithm),
        _ => return Err(AuthError::Malformed),
    }
    if header.contains_key("crit") {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    if header.get("typ").is_some_and(|t| !t.is_string()) {
        return Err(AuthError::Malformed);
    }

    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| AuthError::Malformed)?;
    let signed_len = h64.len() + 1 + p64.len();
    let mut m = mac(secret);
    m.update(&token.as_bytes()[..signed_len]);
    m.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;

    let payload = json_object(p64)?;
    let sub = match payload.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let exp = payload.get("exp").map(numeric_date).transpose()?;
    let nbf = payload.get("nbf").map(numeric_date).transpose()?;
    let channels = match payload.get("channels") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(AuthError::Malformed))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(AuthError::Malformed),
    };
    if exp.is_some_and(|exp| exp <= now_unix) || nbf.is_some_and(|nbf| nbf > now_unix) {
        return Err(AuthError::Expired);
    }
    let sub = sub.filter(|s| !s.is_empty()).ok_or(AuthError::NoSubject)?;
    if exp.is_none() && !rules.allow_no_exp {
        return Err(AuthError::NoExpiry);
    }
    Ok(Claims { sub, exp, channels })
}

/// Mint an HS256 token (for tests, the README and `wspush token`).
///
/// The header is `{"alg":"HS256","typ":"JWT"}`; the payload holds `sub`,
/// and `exp` and `channels` when given.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    exp: Option<u64>,
    channels: Option<&[String]>,
) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Written by hand (not through a `Map`) so the claim order is fixed:
    // sub, exp, channels, whatever serde_json's features are.
    let mut json = format!(r#"{{"sub":{}"#, Value::from(sub));
    if let Some(exp) = exp {
        json.push_str(&format!(r#","exp":{exp}"#));
    }
    if let Some(channels) = channels {
        json.push_str(&format!(
            r#","channels":{}"#,
            Value::from(channels.to_vec())
        ));
    }
    json.push('}');
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mut token = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(token.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    token.push('.');
    token.push_str(&sig);
    token
}

/// Constant-time equality of an offered API key and the configured one.
///
/// Both keys are run through HMAC-SHA256 under a fixed key and the tags
/// compared with `verify_slice` (constant time), so neither the content nor
/// the length of the expected key leaks through timing.
pub fn api_key_matches(offered: &[u8], expected: &[u8]) -> bool {
    const LABEL: &[u8] = b"wspush api key comparison";
    let mut e = mac(LABEL);
    e.update(expected);
    let tag = e.finalize().into_bytes();
    let mut o = mac(LABEL);
    o.update(offered);
    o.verify_slice(&tag).is_ok()
}

/// The bearer token of an `Authorization: Bearer <t>` header value, if any.
///
/// The scheme is matched case-insensitively; surrounding whitespace is
/// ignored; an empty token, or one containing whitespace, is `None`.
pub fn bearer(header_value: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(header_value).ok()?.trim();
    let (scheme, rest) = v.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000;
    const ALLOW_NO_EXP: TokenRules = TokenRules { allow_no_exp: true };

    /// The strict rules (the default): `sub` and `exp` required.
    fn verify_hs256(token: &str, secret: &[u8], now: u64) -> Result<Claims, AuthError> {
        super::verify_hs256(token, secret, now, TokenRules::default())
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// Sign `header.payload` (given as JSON text) with `secret`.
    fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
        let hp = format!("{}.{}", b64(header), b64(payload));
        let mut m = mac(secret);
        m.update(hp.as_bytes());
        format!("{hp}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
    }

    #[test]
    fn round_trip() {
        let chans = vec!["chat.*".to_string(), "news".to_string()];
        let t = mint_hs256(SECRET, "alice", Some(NOW + 60), Some(&chans));
        assert_eq!(t.split('.').count(), 3);
        assert!(!t.contains('='), "no padding: {t}");
        let c = verify_hs256(&t, SECRET, NOW).unwrap();
        assert_eq!(
            c,
            Claims {
                sub: "alice".into(),
                exp: Some(NOW + 60),
                channels: Some(chans),
            }
        );
        let t = mint_hs256(SECRET, "bob", None, None);
        let c = super::verify_hs256(&t, SECRET, u64::MAX, ALLOW_NO_EXP).unwrap();
        assert_eq!(c.sub, "bob");
        assert_eq!(c.exp, None);
        assert_eq!(c.channels, None);
        assert!(c.allows("anything"));
    }

    #[test]
    fn wrong_secret() {
        let t = mint_hs256(SECRET, "alice", None, None);
        assert_eq!(
            verify_hs256(&t, b"other", NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify_hs256(&t, b"", NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn expiry_and_not_before() {
        let t = mint_hs256(SECRET, "alice", Some(NOW), None);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(AuthError::Expired));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1), Err(AuthError::Expired));
        assert!(verify_hs256(&t, SECRET, NOW - 1).is_ok());

        let t = sign(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"a","exp":{},"nbf":{}}}"#, NOW + 60, NOW + 10),
            SECRET,
        );
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(AuthError::Expired));
        assert!(verify_hs256(&t, SECRET, NOW + 10).is_ok());

        // Fractional NumericDate is allowed.
        let t = sign(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"a","exp":{}.5}}"#, NOW + 5),
            SECRET,
        );
        assert_eq!(verify_hs256(&t, SECRET, NOW).unwrap().exp, Some(NOW + 5));
    }

    #[test]
    fn unsupported_algorithms() {
        for alg in ["none", "HS512", "RS256", "hs256", ""] {
            let h = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let t = sign(&h, r#"{"sub":"a"}"#, SECRET);
            assert_eq!(
                verify_hs256(&t, SECRET, NOW),
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        // The classic alg:none attack with an empty signature.
        let t = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"a"}"#));
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
        let t = sign(r#"{"alg":"HS256","crit":["x"]}"#, r#"{"sub":"a"}"#, SECRET);
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn tampered() {
        let t = mint_hs256(SECRET, "alice", Some(NOW + 60), Some(&["a".to_string()]));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = b64(&format!(
            r#"{{"channels":["*"],"exp":{},"sub":"alice"}}"#,
            NOW + 60
        ));
        let t2 = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(verify_hs256(&t2, SECRET, NOW), Err(AuthError::BadSignature));
        // A flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let t3 = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(verify_hs256(&t3, SECRET, NOW), Err(AuthError::BadSignature));
        // A truncated signature.
        let t4 = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]);
        assert!(verify_hs256(&t4, SECRET, NOW).is_err());
        // A different header that still says HS256.
        let h = b64(r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#);
        let t5 = format!("{}.{}.{}", h, parts[1], parts[2]);
        assert_eq!(verify_hs256(&t5, SECRET, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn malformed() {
        let good = mint_hs256(SECRET, "alice", None, None);
        let parts: Vec<&str> = good.split('.').collect();
        assert_eq!(verify_hs256("", SECRET, NOW), Err(AuthError::Missing));
        assert_eq!(verify_hs256("   ", SECRET, NOW), Err(AuthError::Missing));
        for t in [
            "garbage",
            "a.b",
            "a.b.c.d",
            "...",
            &format!("{}.{}", parts[0], parts[1]),
            &format!("{good}.x"),
            // Bad base64 in each part.
            &format!("!!.{}.{}", parts[1], parts[2]),
            &format!("{}.{}.*(", parts[0], parts[1]),
            // Padded base64 is not base64url-without-padding.
            &format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ] {
            assert_eq!(
                verify_hs256(t, SECRET, NOW),
                Err(AuthError::Malformed),
                "{t}"
            );
        }
        // Validly signed but bad JSON or bad claim types.
        for (h, p) in [
            (r#"{"alg":"HS256"}"#, "not json"),
            (r#"{"alg":"HS256"}"#, "[1,2]"),
            (r#"{"alg":"HS256"}"#, r#"{"sub":5}"#),
            (r#"{"alg":"HS256"}"#, r#"{"sub":null}"#),
            (r#"{"alg":"HS256"}"#, r#"{"exp":"soon"}"#),
            (r#"{"alg":"HS256"}"#, r#"{"exp":-1}"#),
            (r#"{"alg":"HS256"}"#, r#"{"nbf":true}"#),
            (r#"{"alg":"HS256"}"#, r#"{"channels":"a"}"#),
            (r#"{"alg":"HS256"}"#, r#"{"channels":["a",1]}"#),
            ("not json", r#"{"sub":"a"}"#),
            (r#"{"typ":"JWT"}"#, r#"{"sub":"a"}"#),
            (r#"{"alg":256}"#, r#"{"sub":"a"}"#),
            (r#"{"alg":"HS256","typ":1}"#, r#"{"sub":"a"}"#),
        ] {
            let t = sign(h, p, SECRET);
            assert_eq!(
                verify_hs256(&t, SECRET, NOW),
                Err(AuthError::Malformed),
                "{h} {p}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify_hs256(&huge, SECRET, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn sub_and_exp_are_required() {
        let t = |p: &str| sign(r#"{"alg":"HS256"}"#, p, SECRET);
        let later = NOW + 60;
        for p in [
            "{}",
            r#"{"exp":9999999999}"#,
            r#"{"sub":"","exp":9999999999}"#,
        ] {
            assert_eq!(
                verify_hs256(&t(p), SECRET, NOW),
                Err(AuthError::NoSubject),
                "{p}"
            );
            assert_eq!(
                super::verify_hs256(&t(p), SECRET, NOW, ALLOW_NO_EXP),
                Err(AuthError::NoSubject),
                "{p}"
            );
        }
        let no_exp = t(r#"{"sub":"a"}"#);
        assert_eq!(verify_hs256(&no_exp, SECRET, NOW), Err(AuthError::NoExpiry));
        assert_eq!(
            super::verify_hs256(&no_exp, SECRET, NOW, ALLOW_NO_EXP),
            Ok(Claims {
                sub: "a".into(),
                exp: None,
                channels: None
            })
        );
        let both = t(&format!(r#"{{"sub":"a","exp":{later}}}"#));
        assert_eq!(
            verify_hs256(&both, SECRET, NOW),
            Ok(Claims {
                sub: "a".into(),
                exp: Some(later),
                channels: None
            })
        );
        // Allowing tokens without exp does not let an expired one pass.
        assert_eq!(
            super::verify_hs256(&both, SECRET, later, ALLOW_NO_EXP),
            Err(AuthError::Expired)
        );
    }

    /// Computed independently with Python:
    /// ```text
    /// import hmac, hashlib, base64, json
    /// b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
    /// h = b(b'{"alg":"HS256","typ":"JWT"}')
    /// p = b(b'{"sub":"user-42","exp":4102444800,"channels":["news","chat.*"]}')
    /// s = b(hmac.new(b"wspush-test-vector-secret", f"{h}.{p}".encode(), hashlib.sha256).digest())
    /// print(f"{h}.{p}.{s}")
    /// ```
    const VECTOR: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjo0MTAyNDQ0ODAwLCJjaGFubmVscyI6WyJuZXdzIiwiY2hhdC4qIl19.GelFWH9Ot7ZfM8bPW-qBjUFNaKVcWVnmMpzrVHfS_UQ";

    #[test]
    fn independent_vector() {
        let c = verify_hs256(VECTOR, b"wspush-test-vector-secret", NOW).unwrap();
        assert_eq!(c.sub, "user-42");
        assert_eq!(c.exp, Some(4_102_444_800));
        assert_eq!(
            c.channels,
            Some(vec!["news".to_string(), "chat.*".to_string()])
        );
        assert!(c.allows("chat.lobby"));
        assert!(!c.allows("newsroom"));
        assert_eq!(
            verify_hs256(VECTOR, b"wspush-test-vector-secreT", NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_hs256(VECTOR, b"wspush-test-vector-secret", 4_102_444_800),
            Err(AuthError::Expired)
        );
        // Our minting produces byte for byte the token Python built.
        let minted = mint_hs256(
            b"wspush-test-vector-secret",
            "user-42",
            Some(4_102_444_800),
            Some(&["news".to_string(), "chat.*".to_string()]),
        );
        assert_eq!(minted, VECTOR);
    }

    #[test]
    fn channel_patterns() {
        let c = |v: &[&str]| Claims {
            sub: String::new(),
            exp: None,
            channels: Some(v.iter().map(|s| s.to_string()).collect()),
        };
        let x = c(&["chat.*", "news", "user:42"]);
        assert!(x.allows("chat.room1"));
        assert!(x.allows("chat."));
        assert!(!x.allows("chat"));
        assert!(!x.allows("chatroom"));
        assert!(x.allows("news"));
        assert!(!x.allows("news2"));
        assert!(!x.allows("new"));
        assert!(x.allows("user:42"));
        assert!(!x.allows("user:420"));
        assert!(c(&["*"]).allows("anything.at:all"));
        assert!(!c(&[]).allows("news"));
        assert!(!c(&[""]).allows("news"));
        assert!(c(&["a*"]).allows("a"));
        let none = Claims {
            sub: String::new(),
            exp: None,
            channels: None,
        };
        assert!(none.allows("whatever"));
    }

    #[test]
    fn api_keys() {
        assert!(api_key_matches(b"s3cret-key", b"s3cret-key"));
        assert!(!api_key_matches(b"s3cret-kez", b"s3cret-key"));
        assert!(!api_key_matches(b"s3cret-ke", b"s3cret-key"));
        assert!(!api_key_matches(b"s3cret-key ", b"s3cret-key"));
        assert!(!api_key_matches(b"", b"s3cret-key"));
        assert!(!api_key_matches(b"s3cret-key", b""));
        assert!(api_key_matches(b"", b""));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer(b"bearer   tok "), Some("tok"));
        assert_eq!(bearer(b"  BEARER\ttok"), Some("tok"));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer(b"Bearertok"), None);
        assert_eq!(bearer(b""), None);
        assert_eq!(bearer(b"Bearer \xff\xfe"), None);
    }

    #[test]
    fn errors_have_messages() {
        for e in [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::UnsupportedAlgorithm,
            AuthError::NoSubject,
            AuthError::NoExpiry,
        ] {
            assert!(!e.message().is_empty());
            assert_eq!(e.to_string(), e.message());
        }
    }

    /// No input panics: a deterministic pseudo-random walk over garbage,
    /// near-misses of valid tokens, and arbitrary bytes for `bearer`.
    #[test]
    fn no_panics_on_garbage() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: &[u8] = b"abcXYZ019-_.=+/ {}\":,*\x00\xff";
        let good = mint_hs256(SECRET, "alice", Some(NOW + 60), Some(&["a*".to_string()]));
        for i in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if i % 2 == 0 {
                // Mutate a valid token instead: flip, drop or insert bytes.
                bytes = good.as_bytes().to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    match next() % 3 {
                        0 => bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b'.'),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            let r = verify_hs256(&s, SECRET, NOW);
            if s == good {
                assert!(r.is_ok());
            } else if r.is_ok() {
                // Only a semantically identical token may pass (e.g. none).
                panic!("accepted a mutated token: {s}");
            }
            let _ = bearer(&bytes);
            let _ = api_key_matches(&bytes, b"key");
        }
    }
}
