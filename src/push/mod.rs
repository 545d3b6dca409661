//! The push service: what the `wspush` daemon runs.
//!
//! Clients connect to `GET /ws` (optionally `?channel=a&channel=b` and
//! `?token=JWT`), subscribe and unsubscribe with JSON control messages, and
//! receive every publication on their channels as
//! `{"channel":"x","seq":N,"data":...}`. Backends publish through the HTTP
//! API ([`api`]). The same handler also serves the benchmark endpoints
//! `/echo` and `/broadcast`, the demo page at `/`, and the operator
//! endpoints `/stats`, `/metrics` and `/healthz`.
//!
//! - [`channel`]: channel names and patterns.
//! - [`envelope`]: the JSON spoken with clients.
//! - [`auth`]: JWT (HS256) and API keys.
//! - [`api`]: the backend HTTP API.
//! - [`metrics`]: `/stats` and `/metrics`.

pub mod api;
pub mod auth;
pub mod channel;
pub mod envelope;
pub mod metrics;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::broker::{Answer, Format, Joined, Position, PublishOptions, Reply, Unavailable};
use crate::protocol::http::percent_decode;
use crate::protocol::{close, HttpError, Message, Request};
use crate::server::{CloseReason, ConnId, ConnInfo, Context, Frame, Handle, Handler, Response};

use channel::{any_matches, valid_name, Pattern};
use envelope::Control;

/// The demo page served at `GET /`.
pub const PAGE: &str = include_str!("page.html");

/// The browser client served at `GET /wspush.js` (the demo page uses it).
pub const CLIENT_JS: &str = include_str!("wspush.js");

/// The page's Content-Security-Policy: its own inline script and style, the
/// client script from this server, WebSockets to this server, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a bad channel name is told.
pub const CHANNEL_RULE: &str = "channel names are [A-Za-z0-9_.:@-]{1,128}";

/// The topic of the `/broadcast` chat room (not a valid channel name, so
/// clients cannot reach it through `/ws`).
pub const ROOM_TOPIC: &str = "#room:/broadcast";

/// The internal topic of a user's connections.
pub fn user_topic(user: &str) -> String {
    format!("#user:{user}")
}

/// Settings of the push service.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Channels clients may publish on themselves (`--client-publish`).
    pub client_publish: Vec<Pattern>,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_conn: usize,
    /// HS256 secret; when set, every WebSocket needs a valid token.
    pub jwt_secret: Option<Vec<u8>>,
    /// Accept tokens without `exp` (`--allow-non-expiring-tokens`).
    pub allow_non_expiring_tokens: bool,
    /// API key for the backend API; without one the API answers on loopback only.
    pub api_key: Option<Vec<u8>>,
    /// Serve the API on the main port (false when it has its own listener).
    pub api_on_main: bool,
    /// Errors a client may make in a burst before it is closed with 1008.
    pub max_strikes: u32,
    /// The Pusher protocol and API (`/app/{key}`, `/apps/{id}/...`), with apps.
    pub pusher: Option<Arc<crate::pusher::Pusher>>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            client_publish: Vec::new(),
            max_channels_per_conn: 128,
            jwt_secret: None,
            allow_non_expiring_tokens: false,
            api_key: None,
            api_on_main: true,
            max_strikes: 10,
            pusher: None,
        }
    }
}

/// State shared by the handlers of all workers (and the API listener).
#[derive(Debug)]
pub struct Shared {
    /// The settings.
    pub cfg: PushConfig,
    /// Ids of the open `/ws` connections, sharded to keep locks short.
    live: Vec<Mutex<HashSet<u64>>>,
    /// Publications accepted (API and clients).
    pub publications: AtomicU64,
    /// The JWT secret and API key in force (replaced by a reload).
    secrets: RwLock<Arc<Secrets>>,
}

/// The secrets in force. Whether tokens and an API key are required is
/// fixed at start ([`PushConfig`]); a reload can only change their values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// HS256 secret for client tokens.
    pub jwt_secret: Option<Vec<u8>>,
    /// Key of the backend API.
    pub api_key: Option<Vec<u8>>,
}

const LIVE_SHARDS: usize = 16;

impl Shared {
    /// Shared state for a service with these settings.
    pub fn new(cfg: PushConfig) -> Arc<Shared> {
        envelope::register_formats();
        let secrets = Secrets {
            jwt_secret: cfg.jwt_secret.clone(),
            api_key: cfg.api_key.clone(),
        };
        Arc::new(Shared {
            secrets: RwLock::new(Arc::new(secrets)),
            cfg,
            live: (0..LIVE_SHARDS)
                .map(|_| Mutex::new(HashSet::new()))
                .collect(),
            publications: AtomicU64::new(0),
        })
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        let m = &self.live[(id as usize) % LIVE_SHARDS];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secrets in force.
    pub fn secrets(&self) -> Arc<Secrets> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the secrets (a reload): new connections and API calls are
    /// checked against the new values; open connections stay open until
    /// their token's `exp`, and a `refresh` must be signed with the new
    /// secret. A secret cannot be added or removed, only changed.
    pub fn set_secrets(&self, new: Secrets) -> Result<(), &'static str> {
        if new.jwt_secret.is_some() != self.cfg.jwt_secret.is_some()
            || new.api_key.is_some() != self.cfg.api_key.is_some()
        {
            return Err("a reload can change a secret, not add or remove one");
        }
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// Whether `id` is an open `/ws` connection.
    pub fn is_live(&self, id: u64) -> bool {
        self.shard(id).contains(&id)
    }
}

/// Which endpoint a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/ws`: the push protocol.
    Push,
    /// `/echo`: echoes every message.
    Echo,
    /// `/broadcast`: the chat room.
    Room,
    /// `/app/{key}`: the Pusher protocol ([`crate::pusher`]).
    Pusher,
}

/// Per-connection state: 16 bytes, plus a box only for connections that
/// carry a token or (until they open) channels from the query string.
#[derive(Debug)]
pub struct Session {
    kind: Kind,
    extra: Option<Box<SessionExtra>>,
    /// Recent errors (decaying by one per second; saturating, so a
    /// `max_strikes` of 65,535 or more never closes) and when they were last
    /// counted (seconds on [`clock_secs`]). 16-bit strikes keep the session
    /// at 16 bytes, as every idle connection holds one.
    strikes: u16,
    strike_at: u32,
}

/// A subscription waiting for the broker: channel, the request's `id`, `since`.
type Waiting = (Arc<str>, Option<Box<str>>, Option<Position>);

/// The rarer parts of a session.
#[derive(Debug, Default)]
struct SessionExtra {
    /// The token's `sub`.
    user: Option<Arc<str>>,
    /// The token, when it has a `channels` claim.
    allowed: Option<auth::Claims>,
    /// The token's `exp` (seconds since the Unix epoch): at that time the
    /// connection is closed with 3000 unless a refresh moved it.
    exp: Option<u64>,
    /// When the pending expiry timer is due (seconds, Unix): a refresh to a
    /// later `exp` arms nothing new (that timer re-arms when it fires), so
    /// refreshes cannot pile up timers.
    armed: Option<u64>,
    /// Channels from the query string, subscribed on open (with the
    /// position to resume after, from `since=`).
    initial: Vec<(String, Option<Position>)>,
    /// Subscriptions whose broker answer is still to come (Redis): the
    /// channel, the request's `id` and the resume position asked.
    waiting: Vec<Waiting>,
    /// A Pusher socket's state.
    pusher: Option<Box<crate::pusher::Conn>>,
}

/// Seconds since the first call (a process-wide coarse clock).
/// Subscribe requests of this worker's connections in the current second:
/// only connections that asked this second have an entry, so an idle
/// connection costs nothing here.
#[derive(Debug, Default, Clone)]
struct SubscribeCounts {
    second: u32,
    counts: std::collections::HashMap<ConnId, u16>,
}

impl SubscribeCounts {
    /// Count one request of `conn`: false past `rate` this second.
    fn admit(&mut self, conn: ConnId, rate: usize) -> bool {
        let now = clock_secs();
        if now != self.second {
            self.second = now;
            if self.counts.capacity() > 1024 {
                self.counts = Default::default();
            } else {
                self.counts.clear();
            }
        }
        let n = self.counts.entry(conn).or_insert(0);
        *n = n.saturating_add(1);
        usize::from(*n) <= rate
    }
}

/// Subscribe requests one connection may make per second (native and
/// Pusher): its channel allowance, and at least 100. Each costs the broker
/// work (in a cluster, Redis calls), so a subscribe loop must not run free.
pub fn subscribe_rate(max_channels_per_conn: usize) -> usize {
    max_channels_per_conn.max(100)
}

fn clock_secs() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() as u32
}

impl Session {
    /// Whether the connection's token allows `channel`.
    fn allows(&self, channel: &str) -> bool {
        self.extra
            .as_ref()
            .and_then(|e| e.allowed.as_ref())
            .is_none_or(|c| c.allows(channel))
    }

    /// The user id from the token, if any.
    fn user(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.user.as_deref())
    }

    /// When the token expires, if it does.
    fn exp(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.exp)
    }
}

/// Close code for a token that expired without a refresh (IANA: Unauthorized).
pub const CLOSE_TOKEN_EXPIRED: u16 = 3000;

/// Arm the expiry check of a connection whose token expires at `exp`.
fn arm_expiry(s: &mut Session, ctx: &mut Context<'_>) {
    let Some(extra) = s.extra.as_mut() else {
        return;
    };
    let Some(exp) = extra.exp else { return };
    if extra.armed.is_some_and(|due| due <= exp) {
        return;
    }
    // Timers reach 24 days at most: a later expiry is checked then, and re-armed.
    let now = unix_now();
    let due = exp.min(now + 24 * 86_400);
    extra.armed = Some(due);
    ctx.set_timer(std::time::Duration::from_secs(due.saturating_sub(now)));
}

/// Whether the route takes WebSocket upgrades.
fn ws_kind(path: &str) -> Option<Kind> {
    match path {
        "/ws" => Some(Kind::Push),
        "/echo" => Some(Kind::Echo),
        "/broadcast" => Some(Kind::Room),
        _ => None,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A plain-text error response: the reason on one line.
pub fn text_error(status: u16, message: &str) -> Response {
    Response::text(status, format!("{message}\n"))
}

/// A JSON error response: `{"error":"...","status":N}`.
pub fn json_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        format!(
            "{{\"error\":{},\"status\":{status}}}\n",
            envelope::json_str(message)
        ),
    )
}

/// The push service handler (one per worker).
#[derive(Debug, Clone)]
pub struct PushService {
    shared: Arc<Shared>,
    /// The handle of the server whose clients this service pushes to.
    handle: Handle,
    /// Only the API (a separate `--api-listen` server): no WebSockets, no page.
    api_only: bool,
    /// The handle of the server running this service (where deferred
    /// answers to its HTTP requests go); `handle` unless `api_only`.
    own: Handle,
    /// Subscribe requests in the current second ([`subscribe_rate`]).
    subscribes: std::cell::RefCell<SubscribeCounts>,
}

impl PushService {
    /// The handler for the main server.
    pub fn new(shared: Arc<Shared>, handle: Handle) -> Self {
        PushService {
            shared,
            own: handle.clone(),
            handle,
            api_only: false,
            subscribes: Default::default(),
        }
    }

    /// The handler for a separate API listener, pushing through `main`.
    pub fn api_only(shared: Arc<Shared>, main: Handle, own: Handle) -> Self {
        PushService {
            shared,
            handle: main,
            api_only: true,
            own,
            subscribes: Default::default(),
        }
    }

    /// The handle of the server running this service (for deferred answers).
    pub fn own_handle(&self) -> &Handle {
        &self.own
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The handle pushes go through.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The Pusher service and a Pusher socket's state.
    fn pusher<'a>(
        &'a self,
        s: &'a mut Session,
    ) -> Option<(&'a crate::pusher::Pusher, &'a mut crate::pusher::Conn)> {
        let p = self.shared.cfg.pusher.as_deref()?;
        Some((p, s.extra.as_mut()?.pusher.as_mut()?))
    }

    /// Check the token of an upgrade request, if tokens are required.
    fn authenticate(&self, req: &Request<'_>) -> Result<Option<auth::Claims>, Response> {
        let secrets = self.shared.secrets();
        let Some(secret) = secrets.jwt_secret.as_deref() else {
            return Ok(None);
        };
        let from_query = req
            .query_pairs()
            .find(|(k, _)| *k == "token")
            .and_then(|(_, v)| percent_decode(v));
        let token = match from_query {
            Some(t) => Some(t),
            None => req
                .header("authorization")
                .and_then(auth::bearer)
                .map(str::to_string),
        };
        let result = match token {
            Some(t) => auth::verify_hs256(&t, secret, unix_now(), self.token_rules()),
            None => Err(auth::AuthError::Missing),
        };
        match result {
            Ok(claims) => Ok(Some(claims)),
            Err(e) => {
                log::debug!("upgrade refused: token: {}", e.message());
                Err(text_error(401, e.message()).header("WWW-Authenticate", "Bearer"))
            }
        }
    }

    /// What a token (at the upgrade or in a refresh) must carry.
    fn token_rules(&self) -> auth::TokenRules {
        auth::TokenRules {
            allow_no_exp: self.shared.cfg.allow_non_expiring_tokens,
        }
    }

    fn strike(
        &self,
        s: &mut Session,
        ctx: &mut Context<'_>,
        code: &str,
        message: &str,
        id: Option<&str>,
    ) {
        let now = clock_secs();
        let decay = u16::try_from(now.saturating_sub(s.strike_at)).unwrap_or(u16::MAX);
        s.strikes = s.strikes.saturating_sub(decay).saturating_add(1);
        s.strike_at = now;
        if u32::from(s.strikes) > self.shared.cfg.max_strikes {
            ctx.send_text(&envelope::reply_error(
                "rate_limited",
                "too many invalid messages",
                id,
            ));
            log::debug!("conn {}: too many invalid messages, closing", ctx.id());
            ctx.close(close::POLICY_VIOLATION, "too many invalid messages");
        } else {
            ctx.send_text(&envelope::reply_error(code, message, id));
        }
    }

    /// A fresh token for the same user: it replaces the old one's expiry
    /// and channel allowance; subscriptions it no longer allows end.
    fn refresh(&self, s: &mut Session, token: &str, ctx: &mut Context<'_>, id: Option<&str>) {
        let secrets = self.shared.secrets();
        let Some(secret) = secrets.jwt_secret.as_deref() else {
            return self.strike(
                s,
                ctx,
                "tokens_disabled",
                "this server does not use tokens",
                id,
            );
        };
        let claims = match auth::verify_hs256(token, secret, unix_now(), self.token_rules()) {
            Ok(c) => c,
            Err(e) => return self.strike(s, ctx, "invalid_token", e.message(), id),
        };
        if Some(claims.sub.as_str()) != s.user() {
            return self.strike(s, ctx, "forbidden", "the new token is for another user", id);
        }
        let exp = claims.exp;
        let extra = s.extra.get_or_insert_with(Default::default);
        extra.exp = exp;
        extra.allowed = claims.channels.is_some().then_some(claims);
        let own = s.user().map(user_topic);
        for topic in ctx.topics() {
            if Some(&*topic) == own.as_deref() || topic.starts_with('#') || s.allows(&topic) {
                continue;
            }
            ctx.unsubscribe(&topic);
            ctx.send_text(&envelope::unsubscribed_by_server(
                &topic,
                "the refreshed token does not allow this channel",
            ));
        }
        arm_expiry(s, ctx);
        ctx.send_text(&envelope::reply_refreshed(exp, id));
    }

    fn control(&self, s: &mut Session, text: &str, ctx: &mut Context<'_>) {
        let parsed = envelope::parse(text);
        let id = parsed.id.as_deref();
        let control = match parsed.control {
            Ok(c) => c,
            Err(e) => return self.strike(s, ctx, e.code, e.message, id),
        };
        // Every op but ping names a channel: check it once.
        if let Control::Subscribe(ch, _) | Control::Unsubscribe(ch) | Control::Publish(ch, _) =
            &control
        {
            if !valid_name(ch) {
                return self.strike(s, ctx, "invalid_channel", CHANNEL_RULE, id);
            }
        }
        let refusal = match &control {
            Control::Ping | Control::Refresh(_) => None,
            Control::Subscribe(ch, _) if !s.allows(ch) => {
                Some(("forbidden", "the token does not allow this channel"))
            }
            Control::Subscribe(..) => {
                let own = usize::from(s.user().is_some());
                let max = self.shared.cfg.max_channels_per_conn;
                if ctx.subscriptions().saturating_sub(own) >= max {
                    Some(("too_many_channels", "subscription limit reached"))
                } else if !self
                    .subscribes
                    .borrow_mut()
                    .admit(ctx.id(), subscribe_rate(max))
                {
                    // Each subscription costs the broker work (in a cluster,
                    // Redis calls): a subscribe loop is refused and struck.
                    Some(("rate_limited", "too many subscriptions per second"))
                } else {
                    None
                }
            }
            Control::Unsubscribe(_) => None,
            Control::Publish(ch, _) => (!any_matches(&self.shared.cfg.client_publish, ch)
                || !s.allows(ch))
            .then_some(("forbidden", "clients may not publish on this channel")),
        };
        if let Some((code, message)) = refusal {
            return self.strike(s, ctx, code, message, id);
        }
        match control {
            Control::Ping => ctx.send_text(&envelope::reply_pong(id)),
            Control::Refresh(token) => self.refresh(s, &token, ctx, id),
            Control::Subscribe(ch, since) => {
                if !subscribe(s, ctx, &ch, since, id) {
                    // Harmless (no strike); the subscription goes on as it was.
                    ctx.send_text(&envelope::reply_error(
                        "already_subscribed",
                        "already subscribed to this channel",
                        id,
                    ));
                }
            }
            Control::Unsubscribe(ch) => {
                if !ctx.unsubscribe(&ch) {
                    return self.strike(
                        s,
                        ctx,
                        "not_subscribed",
                        "not subscribed to this channel",
                        id,
                    );
                }
                ctx.send_text(&envelope::reply_channel("unsubscribed", &ch, id));
            }
            Control::Publish(ch, data) => {
                let opts = PublishOptions::kept(envelope::CHANNEL);
                let shared = self.shared.clone();
                let answer = self
                    .handle
                    .publish_with(&ch, opts, data.as_bytes(), &mut || {
                        let (handle, conn, ch, id) = (
                            self.handle.clone(),
                            ctx.id(),
                            ch.clone(),
                            id.map(String::from),
                        );
                        let shared = shared.clone();
                        Box::new(move |r| {
                            let text = published_reply(&shared, &ch, r, id.as_deref());
                            handle.send(conn, Frame::text(&text));
                        })
                    });
                if let Answer::Now(r) = answer {
                    ctx.send_text(&published_reply(&self.shared, &ch, r, id));
                }
            }
        }
    }
}

impl Handler for PushService {
    type Conn = Session;

    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        _: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<Session, Response> {
        if let Some(p) = self.shared.cfg.pusher.as_ref() {
            if !self.api_only && crate::pusher::Pusher::is_ws_path(req.path) {
                let extra = SessionExtra {
                    pusher: Some(Box::new(p.upgrade(req))),
                    ..Default::default()
                };
                return Ok(Session {
                    kind: Kind::Pusher,
                    extra: Some(Box::new(extra)),
                    strikes: 0,
                    strike_at: 0,
                });
            }
        }
        let kind = match ws_kind(req.path) {
            Some(k) if !self.api_only => k,
            _ => return Err(text_error(404, "no WebSocket endpoint here")),
        };
        let claims = self.authenticate(req)?;
        let mut initial: Vec<(String, Option<Position>)> = Vec::new();
        if kind == Kind::Push {
            for (k, v) in req.query_pairs() {
                let v = percent_decode(v).unwrap_or_default();
                let (ch, since) = match k {
                    "channel" => (v, None),
                    "since" => match envelope::since_query(&v) {
                        Some((ch, p)) => (ch.to_string(), Some(p)),
                        None => {
                            return Err(text_error(
                                400,
                                "since is channel:seq:epoch (epoch: 16 hex digits)",
                            ))
                        }
                    },
                    _ => continue,
                };
                if !valid_name(&ch) {
                    return Err(text_error(400, CHANNEL_RULE));
                }
                if claims.as_ref().is_some_and(|c| !c.allows(&ch)) {
                    return Err(text_error(403, "the token does not allow this channel"));
                }
                match initial.iter_mut().find(|(c, _)| *c == ch) {
                    Some(entry) => entry.1 = entry.1.or(since),
                    None => initial.push((ch, since)),
                }
            }
            if initial.len() > self.shared.cfg.max_channels_per_conn {
                return Err(text_error(400, "too many channels"));
            }
        }
        let user = claims.as_ref().map(|c| Arc::from(c.sub.as_str()));
        let exp = claims.as_ref().and_then(|c| c.exp);
        let allowed = claims.filter(|c| c.channels.is_some());
        let extra = (user.is_some() || allowed.is_some() || exp.is_some() || !initial.is_empty())
            .then(|| {
                Box::new(SessionExtra {
                    user,
                    allowed,
                    exp,
                    armed: None,
                    initial,
                    waiting: Vec::new(),
                    pusher: None,
                })
            });
        Ok(Session {
            kind,
            extra,
            strikes: 0,
            strike_at: clock_secs(),
        })
    }

    fn on_http(
        &mut self,
        req: &Request<'_>,
        info: &ConnInfo<'_>,
        ctx: &mut Context<'_>,
    ) -> Response {
        if let Some(p) = self.shared.cfg.pusher.as_ref() {
            if let Some(resp) = p.on_http(&self.handle, ctx.id(), req) {
                return resp;
            }
        }
        if self.api_only || self.shared.cfg.api_on_main {
            if let Some(resp) = api::serve(self, req, info) {
                return resp;
            }
        }
        if self.api_only {
            return json_error(404, "not found");
        }
        match (req.method, req.path) {
            ("GET" | "HEAD", "/") => Response::with_body(200, "text/html; charset=utf-8", PAGE)
                .header("Cache-Control", "no-cache")
                .header("X-Content-Type-Options", "nosniff")
                .header("Content-Security-Policy", PAGE_CSP),
            ("GET" | "HEAD", "/wspush.js") => {
                Response::with_body(200, "application/javascript; charset=utf-8", CLIENT_JS)
                    .header("Cache-Control", "no-cache")
                    .header("X-Content-Type-Options", "nosniff")
            }
            ("GET" | "HEAD", "/healthz") => {
                let (open, max) = self.handle.capacity();
                if open >= max {
                    let ws = self.handle.stats().total.websockets.load(Ordering::Relaxed);
                    Response::text(
                        503,
                        format!(
                            "full: {open} of --max-connections {max} connections held \
                             ({ws} WebSockets, the rest in their HTTP handshake)\n"
                        ),
                    )
                } else if let crate::broker::Health::Degraded(why) = self.handle.broker().health() {
                    Response::text(503, format!("degraded: {why}\n"))
                } else {
                    Response::text(200, "ok\n")
                }
            }
            (_, p) if ws_kind(p).is_some() => Response::text(
                426,
                "this endpoint speaks WebSocket: send an Upgrade request\n",
            )
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13"),
            _ => Response::not_found(),
        }
    }

    fn on_request_head(&mut self, req: &Request<'_>, info: &ConnInfo<'_>) -> Option<Response> {
        if self.api_only || self.shared.cfg.api_on_main {
            return api::refuse_early(self, req, info);
        }
        None
    }

    fn on_refuse(&mut self, err: HttpError) -> Response {
        // A body over --max-publish-size can only be an API call: answer in
        // the API's JSON. Every other refusal is a one-line plain-text reason.
        let mut r = match err {
            HttpError::BodyTooLarge => json_error(err.status(), err.reason()),
            _ => text_error(err.status(), err.reason()),
        };
        r.headers.push_str(err.extra_headers());
        r
    }

    fn on_open(&mut self, s: &mut Session, ctx: &mut Context<'_>) {
        match s.kind {
            Kind::Room => {
                ctx.subscribe(ROOM_TOPIC);
            }
            Kind::Echo => {}
            Kind::Pusher => {
                if let Some((p, c)) = self.pusher(s) {
                    p.on_open(c, ctx);
                }
            }
            Kind::Push => {
                let id = ctx.id().as_u64();
                self.shared.shard(id).insert(id);
                if let Some(user) = s.user() {
                    ctx.subscribe(&user_topic(user));
                }
                let initial = s
                    .extra
                    .as_mut()
                    .map(|e| std::mem::take(&mut e.initial))
                    .unwrap_or_default();
                let names: Vec<String> = initial.iter().map(|(c, _)| c.clone()).collect();
                ctx.send_text(&envelope::welcome(id, s.user(), &names));
                for (ch, since) in initial {
                    subscribe(s, ctx, &ch, since, None);
                }
                arm_expiry(s, ctx);
                if s.extra.as_ref().is_some_and(|e| {
                    e.user.is_none()
                        && e.allowed.is_none()
                        && e.exp.is_none()
                        && e.waiting.is_empty()
                }) {
                    s.extra = None;
                }
            }
        }
    }

    fn on_message(&mut self, s: &mut Session, msg: Message<'_>, ctx: &mut Context<'_>) {
        match (s.kind, msg) {
            (Kind::Echo, Message::Text(t)) => ctx.send_text(t),
            (Kind::Echo, Message::Binary(b)) => ctx.send_binary(b),
            (Kind::Room, Message::Text(t)) => {
                ctx.publish_with(ROOM_TOPIC, NO_HISTORY, t.as_bytes(), &mut ignore);
            }
            (Kind::Room, Message::Binary(b)) => {
                let opts = PublishOptions::unkept(Format::BINARY);
                ctx.publish_with(ROOM_TOPIC, opts, b, &mut ignore);
            }
            (Kind::Push, Message::Text(t)) => self.control(s, t, ctx),
            (Kind::Pusher, msg) => {
                if let Some((p, c)) = self.pusher(s) {
                    p.on_message(c, msg, ctx);
                }
            }
            (Kind::Push, Message::Binary(_)) => self.strike(
                s,
                ctx,
                "invalid_message",
                "control messages are JSON text",
                None,
            ),
            _ => {}
        }
    }

    fn on_timer(&mut self, s: &mut Session, ctx: &mut Context<'_>) {
        if let Some((p, c)) = self.pusher(s) {
            return p.on_timer(c, ctx);
        }
        if let Some(e) = s.extra.as_mut() {
            if e.armed.is_some_and(|due| due > unix_now() + 1) {
                // An earlier timer (armed before a refresh to an earlier
                // `exp`) that is not the pending one: nothing to do.
                return;
            }
            e.armed = None;
        }
        let Some(exp) = s.exp() else { return };
        if unix_now() < exp {
            // A refresh moved the expiry (or the timer was capped): wait on.
            return arm_expiry(s, ctx);
        }
        log::debug!("conn {}: token expired", ctx.id());
        ctx.send_text(&envelope::reply_error(
            "token_expired",
            "the token expired; reconnect with a fresh one",
            None,
        ));
        ctx.close(CLOSE_TOKEN_EXPIRED, "token expired");
    }

    fn on_joined(
        &mut self,
        s: &mut Session,
        topic: &str,
        answer: Result<Joined, Unavailable>,
        ctx: &mut Context<'_>,
    ) {
        if let Some((p, c)) = self.pusher(s) {
            return p.on_joined(c, topic, answer, ctx);
        }
        let Some(extra) = s.extra.as_mut() else {
            return;
        };
        let Some(i) = extra.waiting.iter().position(|(c, _, _)| &**c == topic) else {
            return;
        };
        let (_, id, since) = extra.waiting.remove(i);
        if topic.starts_with('#') {
            // An internal topic (the user's own, the room): nothing to say.
            if let Err(e) = answer {
                log::warn!("conn {}: subscription to {topic} refused: {e}", ctx.id());
            }
            return;
        }
        joined(ctx, topic, since, answer, id.as_deref());
    }

    fn on_reset(
        &mut self,
        _: &mut Session,
        topic: &str,
        position: Position,
        ctx: &mut Context<'_>,
    ) {
        if !topic.starts_with('#') {
            ctx.send_text(&envelope::reply_subscribed(
                topic,
                position,
                Some(false),
                None,
            ));
        }
    }

    fn on_notify(
        &mut self,
        s: &mut Session,
        value: Box<dyn std::any::Any + Send>,
        ctx: &mut Context<'_>,
    ) {
        if let Some((p, c)) = self.pusher(s) {
            p.on_notify(c, value, ctx);
        }
    }

    fn on_close(&mut self, s: &mut Session, _: CloseReason, ctx: &mut Context<'_>) {
        if let Some((p, c)) = self.pusher(s) {
            return p.on_close(c, ctx);
        }
        if s.kind == Kind::Push {
            let id = ctx.id().as_u64();
            self.shared.shard(id).remove(&id);
        }
    }
}

/// Subscribe the connection to `channel` (resuming after `since`), answer
/// `subscribed` with the channel's position, then send the recovered
/// publications (at once, or when the broker's answer comes: see
/// [`joined`]). False if it already was subscribed.
fn subscribe(
    s: &mut Session,
    ctx: &mut Context<'_>,
    channel: &str,
    since: Option<Position>,
    id: Option<&str>,
) -> bool {
    match ctx.subscribe_since(channel, since) {
        None => false,
        Some(Answer::Now(answer)) => {
            joined(ctx, channel, since, answer, id);
            true
        }
        Some(Answer::Later) => {
            let extra = s.extra.get_or_insert_with(Default::default);
            extra
                .waiting
                .push((Arc::from(channel), id.map(Box::from), since));
            true
        }
    }
}

/// The broker's answer to a subscription: `subscribed` and the replay, or
/// an `unavailable` error (the connection stays, not subscribed).
fn joined(
    ctx: &mut Context<'_>,
    channel: &str,
    since: Option<Position>,
    answer: Result<Joined, Unavailable>,
    id: Option<&str>,
) {
    let joined = match answer {
        Ok(j) => j,
        Err(e) => {
            log::debug!("conn {}: subscribe to {channel} refused: {e}", ctx.id());
            ctx.send_text(&envelope::reply_error(
                "unavailable",
                "subscriptions are unavailable right now; try again",
                id,
            ));
            return;
        }
    };
    if joined.recovered == Some(false) {
        log::debug!(
            "conn {}: resume of {channel} not recovered (asked {:?}, now {}:{})",
            ctx.id(),
            since,
            joined.position.seq,
            joined.position.epoch
        );
    }
    ctx.send_text(&envelope::reply_subscribed(
        channel,
        joined.position,
        joined.recovered,
        id,
    ));
    for p in &joined.replay {
        ctx.send_publication(p);
    }
}

/// Internal topics (user pushes, the chat room) keep no history: nobody
/// can resume them.
pub const NO_HISTORY: PublishOptions = PublishOptions::unkept(Format::TEXT);

/// The answer to a client's `publish`.
fn published_reply(
    shared: &Shared,
    channel: &str,
    r: Result<crate::broker::Published, Unavailable>,
    id: Option<&str>,
) -> String {
    match r {
        Ok(p) => {
            shared
                .publications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            envelope::reply_published(channel, p.seq, id)
        }
        Err(e) => {
            log::debug!("publish on {channel} refused: {e}");
            envelope::reply_error(
                "unavailable",
                "publishing is unavailable right now; try again",
                id,
            )
        }
    }
}

/// A reply for answers nobody waits for.
pub(crate) fn ignore<T: 'static>() -> Reply<T> {
    Box::new(|_| {})
}

/// Parse a connection id from its decimal form.
pub fn parse_conn_id(s: &str) -> Option<ConnId> {
    s.parse::<u64>().ok().map(ConnId::from_u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_is_small() {
        // Every idle connection holds one (in the worker's state table).
        let n = std::mem::size_of::<Option<super::Session>>();
        assert!(n <= 16, "Session grew to {n} bytes");
    }
}
