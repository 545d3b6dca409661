//! Counters of the Pusher service, appended to `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Pusher;

/// What the Pusher service counts (all workers).
#[derive(Debug, Default)]
pub struct Counters {
    /// Pusher sockets established and not yet closed.
    pub sockets: AtomicU64,
    /// Subscriptions accepted.
    pub subscriptions_total: AtomicU64,
    /// Subscriptions refused (`pusher:subscription_error`).
    pub subscription_errors_total: AtomicU64,
    /// Client events relayed.
    pub client_events_total: AtomicU64,
    /// Client events refused (4301).
    pub client_events_refused_total: AtomicU64,
    /// Events published through the HTTP API (one per channel).
    pub api_events_total: AtomicU64,
    /// HTTP API requests refused (bad signature, bad input, ...).
    pub api_refusals_total: AtomicU64,
}

/// Add one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The Pusher families in Prometheus text format.
pub fn prometheus(p: &Pusher) -> String {
    let c = &p.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (delivered, dropped, failed) = p.webhooks.as_ref().map_or((0, 0, 0), |w| {
        (get(&w.delivered), get(&w.dropped), get(&w.failed))
    });
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "wspush_pusher_sockets",
            "gauge",
            "Open Pusher protocol sockets.",
            get(&c.sockets),
        ),
        (
            "wspush_pusher_subscriptions_total",
            "counter",
            "Pusher subscriptions accepted.",
            get(&c.subscriptions_total),
        ),
        (
            "wspush_pusher_subscription_errors_total",
            "counter",
            "Pusher subscriptions refused (bad signature, name, limits).",
            get(&c.subscription_errors_total),
        ),
        (
            "wspush_pusher_client_events_total",
            "counter",
            "Client events relayed.",
            get(&c.client_events_total),
        ),
        (
            "wspush_pusher_client_events_refused_total",
            "counter",
            "Client events refused (4301).",
            get(&c.client_events_refused_total),
        ),
        (
            "wspush_pusher_api_events_total",
            "counter",
            "Events published through the Pusher HTTP API (one per channel).",
            get(&c.api_events_total),
        ),
        (
            "wspush_pusher_api_refusals_total",
            "counter",
            "Pusher HTTP API requests refused.",
            get(&c.api_refusals_total),
        ),
        (
            "wspush_pusher_webhook_batches_total",
            "counter",
            "Webhook batches delivered (2xx).",
            delivered,
        ),
        (
            "wspush_pusher_webhook_batches_failed_total",
            "counter",
            "Webhook batches given up after retrying.",
            failed,
        ),
        (
            "wspush_pusher_webhook_events_dropped_total",
            "counter",
            "Webhook events dropped: the queue was full.",
            dropped,
        ),
    ];
    let mut o = String::with_capacity(2048);
    for (name, kind, help, v) in rows {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    o
}
