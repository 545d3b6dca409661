//! HTTP/1.1 request parser rules of issue 2 (§1), each input fed whole, byte
//! by byte and in random splits (see `protocol_support`).

mod protocol_support;

use protocol_support::*;
use wspush::protocol::http::{self, percent_decode, tokens, HttpLimits, RequestParser};
use wspush::protocol::HttpError;

fn limits() -> HttpLimits {
    HttpLimits::default()
}

fn header<'a>(req: &'a Req, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| &v[..])
}

#[test]
fn default_limits() {
    let l = HttpLimits::default();
    assert_eq!(l.max_head, 8192);
    assert_eq!(l.max_headers, 64);
    assert_eq!(l.max_body, 1 << 20);
}

#[test]
fn plain_get_with_query() {
    let input =
        b"GET /api/stats?topic=news&x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    match parse_all_ways(&limits(), input) {
        Parsed::Done { req, len, rest } => {
            assert_eq!(req.method, "GET");
            assert_eq!(req.target, "/api/stats?topic=news&x=1");
            assert_eq!(req.path, "/api/stats");
            assert_eq!(req.query.as_deref(), Some("topic=news&x=1"));
            assert_eq!(req.minor_version, 1);
            assert_eq!(
                req.headers,
                vec![
                    ("Host".to_string(), b"example.com".to_vec()),
                    ("Accept".to_string(), b"*/*".to_vec())
                ]
            );
            assert!(req.body.is_empty());
            assert_eq!(len, input.len());
            assert!(rest.is_empty());
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn incomplete_heads_need_more() {
    let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 0..full.len() {
        assert_eq!(
            parse_all_ways(&limits(), &full[..cut]),
            Parsed::NeedMore,
            "cut {cut}"
        );
    }
}

#[test]
fn bytes_after_the_head_are_handed_back_untouched() {
    // A client's first frame sent in the same packet as the upgrade.
    let mut frame = Vec::new();
    wspush::protocol::encode::masked_frame_into(
        &mut frame,
        true,
        wspush::protocol::OpCode::Text,
        b"hello",
        [1, 2, 3, 4],
    );
    let mut input = CHROMIUM_UPGRADE.to_vec();
    input.extend_from_slice(&frame);
    match parse_all_ways(&limits(), &input) {
        Parsed::Done { req, len, rest } => {
            assert_eq!(len, CHROMIUM_UPGRADE.len());
            assert_eq!(rest, frame);
            assert_eq!(req.path, "/ws");
        }
        other => panic!("got {other:?}"),
    }
    // A pipelined second request: the parser answers the first, then after
    // a reset parses the second from the rest.
    let two = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    let Parsed::Done { req, rest, .. } = parse_all_ways(&limits(), two) else {
        panic!("first")
    };
    assert_eq!(req.path, "/a");
    assert_eq!(parse_all_ways(&limits(), &rest).req().path, "/b");
    let mut p = RequestParser::new();
    let (r, n) = p.parse(&limits(), two).expect("ok").expect("complete");
    assert_eq!(r.path, "/a");
    p.reset();
    let (r, m) = p
        .parse(&limits(), &two[n..])
        .expect("ok")
        .expect("complete");
    assert_eq!(r.path, "/b");
    assert_eq!(n + m, two.len());
}

#[test]
fn content_length_bodies() {
    let input = b"POST /api/publish?topic=t HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello worldGET /next";
    match parse_all_ways(&limits(), input) {
        Parsed::Done { req, len, rest } => {
            assert_eq!(req.method, "POST");
            assert_eq!(req.body, b"hello world");
            assert_eq!(rest, b"GET /next");
            assert_eq!(len, input.len() - 9);
        }
        other => panic!("got {other:?}"),
    }
    // Body not yet complete: need more, at every cut inside the body.
    let head_len = input.len() - 9 - 11;
    for cut in head_len..head_len + 11 {
        assert_eq!(
            parse_all_ways(&limits(), &input[..cut]),
            Parsed::NeedMore,
            "cut {cut}"
        );
    }
    // Content-Length: 0 and a repeated identical Content-Length are fine.
    let input = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_all_ways(&limits(), input).req().body.is_empty());
    let input = b"PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok";
    assert_eq!(parse_all_ways(&limits(), input).req().body, b"ok");
    // A binary body may contain CR LF and anything else.
    let input = b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n\r\n\r\n\0\xff";
    assert_eq!(
        parse_all_ways(&limits(), input).req().body,
        b"\r\n\r\n\0\xff"
    );
}

#[test]
fn bad_content_length_is_400() {
    for cl in [
        "abc",
        "-1",
        "1 2",
        "",
        "+5",
        "0x10",
        "99999999999999999999",
        "1,1",
    ] {
        let input = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
        let e = parse_all_ways(&limits(), input.as_bytes()).err();
        assert_eq!(e, HttpError::BadContentLength, "{cl:?}");
        assert_eq!(e.status(), 400);
    }
    let input = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(
        parse_all_ways(&limits(), input).err(),
        HttpError::BadContentLength
    );
}

#[test]
fn transfer_encoding_is_501() {
    let input =
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let e = parse_all_ways(&limits(), input).err();
    assert_eq!(e, HttpError::TransferEncodingNotSupported);
    assert_eq!(e.status(), 501);
}

#[test]
fn body_over_the_limit_is_413_from_the_head() {
    // Default limit: 1 MiB. Decided from the head alone, no body needed.
    let over = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    let e = parse_all_ways(&limits(), over.as_bytes()).err();
    assert_eq!(e, HttpError::BodyTooLarge);
    assert_eq!(e.status(), 413);
    let at = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    assert_eq!(parse_all_ways(&limits(), at.as_bytes()), Parsed::NeedMore);
    // Configurable.
    let small = HttpLimits {
        max_body: 10,
        ..limits()
    };
    let ok = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    assert_eq!(parse_all_ways(&small, ok).req().body, b"0123456789");
    let bad = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n01234567890";
    assert_eq!(parse_all_ways(&small, bad).err(), HttpError::BodyTooLarge);
    let none = HttpLimits {
        max_body: 0,
        ..limits()
    };
    assert_eq!(
        parse_all_ways(&none, b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx").err(),
        HttpError::BodyTooLarge
    );
    assert!(parse_all_ways(&none, b"GET / HTTP/1.1\r\n\r\n")
        .req()
        .body
        .is_empty());
}

fn head_of_len(total: usize) -> Vec<u8> {
    // "GET / HTTP/1.1\r\nX: vvv...\r\n\r\n" of exactly `total` bytes.
    let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
    let v = "v".repeat(total - fixed);
    format!("GET / HTTP/1.1\r\nX: {v}\r\n\r\n").into_bytes()
}

#[test]
fn head_over_8_kib_is_431() {
    let at = head_of_len(8192);
    assert_eq!(at.len(), 8192);
    assert_eq!(parse_all_ways(&limits(), &at).req().headers.len(), 1);
    let over = head_of_len(8193);
    let e = parse_all_ways(&limits(), &over).err();
    assert_eq!(e, HttpError::HeadTooLarge);
    assert_eq!(e.status(), 431);
    // A head that never ends is refused as soon as it passes the limit: the
    // caller never buffers more than 8 KiB + 1.
    let endless = vec![b'a'; 20_000];
    assert_eq!(
        parse_all_ways(&limits(), &endless).err(),
        HttpError::HeadTooLarge
    );
    let mut p = RequestParser::new();
    let mut buf = Vec::new();
    let mut refused_at = None;
    for (i, b) in endless.iter().enumerate() {
        buf.push(*b);
        if p.parse(&limits(), &buf).is_err() {
            refused_at = Some(i + 1);
            break;
        }
    }
    assert_eq!(refused_at, Some(8193));
}

#[test]
fn head_limit_is_configurable() {
    let l = HttpLimits {
        max_head: 100,
        ..limits()
    };
    assert!(matches!(
        parse_all_ways(&l, &head_of_len(100)),
        Parsed::Done { .. }
    ));
    assert_eq!(
        parse_all_ways(&l, &head_of_len(101)).err(),
        HttpError::HeadTooLarge
    );
    let l = HttpLimits {
        max_head: 64 << 10,
        ..limits()
    };
    assert!(matches!(
        parse_all_ways(&l, &head_of_len(9000)),
        Parsed::Done { .. }
    ));
}

fn with_headers(n: usize) -> Vec<u8> {
    let mut s = String::from("GET / HTTP/1.1\r\n");
    for i in 0..n {
        s.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[test]
fn more_than_64_headers_is_431() {
    assert_eq!(
        parse_all_ways(&limits(), &with_headers(64))
            .req()
            .headers
            .len(),
        64
    );
    let e = parse_all_ways(&limits(), &with_headers(65)).err();
    assert_eq!(e, HttpError::TooManyHeaders);
    assert_eq!(e.status(), 431);
    let l = HttpLimits {
        max_headers: 3,
        ..limits()
    };
    assert_eq!(parse_all_ways(&l, &with_headers(3)).req().headers.len(), 3);
    assert_eq!(
        parse_all_ways(&l, &with_headers(4)).err(),
        HttpError::TooManyHeaders
    );
    let l = HttpLimits {
        max_headers: 200,
        ..limits()
    };
    assert_eq!(
        parse_all_ways(&l, &with_headers(150)).req().headers.len(),
        150
    );
}

#[test]
fn header_names_are_case_insensitive_and_values_trimmed() {
    let input =
        b"GET / HTTP/1.1\r\nhOsT:   example.com \t\r\nCONTENT-length:3\r\nX-Empty:\r\n\r\nabc";
    let Parsed::Done { req, .. } = parse_all_ways(&limits(), input) else {
        panic!()
    };
    assert_eq!(header(&req, "Host"), Some(&b"example.com"[..]));
    assert_eq!(header(&req, "x-empty"), Some(&b""[..]));
    assert_eq!(req.body, b"abc");
    // Through the borrowed API too.
    let mut p = RequestParser::new();
    let (r, _) = p.parse(&limits(), input).expect("ok").expect("done");
    assert_eq!(r.header("HOST"), Some(&b"example.com"[..]));
    assert_eq!(r.header_str("host"), Some("example.com"));
    assert_eq!(r.header("missing"), None);
}

#[test]
fn connection_and_upgrade_are_token_lists() {
    let input = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c ,  WebSocket\r\nX: a\r\nConnection: foo\r\n\r\n";
    let mut p = RequestParser::new();
    let (r, _) = p.parse(&limits(), input).expect("ok").expect("done");
    assert!(r.has_token("connection", "upgrade"));
    assert!(r.has_token("Connection", "KEEP-ALIVE"));
    assert!(
        r.has_token("connection", "foo"),
        "tokens of a repeated header count too"
    );
    assert!(r.has_token("upgrade", "websocket"));
    assert!(r.has_token("upgrade", "h2c"));
    assert!(!r.has_token("connection", "close"));
    assert!(!r.has_token("connection", "keep"), "no substring matches");
    assert!(!r.has_token("x", "b"));
    let toks: Vec<&[u8]> = tokens(b" a, ,b\t,c ,, ").collect();
    assert_eq!(toks, vec![&b"a"[..], b"b", b"c"]);
    let input = b"GET / HTTP/1.1\r\nConnection: upgraded\r\n\r\n";
    let (r, _) = RequestParser::new()
        .parse(&limits(), input)
        .expect("ok")
        .expect("done");
    assert!(!r.has_token("connection", "upgrade"));
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let cases: [(&[u8], bool); 4] = [
        (b"GET / HTTP/1.1\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
    ];
    for (input, ka) in cases {
        let (r, _) = RequestParser::new()
            .parse(&limits(), input)
            .expect("ok")
            .expect("done");
        assert_eq!(r.keep_alive(), ka, "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn bad_request_lines_are_400_and_versions_505() {
    let bad: [&[u8]; 12] = [
        b"GET\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b" GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTX/1.1\r\n\r\n",
        b"GET / http/1.1\r\n\r\n",
        b"GET relative HTTP/1.1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
        b"GET / HTTP/1.1x\r\n\r\n",
    ];
    for input in bad {
        let e = parse_all_ways(&limits(), input).err();
        assert_eq!(
            e,
            HttpError::BadRequestLine,
            "{}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(e.status(), 400);
    }
    for input in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
    ] {
        let e = parse_all_ways(&limits(), input).err();
        assert_eq!(e, HttpError::UnsupportedHttpVersion);
        assert_eq!(e.status(), 505);
    }
    let r = parse_all_ways(&limits(), b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.req().minor_version, 0);
}

#[test]
fn bad_header_lines_are_400() {
    let bad: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n",
    ];
    for input in bad {
        let e = parse_all_ways(&limits(), input).err();
        assert_eq!(
            e,
            HttpError::BadHeader,
            "{}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn bare_lf_line_endings_are_accepted() {
    let input = b"GET /x HTTP/1.1\nHost: h\nContent-Length: 2\n\nhiREST";
    let Parsed::Done { req, rest, .. } = parse_all_ways(&limits(), input) else {
        panic!()
    };
    assert_eq!(req.path, "/x");
    assert_eq!(req.body, b"hi");
    assert_eq!(rest, b"REST");
}

#[test]
fn absolute_form_targets_are_reduced_to_origin_form() {
    for (target, path, query) in [
        ("http://example.com/a/b?c=d", "/a/b", Some("c=d")),
        ("HTTPS://example.com", "/", None),
        ("ws://h:8080/ws", "/ws", None),
        ("wss://h/", "/", None),
        ("*", "*", None),
    ] {
        let input = format!("OPTIONS {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let r = parse_all_ways(&limits(), input.as_bytes());
        assert_eq!(r.req().path, path, "{target}");
        assert_eq!(r.req().query.as_deref(), query, "{target}");
    }
}

#[test]
fn non_ascii_targets_do_not_panic() {
    // Regression: the absolute-form check sliced the target at a byte index
    // that need not be a char boundary.
    for target in ["http:/€x", "ws:€€", "wss:/éé", "€€€€€€€€", "https:/é"]
    {
        let input = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            parse_all_ways(&limits(), input.as_bytes()).err(),
            HttpError::BadRequestLine,
            "{target}"
        );
    }
    // Non-ASCII in an origin-form path is passed through.
    let r = parse_all_ways(&limits(), "GET /é?q=€ HTTP/1.1\r\n\r\n".as_bytes());
    assert_eq!(r.req().path, "/é");
}

#[test]
fn query_pairs_and_percent_decoding() {
    let input = b"GET /p?topic=a%20b&empty=&flag&x=1+2 HTTP/1.1\r\n\r\n";
    let (r, _) = RequestParser::new()
        .parse(&limits(), input)
        .expect("ok")
        .expect("done");
    let pairs: Vec<(&str, &str)> = r.query_pairs().collect();
    assert_eq!(
        pairs,
        vec![
            ("topic", "a%20b"),
            ("empty", ""),
            ("flag", ""),
            ("x", "1+2")
        ]
    );
    assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
    assert_eq!(percent_decode("1+2").as_deref(), Some("1 2"));
    assert_eq!(percent_decode("%e2%82%AC").as_deref(), Some("€"));
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    assert_eq!(percent_decode("%é1"), None);
}

#[test]
fn refusals_are_complete_responses_with_a_one_line_reason() {
    use HttpError::*;
    let all = [
        (HeadTooLarge, 431, "Request Header Fields Too Large"),
        (TooManyHeaders, 431, "Request Header Fields Too Large"),
        (BodyTooLarge, 413, "Content Too Large"),
        (BadRequestLine, 400, "Bad Request"),
        (BadHeader, 400, "Bad Request"),
        (UnsupportedHttpVersion, 505, "HTTP Version Not Supported"),
        (BadContentLength, 400, "Bad Request"),
        (TransferEncodingNotSupported, 501, "Not Implemented"),
        (MethodNotAllowed, 405, "Method Not Allowed"),
        (UpgradeRequiresHttp11, 400, "Bad Request"),
        (MissingHost, 400, "Bad Request"),
        (NotWebSocketUpgrade, 400, "Bad Request"),
        (MissingConnectionUpgrade, 400, "Bad Request"),
        (BadKey, 400, "Bad Request"),
        (UnsupportedWebSocketVersion, 426, "Upgrade Required"),
        (OriginNotAllowed, 403, "Forbidden"),
    ];
    for (e, status, text) in all {
        assert_eq!(e.status(), status, "{e:?}");
        let mut out = Vec::new();
        e.write_response(&mut out);
        let s = String::from_utf8(out).expect("ASCII response");
        let (head, body) = s.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} {text}\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains("\r\nContent-Type: text/plain"));
        assert_eq!(body, format!("{}\n", e.reason()));
        assert_eq!(body.lines().count(), 1, "one-line reason");
        let any: wspush::protocol::Error = e.into();
        assert_eq!(any.http_status(), Some(status));
        assert_eq!(any.close_code(), None);
        assert!(e.to_string().starts_with(&status.to_string()));
    }
}

#[test]
fn write_response_formats_status_headers_and_body() {
    let mut out = Vec::new();
    http::write_response(
        &mut out,
        200,
        "application/json",
        "X-A: 1\r\n",
        b"{}",
        false,
    );
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}".to_vec()
    );
    assert_eq!(http::status_text(404), "Not Found");
    assert_eq!(http::status_text(299), "Unknown");
}

#[test]
fn parser_keeps_answering_the_same_request_until_reset() {
    let input = b"GET /a HTTP/1.1\r\n\r\nxyz";
    let mut p = RequestParser::new();
    let (r, n) = p.parse(&limits(), input).expect("ok").expect("done");
    assert_eq!((r.path, n), ("/a", input.len() - 3));
    let (r, n2) = p.parse(&limits(), input).expect("ok").expect("done");
    assert_eq!((r.path, n2), ("/a", n));
}
