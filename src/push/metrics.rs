//! `/stats` (JSON) and `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::PushService;
use crate::server::WorkerStats;

fn get(w: &WorkerStats, name: &str) -> u64 {
    w.fields()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

/// Disconnect reasons: (label, counter).
const DISCONNECTS: [(&str, &str); 8] = [
    ("client_close", "closed_client_total"),
    ("server_close", "closed_server_total"),
    ("protocol_error", "closed_protocol_error_total"),
    ("slow_consumer", "closed_slow_consumer_total"),
    ("idle_timeout", "closed_idle_timeout_total"),
    ("server_shutdown", "closed_shutdown_total"),
    ("abnormal", "closed_abnormal_total"),
    ("handshake_timeout", "closed_handshake_timeout_total"),
];

/// Refusals: (status, counter).
const REFUSALS: [(&str, &str); 10] = [
    ("400", "refused_400_total"),
    ("401", "refused_401_total"),
    ("403", "refused_403_total"),
    ("404", "refused_404_total"),
    ("405", "refused_405_total"),
    ("413", "refused_413_total"),
    ("426", "refused_426_total"),
    ("431", "refused_431_total"),
    ("503", "refused_503_total"),
    ("other", "refused_other_total"),
];

/// The `/stats` document.
pub fn stats_json(svc: &PushService) -> String {
    let st = svc.handle().stats();
    let h = svc.handle().broker().totals();
    let (channels, subscriptions) = (h.active_channels, h.subscriptions);
    let t = &st.total;
    let workers: Vec<String> = st
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "{{\"worker\":{i},\"connections\":{},\"websockets\":{},\"accepted_total\":{},\"messages_in\":{},\"messages_out\":{}}}",
                get(w, "connections"),
                get(w, "websockets"),
                get(w, "accepted_total"),
                get(w, "messages_in_total"),
                get(w, "messages_out_total")
            )
        })
        .collect();
    let disconnects: Vec<String> = DISCONNECTS
        .iter()
        .map(|(label, f)| format!("\"{label}\":{}", get(t, f)))
        .collect();
    let refusals: Vec<String> = REFUSALS
        .iter()
        .map(|(s, f)| format!("\"{s}\":{}", get(t, f)))
        .collect();
    format!(
        "{{\"uptime_secs\":{:.3},\"connections\":{{\"open\":{},\"websockets\":{},\"accepted_total\":{},\"upgrades_total\":{}}},\
\"workers\":[{}],\"channels\":{channels},\"subscriptions\":{subscriptions},\
\"history\":{{\"channels_held\":{},\"entries\":{},\"bytes\":{},\"evicted\":{}}},\
\"messages\":{{\"in\":{},\"out\":{}}},\"bytes\":{{\"in\":{},\"out\":{}}},\"publications\":{},\
\"http_requests\":{},\"disconnects\":{{{}}},\"refused\":{{{}}},\"accept_errors\":{},\"pending_bytes\":{},\"receive_budget_refusals\":{}}}\n",
        st.uptime_secs,
        get(t, "connections"),
        get(t, "websockets"),
        get(t, "accepted_total"),
        get(t, "upgrades_total"),
        workers.join(","),
        h.channels,
        h.history_entries,
        h.history_bytes,
        h.history_evicted,
        get(t, "messages_in_total"),
        get(t, "messages_out_total"),
        get(t, "bytes_in_total"),
        get(t, "bytes_out_total"),
        svc.shared().publications.load(Ordering::Relaxed),
        get(t, "http_requests_total"),
        disconnects.join(","),
        refusals.join(","),
        get(t, "accept_errors_total"),
        svc.handle().pending_bytes(),
        get(t, "pending_refusals_total"),
    )
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The `/metrics` page in Prometheus text format 0.0.4.
pub fn prometheus(svc: &PushService) -> String {
    let st = svc.handle().stats();
    let h = svc.handle().broker().totals();
    let (channels, subscriptions) = (h.active_channels, h.subscriptions);
    let t = &st.total;
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "wspush_connections",
        "gauge",
        "Open connections (any state), per worker.",
    );
    for (i, w) in st.workers.iter().enumerate() {
        let _ = writeln!(
            o,
            "wspush_connections{{worker=\"{i}\"}} {}",
            get(w, "connections")
        );
    }
    family(
        &mut o,
        "wspush_websockets",
        "gauge",
        "Open WebSocket connections, per worker.",
    );
    for (i, w) in st.workers.iter().enumerate() {
        let _ = writeln!(
            o,
            "wspush_websockets{{worker=\"{i}\"}} {}",
            get(w, "websockets")
        );
    }
    let simple: [(&str, &str, &str, u64); 17] = [
        (
            "wspush_connections_accepted_total",
            "counter",
            "Connections accepted.",
            get(t, "accepted_total"),
        ),
        (
            "wspush_upgrades_total",
            "counter",
            "WebSocket upgrades completed.",
            get(t, "upgrades_total"),
        ),
        (
            "wspush_http_requests_total",
            "counter",
            "Plain HTTP requests answered.",
            get(t, "http_requests_total"),
        ),
        (
            "wspush_messages_received_total",
            "counter",
            "Data messages received.",
            get(t, "messages_in_total"),
        ),
        (
            "wspush_messages_sent_total",
            "counter",
            "Frames queued to clients (one per recipient).",
            get(t, "messages_out_total"),
        ),
        (
            "wspush_bytes_received_total",
            "counter",
            "Bytes received after the upgrade.",
            get(t, "bytes_in_total"),
        ),
        (
            "wspush_bytes_sent_total",
            "counter",
            "Bytes written to sockets.",
            get(t, "bytes_out_total"),
        ),
        (
            "wspush_publications_total",
            "counter",
            "Publications accepted (API and clients).",
            svc.shared().publications.load(Ordering::Relaxed),
        ),
        (
            "wspush_accept_errors_total",
            "counter",
            "accept() failures (e.g. out of file descriptors).",
            get(t, "accept_errors_total"),
        ),
        (
            "wspush_receive_budget_refusals_total",
            "counter",
            "Receptions refused because --max-pending-bytes was reached.",
            get(t, "pending_refusals_total"),
        ),
        (
            "wspush_pending_bytes",
            "gauge",
            "Bytes held in partially received messages and request bodies.",
            svc.handle().pending_bytes() as u64,
        ),
        (
            "wspush_channels",
            "gauge",
            "Channels (topics) with at least one subscriber.",
            channels,
        ),
        (
            "wspush_subscriptions",
            "gauge",
            "Subscriptions, all connections.",
            subscriptions,
        ),
        (
            "wspush_channels_held",
            "gauge",
            "Channels whose state is held (subscribers or history).",
            h.channels,
        ),
        (
            "wspush_history_entries",
            "gauge",
            "Publications held in channel history.",
            h.history_entries,
        ),
        (
            "wspush_history_bytes",
            "gauge",
            "Bytes charged to channel history (frame, name and a fixed overhead per entry).",
            h.history_bytes,
        ),
        (
            "wspush_history_evicted_total",
            "counter",
            "History entries evicted by the byte cap before their time.",
            h.history_evicted,
        ),
    ];
    for (name, kind, help, v) in simple {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(
        &mut o,
        "wspush_disconnects_total",
        "counter",
        "Connections ended, by reason.",
    );
    for (label, f) in DISCONNECTS {
        let _ = writeln!(
            o,
            "wspush_disconnects_total{{reason=\"{label}\"}} {}",
            get(t, f)
        );
    }
    family(
        &mut o,
        "wspush_handshake_refusals_total",
        "counter",
        "Requests refused, by HTTP status.",
    );
    for (status, f) in REFUSALS {
        let _ = writeln!(
            o,
            "wspush_handshake_refusals_total{{status=\"{status}\"}} {}",
            get(t, f)
        );
    }
    family(
        &mut o,
        "wspush_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    let _ = writeln!(o, "wspush_uptime_seconds {:.3}", st.uptime_secs);
    if let Some(p) = svc.shared().cfg.pusher.as_deref() {
        o.push_str(&crate::pusher::metrics::prometheus(p));
    }
    o
}
