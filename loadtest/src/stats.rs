//! Counters and histograms of a run, how they merge (threads, processes),
//! and readings of the machine: own CPU time, the server's CPU time and RSS.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latency histogram in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Everything one thread, one process or the whole run counted.
#[derive(Debug, Clone)]
pub struct Results {
    /// Connections this run tried to open.
    pub attempted: u64,
    /// Handshakes that completed.
    pub opened: u64,
    /// Connections open when the measured phase began.
    pub open_at_go: u64,
    /// Failures (handshake and run time) by reason.
    pub failures: BTreeMap<String, u64>,
    /// Data messages sent (echo requests, or publishes).
    pub sent: u64,
    /// Data messages received (echo replies, or deliveries).
    pub received: u64,
    /// Of `received`, those that arrived inside the timed window.
    pub received_in_window: u64,
    /// Payload bytes of `received_in_window`.
    pub bytes_in_window: u64,
    /// Of those, payload bytes as they were on the wire (compressed ones
    /// compressed), and how many messages came compressed (permessage-deflate).
    pub wire_bytes_in_window: u64,
    pub compressed_in_window: u64,
    /// Of `sent`, those sent inside the timed window.
    pub sent_in_window: u64,
    /// Deliveries that repeat one already seen.
    pub duplicated: u64,
    /// Deliveries that came after a later message of the same sender.
    pub out_of_order: u64,
    /// Payloads that do not carry what was sent (wrong length, id, sequence).
    pub mismatched: u64,
    /// Echo: replies never received. Broadcast: computed at the end.
    pub lost: u64,
    /// Push: publish responses whose `recipients` was not the connection count.
    pub recipients_mismatched: u64,
    /// Fan-out samples dropped because the tracking slot was reused first.
    pub fanout_incomplete: u64,
    /// RTT (echo) or publish→delivery latency (broadcast).
    pub lat: Histogram<u64>,
    /// Publish → last subscriber (broadcast).
    pub fanout: Histogram<u64>,
    /// Connect start → 101 received.
    pub handshake: Histogram<u64>,
    /// Timestamps (CLOCK_MONOTONIC ns) of the first connect and the last
    /// completed handshake.
    pub first_connect_ns: u64,
    pub last_handshake_ns: u64,
    /// Length of the timed window in seconds.
    pub window_s: f64,
    /// Wall time of the measured phase (go → drained) in seconds.
    pub measured_s: f64,
    /// Own CPU seconds (user + system) during the measured phase.
    pub cpu_s: f64,
    /// Own CPU seconds for the whole run.
    pub cpu_total_s: f64,
    /// Server readings (only in the process that has `--server-pid`).
    pub server_cpu_s: Option<f64>,
    /// Run-queue wait (waiting for a core) of the server and of this
    /// process over the measured phase, seconds.
    pub server_wait_s: Option<f64>,
    pub wait_s: f64,
    pub server_rss_before_kb: Option<u64>,
    pub server_rss_after_kb: Option<u64>,
}

impl Default for Results {
    fn default() -> Self {
        Results {
            attempted: 0,
            opened: 0,
            open_at_go: 0,
            failures: BTreeMap::new(),
            sent: 0,
            received: 0,
            received_in_window: 0,
            bytes_in_window: 0,
            wire_bytes_in_window: 0,
            compressed_in_window: 0,
            sent_in_window: 0,
            duplicated: 0,
            out_of_order: 0,
            mismatched: 0,
            lost: 0,
            fanout_incomplete: 0,
            recipients_mismatched: 0,
            lat: new_hist(),
            fanout: new_hist(),
            handshake: new_hist(),
            first_connect_ns: u64::MAX,
            last_handshake_ns: 0,
            window_s: 0.0,
            measured_s: 0.0,
            cpu_s: 0.0,
            cpu_total_s: 0.0,
            server_cpu_s: None,
            server_wait_s: None,
            wait_s: 0.0,
            server_rss_before_kb: None,
            server_rss_after_kb: None,
        }
    }
}

fn hist_to_json(h: &Histogram<u64>) -> Value {
    let pairs: Vec<[u64; 2]> = h
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    json!(pairs)
}

fn hist_from_json(v: &Value) -> Histogram<u64> {
    let mut h = new_hist();
    if let Some(a) = v.as_array() {
        for p in a {
            if let (Some(val), Some(n)) = (p[0].as_u64(), p[1].as_u64()) {
                let _ = h.record_n(val.max(1), n);
            }
        }
    }
    h
}

impl Results {
    /// Count one failure under `reason`.
    pub fn fail(&mut self, reason: impl Into<String>) {
        *self.failures.entry(reason.into()).or_insert(0) += 1;
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Add another thread's or process's counts into these.
    pub fn merge(&mut self, o: &Results) {
        self.attempted += o.attempted;
        self.opened += o.opened;
        self.open_at_go += o.open_at_go;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_insert(0) += v;
        }
        self.sent += o.sent;
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.bytes_in_window += o.bytes_in_window;
        self.wire_bytes_in_window += o.wire_bytes_in_window;
        self.compressed_in_window += o.compressed_in_window;
        self.sent_in_window += o.sent_in_window;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.mismatched += o.mismatched;
        self.lost += o.lost;
        self.fanout_incomplete += o.fanout_incomplete;
        self.recipients_mismatched += o.recipients_mismatched;
        let _ = self.lat.add(&o.lat);
        let _ = self.fanout.add(&o.fanout);
        let _ = self.handshake.add(&o.handshake);
        self.first_connect_ns = self.first_connect_ns.min(o.first_connect_ns);
        self.last_handshake_ns = self.last_handshake_ns.max(o.last_handshake_ns);
        self.window_s = self.window_s.max(o.window_s);
        self.measured_s = self.measured_s.max(o.measured_s);
        self.cpu_s += o.cpu_s;
        self.cpu_total_s += o.cpu_total_s;
        self.wait_s += o.wait_s;
    }

    /// The raw counts, for a parent process to merge.
    pub fn to_raw_json(&self) -> Value {
        json!({
            "attempted": self.attempted, "opened": self.opened, "open_at_go": self.open_at_go,
            "failures": self.failures, "sent": self.sent, "received": self.received,
            "received_in_window": self.received_in_window, "bytes_in_window": self.bytes_in_window,
            "wire_bytes_in_window": self.wire_bytes_in_window,
            "compressed_in_window": self.compressed_in_window,
            "sent_in_window": self.sent_in_window, "duplicated": self.duplicated,
            "out_of_order": self.out_of_order, "mismatched": self.mismatched, "lost": self.lost,
            "fanout_incomplete": self.fanout_incomplete,
            "recipients_mismatched": self.recipients_mismatched,
            "lat": hist_to_json(&self.lat), "fanout": hist_to_json(&self.fanout),
            "handshake": hist_to_json(&self.handshake),
            "first_connect_ns": self.first_connect_ns, "last_handshake_ns": self.last_handshake_ns,
            "window_s": self.window_s, "measured_s": self.measured_s,
            "cpu_s": self.cpu_s, "cpu_total_s": self.cpu_total_s, "wait_s": self.wait_s,
        })
    }

    pub fn from_raw_json(v: &Value) -> Results {
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let mut failures = BTreeMap::new();
        if let Some(m) = v["failures"].as_object() {
            for (k, n) in m {
                failures.insert(k.clone(), n.as_u64().unwrap_or(0));
            }
        }
        Results {
            attempted: u("attempted"),
            opened: u("opened"),
            open_at_go: u("open_at_go"),
            failures,
            sent: u("sent"),
            received: u("received"),
            received_in_window: u("received_in_window"),
            bytes_in_window: u("bytes_in_window"),
            wire_bytes_in_window: u("wire_bytes_in_window"),
            compressed_in_window: u("compressed_in_window"),
            sent_in_window: u("sent_in_window"),
            duplicated: u("duplicated"),
            out_of_order: u("out_of_order"),
            mismatched: u("mismatched"),
            lost: u("lost"),
            fanout_incomplete: u("fanout_incomplete"),
            recipients_mismatched: u("recipients_mismatched"),
            lat: hist_from_json(&v["lat"]),
            fanout: hist_from_json(&v["fanout"]),
            handshake: hist_from_json(&v["handshake"]),
            first_connect_ns: v["first_connect_ns"].as_u64().unwrap_or(u64::MAX),
            last_handshake_ns: u("last_handshake_ns"),
            window_s: f("window_s"),
            measured_s: f("measured_s"),
            cpu_s: f("cpu_s"),
            cpu_total_s: f("cpu_total_s"),
            wait_s: f("wait_s"),
            server_cpu_s: None,
            server_wait_s: None,
            server_rss_before_kb: None,
            server_rss_after_kb: None,
        }
    }
}

/// CPU seconds and run-queue wait seconds of this process and of the server
/// (when its pid is known and readable): at one instant, or between two.
pub struct CpuMark {
    pub cpu_s: f64,
    pub wait_s: f64,
    pub server_cpu_s: Option<f64>,
    pub server_wait_s: Option<f64>,
}

impl CpuMark {
    pub fn now(server: Option<u32>) -> CpuMark {
        CpuMark {
            cpu_s: self_cpu_s(),
            server_cpu_s: server.and_then(proc_cpu_s),
            wait_s: proc_runq_wait_s(std::process::id()).unwrap_or(0.0),
            server_wait_s: server.and_then(proc_runq_wait_s),
        }
    }

    /// What was used from `earlier` to this mark.
    pub fn since(&self, earlier: &CpuMark) -> CpuMark {
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuMark {
            cpu_s: self.cpu_s - earlier.cpu_s,
            wait_s: self.wait_s - earlier.wait_s,
            server_cpu_s: diff(self.server_cpu_s, earlier.server_cpu_s),
            server_wait_s: diff(self.server_wait_s, earlier.server_wait_s),
        }
    }
}

/// Own CPU time (user + system) of this process, in seconds.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (utime + stime) of process `pid`, from /proc/PID/stat.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}

/// Seconds the threads of process `pid` spent waiting on a run queue for a
/// core (second field of /proc/PID/task/*/schedstat), summed over threads.
pub fn proc_runq_wait_s(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += s
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// Resident set size of process `pid` in KiB, from /proc/PID/status.
pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raise the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain get/setrlimit on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
        rl.rlim_cur as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_json_roundtrip_merges() {
        let mut a = Results {
            sent: 3,
            ..Default::default()
        };
        a.fail("http 503");
        record(&mut a.lat, 1000);
        record(&mut a.lat, 2_000_000);
        let b = Results::from_raw_json(&a.to_raw_json());
        let mut m = Results::default();
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.sent, 6);
        assert_eq!(m.failures["http 503"], 2);
        assert_eq!(m.lat.len(), 4);
        assert!(m.lat.max() >= 1_999_000);
    }
}
