//! The final figures: one JSON object (`--json`) and the same as a table.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::engine::{Config, Mode};
use crate::stats::Results;
use crate::Args;

fn q_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1e3
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Figures in the order they were computed (the table keeps it).
#[derive(Default)]
pub struct Summary(pub Vec<(String, Value)>);

impl Summary {
    fn insert(&mut self, k: String, v: Value) {
        self.0.push((k, v));
    }

    /// Append one figure.
    pub fn set(&mut self, k: &str, v: Value) {
        self.0.push((k.to_string(), v));
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().cloned().collect())
    }
}

/// Compute the derived figures (rates, percentiles, losses, CPU per message).
pub fn summarize(a: &Args, cfg: &Config, r: &mut Results) -> Summary {
    let mut o = Summary::default();
    let mode = format!("{:?}", cfg.mode).to_lowercase();
    o.insert("mode".into(), json!(mode));
    o.insert("url".into(), json!(a.url));
    o.insert("conns".into(), json!(a.conns));
    o.insert("threads".into(), json!(a.threads));
    o.insert("procs".into(), json!(a.procs));
    o.insert("attempted".into(), json!(r.attempted));
    o.insert("opened".into(), json!(r.opened));
    o.insert("open_at_start".into(), json!(r.open_at_go));
    o.insert("failed".into(), json!(r.failed()));
    o.insert("failures".into(), json!(r.failures));
    let hs_span = if r.last_handshake_ns > r.first_connect_ns {
        (r.last_handshake_ns - r.first_connect_ns) as f64 / 1e9
    } else {
        0.0
    };
    o.insert(
        "handshake_p50_us".into(),
        json!(round(q_us(&r.handshake, 0.5), 1)),
    );
    o.insert(
        "handshake_p99_us".into(),
        json!(round(q_us(&r.handshake, 0.99), 1)),
    );
    if cfg.mode == Mode::Connect {
        let rate = if hs_span > 0.0 {
            r.opened as f64 / hs_span
        } else {
            0.0
        };
        o.insert("connect_seconds".into(), json!(round(hs_span, 4)));
        o.insert("handshakes_per_s".into(), json!(round(rate, 0)));
        o.insert(
            "handshake_max_us".into(),
            json!(round(r.handshake.max() as f64 / 1e3, 1)),
        );
    }
    // Messages the server handled, for CPU per message.
    let mut per_msg: Option<(u64, &str)> = None;
    let mut errors = r.failed();
    match cfg.mode {
        Mode::Echo => {
            let w = r.window_s.max(1e-9);
            o.insert("size".into(), json!(cfg.size));
            o.insert("in_flight".into(), json!(cfg.in_flight));
            o.insert("binary".into(), json!(cfg.binary));
            o.insert("seconds".into(), json!(round(r.window_s, 3)));
            o.insert("sent".into(), json!(r.sent));
            o.insert("received".into(), json!(r.received));
            o.insert(
                "msgs_per_s".into(),
                json!(round(r.received_in_window as f64 / w, 0)),
            );
            o.insert(
                "mb_per_s".into(),
                json!(round(r.bytes_in_window as f64 / w / 1e6, 2)),
            );
            let n = r.received_in_window.max(1) as f64;
            o.insert(
                "payload_bytes_per_msg".into(),
                json!(round(r.bytes_in_window as f64 / n, 1)),
            );
            o.insert(
                "wire_bytes_per_msg".into(),
                json!(round(r.wire_bytes_in_window as f64 / n, 1)),
            );
            o.insert("compressed".into(), json!(r.compressed_in_window));
            o.insert("rtt_p50_us".into(), json!(round(q_us(&r.lat, 0.5), 1)));
            o.insert("rtt_p99_us".into(), json!(round(q_us(&r.lat, 0.99), 1)));
            o.insert("rtt_p999_us".into(), json!(round(q_us(&r.lat, 0.999), 1)));
            o.insert(
                "rtt_max_us".into(),
                json!(round(r.lat.max() as f64 / 1e3, 1)),
            );
            o.insert("lost".into(), json!(r.lost));
            o.insert("mismatched".into(), json!(r.mismatched));
            errors += r.lost + r.mismatched;
            per_msg = Some((r.received, "msg"));
        }
        Mode::Broadcast | Mode::Push => {
            let push = cfg.mode == Mode::Push;
            let w = r.window_s.max(1e-9);
            let subs = r.open_at_go;
            let expected = r.sent * subs;
            let unique = r.received - r.duplicated;
            r.lost = expected.saturating_sub(unique);
            if push {
                o.insert("channel".into(), json!(cfg.channel));
                o.insert("size".into(), json!(cfg.size.max(crate::wire::STAMP_LEN)));
            } else {
                o.insert("size".into(), json!(cfg.size));
            }
            o.insert("publishers".into(), json!(cfg.publishers));
            o.insert("subscribers".into(), json!(subs));
            o.insert(
                if push { "rate" } else { "rate_per_publisher" }.into(),
                if cfg.rate > 0.0 {
                    json!(cfg.rate)
                } else {
                    json!("max")
                },
            );
            if cfg.rate <= 0.0 {
                o.insert("window".into(), json!(cfg.window));
            }
            o.insert("seconds".into(), json!(round(r.window_s, 3)));
            o.insert("published".into(), json!(r.sent));
            o.insert(
                "publishes_per_s".into(),
                json!(round(r.sent_in_window as f64 / w, 0)),
            );
            o.insert("deliveries".into(), json!(r.received));
            o.insert("expected_deliveries".into(), json!(expected));
            o.insert(
                "deliveries_per_s".into(),
                json!(round(r.received_in_window as f64 / w, 0)),
            );
            o.insert(
                "mb_per_s".into(),
                json!(round(r.bytes_in_window as f64 / w / 1e6, 2)),
            );
            let n = r.received_in_window.max(1) as f64;
            o.insert(
                "payload_bytes_per_msg".into(),
                json!(round(r.bytes_in_window as f64 / n, 1)),
            );
            o.insert(
                "wire_bytes_per_msg".into(),
                json!(round(r.wire_bytes_in_window as f64 / n, 1)),
            );
            o.insert("compressed".into(), json!(r.compressed_in_window));
            o.insert(
                "fanout_p50_us".into(),
                json!(round(q_us(&r.fanout, 0.5), 1)),
            );
            o.insert(
                "fanout_p99_us".into(),
                json!(round(q_us(&r.fanout, 0.99), 1)),
            );
            o.insert(
                "fanout_max_us".into(),
                json!(round(r.fanout.max() as f64 / 1e3, 1)),
            );
            o.insert("fanout_samples".into(), json!(r.fanout.len()));
            if a.procs > 1 {
                o.insert(
                    "fanout_note".into(),
                    json!("publish to last subscriber within each process"),
                );
            }
            o.insert("delivery_p50_us".into(), json!(round(q_us(&r.lat, 0.5), 1)));
            o.insert(
                "delivery_p99_us".into(),
                json!(round(q_us(&r.lat, 0.99), 1)),
            );
            o.insert(
                "delivery_max_us".into(),
                json!(round(r.lat.max() as f64 / 1e3, 1)),
            );
            o.insert("lost".into(), json!(r.lost));
            o.insert("duplicated".into(), json!(r.duplicated));
            o.insert("out_of_order".into(), json!(r.out_of_order));
            o.insert("mismatched".into(), json!(r.mismatched));
            errors += r.lost + r.duplicated + r.out_of_order + r.mismatched;
            if push {
                o.insert(
                    "recipients_mismatched".into(),
                    json!(r.recipients_mismatched),
                );
                errors += r.recipients_mismatched;
            }
            per_msg = Some((r.received, "delivery"));
        }
        Mode::Idle => {
            o.insert("seconds".into(), json!(round(r.window_s, 3)));
            if let (Some(b), Some(af)) = (r.server_rss_before_kb, r.server_rss_after_kb) {
                o.insert("server_rss_before_kb".into(), json!(b));
                o.insert("server_rss_after_kb".into(), json!(af));
                let per = if r.open_at_go > 0 {
                    (af as f64 - b as f64) * 1024.0 / r.open_at_go as f64
                } else {
                    0.0
                };
                o.insert("server_bytes_per_conn".into(), json!(round(per, 0)));
            }
        }
        Mode::Connect => per_msg = Some((r.opened, "handshake")),
        Mode::Churn => {}
    }
    o.insert("client_cpu_s".into(), json!(round(r.cpu_s, 3)));
    o.insert("client_cpu_total_s".into(), json!(round(r.cpu_total_s, 3)));
    o.insert("measured_s".into(), json!(round(r.measured_s, 3)));
    if r.measured_s > 0.0 {
        // Near 1.0 × threads × procs: wsload itself is the bottleneck.
        o.insert(
            "client_cpu_util".into(),
            json!(round(r.cpu_s / r.measured_s, 3)),
        );
    }
    // Time spent runnable but waiting for a core: on a shared machine, the
    // part of the latency that neither side's work explains.
    o.insert("client_runq_wait_s".into(), json!(round(r.wait_s, 3)));
    if let Some(w) = r.server_wait_s {
        o.insert("server_runq_wait_s".into(), json!(round(w, 3)));
    }
    if let Some(s) = r.server_cpu_s {
        o.insert("server_cpu_s".into(), json!(round(s, 3)));
        if r.measured_s > 0.0 {
            o.insert("server_cpu_util".into(), json!(round(s / r.measured_s, 3)));
        }
    }
    if let Some((n, what)) = per_msg {
        if n > 0 {
            o.insert("per".into(), json!(what));
            o.insert(
                "client_cpu_us_per".into(),
                json!(round(r.cpu_s * 1e6 / n as f64, 3)),
            );
            if let Some(s) = r.server_cpu_s {
                o.insert(
                    "server_cpu_us_per".into(),
                    json!(round(s * 1e6 / n as f64, 3)),
                );
            }
        }
    }
    o.insert("errors".into(), json!(errors));
    o
}

/// The summary as an aligned two-column table.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let w = s.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &s.0 {
        let val = match v {
            Value::String(x) => x.clone(),
            Value::Object(f) if f.is_empty() => "-".into(),
            Value::Object(f) => f
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        out.push_str(&format!("{k:<w$}  {val}\n"));
    }
    out
}
