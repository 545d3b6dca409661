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

use std::collections::HashMap;

use crate::broker::presence::{Enter, Entered, Events};
use crate::broker::{Answer, Format, Joined, Position, PublishOptions, Published, Unavailable};
use crate::protocol::{Message, Request};
use crate::push::envelope::json_str;
use crate::server::{ConnId, Context, Handle, Response};

use app::{App, Apps};
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
    /// How each app's presence changes are published and reported (by app id).
    events: HashMap<String, Events>,
    /// The webhook sender, with `--pusher-webhook`.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Counters for `/metrics`.
    pub counters: metrics::Counters,
}

/// The broker topic of an app's channel.
pub fn topic(app: &App, channel: &str) -> String {
    format!("pusher/{}/{channel}", app.id)
}

/// The internal topic every connection signed in as `user` subscribes to
/// (a `TERMINATE` publication on it closes them, on every node). `/` is
/// not allowed in channel names, so no client can subscribe to it.
fn signin_topic(app: &App, user: &str) -> String {
    format!("pusher/{}/#signin/{user}", app.id)
}

/// A channel of a connection.
#[derive(Debug)]
struct Sub {
    channel: Box<str>,
    /// The presence member's user id.
    user: Option<Box<str>>,
    state: SubState,
}

#[derive(Debug)]
enum SubState {
    /// Waiting for the broker's presence answer (presence and cache
    /// channels start where it says).
    Entering,
    /// Waiting for the subscription: then `subscription_succeeded` (with
    /// the presence snapshot) and the replay.
    Joining { snapshot: Option<Box<str>> },
    /// Subscribed.
    Ready,
}

/// The broker's later presence answer for a subscription, back on the
/// connection's worker ([`Handle::notify`]).
struct EnteredNote {
    channel: Box<str>,
    answer: Result<Entered, Unavailable>,
}

/// The rate limits' one-second window: client events and subscriptions
/// asked for in it.
#[derive(Debug)]
struct Window {
    start: Instant,
    events: u32,
    subscribes: u16,
}

impl Window {
    /// Start a new window when it is due.
    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.events = 0;
            self.subscribes = 0;
        }
    }
}

/// Per-connection state of a Pusher socket.
#[derive(Debug)]
pub struct Conn {
    /// The app (None: refused at open with `refused`).
    app: Option<Arc<App>>,
    refused: Option<(u16, String)>,
    /// Channels, subscribed or on their way.
    channels: Vec<Sub>,
    /// The signed-in user.
    user: Option<Box<str>>,
    last_activity: Instant,
    ping_sent: bool,
    /// Client events and subscriptions in the current second.
    window: Window,
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
        presence::register_formats();
        let webhooks = cfg.webhook.clone().map(Webhooks::start);
        let events = cfg
            .apps
            .all()
            .iter()
            .map(|a| (a.id.clone(), presence::events(a, webhooks.as_ref())))
            .collect();
        Arc::new(Pusher {
            cfg,
            events,
            webhooks,
            counters: metrics::Counters::default(),
        })
    }

    /// How `app`'s presence changes are published and reported.
    pub fn events(&self, app: &App) -> &Events {
        match self.events.get(&app.id) {
            Some(e) => e,
            None => unreachable!("every app has its events"),
        }
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
            window: Window {
                start: now,
                events: 0,
                subscribes: 0,
            },
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
        if !protocol::valid_channel(&channel) {
            return self.fail(
                ctx,
                &channel,
                "InvalidChannel",
                "channel names are ^#?[-a-zA-Z0-9_=@,.;]+$, at most 164 characters",
                400,
            );
        }
        // A subscribe/unsubscribe loop must not flood the broker (Redis).
        c.window.roll(Instant::now());
        let rate = crate::push::subscribe_rate(self.cfg.max_channels_per_conn);
        if usize::from(c.window.subscribes) >= rate {
            return self.fail(
                ctx,
                &channel,
                "LimitReached",
                &format!("too many subscriptions: at most {rate} per second"),
                429,
            );
        }
        c.window.subscribes = c.window.subscribes.saturating_add(1);
        let kind = ChannelKind::of(&channel);
        if let Some(sub) = c.channels.iter().find(|s| *s.channel == *channel) {
            // pusher-js may resubscribe: a public or private channel is
            // answered as the first time; a presence one (whose snapshot
            // comes from the broker) goes on below, entering again (which
            // counts once) for a fresh snapshot.
            if !matches!(sub.state, SubState::Ready) {
                return;
            }
            if kind != ChannelKind::Presence {
                ctx.send_text(&protocol::subscription_succeeded(&channel, "{}"));
                return;
            }
        } else if c.channels.len() >= self.cfg.max_channels_per_conn {
            return self.fail(
                ctx,
                &channel,
                "LimitReached",
                "subscription limit reached",
                400,
            );
        }
        let sid = protocol::socket_id(ctx.id().as_u64());
        let auth = protocol::str_field(&fields, "auth").unwrap_or_default();
        let mut member: Option<(String, String)> = None;
        match kind {
            ChannelKind::Public => {}
            ChannelKind::ServerToUser => {
                let mine = c
                    .user
                    .as_deref()
                    .is_some_and(|u| channel == format!("#server-to-user-{u}"));
                if !mine {
                    return self.fail(
                        ctx,
                        &channel,
                        "AuthError",
                        "#server-to-user channels are for the signed-in user only",
                        403,
                    );
                }
            }
            ChannelKind::Private | ChannelKind::Encrypted => {
                if let Err(e) = sign::channel_auth(app, &sid, &channel, None, &auth) {
                    return self.fail(ctx, &channel, "AuthError", e, 401);
                }
            }
            ChannelKind::Presence => {
                let Some(data) = protocol::str_field(&fields, "channel_data") else {
                    return self.fail(
                        ctx,
                        &channel,
                        "AuthError",
                        "presence channels need channel_data",
                        401,
                    );
                };
                if let Err(e) = sign::channel_auth(app, &sid, &channel, Some(&data), &auth) {
                    return self.fail(ctx, &channel, "AuthError", e, 401);
                }
                match presence_member(&data) {
                    Ok(m) => member = Some(m),
                    Err(e) => return self.fail(ctx, &channel, "InvalidChannelData", e, 400),
                }
            }
        }
        let topic = topic(app, &channel);
        // Presence and cache channels start where the broker's presence
        // answer says (the snapshot's position; right before the last
        // event); the others subscribe at once and are counted on the side.
        let wait = kind == ChannelKind::Presence || protocol::is_cache(&channel);
        match c.channels.iter_mut().find(|s| *s.channel == *channel) {
            Some(sub) => sub.state = SubState::Entering,
            None => {
                // Most sockets hold one or two channels: grow one at a time.
                c.channels.reserve_exact(1);
                c.channels.push(Sub {
                    channel: channel.as_str().into(),
                    user: member.as_ref().map(|(u, _)| u.as_str().into()),
                    state: if wait {
                        SubState::Entering
                    } else {
                        SubState::Joining { snapshot: None }
                    },
                });
            }
        }
        let conn = ctx.id();
        let enter = Enter {
            conn,
            member: member.as_ref().map(|(u, i)| (u.as_str(), i.as_str())),
            limit: self.cfg.max_presence_members,
            events: self.events(app),
        };
        let handle = ctx.handle().clone();
        let note_channel: Box<str> = channel.as_str().into();
        let mut later = || -> crate::broker::Reply<Entered> {
            let (handle, channel) = (handle.clone(), note_channel.clone());
            if !wait {
                return Box::new(move |r| {
                    if let Err(e) = r {
                        log::warn!("pusher: conn {conn}: {channel} not counted in presence: {e}");
                    }
                });
            }
            Box::new(move |answer| {
                handle.notify(conn, Box::new(EnteredNote { channel, answer }));
            })
        };
        let answer = ctx
            .handle()
            .broker()
            .presence_enter(&topic, enter, &mut later);
        if wait {
            if let Answer::Now(answer) = answer {
                self.entered(c, app, &channel, answer, ctx);
            }
        } else {
            if let Answer::Now(Err(e)) = answer {
                log::warn!("pusher: conn {conn}: {channel} not counted in presence: {e}");
            }
            self.join(c, app, &channel, None, ctx);
        }
    }

    /// A subscription is refused: say so to the client, count and log it.
    fn fail(&self, ctx: &mut Context<'_>, channel: &str, kind: &str, error: &str, status: u16) {
        metrics::inc(&self.counters.subscription_errors_total);
        log::debug!(
            "pusher: conn {}: subscription to {channel:?} refused: {error}",
            ctx.id()
        );
        ctx.send_text(&protocol::subscription_error(channel, kind, error, status));
    }

    /// The broker's presence answer for a presence or cache subscription.
    fn entered(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        channel: &str,
        answer: Result<Entered, Unavailable>,
        ctx: &mut Context<'_>,
    ) {
        let Some(i) = c
            .channels
            .iter()
            .position(|s| *s.channel == *channel && matches!(s.state, SubState::Entering))
        else {
            // Unsubscribed meanwhile (and left the presence it entered).
            return;
        };
        let presence = ChannelKind::of(channel) == ChannelKind::Presence;
        match answer {
            Ok(Entered::In { position, members }) => {
                let since = if !presence && position.seq > 0 {
                    // A cache channel: its last event is replayed.
                    Position {
                        seq: position.seq - 1,
                        epoch: position.epoch,
                    }
                } else {
                    position
                };
                c.channels[i].state = SubState::Joining {
                    snapshot: presence.then(|| presence::snapshot(&members).into()),
                };
                self.join(c, app, channel, Some(since), ctx);
            }
            Ok(Entered::Full) => {
                self.drop_sub(c, i);
                let why = format!(
                    "presence channel full ({} members)",
                    self.cfg.max_presence_members
                );
                self.fail(ctx, channel, "LimitReached", &why, 403);
            }
            Err(e) => {
                self.drop_sub(c, i);
                self.fail(ctx, channel, "ServiceUnavailable", &e.0, 503);
            }
        }
    }

    /// Forget a subscription that never took effect (its presence entry,
    /// if any, was refused: nothing to leave).
    fn drop_sub(&self, c: &mut Conn, i: usize) {
        c.channels.swap_remove(i);
    }

    /// Subscribe the connection (after `since` for presence and cache
    /// channels); the answer now or in [`Pusher::on_joined`].
    fn join(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        channel: &str,
        since: Option<Position>,
        ctx: &mut Context<'_>,
    ) {
        let topic = topic(app, channel);
        match ctx.subscribe_since(&topic, since) {
            // Subscribed already (a presence channel entered again).
            None => self.joined(
                c,
                app,
                channel,
                Ok(Joined {
                    position: since.unwrap_or(Position {
                        seq: 0,
                        epoch: crate::broker::Epoch(0),
                    }),
                    recovered: None,
                    replay: Vec::new(),
                }),
                ctx,
            ),
            Some(Answer::Now(answer)) => self.joined(c, app, channel, answer, ctx),
            Some(Answer::Later) => {}
        }
    }

    /// The subscription took effect (or failed): `subscription_succeeded`
    /// with the snapshot, then what came after the presence answer (the
    /// member events; a cache channel's last event, or `cache_miss`).
    fn joined(
        &self,
        c: &mut Conn,
        app: &Arc<App>,
        channel: &str,
        answer: Result<Joined, Unavailable>,
        ctx: &mut Context<'_>,
    ) {
        let Some(i) = c
            .channels
            .iter()
            .position(|s| *s.channel == *channel && matches!(s.state, SubState::Joining { .. }))
        else {
            return;
        };
        let j = match answer {
            Ok(j) => j,
            Err(e) => {
                let sub = c.channels.swap_remove(i);
                self.leave(app, &sub, ctx);
                return self.fail(ctx, channel, "ServiceUnavailable", &e.0, 503);
            }
        };
        let SubState::Joining { snapshot } =
            std::mem::replace(&mut c.channels[i].state, SubState::Ready)
        else {
            return;
        };
        metrics::inc(&self.counters.subscriptions_total);
        ctx.send_text(&protocol::subscription_succeeded(
            channel,
            snapshot.as_deref().unwrap_or("{}"),
        ));
        if j.recovered == Some(false) {
            log::debug!(
                "pusher: conn {}: {channel}: history no longer covers the start position",
                ctx.id()
            );
        }
        let cache =
            protocol::is_cache(channel) && ChannelKind::of(channel) != ChannelKind::Presence;
        if cache && j.replay.is_empty() {
            ctx.send_text(&protocol::cache_miss(channel));
        }
        for p in &j.replay {
            ctx.send_publication(p);
        }
    }

    /// The broker's later answer to a subscription.
    pub fn on_joined(
        &self,
        c: &mut Conn,
        topic: &str,
        answer: Result<Joined, Unavailable>,
        ctx: &mut Context<'_>,
    ) {
        let Some(app) = c.app.clone() else { return };
        let Some(channel) = topic.strip_prefix(&format!("pusher/{}/", app.id)) else {
            return;
        };
        if channel.starts_with("#signin/") {
            if let Err(e) = answer {
                log::warn!("pusher: conn {}: sign-in topic refused: {e}", ctx.id());
            }
            return;
        }
        self.joined(c, &app, channel, answer, ctx);
    }

    /// A value from [`Handle::notify`]: a presence answer.
    pub fn on_notify(
        &self,
        c: &mut Conn,
        value: Box<dyn std::any::Any + Send>,
        ctx: &mut Context<'_>,
    ) {
        let Some(app) = c.app.clone() else { return };
        if let Ok(note) = value.downcast::<EnteredNote>() {
            self.entered(c, &app, &note.channel, note.answer, ctx);
        }
    }

    fn unsubscribe(&self, c: &mut Conn, app: &Arc<App>, channel: &str, ctx: &mut Context<'_>) {
        let Some(i) = c.channels.iter().position(|s| *s.channel == *channel) else {
            log::debug!(
                "pusher: conn {}: unsubscribe from {channel:?}: not subscribed",
                ctx.id()
            );
            return;
        };
        let sub = c.channels.swap_remove(i);
        self.leave(app, &sub, ctx);
    }

    /// A connection leaves a channel (unsubscribe or close), whatever state
    /// its subscription is in: the broker's member and occupancy events
    /// follow.
    fn leave(&self, app: &Arc<App>, sub: &Sub, ctx: &mut Context<'_>) {
        let topic = topic(app, &sub.channel);
        ctx.unsubscribe(&topic);
        ctx.handle().broker().presence_leave(&topic, ctx.id());
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
            ctx.unsubscribe(&signin_topic(app, &old));
        }
        if let Some(Answer::Now(Err(e))) = ctx.subscribe_since(&signin_topic(app, &id), None) {
            log::warn!("pusher: conn {}: sign-in topic refused: {e}", ctx.id());
        }
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
        let Some(user) = c
            .channels
            .iter()
            .find(|s| *s.channel == *channel && matches!(s.state, SubState::Ready))
            .map(|s| &s.user)
        else {
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
        c.window.roll(Instant::now());
        if c.window.events >= self.cfg.client_event_rate {
            return reject(
                ctx,
                &format!(
                    "Client event rejected - only {} accepted per second",
                    self.cfg.client_event_rate
                ),
            );
        }
        c.window.events += 1;
        metrics::inc(&self.counters.client_events_total);
        let user = user.as_deref();
        let frame = protocol::event(&m.event, Some(channel), &data, user);
        publish(
            ctx.handle(),
            &topic(app, channel),
            &frame,
            Some(ctx.id()),
            keep(channel),
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

    /// The connection ended: leave every channel (its subscriptions, the
    /// sign-in topic's too, end with it).
    pub fn on_close(&self, c: &mut Conn, ctx: &mut Context<'_>) {
        let Some(app) = c.app.clone() else { return };
        self.counters
            .sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        for sub in std::mem::take(&mut c.channels) {
            self.leave(&app, &sub, ctx);
        }
    }

    /// Answer a plain HTTP request (on connection `conn`) if it is the
    /// Pusher API's.
    pub fn on_http(&self, handle: &Handle, conn: ConnId, req: &Request<'_>) -> Option<Response> {
        api::serve(self, handle, conn, req)
    }
}

/// Whether publications on `channel` are kept in history: a cache
/// channel's (its last event is replayed on subscribe) and a presence
/// channel's (a joining connection resumes from its snapshot's position,
/// so what came between must be in history).
pub fn keep(channel: &str) -> bool {
    protocol::is_cache(channel) || ChannelKind::of(channel) == ChannelKind::Presence
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
    if !crate::broker::presence::valid_user(&id) {
        return Err("user_id must be 1 to 128 bytes without control characters");
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
