//! What goes on the wire from the client side: the upgrade request, the
//! parsing of the server's `101` response, and the payload layout that
//! carries publisher id, sequence number and send time.

use wspush::protocol::handshake::accept_key;

/// Bytes at the start of every payload that carry the probe fields.
pub const PROBE_LEN: usize = 16;

/// The timestamp field holds the low 56 bits of CLOCK_MONOTONIC in ns.
const TS_MASK: u64 = (1 << 56) - 1;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the
/// machine, so a timestamp written by one process reads right in another.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds from a payload timestamp to `now` (wrap-safe).
#[inline]
pub fn elapsed_since(ts: u64, now: u64) -> u64 {
    (now.wrapping_sub(ts)) & TS_MASK
}

/// Probe fields of a payload. All bytes are 7-bit, so the same payload is
/// valid text and binary: publisher id (3 × 7 bits), sequence (5 × 7 bits),
/// timestamp (8 × 7 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub id: u32,
    pub seq: u64,
    pub ts: u64,
}

#[inline]
fn put7(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = (v & 0x7f) as u8;
        v >>= 7;
    }
}

#[inline]
fn get7(inp: &[u8]) -> u64 {
    inp.iter()
        .fold(0u64, |acc, &b| (acc << 7) | (b & 0x7f) as u64)
}

impl Probe {
    /// Write the fields into the first [`PROBE_LEN`] bytes of `out`.
    #[inline]
    pub fn write(&self, out: &mut [u8]) {
        put7(&mut out[0..3], self.id as u64);
        put7(&mut out[3..8], self.seq);
        put7(&mut out[8..16], self.ts & TS_MASK);
    }

    /// Read the fields back; `None` when the payload is too short or not ours.
    #[inline]
    pub fn read(inp: &[u8]) -> Option<Probe> {
        if inp.len() < PROBE_LEN || inp[..PROBE_LEN].iter().any(|&b| b >= 0x80) {
            return None;
        }
        Some(Probe {
            id: get7(&inp[0..3]) as u32,
            seq: get7(&inp[3..8]),
            ts: get7(&inp[8..16]),
        })
    }
}

/// Largest publisher id and sequence number the layout holds.
pub const MAX_ID: u32 = (1 << 21) - 1;

/// A payload template of `size` bytes (at least [`PROBE_LEN`]): filler is
/// printable ASCII.
pub fn template(size: usize) -> Vec<u8> {
    template_for(
        size,
        TEXT_PAYLOAD.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// `--text-payload`: JSON-like text instead of the alphabet (set once at start).
pub static TEXT_PAYLOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `text`, a deterministic JSON-like record list without quotes
/// (`{id:4821,title:breaking story,...}`): compresses about as well as real
/// JSON (3-5x), unlike the repeating alphabet.
pub fn template_for(size: usize, text: bool) -> Vec<u8> {
    if !text {
        return alphabet(size);
    }
    const WORDS: [&str; 24] = [
        "breaking", "story", "market", "update", "score", "team", "weather", "alert", "price",
        "user", "comment", "reply", "live", "match", "goal", "city", "rain", "sunny", "stock",
        "rise", "fall", "vote", "poll", "news",
    ];
    let n = size.max(PROBE_LEN);
    let mut out = alphabet(PROBE_LEN);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while out.len() < n {
        let r = next();
        let rec = format!(
            "{{id:{},title:{} {} {},score:{},tags:[{},{}]}},",
            r % 100_000,
            WORDS[(r >> 20) as usize % 24],
            WORDS[(r >> 25) as usize % 24],
            WORDS[(r >> 30) as usize % 24],
            (r >> 35) % 1000,
            WORDS[(r >> 45) as usize % 24],
            WORDS[(r >> 50) as usize % 24],
        );
        out.extend_from_slice(rec.as_bytes());
    }
    out.truncate(n);
    out
}

fn alphabet(size: usize) -> Vec<u8> {
    (0..size.max(PROBE_LEN))
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

/// Standard base64 of 16 bytes (24 characters, with padding).
pub fn base64_16(b: &[u8; 16]) -> [u8; 24] {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = [b'='; 24];
    let mut o = 0;
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out[o + i] = T[((n >> (18 - 6 * i)) & 63) as usize];
        }
        o += 4;
    }
    out
}

/// Append the upgrade request for `path` on `host` with `key`.
pub fn write_request(out: &mut Vec<u8>, host: &str, path: &str, key: &[u8; 24]) {
    write_request_ext(out, host, path, key, false)
}

/// [`write_request`], offering permessage-deflate as browsers do when `deflate`.
pub fn write_request_ext(out: &mut Vec<u8>, host: &str, path: &str, key: &[u8; 24], deflate: bool) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
    if deflate {
        out.extend_from_slice(
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
    }
    out.extend_from_slice(b"\r\n");
}

/// Outcome of looking at the bytes received so far during the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// The header is not complete yet.
    Partial,
    /// A valid `101` with the right accept key; frames start at this offset.
    Upgraded(usize),
    /// Refused or invalid, with a short reason for the failure table.
    Failed(String),
}

/// Largest response header we wait for.
pub const MAX_RESPONSE: usize = 16 * 1024;

/// Parse the server's answer to the upgrade request sent with `key`.
pub fn parse_response(buf: &[u8], key: &[u8; 24]) -> Response {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        if buf.len() > MAX_RESPONSE {
            return Response::Failed("response header too large".into());
        }
        return Response::Partial;
    };
    let head = &buf[..end - 4];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with(b"HTTP/1.") || code.len() != 3 {
        return Response::Failed("malformed status line".into());
    }
    if code != b"101" {
        return Response::Failed(format!("http {}", String::from_utf8_lossy(code)));
    }
    let mut accept_ok = false;
    let mut upgrade_ok = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Response::Failed("malformed header line".into());
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            accept_ok = value == accept_key(key);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_ok = value.eq_ignore_ascii_case(b"websocket");
        }
    }
    if !upgrade_ok {
        return Response::Failed("101 without Upgrade: websocket".into());
    }
    if !accept_ok {
        return Response::Failed("bad Sec-WebSocket-Accept".into());
    }
    Response::Upgraded(end)
}

/// xorshift64*: masking keys and handshake keys (no need for crypto here).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    #[inline]
    pub fn key(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
    pub fn handshake_key(&mut self) -> [u8; 24] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next().to_ne_bytes());
        k[8..].copy_from_slice(&self.next().to_ne_bytes());
        base64_16(&k)
    }
}

/// Push mode: the stamp at the start of each publication's body, sent as a
/// plain-text body (so the server delivers it as a JSON string): `w`, then
/// publisher id (4 hex digits), sequence (12), CLOCK_MONOTONIC ns (16). Hex
/// digits and the filler letters need no JSON escaping.
pub const STAMP_LEN: usize = 33;

const HEX: &[u8; 16] = b"0123456789abcdef";

#[inline]
fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

#[inline]
fn get_hex(inp: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &b in inp {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

/// Largest push stamp sequence (12 hex digits).
pub const MAX_STAMP_SEQ: u64 = (1 << 48) - 1;

impl Probe {
    /// Write the push stamp into the first [`STAMP_LEN`] bytes of `out`.
    #[inline]
    pub fn write_stamp(&self, out: &mut [u8]) {
        out[0] = b'w';
        put_hex(&mut out[1..5], self.id as u64 & 0xffff);
        put_hex(&mut out[5..17], self.seq & MAX_STAMP_SEQ);
        put_hex(&mut out[17..33], self.ts & TS_MASK);
    }

    /// Read a push stamp back from the start of `inp`.
    #[inline]
    pub fn read_stamp(inp: &[u8]) -> Option<Probe> {
        if inp.len() < STAMP_LEN || inp[0] != b'w' {
            return None;
        }
        Some(Probe {
            id: get_hex(&inp[1..5])? as u32,
            seq: get_hex(&inp[5..17])?,
            ts: get_hex(&inp[17..33])?,
        })
    }
}

/// First position of `needle` in `hay` at or after `from`.
#[inline]
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// The unsigned decimal right after `key` (e.g. `"seq":`) in `hay`.
#[inline]
pub fn json_u64_after(hay: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = find(hay, key, from)? + key.len();
    let mut i = at;
    while i < hay.len() && hay[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut v = 0u64;
    while i < hay.len() && hay[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((hay[i] - b'0') as u64)?;
        i += 1;
    }
    if i == start {
        return None;
    }
    Some((v, i))
}

/// What a push-mode text frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFrame {
    /// `{"op":"welcome",...}`
    Welcome,
    /// `{"op":"subscribed",...}`: the answer for a channel of the query.
    Subscribed,
    /// `{"channel":"NAME","seq":N,"data":"<stamp>..."}`: stamp and server seq.
    Push(Probe, u64),
    /// Anything else (another channel, an error, not our stamp).
    Other,
}

/// Classify a text frame received on a push subscription, without
/// allocating: `chan` is `"channel":"NAME"` for the channel subscribed to.
pub fn parse_push(t: &[u8], chan: &[u8]) -> PushFrame {
    if t.starts_with(b"{\"op\":\"welcome\"") {
        return PushFrame::Welcome;
    }
    if t.starts_with(b"{\"op\":\"subscribed\"") {
        return PushFrame::Subscribed;
    }
    // The server's envelope starts with the channel; look there first.
    let Some(c) = (if t.get(1..1 + chan.len()) == Some(chan) {
        Some(1)
    } else {
        find(t, chan, 0)
    }) else {
        return PushFrame::Other;
    };
    let Some((seq, after)) = json_u64_after(t, b"\"seq\":", c + chan.len()) else {
        return PushFrame::Other;
    };
    let key = b"\"data\":\"";
    let d = if t.get(after + 1..after + 1 + key.len()) == Some(key) {
        Some(after + 1)
    } else {
        find(t, key, 0)
    };
    let Some(d) = d else {
        return PushFrame::Other;
    };
    match Probe::read_stamp(&t[d + key.len()..]) {
        Some(p) => PushFrame::Push(p, seq),
        None => PushFrame::Other,
    }
}

/// Classify a text frame of the Pusher protocol: `connection_established`
/// is the welcome, `subscription_succeeded` the subscription, an event
/// whose `data` string starts with a stamp a push (the stamp's sequence
/// stands for the server's: Pusher events carry none).
pub fn parse_pusher(t: &[u8]) -> PushFrame {
    if t.starts_with(b"{\"event\":\"pusher:connection_established\"") {
        return PushFrame::Welcome;
    }
    if t.starts_with(b"{\"event\":\"pusher_internal:subscription_succeeded\"") {
        return PushFrame::Subscribed;
    }
    let key = b"\"data\":\"";
    let Some(d) = find(t, key, 0) else {
        return PushFrame::Other;
    };
    match Probe::read_stamp(&t[d + key.len()..]) {
        Some(p) => PushFrame::Push(p, p.seq),
        None => PushFrame::Other,
    }
}

/// A publish response parsed from the front of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpReply {
    /// Not complete yet.
    Partial,
    /// Status, `seq` and `recipients` of the body (when present), bytes used.
    Done {
        status: u16,
        seq: Option<u64>,
        recipients: Option<u64>,
        consumed: usize,
    },
    /// Unparseable.
    Bad(&'static str),
}

/// Parse one HTTP/1.1 response (Content-Length framed) from the front of `buf`.
pub fn parse_http_reply(buf: &[u8]) -> HttpReply {
    let Some(he) = find(buf, b"\r\n\r\n", 0) else {
        if buf.len() > MAX_RESPONSE {
            return HttpReply::Bad("response header too large");
        }
        return HttpReply::Partial;
    };
    let head = &buf[..he];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        return HttpReply::Bad("malformed status line");
    }
    let Some(status) = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return HttpReply::Bad("malformed status line");
    };
    let mut len = 0usize;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(line[colon + 1..].trim_ascii())
                .ok()
                .and_then(|s| s.parse().ok())
            {
                Some(n) => len = n,
                None => return HttpReply::Bad("bad Content-Length"),
            }
        }
    }
    let end = he + 4 + len;
    if buf.len() < end {
        return HttpReply::Partial;
    }
    let body = &buf[he + 4..end];
    HttpReply::Done {
        status,
        seq: json_u64_after(body, b"\"seq\":", 0).map(|x| x.0),
        recipients: json_u64_after(body, b"\"recipients\":", 0).map(|x| x.0),
        consumed: end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_roundtrip_is_ascii() {
        let p = Probe {
            id: MAX_ID,
            seq: (1 << 35) - 1,
            ts: now_ns(),
        };
        let mut buf = template(20);
        p.write(&mut buf);
        assert!(std::str::from_utf8(&buf).is_ok());
        assert!(buf.iter().all(|&b| b < 0x80));
        let q = Probe::read(&buf).unwrap();
        assert_eq!((q.id, q.seq, q.ts), (p.id, p.seq, p.ts & TS_MASK));
        assert!(elapsed_since(q.ts, p.ts + 5) == 5);
    }

    #[test]
    fn base64_matches_rfc_example() {
        // RFC 6455 §1.3: "the sample nonce" → dGhlIHNhbXBsZSBub25jZQ==
        assert_eq!(&base64_16(b"the sample nonce"), b"dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn response_parsing() {
        let key = *b"dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        assert_eq!(parse_response(ok, &key), Response::Upgraded(ok.len() - 2));
        assert_eq!(parse_response(&ok[..40], &key), Response::Partial);
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: xxx\r\n\r\n";
        assert_eq!(
            parse_response(bad, &key),
            Response::Failed("bad Sec-WebSocket-Accept".into())
        );
        let refused = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(refused, &key),
            Response::Failed("http 503".into())
        );
    }

    #[test]
    fn push_stamp_and_frames() {
        let p = Probe {
            id: 3,
            seq: 77,
            ts: now_ns(),
        };
        let mut body = template(40);
        p.write_stamp(&mut body);
        let body = std::str::from_utf8(&body).unwrap();
        let frame = format!("{{\"channel\":\"bench\",\"seq\":1234,\"data\":\"{body}\"}}");
        let chan = b"\"channel\":\"bench\"";
        match parse_push(frame.as_bytes(), chan) {
            PushFrame::Push(q, seq) => {
                assert_eq!(seq, 1234);
                assert_eq!((q.id, q.seq, q.ts), (p.id, p.seq, p.ts & TS_MASK));
            }
            other => panic!("{other:?}"),
        }
        let spaced = format!("{{ \"data\":\"{body}\", \"channel\":\"bench\", \"seq\": 9 }}");
        assert!(matches!(
            parse_push(spaced.as_bytes(), chan),
            PushFrame::Push(_, 9)
        ));
        let other = format!("{{\"channel\":\"bench2\",\"seq\":1,\"data\":\"{body}\"}}");
        assert_eq!(parse_push(other.as_bytes(), chan), PushFrame::Other);
        let welcome = br#"{"op":"welcome","connection":"1","user":null,"channels":["bench"]}"#;
        assert_eq!(parse_push(welcome, chan), PushFrame::Welcome);
    }

    #[test]
    fn http_reply_parsing() {
        let body = "{\"channel\":\"bench\",\"seq\":5,\"recipients\":50}\n";
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}HTTP/1.1",
            body.len()
        );
        let n = r.len() - "HTTP/1.1".len();
        assert_eq!(
            parse_http_reply(r.as_bytes()),
            HttpReply::Done {
                status: 200,
                seq: Some(5),
                recipients: Some(50),
                consumed: n
            }
        );
        assert_eq!(parse_http_reply(&r.as_bytes()[..n - 3]), HttpReply::Partial);
    }
}
