//! The Pusher Channels protocol (version 7) on `/app/{key}` and the Pusher
//! HTTP API on `/apps/{id}/...`: a drop-in server for pusher-js, Laravel
//! Echo and the Pusher server SDKs.
//!
//! Pusher channels live in their own topic namespace of the broker
//! (`pusher/{app id}/{channel}`), so they never mix with `/ws` channels or
//! with another app's. Every publication goes through [`publish`].
//!
//! - [`app`]: apps (`--pusher-app ID:KEY:SECRET`, `--pusher-apps-file`).
//! - [`protocol`]: messages, channel names, error and close codes.
//! - [`sign`]: subscription, sign-in and HTTP request signatures.
//! - [`presence`]: channel occupancy, presence members, signed-in users.
//! - [`api`]: the HTTP API.
//! - [`webhook`]: webhooks to http:// or https:// (a background sender).

pub mod api;
pub mod app;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod sign;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::{Answer, Format, Position, PublishOptions, Published};
use crate::protocol::{Message, Request};
use crate::push::envelope::json_str;
use crate::server::{ConnId, Context, Handle, Response};

use app::{App, Apps};
use presence::{MemberRef, Membership};
use protocol::ChannelKind;
use webhook::Webhooks;

/// Settings of the Pusher service.
#[derive(Debug)]
pub struct PusherConfig {
    /// The apps.
    pub apps: Apps,
    /// Allow `client-*` events on private and presence channels.
    pub client_events: bool,
    /// Client events one connection may send per second.
    pub client_event_rate: u32,
    /// Seconds of silence before a ping (sent in `connection_established`).
    pub activity_timeout: Duration,
    /// Largest event `data` (API and client events), bytes.
    pub max_event_size: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_conn: usize,
    /// Most members (users) of one presence channel.
    pub max_presence_members: usize,
    /// Where webhooks go.
    pub webhook: Option<webhook::Target>,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            apps: Apps::default(),
            client_events: false,
            client_event_rate: 10,
            activity_timeout: Duration::from_secs(120),
            max_event_size: 10 * 1024,
            max_channels_per_conn: 128,
            max_presence_members: 100,
            webhook: None,
        }
    }
}

/// The Pusher service: settings and the state all workers share.
#[derive(Debug)]
pub struct Pusher {
    /// The settings.
    pub cfg: PusherConfig,
    /// Channels, members and signed-in users of this node.
    pub membership: Membership,
    /// The webhook sender, with `--pusher-webhook`.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Counters for `/metrics`.
    pub counters: metrics::Counters,
}

/// The broker topic of an app's channel.
pub fn topic(app: &App, channel: &str) -> String {
    format!("pusher/{}/{channel}", app.id)
}

/// The key the signed-in user registry uses.
fn user_key(app: &App, user: &str) -> String {
    format!("{}/{user}", app.id)
}

/// Per-connection state of a Pusher socket.
#[derive(Debug)]
pub struct Conn {
    /// The app (None: refused at open with `refused`).
    app: Option<Arc<App>>,
    refused: Option<(u16, String)>,
    /// Subscribed channels, with the presence user id where there is one.
    channels: Vec<(Box<str>, Option<Box<str>>)>,
    /// The signed-in user.
    user: Option<Box<str>>,
    last_activity: Instant,
    ping_sent: bool,
    /// Client events in the current one-second window.
    events_in_window: u32,
    window_start: Instant,
}

/// Publish a Pusher frame (already complete JSON) on `topic`: the one
/// place Pusher publications enter the broker. `exclude` is a connection
/// that must not get it (the sender, or a trigger's `socket_id`).
pub fn publish(
    handle: &Handle,
    topic: &str,
    frame: &str,
    exclude: Option<ConnId>,
    history: bool,
) -> Answer<Published> {
    let opts = PublishOptions {
        history,
        format: Format::TEXT,
        exclude,
    };
    handle.publish_with(topic, opts, frame.as_bytes(), &mut || Box::new(|_| {}))
}

impl Pusher {
    /// The service for these settings (starts the webhook thread).
    pub fn new(cfg: PusherConfig) -> Arc<Pusher> {
        let webhooks = cfg.webhook.clone().map(Webhooks::start);
        Arc::new(Pusher {
            cfg,
            membership: Membership::default(),
            webhooks,
            counters: metrics::Counters::default(),
        })
    }

    fn hook(&self, app: &Arc<App>, json: impl FnOnce() -> String) {
        if let Some(w) = &self.webhooks {
            w.emit(app, json());
        }
    }

    /// Whether `path` is a Pusher WebSocket path.
    pub fn is_ws_path(path: &str) -> bool {
        path.starts_with("/app/")
    }

    /// Accept an upgrade on `/app/{key}`. An unknown key or protocol
    /// version is accepted and then refused in the protocol (`pusher:error`
    /// and a close code), which is what pusher-js understands.
    pub fn upgrade(&self, req: &Request<'_>) -> Conn {
        let key = &req.path["/app/".len()..];
        let app = self.cfg.apps.by_key(key).cloned();
        let version = req
            .query_pairs()
            .find(|(k, _)| *k == "protocol")
            .map(|(_, v)| v.parse::<u32>().unwrap_or(0));
        let refused = if app.is_none() {
            log::debug!("pusher: unknown app key {key:?}");
            Some((
                protocol::APP_UNKNOWN,
                format!("App key {key} not in this cluster"),
            ))
        } else if version.is_some_and(|v| !(5..=7).contains(&v)) {
            log::debug!("pusher: unsupported protocol version {version:?}");
            Some((
                protocol::VERSION_UNSUPPORTED,
                "Unsupported protocol version (5 to 7 are)".into(),
            ))
        } else {
            None
        };
        let now = Instant::now();
        Conn {
            app,
            refused,
            channels: Vec::new(),
            user: None,
            last_activity: now,
            ping_sent: false,
            events_in_window: 0,
            window_start: now,
        }
    }

    fn activity_secs(&self) -> u64 {
        self.cfg.activity_timeout.as_secs().max(1)
    }

    /// How long to wait for a pong after a ping.
    fn pong_wait(&self) -> Duration {
        Duration::from_secs(self.activity_secs().min(30))
    }

    /// The connection is open: establish it (or refuse it).
    pub fn on_open(&self, c: &mut Conn, ctx: &mut Context<'_>) {
        if let Some((code, msg)) = c.refused.take() {
            // Refused: nothing more of this socket is served or counted.
            c.app = None;
            ctx.send_text(&protocol::error(Some(code), &msg));
            ctx.close(code, &msg);
            return;
        }
        metrics::inc(&self.counters.sockets);
        let sid = protocol::socket_id(ctx.id().as_u64());
        ctx.send_text(&protocol::connection_established(
            &sid,
            self.activity_secs(),
        ));
        ctx.set_timer(Duration::from_secs(self.activity_secs()));
    }

    /// The activity timer: ping a silent socket; close one that did not
    /// answer with 4201.
    pub fn on_timer(&self, c: &mut Conn, ctx: &mut Context<'_>) {
        if c.app.is_none() {
            return;
        }
        let idle = c.last_activity.elapsed();
        let activity = Duration::from_secs(self.activity_secs());
        if c.ping_sent {
            if idle >= activity + self.pong_wait() {
                log::debug!("pusher: conn {}: no pong, closing with 4201", ctx.id());
                ctx.close(protocol::PONG_NOT_RECEIVED, "Pong reply not received");
            } else {
                ctx.set_timer(activity + self.pong_wait() - idle);
            }
        } else if idle >= activity {
            ctx.send_text(protocol::PING);
            c.ping_sent = true;
            ctx.set_timer(self.pong_wait());
        } else {
            ctx.set_timer(activity - idle);
        }
    }

    /// A message from the client.
    pub fn on_message(&self, c: &mut Conn, msg: Message<'_>, ctx: &mut Context<'_>) {
        let Some(app) = c.app.clone() else { return };
        c.last_activity = Instant::now();
        c.ping_sent = false;
        let Message::Text(text) = msg else {
            return refuse(
                ctx,
                None,
                "binary messages are not part of the Pusher protocol",
            );
        };
        let m = match protocol::parse(text) {
            Ok(m) => m,
            Err(e) => return refuse(ctx, None, &e),
        };
        match m.event.as_str() {
            "pusher:ping" => ctx.send_text(protocol::PONG),
            "pusher:pong" => {}
            "pusher:subscribe" => self.subscribe(c, &app, &m, ctx),
            "pusher:unsubscribe" => {
                let fields = protocol::data_fields(m.data.as_deref()).ok();
                match fields.and_then(|f| protocol::str_field(&f, "channel")) {
                    Some(ch) => self.unsubscribe(c, &app, &ch, ctx),
                    None => refuse(ctx, None, "pusher:unsubscribe needs data.channel"),
                }
            }
            "pusher:signin" => self.signin(c, &app, &m, ctx),
            e if e.starts_with("client-") => self.client_event(c, &app, m, ctx),
            e => refuse(ctx, None, &format!("unknown event {e:?}")),
        }
    }

    fn subscribe(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        m: &protocol::ClientMessage,
        ctx: &mut Context<'_>,
    ) {
        let fields = match protocol::data_fields(m.data.as_deref()) {
            Ok(f) => f,
            Err(e) => return refuse(ctx, None, &format!("pusher:subscribe: {e}")),
        };
        let Some(channel) = protocol::str_field(&fields, "channel") else {
            return refuse(ctx, None, "pusher:subscribe needs data.channel");
        };
        let fail = |ctx: &mut Context<'_>, kind: &str, error: &str, status: u16| {
            metrics::inc(&self.counters.subscription_errors_total);
            log::debug!(
                "pusher: conn {}: subscription to {channel:?} refused: {error}",
                ctx.id()
            );
            ctx.send_text(&protocol::subscription_error(&channel, kind, error, status));
        };
        if !protocol::valid_channel(&channel) {
            return fail(
                ctx,
                "InvalidChannel",
                "channel names are ^#?[-a-zA-Z0-9_=@,.;]+$, at most 164 characters",
                400,
            );
        }
        let topic = topic(app, &channel);
        if c.channels.iter().any(|(ch, _)| **ch == *channel) {
            // pusher-js may resubscribe: answer as the first time.
            let data = match ChannelKind::of(&channel) {
                ChannelKind::Presence => self.membership.snapshot(&topic),
                _ => "{}".into(),
            };
            ctx.send_text(&protocol::subscription_succeeded(&channel, &data));
            return;
        }
        if c.channels.len() >= self.cfg.max_channels_per_conn {
            return fail(ctx, "LimitReached", "subscription limit reached", 400);
        }
        let sid = protocol::socket_id(ctx.id().as_u64());
        let auth = protocol::str_field(&fields, "auth").unwrap_or_default();
        let kind = ChannelKind::of(&channel);
        let mut member: Option<(String, String)> = None;
        match kind {
            ChannelKind::Public => {}
            ChannelKind::ServerToUser => {
                let mine = c
                    .user
                    .as_deref()
                    .is_some_and(|u| channel == format!("#server-to-user-{u}"));
                if !mine {
                    return fail(
                        ctx,
                        "AuthError",
                        "#server-to-user channels are for the signed-in user only",
                        403,
                    );
                }
            }
            ChannelKind::Private | ChannelKind::Encrypted => {
                if let Err(e) = sign::channel_auth(app, &sid, &channel, None, &auth) {
                    return fail(ctx, "AuthError", e, 401);
                }
            }
            ChannelKind::Presence => {
                let Some(data) = protocol::str_field(&fields, "channel_data") else {
                    return fail(ctx, "AuthError", "presence channels need channel_data", 401);
                };
                if let Err(e) = sign::channel_auth(app, &sid, &channel, Some(&data), &auth) {
                    return fail(ctx, "AuthError", e, 401);
                }
                match presence_member(&data) {
                    Ok(m) => member = Some(m),
                    Err(e) => return fail(ctx, "InvalidChannelData", e, 400),
                }
            }
        }
        // Cache channels: start right before the last publication, so the
        // broker's history hands it over with no gap or repeat.
        let cache = protocol::is_cache(&channel);
        let since = if cache {
            let (_, pos) = ctx.handle().broker().channel(&topic);
            (pos.seq > 0).then(|| Position {
                seq: pos.seq - 1,
                epoch: pos.epoch,
            })
        } else {
            None
        };
        let mref = member.as_ref().map(|(u, i)| MemberRef {
            user_id: u,
            info: i,
        });
        let max = self.cfg.max_presence_members;
        let sub = self.membership.join(&topic, mref, max, |j, snapshot| {
            let joined = ctx.subscribe_since(&topic, since);
            if j.member_added {
                if let Some((u, i)) = &member {
                    let data = format!("{{\"user_id\":{},\"user_info\":{i}}}", json_str(u));
                    let frame = protocol::event(
                        "pusher_internal:member_added",
                        Some(&channel),
                        &json_str(&data),
                        None,
                    );
                    publish(ctx.handle(), &topic, &frame, Some(ctx.id()), false);
                }
            }
            (j, snapshot, joined)
        });
        let Some((j, snapshot, joined)) = sub else {
            let why = format!("presence channel full ({max} members)");
            return fail(ctx, "LimitReached", &why, 403);
        };
        metrics::inc(&self.counters.subscriptions_total);
        // Most sockets hold one or two channels: grow one at a time.
        c.channels.reserve_exact(1);
        c.channels.push((
            channel.as_str().into(),
            member.as_ref().map(|(u, _)| u.as_str().into()),
        ));
        ctx.send_text(&protocol::subscription_succeeded(
            &channel,
            snapshot.as_deref().unwrap_or("{}"),
        ));
        if cache {
            // The Pusher protocol runs on the in-process broker, which
            // answers at once.
            let replay = match joined {
                Some(Answer::Now(Ok(j))) => j.replay,
                _ => Vec::new(),
            };
            if replay.is_empty() {
                ctx.send_text(&protocol::cache_miss(&channel));
            }
            for p in &replay {
                ctx.send_publication(p);
            }
        }
        if j.occupied {
            self.hook(app, || {
                format!(
                    "{{\"name\":\"channel_occupied\",\"channel\":{}}}",
                    json_str(&channel)
                )
            });
        }
        if j.member_added {
            if let Some((u, _)) = &member {
                self.hook(app, || member_hook("member_added", &channel, u));
            }
        }
    }

    fn unsubscribe(&self, c: &mut Conn, app: &Arc<App>, channel: &str, ctx: &mut Context<'_>) {
        let Some(i) = c.channels.iter().position(|(ch, _)| **ch == *channel) else {
            log::debug!(
                "pusher: conn {}: unsubscribe from {channel:?}: not subscribed",
                ctx.id()
            );
            return;
        };
        let (ch, user) = c.channels.swap_remove(i);
        self.leave(app, &ch, user.as_deref(), ctx);
    }

    /// A connection leaves a channel (unsubscribe or close).
    fn leave(&self, app: &Arc<App>, channel: &str, user: Option<&str>, ctx: &mut Context<'_>) {
        let topic = topic(app, channel);
        let left = self.membership.leave(&topic, user, |l| {
            ctx.unsubscribe(&topic);
            if l.member_removed {
                if let Some(u) = user {
                    let data = format!("{{\"user_id\":{}}}", json_str(u));
                    let frame = protocol::event(
                        "pusher_internal:member_removed",
                        Some(channel),
                        &json_str(&data),
                        None,
                    );
                    publish(ctx.handle(), &topic, &frame, None, false);
                }
            }
            l
        });
        if left.member_removed {
            if let Some(u) = user {
                self.hook(app, || member_hook("member_removed", channel, u));
            }
        }
        if left.vacated {
            self.hook(app, || {
                format!(
                    "{{\"name\":\"channel_vacated\",\"channel\":{}}}",
                    json_str(channel)
                )
            });
        }
    }

    fn signin(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        m: &protocol::ClientMessage,
        ctx: &mut Context<'_>,
    ) {
        let fields = match protocol::data_fields(m.data.as_deref()) {
            Ok(f) => f,
            Err(e) => return refuse(ctx, None, &format!("pusher:signin: {e}")),
        };
        let (Some(auth), Some(user_data)) = (
            protocol::str_field(&fields, "auth"),
            protocol::str_field(&fields, "user_data"),
        ) else {
            return refuse(
                ctx,
                Some(protocol::UNAUTHORIZED),
                "pusher:signin needs auth and user_data",
            );
        };
        let sid = protocol::socket_id(ctx.id().as_u64());
        if let Err(e) = sign::signin_auth(app, &sid, &user_data, &auth) {
            return refuse(
                ctx,
                Some(protocol::UNAUTHORIZED),
                &format!("sign-in refused: {e}"),
            );
        }
        let id = serde_json::from_str::<serde_json::Value>(&user_data)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .filter(|id| !id.is_empty());
        let Some(id) = id else {
            return refuse(
                ctx,
                Some(protocol::UNAUTHORIZED),
                "sign-in refused: user_data must be a JSON object with a non-empty string id",
            );
        };
        if let Some(old) = c.user.take() {
            self.membership.sign_out(&user_key(app, &old), ctx.id());
        }
        self.membership.sign_in(&user_key(app, &id), ctx.id());
        c.user = Some(id.into());
        ctx.send_text(&protocol::signin_success(&user_data));
    }

    fn client_event(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        m: protocol::ClientMessage,
        ctx: &mut Context<'_>,
    ) {
        let reject = |ctx: &mut Context<'_>, why: &str| {
            metrics::inc(&self.counters.client_events_refused_total);
            refuse(ctx, Some(protocol::CLIENT_EVENT_REJECTED), why);
        };
        if !self.cfg.client_events {
            return reject(
                ctx,
                "client events are not enabled on this server (--pusher-client-events)",
            );
        }
        let Some(channel) = m.channel.as_deref() else {
            return reject(ctx, "a client event needs a channel");
        };
        let Some((_, user)) = c.channels.iter().find(|(ch, _)| **ch == *channel) else {
            return reject(ctx, "not subscribed to this channel");
        };
        if !matches!(
            ChannelKind::of(channel),
            ChannelKind::Private | ChannelKind::Presence
        ) {
            return reject(
                ctx,
                "client events are only allowed on private and presence channels",
            );
        }
        if m.event.len() > protocol::MAX_EVENT_NAME_LEN {
            return reject(ctx, "event name too long (200 characters at most)");
        }
        let data = m
            .data
            .as_deref()
            .map_or_else(|| "\"\"".to_string(), protocol::data_as_string);
        if data.len() > self.cfg.max_event_size + 2 {
            return reject(ctx, "event data too large");
        }
        let now = Instant::now();
        if now.duration_since(c.window_start) >= Duration::from_secs(1) {
            c.window_start = now;
            c.events_in_window = 0;
        }
        if c.events_in_window >= self.cfg.client_event_rate {
            return reject(
                ctx,
                &format!(
                    "Client event rejected - only {} accepted per second",
                    self.cfg.client_event_rate
                ),
            );
        }
        c.events_in_window += 1;
        metrics::inc(&self.counters.client_events_total);
        let user = user.as_deref();
        let frame = protocol::event(&m.event, Some(channel), &data, user);
        publish(
            ctx.handle(),
            &topic(app, channel),
            &frame,
            Some(ctx.id()),
            protocol::is_cache(channel),
        );
        self.hook(app, || {
            let mut s = format!(
                "{{\"name\":\"client_event\",\"channel\":{},\"event\":{},\"data\":{data},\"socket_id\":{}",
                json_str(channel),
                json_str(&m.event),
                json_str(&protocol::socket_id(ctx.id().as_u64()))
            );
            if let Some(u) = user {
                s.push_str(&format!(",\"user_id\":{}", json_str(u)));
            }
            s.push('}');
            s
        });
    }

    /// The connection ended: leave every channel, sign out.
    pub fn on_close(&self, c: &mut Conn, ctx: &mut Context<'_>) {
        let Some(app) = c.app.clone() else { return };
        self.counters
            .sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        for (ch, user) in std::mem::take(&mut c.channels) {
            self.leave(&app, &ch, user.as_deref(), ctx);
        }
        if let Some(u) = c.user.take() {
            self.membership.sign_out(&user_key(&app, &u), ctx.id());
        }
    }

    /// Answer a plain HTTP request if it is the Pusher API's.
    pub fn on_http(&self, handle: &Handle, req: &Request<'_>) -> Option<Response> {
        api::serve(self, handle, req)
    }
}

/// Tell the client its message was refused (`pusher:error`), and log it.
fn refuse(ctx: &mut Context<'_>, code: Option<u16>, message: &str) {
    log::debug!("pusher: conn {}: {message}", ctx.id());
    ctx.send_text(&protocol::error(code, message));
}

/// `(user_id, user_info JSON)` from a presence subscription's channel_data.
fn presence_member(data: &str) -> Result<(String, String), &'static str> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(data).map_err(|_| "channel_data must be a JSON object")?;
    let id = match v.get("user_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err("channel_data needs a user_id (a non-empty string or a number)"),
    };
    if id.len() > 128 {
        return Err("user_id is longer than 128 characters");
    }
    if data.len() > 1024 + 256 {
        return Err("channel_data is over the limit (user_info at most 1 KB)");
    }
    // user_info as received (its exact text), or null.
    let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(data).map_err(|_| "channel_data must be a JSON object")?;
    let info = raw
        .get("user_info")
        .map_or_else(|| "null".to_string(), |r| r.get().to_string());
    Ok((id, info))
}

fn member_hook(name: &str, channel: &str, user: &str) -> String {
    format!(
        "{{\"name\":\"{name}\",\"channel\":{},\"user_id\":{}}}",
        json_str(channel),
        json_str(user)
    )
}

/// The `--pusher-*` flags.
#[cfg(feature = "daemon")]
#[derive(Debug, Clone, clap::Args)]
pub struct PusherArgs {
    /// A Pusher app, `ID:KEY:SECRET` (repeatable): pusher-js connects to
    /// `/app/KEY`, the server SDKs call `/apps/ID/...` signed with SECRET.
    #[arg(
        long = "pusher-app",
        env = "WSPUSH_PUSHER_APP",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub apps: Vec<String>,
    /// Allow `client-*` events (Echo's whisper) on private and presence channels.
    #[arg(long, env = "WSPUSH_PUSHER_CLIENT_EVENTS")]
    pub pusher_client_events: bool,
    /// Client events a connection may send per second (more: error 4301).
    #[arg(long, default_value_t = 10, env = "WSPUSH_PUSHER_CLIENT_EVENT_RATE")]
    pub pusher_client_event_rate: u32,
    /// Silence before the server pings a Pusher socket (sent to clients as
    /// `activity_timeout`; no pong within 30 s or this, whichever is
    /// shorter, closes with 4201). Whole seconds.
    #[arg(long, default_value = "120s", value_parser = crate::daemon::parse_duration, env = "WSPUSH_PUSHER_ACTIVITY_TIMEOUT")]
    pub pusher_activity_timeout: Duration,
    /// Largest event data (HTTP API → 413, client events → 4301), bytes.
    #[arg(long, default_value_t = 10 * 1024, env = "WSPUSH_PUSHER_MAX_EVENT_SIZE")]
    pub pusher_max_event_size: usize,
    /// Most members (distinct users) of one presence channel; a new user
    /// beyond it gets a subscription_error (status 403).
    #[arg(
        long,
        default_value_t = 100,
        env = "WSPUSH_PUSHER_MAX_PRESENCE_MEMBERS"
    )]
    pub pusher_max_presence_members: usize,
    /// POST webhooks (channel_occupied, channel_vacated, member_added,
    /// member_removed, client_event) to this http:// or https:// URL.
    #[arg(long, env = "WSPUSH_PUSHER_WEBHOOK")]
    pub pusher_webhook: Option<String>,
    /// Apps from a JSON file, besides any --pusher-app:
    /// `{"apps":[{"id":"1","key":"KEY","secret":"SECRET"}]}`. Read once at
    /// start (SIGHUP does not re-read it).
    #[arg(long, env = "WSPUSH_PUSHER_APPS_FILE")]
    pub pusher_apps_file: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates trusted for an https://
    /// --pusher-webhook, besides the system's root certificates.
    #[arg(long, env = "WSPUSH_PUSHER_WEBHOOK_CA")]
    pub pusher_webhook_ca: Option<std::path::PathBuf>,
    /// The apps and webhook target, read once (the file, the CAs).
    #[arg(skip)]
    loaded: std::sync::OnceLock<Result<(Apps, Option<webhook::Target>), String>>,
}

#[cfg(feature = "daemon")]
impl PusherArgs {
    /// Whether any app is configured (by flag or file).
    pub fn has_apps(&self) -> bool {
        !self.apps.is_empty() || self.pusher_apps_file.is_some()
    }

    /// The apps and the webhook target, read and checked on the first call.
    fn load(&self) -> &Result<(Apps, Option<webhook::Target>), String> {
        self.loaded.get_or_init(|| {
            let mut apps = Apps::parse(&self.apps)?;
            if let Some(path) = &self.pusher_apps_file {
                apps.load_file(path)?;
            }
            let target = match &self.pusher_webhook {
                Some(url) => Some(webhook::Target::parse(
                    url,
                    self.pusher_webhook_ca.as_deref(),
                )?),
                None if self.pusher_webhook_ca.is_some() => {
                    return Err("--pusher-webhook-ca needs an https:// --pusher-webhook".into())
                }
                None => None,
            };
            Ok((apps, target))
        })
    }

    /// Check the flags (as the start does).
    pub fn validate(&self) -> Result<(), String> {
        self.load().clone()?;
        if self.pusher_activity_timeout < Duration::from_secs(1) {
            return Err("--pusher-activity-timeout must be at least 1s".into());
        }
        if self.pusher_client_event_rate == 0 {
            return Err("--pusher-client-event-rate must be at least 1 (leave --pusher-client-events out to refuse client events)".into());
        }
        if self.pusher_max_presence_members == 0 {
            return Err("--pusher-max-presence-members must be at least 1".into());
        }
        if self.pusher_max_event_size == 0 {
            return Err("--pusher-max-event-size must be more than 0 bytes".into());
        }
        if self.pusher_webhook.is_some() && !self.has_apps() {
            return Err("--pusher-webhook needs a --pusher-app or --pusher-apps-file".into());
        }
        if !self.has_apps() && self.pusher_client_events {
            return Err("--pusher-client-events needs a --pusher-app or --pusher-apps-file".into());
        }
        Ok(())
    }

    /// The service these (validated) flags describe; None without apps.
    pub fn build(&self, max_channels_per_conn: usize) -> Option<Arc<Pusher>> {
        let (apps, webhook) = self.load().clone().ok()?;
        if apps.all().is_empty() {
            return None;
        }
        let ids: Vec<&str> = apps.all().iter().map(|a| a.id.as_str()).collect();
        log::info!(
            "pusher: apps {} on /app/{{key}} and /apps/{{id}}; client events {}; webhooks {}",
            ids.join(", "),
            if self.pusher_client_events {
                "on"
            } else {
                "off"
            },
            self.pusher_webhook.as_deref().unwrap_or("off")
        );
        Some(Pusher::new(PusherConfig {
            apps,
            client_events: self.pusher_client_events,
            client_event_rate: self.pusher_client_event_rate,
            activity_timeout: self.pusher_activity_timeout,
            max_event_size: self.pusher_max_event_size,
            max_channels_per_conn,
            max_presence_members: self.pusher_max_presence_members,
            webhook,
        }))
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn conn_is_small() {
        let n = std::mem::size_of::<super::Conn>();
        assert!(n <= 128, "pusher::Conn grew to {n} bytes");
    }
}
