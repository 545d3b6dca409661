//! Publications per second through one Redis: an embedded server with the
//! Redis broker, publishers on several threads spread over many channels,
//! each publication confirmed by Redis (its reply counted) before the
//! figure is taken.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release --example redis_publish -- redis://127.0.0.1:6390 200000 1000 4
//! #                                              URL                    N      CHANNELS THREADS
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wspush::broker::redis::RedisConfig;
use wspush::broker::{Answer, Format, PublishOptions};
use wspush::server::{ConnInfo, Context, Handler, Response, Server};

struct Nothing;

impl Handler for Nothing {
    type Conn = ();
    fn on_upgrade(
        &mut self,
        _: &wspush::protocol::Request<'_>,
        _: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<(), Response> {
        Err(Response::not_found())
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or("redis://127.0.0.1:6379".into());
    let n: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let channels: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let threads: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(4);
    let mut cfg = wspush::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    };
    // `redis+cluster://host:port,…` names a Redis Cluster's seeds.
    let cluster = url.strip_prefix("redis+cluster://");
    cfg.redis = Some(RedisConfig {
        urls: match cluster {
            Some(seeds) => seeds.split(',').map(|s| format!("redis://{s}")).collect(),
            None => vec![url.clone()],
        },
        cluster: cluster.is_some(),
        timeout: Duration::from_secs(5),
        ..RedisConfig::default()
    });
    let server = Server::builder().config(cfg).build(|_, _| Nothing)?;
    let handle = server.handle();
    std::thread::spawn(move || server.run());
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let data =
        br#"{"type":"tick","price":101.25,"qty":3,"note":"a small JSON push of about 100 bytes"}"#;
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (handle, done, failed) = (handle.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let opts = PublishOptions::kept(Format::TEXT);
                // Confirmed (or refused) publications of this thread: at
                // most 4096 wait for Redis at a time.
                let answered = Arc::new(AtomicU64::new(0));
                let mut sent = 0u64;
                let mut i = t;
                while i < n {
                    while sent - answered.load(Ordering::Relaxed) > 4096 {
                        std::thread::yield_now();
                    }
                    let ch = format!("bench.{}", i % channels);
                    let (d, f, a) = (done.clone(), failed.clone(), answered.clone());
                    let answer = handle.publish_with(&ch, opts, data, &mut || {
                        let (d, f, a) = (d.clone(), f.clone(), a.clone());
                        Box::new(move |r| {
                            if r.is_ok() { &d } else { &f }.fetch_add(1, Ordering::Relaxed);
                            a.fetch_add(1, Ordering::Relaxed);
                        })
                    });
                    if let Answer::Now(r) = answer {
                        if r.is_ok() { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                    i += threads;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    while done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} publications over {channels} channels from {threads} threads through {url}: {:.2} s, {:.0} publications/s confirmed, {} refused",
        secs,
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    handle.shutdown();
    Ok(())
}
