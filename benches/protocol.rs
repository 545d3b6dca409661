//! Criterion benchmarks of the sans-IO protocol core (issue 2):
//! decode+unmask of client frames, encoding, UTF-8 validation, and a
//! browser handshake parsed, validated and answered.
//!
//! Run: `cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use wspush::protocol::encode;
use wspush::protocol::handshake::{self, HandshakeConfig};
use wspush::protocol::http::{HttpLimits, RequestParser};
use wspush::protocol::mask::apply_mask;
use wspush::protocol::utf8::Utf8Validator;
use wspush::protocol::{Decoder, DecoderConfig, Message, OpCode};

const SIZES: [(usize, &str); 4] = [
    (20, "20B"),
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
];

fn client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    encode::masked_frame_into(&mut v, true, op, payload, [0x37, 0xfa, 0x21, 0x3d]);
    v
}

/// Decode one masked client frame (unmasking it in place). Each iteration
/// copies the masked frame into the work buffer first, since decoding
/// unmasks in place; `memcpy` is reported separately as a baseline.
fn bench_decode(c: &mut Criterion) {
    let cfg = DecoderConfig::default();
    let mut g = c.benchmark_group("decode_binary");
    for (size, name) in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let frame = client_frame(OpCode::Binary, &payload);
        let mut work = frame.clone();
        let mut dec = Decoder::new();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("copy+decode+unmask", name), |b| {
            b.iter(|| {
                work.copy_from_slice(&frame);
                let d = dec
                    .decode(&cfg, black_box(&mut work[..]))
                    .expect("valid frame");
                match d.message {
                    Some(Message::Binary(p)) => black_box(p.len()),
                    _ => unreachable!(),
                }
            })
        });
        g.bench_function(BenchmarkId::new("copy_only", name), |b| {
            b.iter(|| {
                work.copy_from_slice(black_box(&frame));
                black_box(work.len())
            })
        });
    }
    g.finish();

    // Text frames also go through UTF-8 validation.
    let mut g = c.benchmark_group("decode_text");
    for (size, name) in SIZES {
        let payload: String = "The quick brown fox jumps over the lazy dog. ".repeat(size / 45 + 1)
            [..size]
            .to_string();
        let frame = client_frame(OpCode::Text, payload.as_bytes());
        let mut work = frame.clone();
        let mut dec = Decoder::new();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("copy+decode+unmask+utf8", name), |b| {
            b.iter(|| {
                work.copy_from_slice(&frame);
                let d = dec
                    .decode(&cfg, black_box(&mut work[..]))
                    .expect("valid frame");
                black_box(d.consumed)
            })
        });
    }
    g.finish();

    // A 64 KiB frame arriving in 16 KiB reads: the assembly path.
    let mut g = c.benchmark_group("decode_streamed");
    let size = 64 << 10;
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let frame = client_frame(OpCode::Binary, &payload);
    let mut dec = Decoder::new();
    let mut work = frame.clone();
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("64KiB_in_16KiB_reads", |b| {
        b.iter(|| {
            work.copy_from_slice(&frame);
            let mut got = 0;
            for chunk in work.chunks_mut(16 << 10) {
                let d = dec.decode(&cfg, chunk).expect("valid");
                if let Some(Message::Binary(p)) = d.message {
                    got = p.len();
                }
            }
            assert_eq!(got, size);
            black_box(got)
        })
    });
    g.finish();

    // Unmasking alone.
    let mut g = c.benchmark_group("unmask");
    for (size, name) in SIZES {
        let mut buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1)))
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (size, name) in SIZES {
        let payload = vec![b'x'; size];
        let mut out = Vec::with_capacity(size + 14);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("frame_into", name), |b| {
            b.iter(|| {
                out.clear();
                encode::frame_into(&mut out, OpCode::Text, black_box(&payload));
                black_box(out.len())
            })
        });
        g.bench_function(BenchmarkId::new("shared", name), |b| {
            b.iter(|| black_box(encode::shared(OpCode::Text, black_box(&payload))))
        });
        g.bench_function(BenchmarkId::new("masked_frame_into", name), |b| {
            b.iter(|| {
                out.clear();
                encode::masked_frame_into(
                    &mut out,
                    true,
                    OpCode::Binary,
                    black_box(&payload),
                    [1, 2, 3, 4],
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("encode_close");
    g.bench_function("close_into", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            encode::close_into(&mut out, Some(1001), black_box("server shutting down"));
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii = "The quick brown fox jumps over the lazy dog. ".repeat(1500); // ~66 KB
    let multi = "Зъешь же ещё этих мягких французских булок, да выпей чаю. 日本語のテキスト 🎉 "
        .repeat(500);
    for (name, text) in [
        ("ascii_64KiB", &ascii[..65536]),
        ("multibyte", multi.as_str()),
    ] {
        let bytes = text.as_bytes();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(BenchmarkId::new("whole", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(bytes)).expect("valid");
                v.finish().expect("valid");
            })
        });
        // In 1000-byte chunks, so code points straddle chunk edges.
        g.bench_function(BenchmarkId::new("chunks_1000B", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for c in black_box(bytes).chunks(1000) {
                    v.feed(c).expect("valid");
                }
                v.finish().expect("valid");
            })
        });
        g.bench_function(BenchmarkId::new("std_from_utf8", name), |b| {
            b.iter(|| black_box(std::str::from_utf8(black_box(bytes)).is_ok()))
        });
    }
    g.finish();
}

const CHROMIUM: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn bench_handshake(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let cfg = HandshakeConfig::default();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chromium_parse+validate+write_101", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let mut p = RequestParser::new();
            let (req, n) = p
                .parse(&limits, black_box(CHROMIUM))
                .expect("ok")
                .expect("complete");
            let acc = handshake::validate(&req, &cfg).expect("valid");
            out.clear();
            handshake::write_accept(&acc, &mut out);
            black_box((n, out.len()))
        })
    });
    g.bench_function("chromium_parse_only", |b| {
        b.iter(|| {
            let mut p = RequestParser::new();
            let (req, n) = p
                .parse(&limits, black_box(CHROMIUM))
                .expect("ok")
                .expect("complete");
            black_box((req.headers.len(), n))
        })
    });
    g.bench_function("accept_key_only", |b| {
        b.iter(|| {
            black_box(handshake::accept_key(black_box(
                b"x3JJHMbDL1EzLkh9GBhXDw==",
            )))
        })
    });
    g.bench_function("chromium_in_3_reads", |b| {
        // As a socket might deliver it: three reads into a growing buffer.
        b.iter_batched_ref(
            || Vec::with_capacity(1024),
            |buf: &mut Vec<u8>| {
                let mut p = RequestParser::new();
                let mut res = None;
                for part in CHROMIUM.chunks(CHROMIUM.len() / 3 + 1) {
                    buf.extend_from_slice(part);
                    if let Some((req, _)) = p.parse(&limits, buf).expect("ok") {
                        res = Some(handshake::validate(&req, &cfg).expect("valid").accept);
                    }
                }
                black_box(res)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_encode,
    bench_utf8,
    bench_handshake
);
criterion_main!(benches);
