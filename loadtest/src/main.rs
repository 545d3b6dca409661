//! `wsload`: a load generator for WebSocket servers (wspush or any server
//! with an echo endpoint and/or a broadcast endpoint that delivers every
//! message to every client, the sender included).
//!
//! ```text
//! wsload echo --url ws://127.0.0.1:9001/echo -c 100 --in-flight 1 --size 20 -d 5
//! wsload broadcast --url ws://127.0.0.1:9001/broadcast -c 1000 --publishers 1 --rate 10
//! wsload push --url ws://127.0.0.1:9001/ws --channel bench -c 10000 --rate 10 -d 10
//! wsload connect -c 10000 --url ws://127.0.0.1:9001/echo
//! wsload idle -c 10000 -d 5 --server-pid $(pidof wspush)
//! ```
//!
//! Every run is bounded: connect phase (`--connect-deadline`), timed phase
//! (`--duration`), drain (`--drain`), close (2 s). The final table goes to
//! stdout (`--json` for one JSON object); a progress line goes to stderr once
//! a second. Exit status 1 when errors (failed connections, lost, duplicated,
//! out-of-order or mismatched messages) exceed `--max-errors`.

mod churn;
mod engine;
mod publisher;
mod report;
mod stats;
mod wire;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::*;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Parser;
use engine::{Config, Mode, Shared, Worker};
use stats::Results;
use wire::now_ns;

/// Load generator for WebSocket servers: connect, idle, echo, broadcast, push.
#[derive(Parser, Debug, Clone)]
#[command(name = "wsload", version)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Target, ws://HOST:PORT/PATH (HOST an address or a name that resolves).
    #[arg(long, default_value = "ws://127.0.0.1:9001/echo")]
    pub url: String,
    /// More targets (repeatable): with --procs K, process i connects to the
    /// (i mod n)-th of --url and these (e.g. the nodes of a cluster).
    #[arg(long = "also-url")]
    pub also_url: Vec<String>,
    /// Connections in the whole run (all processes and threads); churn: subscribers.
    #[arg(
        short = 'c',
        long,
        visible_alias = "subscribers",
        default_value_t = 100
    )]
    pub conns: u32,
    /// Engine threads per process, each with its own poll over its share.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Length of the timed phase in seconds (echo, broadcast, idle hold).
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Echo: messages in flight per connection.
    #[arg(short = 'p', long, default_value_t = 1)]
    pub in_flight: u32,
    /// Payload size in bytes (at least 16: id, sequence, timestamp).
    #[arg(short = 's', long, default_value_t = 32)]
    pub size: usize,
    /// Send binary messages (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Broadcast: how many of the connections also publish (= --conns: chat room).
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Broadcast: messages per second per publisher; 0 = as fast as --window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Broadcast at max rate: messages per publisher not yet delivered to every subscriber.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.N (0: kernel's choice).
    #[arg(long, default_value_t = 0)]
    pub sources: u32,
    /// Run as K processes (each holds its share of the connections) and merge their results.
    #[arg(long, default_value_t = 1)]
    pub procs: u32,
    /// Handshakes in progress at once (whole run).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Seconds before a connection that has not completed its handshake counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds the whole connect phase may take.
    #[arg(long, default_value_t = 60.0)]
    pub connect_deadline: f64,
    /// Seconds to wait after the timed phase for outstanding messages
    /// (default 3; churn: 10).
    #[arg(long)]
    pub drain: Option<f64>,
    /// The server's pid: report its CPU time (and RSS growth in idle mode).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Exit with status 1 when errors exceed this.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
    /// Push: channel to subscribe to (`?channel=` is added to --url) and publish on.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Push: the HTTP API's address HOST:PORT (default: --url's).
    #[arg(long)]
    pub api_addr: Option<String>,
    /// Push: API key, sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Churn: channels PREFIX.0 … PREFIX.N-1 (PREFIX: --channel); publications go round robin.
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    /// Churn: channels each subscriber holds (subscriber i: channels i, i+1, … mod --channels).
    #[arg(long, default_value_t = 1)]
    pub channels_per_sub: u32,
    /// Churn: fraction of the subscribers dropped every --drop-interval (then resumed).
    #[arg(long, default_value_t = 0.1)]
    pub drop: f64,
    /// Churn: fraction of the drops that are TCP resets (SO_LINGER 0); the rest close cleanly.
    #[arg(long, default_value_t = 0.5)]
    pub reset_share: f64,
    /// Churn: seconds between two rounds of drops.
    #[arg(long, default_value_t = 1.0)]
    pub drop_interval: f64,
    /// Churn: resume with a subscribe message carrying `since` after the
    /// welcome, instead of `?since=CHANNEL:SEQ:EPOCH` in the upgrade request.
    #[arg(long)]
    pub resume_op: bool,
    /// Push over the Pusher protocol: `ID:KEY:SECRET` of a `--pusher-app`.
    /// Subscribers connect to --url (`ws://HOST:PORT/app/KEY`), subscribe to
    /// --channel with `pusher:subscribe`; the publisher calls the signed
    /// `POST /apps/ID/events` (answers carry no seq or recipients).
    #[arg(long)]
    pub pusher: Option<String>,
    /// Offer permessage-deflate (RFC 7692) like a browser; compressed frames
    /// are inflated and counted (`compressed`, `wire_bytes_per_msg`).
    #[arg(long)]
    pub deflate: bool,
    /// Payload padding as JSON-like text (compresses like real JSON)
    /// instead of the repeating alphabet.
    #[arg(long)]
    pub text_payload: bool,
    /// Internal: index of this child process (set by --procs).
    #[arg(long, hide = true)]
    pub child_index: Option<u32>,
}

fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("only ws:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hp = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = hp
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or(format!("{hostport}: no IPv4 address"))?;
    Ok((addr, hostport.to_string(), path.to_string()))
}

fn build_config(a: &Args) -> Result<Config, String> {
    let targets: Vec<&String> = std::iter::once(&a.url).chain(&a.also_url).collect();
    let target = targets[a.child_index.unwrap_or(0) as usize % targets.len()];
    let (addr, host, mut path) = parse_url(target)?;
    let (mut api_addr, mut api_host) = (addr, host.clone());
    let push = a.mode == Mode::Push;
    if push {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b);
        if a.channel.is_empty() || a.channel.len() > 128 || !a.channel.bytes().all(ok) {
            return Err("--channel must be [A-Za-z0-9_.:@-]{1,128}".into());
        }
        if a.pusher.is_none() {
            let sep = if path.contains('?') { '&' } else { '?' };
            path = format!("{path}{sep}channel={}", a.channel);
        }
        if a.api_addr.is_none() && target != &a.url {
            // The publisher posts to the first target.
            let (ad, h, _) = parse_url(&a.url)?;
            api_addr = ad;
            api_host = h;
        }
        if let Some(api) = &a.api_addr {
            let (ad, h, _) = parse_url(&format!("ws://{api}"))?;
            api_addr = ad;
            api_host = h;
        }
    }
    if a.size < wire::PROBE_LEN && matches!(a.mode, Mode::Echo | Mode::Broadcast) {
        return Err(format!("--size must be at least {}", wire::PROBE_LEN));
    }
    if a.conns > wire::MAX_ID {
        return Err(format!("--conns at most {}", wire::MAX_ID));
    }
    if a.sources > 254 {
        return Err("--sources at most 254".into());
    }
    let publishers = if push { 1 } else { a.publishers.min(a.conns) };
    if a.mode == Mode::Broadcast
        && (a.conns as u64 / a.procs.max(1) as u64) * publishers as u64 > 50_000_000
    {
        return Err("conns × publishers too large for per-stream ordering checks".into());
    }
    let threads = a.threads.max(1);
    let procs = a.procs.max(1) as usize;
    Ok(Config {
        mode: a.mode,
        addr,
        host,
        path,
        size: a.size.max(wire::PROBE_LEN),
        binary: a.binary,
        in_flight: a.in_flight.max(1),
        publishers,
        rate: a.rate,
        window: a.window.max(1),
        sources: a.sources,
        concurrency: (a.concurrency / (threads * procs)).max(1),
        handshake_timeout_ns: (a.handshake_timeout * 1e9) as u64,
        connect_deadline_ns: (a.connect_deadline * 1e9) as u64,
        duration_ns: (a.duration * 1e9) as u64,
        channel: a.channel.clone(),
        api_addr,
        api_host,
        api_key: a.api_key.clone(),
        conns: a.conns,
        publisher: push && a.child_index.unwrap_or(0) == 0,
        pusher: match &a.pusher {
            Some(spec) if push => {
                let mut p = spec.splitn(3, ':');
                match (p.next(), p.next(), p.next()) {
                    (Some(id), Some(key), Some(secret)) if !secret.is_empty() => {
                        Some(engine::PusherApp {
                            id: id.into(),
                            key: key.into(),
                            secret: secret.into(),
                        })
                    }
                    _ => return Err("--pusher is ID:KEY:SECRET".into()),
                }
            }
            Some(_) => return Err("--pusher is for the push mode".into()),
            None => None,
        },
        deflate: a.deflate,
    })
}

/// Lines a child prints on stdout for its parent.
fn child_say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Wait for a line from the parent that starts with `word`; returns the rest.
fn child_wait(word: &str) -> String {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return String::new(),
            Ok(_) => {
                if let Some(rest) = line.trim().strip_prefix(word) {
                    return rest.trim().to_string();
                }
            }
        }
    }
}

fn progress_line(t: f64, open: i64, rate: f64, p99_ns: u64, errors: u64, what: &str) -> String {
    format!(
        "[{t:6.1}s] open {open:>7}  {what}/s {rate:>11.0}  p99 {:>9.3} ms  errors {errors}",
        p99_ns as f64 / 1e6
    )
}

/// Run this process's share: spawn the threads, drive the phases, merge.
fn run_local(a: &Args, cfg: Config) -> Results {
    let child = a.child_index.is_some();
    let procs = a.procs.max(1);
    let pidx = a.child_index.unwrap_or(0);
    let cfg = Arc::new(cfg);
    let sh = Arc::new(Shared::new(&cfg));
    let server = if child { None } else { a.server_pid };
    let rss_before = server.and_then(stats::proc_rss_kb);
    let cpu_start = stats::self_cpu_s();
    let threads = a.threads.max(1);
    let mine: Vec<u32> = (0..a.conns).filter(|g| g % procs == pidx).collect();
    let mut handles = Vec::new();
    for t in 0..threads {
        let gs: Vec<u32> = mine
            .iter()
            .enumerate()
            .filter(|(i, _)| i % threads == t)
            .map(|(_, &g)| g)
            .collect();
        let seed =
            now_ns() ^ ((pidx as u64) << 40) ^ ((t as u64 + 1) << 20) ^ std::process::id() as u64;
        let w = Worker::new(cfg.clone(), sh.clone(), gs, seed).expect("poll");
        let publisher = cfg.publisher && t == 0;
        handles.push(std::thread::spawn(move || w.run(publisher)));
    }
    let mut ticker = Ticker::new(a, child);
    while sh.ready.load(SeqCst) < threads {
        ticker.tick(&sh, sh.handshakes.load(Relaxed), "conn");
        std::thread::sleep(Duration::from_millis(20));
    }
    if child {
        child_say("READY");
        child_wait("GO");
    }
    let mut rss_after = None;
    if cfg.mode == Mode::Idle && server.is_some() {
        std::thread::sleep(Duration::from_millis(1000));
        rss_after = server.and_then(stats::proc_rss_kb);
    }
    sh.subs.store(sh.open.load(SeqCst).max(0) as u64, SeqCst);
    let cpu0 = stats::CpuMark::now(server);
    let go = now_ns();
    sh.go_ns.store(go, SeqCst);
    let what = if cfg.mode == Mode::Connect {
        "conn"
    } else {
        "msg"
    };
    // Timed phase.
    while sh.done.load(SeqCst) < threads {
        let v = if cfg.mode == Mode::Connect {
            sh.handshakes.load(Relaxed)
        } else {
            sh.received.load(Relaxed)
        };
        ticker.tick(&sh, v, what);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Deliveries each subscriber owes: every message published by any
    // process. A child learns the total from its parent.
    let published = if child && cfg.fans_out() {
        child_say(&format!("TIMED {}", sh.sent.load(SeqCst)));
        child_wait("EXPECT").parse().unwrap_or(0)
    } else {
        sh.sent.load(SeqCst)
    };
    // Drain.
    let drain_end = now_ns() + (a.drain.unwrap_or(3.0) * 1e9) as u64;
    loop {
        let now = now_ns();
        if now >= drain_end {
            break;
        }
        let recv = sh.received.load(SeqCst);
        let sent = sh.sent.load(SeqCst);
        let subs = sh.subs.load(SeqCst);
        let done = match cfg.mode {
            Mode::Echo => recv >= sent,
            Mode::Broadcast | Mode::Push => recv >= published * subs,
            Mode::Connect | Mode::Idle | Mode::Churn => true,
        };
        if done {
            break;
        }
        ticker.tick(&sh, recv, what);
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = now_ns();
    let used = stats::CpuMark::now(server).since(&cpu0);
    if child {
        child_say("DRAINED");
        child_wait("CLOSE");
    }
    sh.close.store(true, SeqCst);
    let mut r = Results::default();
    for h in handles {
        if let Ok(t) = h.join() {
            r.merge(&t);
        }
    }
    r.window_s = cfg.duration_ns as f64 / 1e9;
    r.measured_s = (drained - go) as f64 / 1e9;
    r.cpu_s = used.cpu_s;
    r.cpu_total_s = stats::self_cpu_s() - cpu_start;
    r.wait_s = used.wait_s;
    r.server_cpu_s = used.server_cpu_s;
    r.server_wait_s = used.server_wait_s;
    r.server_rss_before_kb = rss_before;
    r.server_rss_after_kb = rss_after;
    r
}

/// The once-a-second progress line (or, in a child, a line for the parent).
struct Ticker {
    start: u64,
    last: u64,
    last_v: u64,
    quiet: bool,
    child: bool,
}

impl Ticker {
    fn new(a: &Args, child: bool) -> Ticker {
        let now = now_ns();
        Ticker {
            start: now,
            last: now,
            last_v: 0,
            quiet: a.quiet,
            child,
        }
    }

    fn tick(&mut self, sh: &Shared, v: u64, what: &str) {
        let now = now_ns();
        if now - self.last < 1_000_000_000 {
            return;
        }
        let rate = (v.saturating_sub(self.last_v)) as f64 / ((now - self.last) as f64 / 1e9);
        self.last = now;
        self.last_v = v;
        let p99 = sh
            .live
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0);
        let open = sh.open.load(Relaxed);
        let errors = sh.errors.load(Relaxed);
        if self.child {
            child_say(&format!("PROGRESS {open} {v} {errors} {p99}"));
        } else if !self.quiet {
            let t = (now - self.start) as f64 / 1e9;
            eprintln!("{}", progress_line(t, open, rate, p99, errors, what));
        }
    }
}

enum FromChild {
    Line(usize, String),
    Gone,
}

/// `--procs K`: re-execute this binary K times, keep them in step (all
/// connected → go → all drained → close), merge their results.
fn run_parent(a: &Args, cfg: &Config) -> Results {
    let k = a.procs as usize;
    let exe = std::env::current_exe().expect("current_exe");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tx, rx) = mpsc::channel();
    let mut kids = Vec::new();
    let mut stdins = Vec::new();
    let rss_before = a.server_pid.and_then(stats::proc_rss_kb);
    for i in 0..k {
        let mut cmd = Command::new(&exe);
        cmd.args(&args).arg("--child-index").arg(i.to_string());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn child");
        stdins.push(child.stdin.take().unwrap());
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(FromChild::Line(i, l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(FromChild::Gone);
        });
        kids.push(child);
    }
    drop(tx);
    let say_all = |stdins: &mut Vec<std::process::ChildStdin>, w: &str| {
        for s in stdins.iter_mut() {
            let _ = writeln!(s, "{w}");
            let _ = s.flush();
        }
    };
    let start = now_ns();
    let mut ready = 0;
    let mut drained = 0;
    let mut timed = 0;
    let mut published = 0u64;
    let mut gone = 0;
    let mut results: Vec<Option<Results>> = vec![None; k];
    let mut prog: Vec<(i64, u64, u64, u64)> = vec![(0, 0, 0, 0); k];
    let mut last_print = (now_ns(), 0u64);
    let mut scpu0 = None;
    let mut scpu1 = None;
    let mut swait0 = None;
    let mut swait1 = None;
    let mut rss_after = None;
    let mut go_ns = 0;
    let mut drained_ns = 0;
    while gone < k {
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        };
        match msg {
            FromChild::Gone => gone += 1,
            FromChild::Line(i, l) => {
                let mut it = l.split_whitespace();
                match it.next() {
                    Some("READY") => {
                        ready += 1;
                        if ready == k {
                            if cfg.mode == Mode::Idle && a.server_pid.is_some() {
                                std::thread::sleep(Duration::from_millis(1000));
                                rss_after = a.server_pid.and_then(stats::proc_rss_kb);
                            }
                            scpu0 = a.server_pid.and_then(stats::proc_cpu_s);
                            swait0 = a.server_pid.and_then(stats::proc_runq_wait_s);
                            go_ns = now_ns();
                            say_all(&mut stdins, "GO");
                        }
                    }
                    Some("TIMED") => {
                        timed += 1;
                        published += it.next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                        if timed == k {
                            say_all(&mut stdins, &format!("EXPECT {published}"));
                        }
                    }
                    Some("DRAINED") => {
                        drained += 1;
                        if drained == k {
                            drained_ns = now_ns();
                            scpu1 = a.server_pid.and_then(stats::proc_cpu_s);
                            swait1 = a.server_pid.and_then(stats::proc_runq_wait_s);
                            say_all(&mut stdins, "CLOSE");
                        }
                    }
                    Some("PROGRESS") => {
                        let v: Vec<u64> = it.map(|x| x.parse().unwrap_or(0)).collect();
                        if v.len() == 4 {
                            prog[i] = (v[0] as i64, v[1], v[2], v[3]);
                        }
                        let now = now_ns();
                        if now - last_print.0 >= 1_000_000_000 && !a.quiet {
                            let total: u64 = prog.iter().map(|p| p.1).sum();
                            let rate = total.saturating_sub(last_print.1) as f64
                                / ((now - last_print.0) as f64 / 1e9);
                            let open: i64 = prog.iter().map(|p| p.0).sum();
                            let errs: u64 = prog.iter().map(|p| p.2).sum();
                            let p99 = prog.iter().map(|p| p.3).max().unwrap_or(0);
                            let t = (now - start) as f64 / 1e9;
                            let what = if ready < k || cfg.mode == Mode::Connect {
                                "conn"
                            } else {
                                "msg"
                            };
                            eprintln!(
                                "{} (max of {k} procs)",
                                progress_line(t, open, rate, p99, errs, what)
                            );
                            last_print = (now, total);
                        }
                    }
                    Some("RESULT") => {
                        let json = l["RESULT".len()..].trim();
                        if let Ok(v) = serde_json::from_str(json) {
                            results[i] = Some(Results::from_raw_json(&v));
                        }
                    }
                    _ => eprintln!("child {i}: {l}"),
                }
            }
        }
        // A child that died before READY would block the others forever.
        if gone > 0 && (ready < k || drained < k) {
            say_all(&mut stdins, "GO");
            say_all(&mut stdins, "EXPECT 0");
            say_all(&mut stdins, "CLOSE");
        }
    }
    for mut c in kids {
        let _ = c.wait();
    }
    let mut r = Results::default();
    for (i, x) in results.iter().enumerate() {
        match x {
            Some(x) => r.merge(x),
            None => r.fail(format!("child process {i} gave no result")),
        }
    }
    r.measured_s = if drained_ns > go_ns {
        (drained_ns - go_ns) as f64 / 1e9
    } else {
        r.measured_s
    };
    if let (Some(a0), Some(a1)) = (scpu0, scpu1) {
        r.server_cpu_s = Some(a1 - a0);
    }
    if let (Some(a0), Some(a1)) = (swait0, swait1) {
        r.server_wait_s = Some(a1 - a0);
    }
    r.server_rss_before_kb = rss_before;
    r.server_rss_after_kb = rss_after;
    r
}

fn main() {
    let a = Args::parse();
    wire::TEXT_PAYLOAD.store(a.text_payload, std::sync::atomic::Ordering::Relaxed);
    if a.mode == Mode::Churn {
        std::process::exit(churn::main(&a));
    }
    let cfg = match build_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsload: {e}");
            std::process::exit(2);
        }
    };
    let nofile = stats::raise_nofile();
    let per_proc = a.conns.div_ceil(a.procs.max(1)) as u64;
    if per_proc + 64 > nofile && a.child_index.is_none() {
        eprintln!(
            "wsload: warning: {per_proc} connections per process but only {nofile} open files allowed; use --procs"
        );
    }
    if a.child_index.is_some() {
        let r = run_local(&a, cfg);
        child_say(&format!("RESULT {}", r.to_raw_json()));
        return;
    }
    let mut r = if a.procs > 1 {
        run_parent(&a, &cfg)
    } else {
        run_local(&a, cfg.clone())
    };
    let summary = report::summarize(&a, &cfg, &mut r);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary.to_json()).unwrap()
        );
    } else {
        print!("{}", report::table(&summary));
    }
    let errors = summary.get("errors").and_then(|v| v.as_u64()).unwrap_or(0);
    if errors > a.max_errors {
        eprintln!(
            "wsload: {errors} errors (more than --max-errors {})",
            a.max_errors
        );
        std::process::exit(1);
    }
}
