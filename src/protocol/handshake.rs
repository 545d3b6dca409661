//! The WebSocket opening handshake, server side (RFC 6455 §4.2).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::error::HttpError;
use super::http::{tokens, Request};

/// The GUID appended to the client's key (RFC 6455 §1.3).
pub const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(sha1(key + GUID))`: the `Sec-WebSocket-Accept` value for `key`.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters.
    let n = STANDARD.encode_slice(digest, &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

/// What the server accepts in a handshake.
#[derive(Debug, Clone, Default)]
pub struct HandshakeConfig {
    /// Supported subprotocols, most preferred first.
    pub protocols: Vec<String>,
    /// Allowed `Origin` values (exact, case-insensitive). Empty: any origin.
    /// Requests without `Origin` (non-browser clients) are not refused by it.
    pub origins: Vec<String>,
}

/// A validated upgrade: what to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted<'c> {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: [u8; 28],
    /// The chosen subprotocol (one the client offered), if any.
    pub protocol: Option<&'c str>,
}

/// Whether the request asks for a WebSocket upgrade at all (its `Upgrade`
/// header names `websocket`). Plain requests go to the HTTP side.
pub fn is_upgrade(req: &Request<'_>) -> bool {
    req.has_token("upgrade", "websocket")
}

/// Validate an upgrade request and choose the subprotocol.
pub fn validate<'c>(
    req: &Request<'_>,
    cfg: &'c HandshakeConfig,
) -> Result<Accepted<'c>, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::MethodNotAllowed);
    }
    if req.minor_version < 1 {
        return Err(HttpError::UpgradeRequiresHttp11);
    }
    let h = UpgradeHeaders::scan(req);
    if !matches!(h.host, Some(v) if !v.is_empty()) {
        return Err(HttpError::MissingHost);
    }
    if !h.upgrade_websocket {
        return Err(HttpError::NotWebSocketUpgrade);
    }
    if !h.connection_upgrade {
        return Err(HttpError::MissingConnectionUpgrade);
    }
    if h.version != Some(b"13") {
        return Err(HttpError::UnsupportedWebSocketVersion);
    }
    let key = h.key.ok_or(HttpError::BadKey)?;
    let mut decoded = [0u8; 18];
    match STANDARD.decode_slice(key, &mut decoded) {
        Ok(16) => {}
        _ => return Err(HttpError::BadKey),
    }
    if !cfg.origins.is_empty() {
        if let Some(origin) = h.origin {
            if !cfg
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            {
                return Err(HttpError::OriginNotAllowed);
            }
        }
    }
    Ok(Accepted {
        accept: accept_key(key),
        protocol: choose_protocol(req, cfg),
    })
}

/// What [`validate`] reads from the headers, gathered in one pass over them
/// (instead of one per header it asks about): the first value of each
/// single-valued header, and whether any `Upgrade` / `Connection` header
/// holds the token.
#[derive(Default)]
struct UpgradeHeaders<'a> {
    host: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
}

impl<'a> UpgradeHeaders<'a> {
    fn scan(req: &Request<'a>) -> Self {
        let has = |v: &[u8], token: &[u8]| tokens(v).any(|t| t.eq_ignore_ascii_case(token));
        let mut h = UpgradeHeaders::default();
        for x in &req.headers {
            let n = x.name.as_bytes();
            // The length first: most names are then skipped at once.
            match n.len() {
                4 if n.eq_ignore_ascii_case(b"host") => {
                    h.host.get_or_insert(x.value);
                }
                6 if n.eq_ignore_ascii_case(b"origin") => {
                    h.origin.get_or_insert(x.value);
                }
                7 if n.eq_ignore_ascii_case(b"upgrade") => {
                    h.upgrade_websocket |= has(x.value, b"websocket");
                }
                10 if n.eq_ignore_ascii_case(b"connection") => {
                    h.connection_upgrade |= has(x.value, b"upgrade");
                }
                17 if n.eq_ignore_ascii_case(b"sec-websocket-key") => {
                    h.key.get_or_insert(x.value);
                }
                21 if n.eq_ignore_ascii_case(b"sec-websocket-version") => {
                    h.version.get_or_insert(x.value);
                }
                _ => {}
            }
        }
        h
    }
}

/// The first of the server's protocols (in its preference order) that the
/// client offered in any `Sec-WebSocket-Protocol` header.
fn choose_protocol<'c>(req: &Request<'_>, cfg: &'c HandshakeConfig) -> Option<&'c str> {
    let offered = || {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|h| tokens(h.value))
    };
    cfg.protocols
        .iter()
        .map(String::as_str)
        .find(|p| offered().any(|o| o == p.as_bytes()))
}

/// Append the `101 Switching Protocols` response for an accepted upgrade.
pub fn write_accept(acc: &Accepted<'_>, out: &mut Vec<u8>) {
    write_accept_with(acc, None, out)
}

/// [`write_accept`] with the agreed permessage-deflate parameters, if any.
pub fn write_accept_with(
    acc: &Accepted<'_>,
    deflate: Option<&super::deflate::Params>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&acc.accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = acc.protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(p) = deflate {
        super::deflate::write_response(p, out);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_rfc_accept_keys() {
        assert_eq!(
            &accept_key(b"x3JJHMbDL1EzLkh9GBhXDw=="),
            b"HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        );
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
