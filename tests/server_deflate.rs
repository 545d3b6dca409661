//! permessage-deflate over real sockets (issue 11): the daemon negotiates
//! it, sends publications and broadcasts as compressed frames (RSV1 checked
//! on the wire), inflates what clients send with a hard limit, and closes
//! with 1002/1007/1009 as RFC 7692 and RFC 6455 say. Also the Python
//! `websockets` client, which offers permessage-deflate by default.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::push::{http, publish};
use common::{upgrade_request, Daemon, IO_TIMEOUT};
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress};
use wspush::protocol::decode::RSV1;
use wspush::protocol::deflate::{Deflater, Inflater};
use wspush::protocol::{encode, Decoder, DecoderConfig, Message, OpCode, Role};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A raw client that reads frames with their RSV1 bit.
struct Client {
    stream: TcpStream,
    head: String,
    dec: Decoder,
    cfg: DecoderConfig,
    buf: Vec<u8>,
    start: usize,
    /// The first byte of every frame header seen, in order (the wire's RSV1).
    first_bytes: Vec<u8>,
}

/// A frame as received: opcode, RSV1 on the wire, payload as sent.
#[derive(Debug)]
struct Got {
    op: OpCode,
    compressed: bool,
    payload: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, path: &str, extra: &str) -> Client {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
            .write_all(upgrade_request(path, extra).as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut b).unwrap(), 1, "EOF during handshake");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut cfg = DecoderConfig::for_role(Role::Client);
        cfg.allowed_rsv = RSV1;
        Client {
            stream,
            head,
            dec: Decoder::new(),
            cfg,
            buf: Vec::new(),
            start: 0,
            first_bytes: Vec::new(),
        }
    }

    fn extensions(&self) -> Option<String> {
        self.head
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("sec-websocket-extensions:")
            })
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
    }

    /// The next message, with RSV1 as it was on the wire.
    fn next(&mut self) -> Option<Got> {
        loop {
            if self.start < self.buf.len() {
                // Record the header byte before the decoder unmasks anything.
                if self.dec.is_idle() {
                    self.first_bytes.push(self.buf[self.start]);
                }
                let d = self
                    .dec
                    .decode(&self.cfg, &mut self.buf[self.start..])
                    .expect("server frame");
                self.start += d.consumed;
                if let Some(m) = d.message {
                    let (op, payload) = match m {
                        Message::Text(t) => (OpCode::Text, t.as_bytes().to_vec()),
                        Message::Binary(b) => (d.compressed.unwrap_or(OpCode::Binary), b.to_vec()),
                        Message::Ping(p) => (OpCode::Ping, p.to_vec()),
                        Message::Pong(p) => (OpCode::Pong, p.to_vec()),
                        Message::Close(c) => {
                            let mut p = Vec::new();
                            if let Some(c) = c {
                                p.extend_from_slice(&c.code.to_be_bytes());
                            }
                            (OpCode::Close, p)
                        }
                    };
                    return Some(Got {
                        op,
                        compressed: d.compressed.is_some(),
                        payload,
                    });
                }
                continue;
            }
            self.buf.clear();
            self.start = 0;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message's text, inflated if it was compressed.
    fn next_text(&mut self) -> (String, bool) {
        let g = self.next().expect("a message");
        assert_eq!(g.op, OpCode::Text, "{g:?}");
        (String::from_utf8(plain(&g)).unwrap(), g.compressed)
    }

    fn send_frame(&mut self, b0: u8, payload: &[u8]) {
        let mut v = Vec::new();
        encode::masked_frame_into(&mut v, b0 & 0x80 != 0, OpCode::Text, payload, [1, 2, 3, 4]);
        v[0] = b0;
        self.stream.write_all(&v).unwrap();
    }

    fn close_code(&mut self) -> Option<u16> {
        while let Some(g) = self.next() {
            if g.op == OpCode::Close {
                return (g.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([g.payload[0], g.payload[1]]));
            }
        }
        None
    }
}

fn plain(g: &Got) -> Vec<u8> {
    if !g.compressed {
        return g.payload.clone();
    }
    let mut out = Vec::new();
    Inflater::default()
        .inflate(&g.payload, 64 << 20, &mut out)
        .expect("valid deflate from the server");
    out
}

fn zmsg(data: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    Deflater::new(15, true).compress(data, &mut z);
    z
}

/// ~1 KiB of JSON data.
fn json_kib() -> String {
    let items: Vec<String> = (0..18)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"title\":\"Breaking story number {i}\",\"score\":{}}}",
                i * 7
            )
        })
        .collect();
    format!("{{\"items\":[{}]}}", items.join(","))
}

fn subscribed(c: &mut Client) {
    let (w, _) = c.next_text();
    assert!(w.contains("\"op\":\"welcome\""), "{w}");
    let (s, _) = c.next_text();
    assert!(s.contains("\"op\":\"subscribed\""), "{s}");
}

#[test]
fn shared_publication_is_compressed_for_those_who_negotiated_and_plain_for_the_others() {
    let d = Daemon::start(&[]);
    let mut z = Client::connect(d.addr, "/ws?channel=news", OFFER);
    assert_eq!(
        z.extensions().as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut p = Client::connect(d.addr, "/ws?channel=news", "");
    assert_eq!(p.extensions(), None);
    subscribed(&mut z);
    subscribed(&mut p);
    let data = json_kib();
    assert!(data.len() > 900 && data.len() < 1100, "{}", data.len());
    publish(d.addr, "news", &data);
    let gz = z.next().unwrap();
    let gp = p.next().unwrap();
    assert!(gz.compressed, "RSV1 must be set for the deflate client");
    assert_eq!(
        *z.first_bytes.last().unwrap(),
        0x80 | 0x40 | 0x1,
        "FIN RSV1 text on the wire"
    );
    assert!(!gp.compressed);
    assert_eq!(*p.first_bytes.last().unwrap(), 0x81);
    let text = String::from_utf8(plain(&gz)).unwrap();
    assert_eq!(text.as_bytes(), &gp.payload[..]);
    assert!(text.contains("Breaking story number 11"));
    assert!(
        gz.payload.len() * 2 < gp.payload.len(),
        "compressed {} vs plain {}",
        gz.payload.len(),
        gp.payload.len()
    );
    // Under --compression-min-size: sent plain even to the deflate client.
    publish(d.addr, "news", "1");
    let g = z.next().unwrap();
    assert!(!g.compressed, "{} bytes", g.payload.len());
    assert!(String::from_utf8(g.payload).unwrap().contains("\"data\":1"));
    // Replies are compressed too (a pong is a control message: never).
    z.send_frame(
        0x81,
        format!("{{\"op\":\"ping\",\"id\":\"{}\"}}", "x".repeat(100)).as_bytes(),
    );
    let (t, c) = z.next_text();
    assert!(t.contains("pong"), "{t}");
    assert!(c, "a reply over the threshold is compressed");
}

#[test]
fn broadcast_and_client_compressed_messages() {
    let d = Daemon::start(&[]);
    // The chat room: a compressed message in, compressed frames out to
    // every member that negotiated, plain to the one that did not.
    let mut a = Client::connect(d.addr, "/broadcast", OFFER);
    let mut b = Client::connect(d.addr, "/broadcast", OFFER);
    let mut p = Client::connect(d.addr, "/broadcast", "");
    // Make sure all three are members before sending.
    let st = http(d.addr, "GET", "/healthz", "", b"");
    assert_eq!(st.0, 200);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let msg = json_kib();
    a.send_frame(0x80 | 0x40 | 0x1, &zmsg(msg.as_bytes()));
    for c in [&mut a, &mut b] {
        let (t, compressed) = c.next_text();
        assert_eq!(t, msg);
        assert!(compressed);
    }
    let (t, compressed) = p.next_text();
    assert_eq!(t, msg);
    assert!(!compressed);
    // Fragmented and compressed, RSV1 on the first frame only.
    let z = zmsg(msg.as_bytes());
    let (x, y) = z.split_at(z.len() / 2);
    b.send_frame(0x40 | 0x1, x);
    let mut v = Vec::new();
    encode::masked_frame_into(&mut v, true, OpCode::Continuation, y, [9, 9, 9, 9]);
    b.stream.write_all(&v).unwrap();
    assert_eq!(p.next_text(), (msg.clone(), false));
    // The API broadcast reaches the deflate client compressed.
    let (st, body) = http(
        d.addr,
        "POST",
        "/broadcast",
        "Content-Type: application/json\r\n",
        json_kib().as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    let (t, compressed) = a.next_text();
    if t == msg {
        // The room echo of b's message comes first.
        let (t, compressed) = a.next_text();
        assert!(t.contains("Breaking story"), "{t}");
        assert!(compressed);
    } else {
        assert!(t.contains("Breaking story"), "{t}");
        assert!(compressed);
    }
}

#[test]
fn echo_round_trip_and_protocol_errors() {
    let d = Daemon::start(&["--max-message-size", "65536"]);
    // Echo: compressed in, compressed out.
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    let msg = json_kib();
    c.send_frame(0x80 | 0x40 | 0x1, &zmsg(msg.as_bytes()));
    assert_eq!(c.next_text(), (msg.clone(), true));
    // Uncompressed frames are still fine on a negotiated connection.
    c.send_frame(0x81, msg.as_bytes());
    assert_eq!(c.next_text(), (msg.clone(), true));

    let cases: [(&str, u8, Vec<u8>, u16); 4] = [
        // 8 MiB of zeros in ~8 KiB: over --max-message-size once inflated.
        ("bomb", 0x80 | 0x40 | 0x2, zmsg(&vec![0u8; 8 << 20]), 1009),
        ("rsv1 ping", 0x80 | 0x40 | 0x9, vec![], 1002),
        (
            "invalid deflate",
            0x80 | 0x40 | 0x2,
            vec![0xff, 0xff, 0xff, 0xff],
            1007,
        ),
        (
            "invalid utf-8 inside",
            0x80 | 0x40 | 0x1,
            zmsg(&[0xc3, 0x28]),
            1007,
        ),
    ];
    for (what, b0, payload, code) in cases {
        let mut c = Client::connect(d.addr, "/echo", OFFER);
        c.send_frame(b0, &payload);
        assert_eq!(c.close_code(), Some(code), "{what}");
    }
    // RSV1 on a continuation frame.
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    let z = zmsg(msg.as_bytes());
    c.send_frame(0x40 | 0x1, &z[..10]);
    let mut v = Vec::new();
    encode::masked_frame_into(&mut v, true, OpCode::Continuation, &z[10..], [5, 6, 7, 8]);
    v[0] |= 0x40;
    c.stream.write_all(&v).unwrap();
    assert_eq!(c.close_code(), Some(1002), "rsv1 continuation");
    // RSV1 without having negotiated it.
    let mut c = Client::connect(d.addr, "/echo", "");
    c.send_frame(0x80 | 0x40 | 0x1, &z);
    assert_eq!(c.close_code(), Some(1002), "not negotiated");
    // The server still serves after all that.
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    c.send_frame(0x81, b"still here");
    assert_eq!(c.next_text(), ("still here".to_string(), false));
}

#[test]
fn dedicated_mode_keeps_its_context_per_connection() {
    let d = Daemon::start(&["--compression", "dedicated"]);
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    assert_eq!(
        c.extensions().as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let msg = json_kib();
    // Inflate as a browser does: one inflater for the whole connection.
    let mut keep = Decompress::new(false);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        c.send_frame(0x81, msg.as_bytes());
        let g = c.next().unwrap();
        assert!(g.compressed);
        sizes.push(g.payload.len());
        let mut input = g.payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(64 << 10);
        keep.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, msg.as_bytes());
    }
    // The repeats are back references into the previous message.
    assert!(sizes[1] * 4 < sizes[0], "{sizes:?}");
    // A client asking for server_no_context_takeover gets it.
    let mut c = Client::connect(
        d.addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=10\r\n",
    );
    assert_eq!(
        c.extensions().as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
    );
    let mut sizes = Vec::new();
    for _ in 0..2 {
        c.send_frame(0x81, msg.as_bytes());
        let g = c.next().unwrap();
        assert!(g.compressed);
        // Readable with a 1 KiB window and no context.
        let mut d = Decompress::new_with_window_bits(false, 10);
        let mut input = g.payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(64 << 10);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, msg.as_bytes());
        sizes.push(g.payload.len());
    }
    assert_eq!(sizes[0], sizes[1]);
    // Client messages with client context takeover would be refused by
    // a reset inflater: the server asked for client_no_context_takeover,
    // and a client honouring it sends self-contained messages.
    let mut z = Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(4096);
    z.compress_vec(msg.as_bytes(), &mut out, FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    c.send_frame(0x80 | 0x40 | 0x1, &out);
    let (t, _) = c.next_text();
    assert_eq!(t, msg);
}

#[test]
fn dedicated_window_is_bounded_by_the_flag() {
    let d = Daemon::start(&[
        "--compression",
        "dedicated",
        "--compression-window-bits",
        "10",
    ]);
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    assert_eq!(
        c.extensions().as_deref(),
        Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=10")
    );
    let msg = json_kib();
    let mut keep = Decompress::new_with_window_bits(false, 10);
    for _ in 0..3 {
        c.send_frame(0x81, msg.as_bytes());
        let g = c.next().unwrap();
        assert!(g.compressed);
        let mut input = g.payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(64 << 10);
        keep.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, msg.as_bytes());
    }
}

#[test]
fn off_declines_and_rsv1_is_1002() {
    let d = Daemon::start(&["--compression", "off"]);
    let mut c = Client::connect(d.addr, "/echo", OFFER);
    assert_eq!(c.extensions(), None);
    c.send_frame(0x80 | 0x40 | 0x1, &zmsg(b"hello hello hello"));
    assert_eq!(c.close_code(), Some(1002));
    // Bad offers decline the extension, not the connection.
    let d = Daemon::start(&[]);
    let c = Client::connect(
        d.addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n",
    );
    assert_eq!(c.extensions(), None);
}

/// The Python `websockets` client (permessage-deflate on by default): it
/// negotiates, receives a compressed broadcast and publication, and its own
/// compressed messages reach a raw client that checks RSV1.
#[test]
fn python_websockets_client() {
    let ok = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("WSPUSH_REQUIRE_PYTHON").is_none(),
            "python3 with websockets is required"
        );
        eprintln!("SKIPPED: python3 -m pip install websockets");
        return;
    }
    let d = Daemon::start(&[]);
    let script = r#"
import asyncio, sys, websockets
async def main():
    url = sys.argv[1]
    async with websockets.connect(url + "/ws?channel=news") as ws, websockets.connect(url + "/broadcast") as room:
        print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
        print("NEG", [type(e).__name__ for e in ws.protocol.extensions], flush=True)
        await ws.recv(); await ws.recv()
        print("READY", flush=True)
        msg = await ws.recv()
        print("PUB", len(msg), msg[:40], flush=True)
        msg = await ws.recv()
        print("BCAST", len(msg), msg[:40], flush=True)
        await room.send("hello from python " * 20)
        await asyncio.sleep(0.5)
asyncio.run(main())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &format!("ws://{}", d.addr)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut lines = Vec::new();
    use std::io::BufRead;
    while out.read_line(&mut line).unwrap() > 0 {
        lines.push(line.trim().to_string());
        if line.starts_with("READY") {
            break;
        }
        line.clear();
    }
    assert!(
        lines[0].starts_with("EXT permessage-deflate; server_no_context_takeover"),
        "{lines:?}"
    );
    assert!(lines[1].contains("PerMessageDeflate"), "{lines:?}");
    // A raw deflate client in the room sees python's message compressed.
    let mut raw = Client::connect(d.addr, "/broadcast", OFFER);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let data = json_kib();
    publish(d.addr, "news", &data);
    let (st, body) = http(
        d.addr,
        "POST",
        "/broadcast",
        "Content-Type: application/json\r\n",
        data.as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "python failed: {rest}");
    assert!(rest.contains("PUB "), "{rest}");
    assert!(rest.contains("BCAST "), "{rest}");
    // The room got the API broadcast first, then python's message.
    let (t, c) = raw.next_text();
    assert!(t.contains("Breaking story"), "{t}");
    assert!(c);
    let (t, c) = raw.next_text();
    assert_eq!(t, "hello from python ".repeat(20));
    assert!(c, "relayed compressed");
}

/// A pipelined burst is delivered as one run: plain subscribers get the
/// frames back to back in one chunk, a deflate subscriber each
/// publication's own compressed frame (small ones plain), all in order.
#[test]
fn a_burst_reaches_deflate_and_plain_subscribers_in_order() {
    let d = Daemon::start(&["--workers", "1"]);
    let mut z = Client::connect(d.addr, "/ws?channel=news", OFFER);
    let mut p = Client::connect(d.addr, "/ws?channel=news", "");
    subscribed(&mut z);
    subscribed(&mut p);
    let big = json_kib();
    let batch: Vec<(&str, String)> = (0..12)
        .map(|i| {
            (
                "news",
                if i % 3 == 1 {
                    i.to_string()
                } else {
                    big.clone()
                },
            )
        })
        .collect();
    common::push::publish_pipelined(d.addr, &batch);
    for (i, (_, data)) in batch.iter().enumerate() {
        let want = format!("\"seq\":{},\"data\":{data}}}", i + 1);
        let (tz, compressed) = z.next_text();
        assert!(tz.ends_with(&want), "deflate client, #{}: {tz}", i + 1);
        assert_eq!(compressed, data.len() > 64, "#{}", i + 1);
        let (tp, compressed) = p.next_text();
        assert!(!compressed);
        assert_eq!(tp, tz, "#{}", i + 1);
    }
}
