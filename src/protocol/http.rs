//! Incremental HTTP/1.1 request parser and response writer.
//!
//! The caller keeps the bytes it has received in one buffer and calls
//! [`RequestParser::parse`] after each read with the whole buffer; the parser
//! only scans the bytes it has not seen yet for the end of the head, then
//! parses the head once into a [`Request`] that borrows the buffer. Bytes
//! after the request (a first WebSocket frame sent in the same packet, a
//! pipelined request) are left for the caller.

use std::fmt::Write as _;

use super::error::HttpError;

/// Size limits for requests.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request head (request line + headers + blank line); larger → 431.
    pub max_head: usize,
    /// Most header fields; more → 431.
    pub max_headers: usize,
    /// Largest `Content-Length` body; larger → 413.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 8 << 10,
            max_headers: 64,
            max_body: 1 << 20,
        }
    }
}

/// One header field. The value has its surrounding whitespace trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The field name as sent (compare case-insensitively).
    pub name: &'a str,
    /// The raw value bytes.
    pub value: &'a [u8],
}

/// A parsed request that borrows the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target as sent (origin form; an absolute-form target is reduced to it).
    pub target: &'a str,
    /// The path part of the target (before `?`).
    pub path: &'a str,
    /// The query part of the target (after `?`), if any.
    pub query: Option<&'a str>,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields in order.
    pub headers: Vec<Header<'a>>,
    /// The body (`Content-Length` bytes; empty when there is none).
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The value of header `name` as text, if present and valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether any header named `name` holds `token` in its comma-separated
    /// list (case-insensitive), e.g. `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
    }

    /// Whether the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }

    /// The raw `name=value` pairs of the query string (not percent-decoded
    /// beyond what [`percent_decode`] does when asked).
    pub fn query_pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// The comma-separated, whitespace-trimmed, non-empty tokens of a header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Decode `%XX` escapes and `+` (as space) of a query component. Returns
/// `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Incremental request parser. Holds a few counters, no buffer.
#[derive(Debug, Default, Clone)]
pub struct RequestParser {
    /// Bytes of the buffer already scanned for the end of the head.
    scanned: usize,
    /// Line-end state: 0 inside a line, 1 after LF, 2 after LF CR.
    eol: u8,
    /// Once the head is complete: its length and the body length.
    framed: Option<(usize, usize)>,
}

impl RequestParser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget the current request (after it was handled, before the next one).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Parse the request at the start of `buf` (all bytes received so far).
    /// `Ok(None)`: need more bytes. `Ok(Some((request, n)))`: the request
    /// occupies `buf[..n]`; bytes after it are not the request's.
    pub fn parse<'b>(
        &mut self,
        limits: &HttpLimits,
        buf: &'b [u8],
    ) -> Result<Option<(Request<'b>, usize)>, HttpError> {
        if self.framed.is_none() {
            let Some(head_len) = self.scan(buf) else {
                if buf.len() > limits.max_head {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(None);
            };
            if head_len > limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            let mut req = parse_head(limits, &buf[..head_len])?;
            let body_len = content_length(&req, limits)?;
            self.framed = Some((head_len, body_len));
            // Usual case: the whole request is already here; do not parse the head twice.
            let total = head_len.saturating_add(body_len);
            if let Some(body) = buf.get(head_len..total) {
                req.body = body;
                return Ok(Some((req, total)));
            }
            return Ok(None);
        }
        let Some((head_len, body_len)) = self.framed else {
            return Ok(None);
        };
        let total = head_len.saturating_add(body_len);
        let Some(body) = buf.get(head_len..total) else {
            return Ok(None);
        };
        let mut req = parse_head(limits, &buf[..head_len])?;
        req.body = body;
        Ok(Some((req, total)))
    }

    /// The head of a request whose body has not fully arrived yet (its body
    /// empty), so the head can be judged before the body is read; `None`
    /// if the head is incomplete or the request is already complete.
    pub fn awaiting_body<'b>(&self, limits: &HttpLimits, buf: &'b [u8]) -> Option<Request<'b>> {
        let (head_len, body_len) = self.framed?;
        if buf.len() >= head_len.saturating_add(body_len) {
            return None;
        }
        parse_head(limits, buf.get(..head_len)?).ok()
    }

    /// Scan new bytes for the blank line ending the head; returns the head length.
    /// Between line ends it jumps from LF to LF eight bytes at a time; only
    /// the one or two bytes after each LF go through the line-end state.
    fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = self.scanned.min(buf.len());
        while let Some(&b) = buf.get(i) {
            if self.eol == 0 {
                match find_lf(&buf[i..]) {
                    Some(off) => {
                        i += off + 1;
                        self.eol = 1;
                    }
                    None => i = buf.len(),
                }
                continue;
            }
            i += 1;
            match (b, self.eol) {
                (b'\n', _) => {
                    self.scanned = i;
                    return Some(i);
                }
                (b'\r', 1) => self.eol = 2,
                _ => self.eol = 0,
            }
        }
        self.scanned = i;
        None
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of the result is set where `w` has a zero byte; the
/// lowest set bit marks the first zero byte exactly (higher ones may be false
/// positives caused by the borrow, which callers never look at).
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

#[inline(always)]
fn load(c: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    u64::from_le_bytes(a)
}

/// Position of the first `\n` in `s`, eight bytes per step.
#[inline]
fn find_lf(s: &[u8]) -> Option<usize> {
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let z = zero_bytes(load(c) ^ LF);
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

/// Whether `s` contains a CR or a NUL byte, eight bytes per step.
#[inline]
fn has_cr_or_nul(s: &[u8]) -> bool {
    const CR: u64 = LO * b'\r' as u64;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = load(c);
        if zero_bytes(w) | zero_bytes(w ^ CR) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b == b'\r' || b == 0)
}

/// The lines of a head, without their LF or CR LF ends.
struct Lines<'b>(&'b [u8]);

impl<'b> Iterator for Lines<'b> {
    type Item = &'b [u8];

    fn next(&mut self) -> Option<&'b [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let (line, rest) = match find_lf(self.0) {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (self.0, &[][..]),
        };
        self.0 = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// RFC 9110 `tchar`, as a table.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

#[inline]
fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// `line.split(' ')` when it yields exactly three parts (any of them may be
/// empty), else `None`s.
fn split3_at_spaces(line: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let sp = |s: &str| s.bytes().position(|b| b == b' ');
    let Some(a) = sp(line) else {
        return (None, None, None);
    };
    let rest = &line[a + 1..];
    let Some(b) = sp(rest) else {
        return (None, None, None);
    };
    let version = &rest[b + 1..];
    if sp(version).is_some() {
        return (None, None, None);
    }
    (Some(&line[..a]), Some(&rest[..b]), Some(version))
}

/// Parse a complete head (ending with the blank line).
fn parse_head<'b>(limits: &HttpLimits, head: &'b [u8]) -> Result<Request<'b>, HttpError> {
    let mut lines = Lines(head);
    let line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let line = std::str::from_utf8(line).map_err(|_| HttpError::BadRequestLine)?;
    // Exactly three parts separated by single spaces. Found byte by byte:
    // `str::split(' ')` sets up a memchr search per part, a tenth of the
    // head's parse for a request line this short.
    let (Some(method), Some(target), Some(version)) = split3_at_spaces(line) else {
        return Err(HttpError::BadRequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HttpError::BadRequestLine);
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.len() == 8 && v.starts_with("HTTP/") && v.as_bytes()[6] == b'.' => {
            return Err(HttpError::UnsupportedHttpVersion)
        }
        _ => return Err(HttpError::BadRequestLine),
    };
    let target = origin_form(target)?;
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };

    let mut headers = Vec::with_capacity(16);
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            // Obsolete line folding (RFC 7230 §3.2.4): reject.
            return Err(HttpError::BadHeader);
        }
        // The name is one or more tchars, directly followed by the colon.
        let colon = line
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(line.len());
        if colon == 0 || line.get(colon) != Some(&b':') {
            return Err(HttpError::BadHeader);
        }
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if has_cr_or_nul(value) {
            return Err(HttpError::BadHeader);
        }
        if headers.len() == limits.max_headers {
            return Err(HttpError::TooManyHeaders);
        }
        debug_assert!(name.is_ascii());
        // SAFETY: every byte of `name` passed `is_tchar`, whose table holds
        // only ASCII bytes, and ASCII is valid UTF-8. (A checked conversion
        // here cost about a tenth of a browser handshake.)
        let name = unsafe { std::str::from_utf8_unchecked(name) };
        headers.push(Header {
            name,
            value: trim(value),
        });
    }
    Ok(Request {
        method,
        target,
        path,
        query,
        minor_version,
        headers,
        body: &[],
    })
}

/// Reduce a request target to origin form (`/path?query`).
fn origin_form(target: &str) -> Result<&str, HttpError> {
    if target.starts_with('/') || target == "*" {
        return Ok(target);
    }
    for scheme in ["http://", "https://", "ws://", "wss://"] {
        // `get` rather than indexing: a non-ASCII target may have no char
        // boundary at `scheme.len()`, and slicing there would panic.
        let prefix = target.get(..scheme.len());
        if target.len() > scheme.len() && prefix.is_some_and(|p| p.eq_ignore_ascii_case(scheme)) {
            let rest = &target[scheme.len()..];
            return Ok(rest.find('/').map(|i| &rest[i..]).unwrap_or("/"));
        }
    }
    Err(HttpError::BadRequestLine)
}

/// The body length announced by the request, checked against the limit.
fn content_length(req: &Request<'_>, limits: &HttpLimits) -> Result<usize, HttpError> {
    // One pass: any Transfer-Encoding is refused, every Content-Length must agree.
    let mut len: Option<u64> = None;
    let mut bad_length = false;
    for h in &req.headers {
        let n = h.name.as_bytes();
        if n.len() == 17 && n.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(HttpError::TransferEncodingNotSupported);
        }
        if bad_length || n.len() != 14 || !n.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if h.value.is_empty() || h.value.len() > 19 || !h.value.iter().all(u8::is_ascii_digit) {
            bad_length = true;
            continue;
        }
        let v = h
            .value
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + (d - b'0') as u64);
        if len.is_some_and(|l| l != v) {
            bad_length = true;
            continue;
        }
        len = Some(v);
    }
    if bad_length {
        return Err(HttpError::BadContentLength);
    }
    let len = len.unwrap_or(0);
    if len > limits.max_body as u64 {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(len as usize)
}

/// The reason phrase for the statuses this server sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Append a complete HTTP/1.1 response. `extra_headers` are whole header
/// lines, each ending in CRLF. With `close`, the response carries
/// `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    close: bool,
) {
    write_response_head(out, status, content_type, extra_headers, body.len(), close);
    out.extend_from_slice(body);
}

/// Append the head of an HTTP/1.1 response whose body is `content_length`
/// bytes, without the body: the answer to a HEAD request (RFC 9110 §9.3.2:
/// the same header fields as GET, Content-Length included, no content).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    content_length: usize,
    close: bool,
) {
    let mut head = String::with_capacity(128 + extra_headers.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\n",
        status_text(status),
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str(extra_headers);
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_line_splits_like_str_split() {
        for line in [
            "GET / HTTP/1.1",
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 ",
            " GET / HTTP/1.1",
            "GET /",
            "GET",
            "",
            "  ",
            "a b c",
            "a b c d",
            "GET /é?x=ü HTTP/1.1",
        ] {
            let mut p = line.split(' ');
            let want = match (p.next(), p.next(), p.next(), p.next()) {
                (a @ Some(_), b @ Some(_), c @ Some(_), None) => (a, b, c),
                _ => (None, None, None),
            };
            assert_eq!(super::split3_at_spaces(line), want, "{line:?}");
        }
    }

    use super::*;

    #[test]
    fn word_scans_match_byte_loops() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'a'; len];
                if at < len {
                    v[at] = b'\n';
                }
                let want = v.iter().position(|&b| b == b'\n');
                assert_eq!(find_lf(&v), want, "len {len} at {at}");
                for special in [b'\r', 0, b'\n'] {
                    let mut w = vec![0x8du8; len];
                    if at < len {
                        w[at] = special;
                    }
                    let want = w.iter().any(|&b| b == b'\r' || b == 0);
                    assert_eq!(has_cr_or_nul(&w), want, "len {len} at {at} byte {special}");
                }
            }
        }
        // Bytes that differ from the target only in the top bit or by a
        // borrow must not match.
        assert_eq!(find_lf(b"\x8a\x0b\x09\x8a\x0a\x00\x00\x00\x0a"), Some(4));
        assert!(!has_cr_or_nul(
            b"\x8d\x0c\x0e\x01\x80\x8d\x0d\x0d"[..5].as_ref()
        ));
    }

    #[test]
    fn tchar_table() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), want, "{b}");
        }
    }
}
