//! The Pusher HTTP API, as the server SDKs call it. Every request is
//! signed ([`super::sign::verify_request`]); answers are JSON.
//!
//! | request | answer |
//! |---|---|
//! | `POST /apps/{id}/events` `{"name","data","channel"\|"channels","socket_id"?,"info"?}` | `{}` (or `{"channels":{...}}` with `info`) |
//! | `POST /apps/{id}/batch_events` `{"batch":[...]}` (10 at most) | `{}` (or `{"batch":[...]}` with `info`) |
//! | `GET /apps/{id}/channels?filter_by_prefix=&info=user_count` | `{"channels":{"name":{...}}}` |
//! | `GET /apps/{id}/channels/{name}?info=subscription_count,user_count` | `{"occupied",...}` |
//! | `GET /apps/{id}/channels/{name}/users` | `{"users":[{"id"}]}` |
//! | `POST /apps/{id}/users/{uid}/terminate_connections`, `POST /users/{uid}/terminate_connections` | `{}` |

use std::sync::Arc;

use serde_json::Value;

use super::app::App;
use super::metrics::inc;
use super::presence::TERMINATE;
use super::protocol::{self, ChannelKind};
use super::{keep, publish, sign, signin_topic, topic, Pusher};
use crate::broker::presence::Presence;
use crate::broker::{Answer, PublishOptions, Unavailable};
use crate::protocol::http::percent_decode;
use crate::protocol::Request;
use crate::push::envelope::json_str;
use crate::push::json_error;
use crate::server::{ConnId, Handle, Response};

/// Most channels in one trigger.
const MAX_CHANNELS: usize = 100;
/// Most events in one batch.
const MAX_BATCH: usize = 10;

enum Route<'a> {
    Events,
    Batch,
    Channels,
    Channel(String),
    Users(String),
    Terminate(&'a str),
}

/// Split `/apps/{id}/rest` or `/users/{uid}/terminate_connections`:
/// `(app id from the path, route)`. `None`: not the Pusher API's path.
fn route(path: &str) -> Option<(Option<&str>, Option<Route<'_>>)> {
    if let Some(uid) = path
        .strip_prefix("/users/")
        .and_then(|p| p.strip_suffix("/terminate_connections"))
    {
        return Some((None, Some(Route::Terminate(uid))));
    }
    let rest = path.strip_prefix("/apps/")?;
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let decode = |s: &str| percent_decode(&s.replace('+', "%2B"));
    let r = match rest {
        "events" => Some(Route::Events),
        "batch_events" => Some(Route::Batch),
        "channels" => Some(Route::Channels),
        r => {
            if let Some(name) = r.strip_prefix("channels/") {
                match name.strip_suffix("/users") {
                    Some(n) => decode(n).map(Route::Users),
                    None => decode(name).map(Route::Channel),
                }
            } else {
                r.strip_prefix("users/")
                    .and_then(|p| p.strip_suffix("/terminate_connections"))
                    .map(Route::Terminate)
            }
        }
    };
    Some((Some(id), r))
}

fn err(status: u16, message: &str) -> Response {
    log::debug!("pusher API: {status} {message}");
    json_error(status, message)
}

/// Answer `req` if it is a Pusher API request.
pub fn serve(p: &Pusher, handle: &Handle, conn: ConnId, req: &Request<'_>) -> Option<Response> {
    let resp = answer(p, handle, conn, req)?;
    if resp.status >= 400 {
        inc(&p.counters.api_refusals_total);
    }
    Some(resp)
}

fn answer(p: &Pusher, handle: &Handle, conn: ConnId, req: &Request<'_>) -> Option<Response> {
    let (path_app, route) = route(req.path)?;
    if let Some(id) = path_app {
        if p.cfg.apps.by_id(id).is_none() {
            return Some(err(404, &format!("unknown app id {id:?}")));
        }
    }
    let Some(route) = route else {
        return Some(err(404, "not a Pusher API path"));
    };
    let method = match route {
        Route::Events | Route::Batch | Route::Terminate(_) => "POST",
        _ => "GET",
    };
    if req.method != method {
        return Some(err(405, &format!("use {method}")).header("Allow", method));
    }
    let app = match sign::verify_request(
        &p.cfg.apps,
        path_app,
        req.method,
        req.path,
        req.query,
        req.body,
        crate::push::unix_now(),
    ) {
        Ok(a) => a.clone(),
        Err((status, message)) => return Some(err(status, &message)),
    };
    let query = |name: &str| {
        req.query_pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| percent_decode(v))
    };
    let call = Call {
        p,
        handle,
        conn,
        app: &app,
    };
    Some(match route {
        Route::Events => match body_json(req.body) {
            Ok(v) => match trigger(&call, &v) {
                Ok(asked) => call.gather(asked, |infos| {
                    if infos.is_empty() {
                        return Response::json(200, "{}");
                    }
                    let list: Vec<String> = infos
                        .iter()
                        .map(|(ch, attrs)| format!("{}:{attrs}", json_str(ch)))
                        .collect();
                    Response::json(200, format!("{{\"channels\":{{{}}}}}", list.join(",")))
                }),
                Err((s, m)) => err(s, &m),
            },
            Err(e) => e,
        },
        Route::Batch => match body_json(req.body) {
            Ok(v) => batch(&call, &v),
            Err(e) => e,
        },
        Route::Channels => channels(
            &call,
            query("filter_by_prefix").as_deref().unwrap_or(""),
            query("info").as_deref().unwrap_or(""),
        ),
        Route::Channel(name) => channel(&call, &name, query("info").as_deref().unwrap_or("")),
        Route::Users(name) => users(&call, &name),
        Route::Terminate(uid) => terminate(&call, uid),
    })
}

/// One API request: the service, the server, the connection it came on
/// (for an answer the broker gives later) and its app.
struct Call<'a> {
    p: &'a Pusher,
    handle: &'a Handle,
    conn: ConnId,
    app: &'a Arc<App>,
}

/// A channel whose attributes an answer lists: `(channel, info asked)`.
type Asked = Vec<(String, String)>;

impl Call<'_> {
    /// The answer made by `render` from `channel`'s presence (now, or when
    /// the broker answers); 503 if the broker cannot tell.
    fn presence(
        &self,
        channel: &str,
        render: impl Fn(&Presence) -> Response + Send + Clone + 'static,
    ) -> Response {
        let t = topic(self.app, channel);
        let events = self.p.events(self.app);
        self.handle.answer(
            self.conn,
            |later| self.handle.broker().presence(&t, events, later),
            move |r| match r {
                Ok(pr) => render(&pr),
                Err(e) => unavailable(&e),
            },
        )
    }

    /// Read the presence of each asked channel (the broker may answer
    /// later), then `finish` with `(channel, attributes JSON)` in order.
    /// 503 if any read fails.
    fn gather(
        &self,
        asked: Asked,
        finish: impl FnOnce(Vec<(String, String)>) -> Response + Send + 'static,
    ) -> Response {
        type Finish = Box<dyn FnOnce(Vec<(String, String)>) -> Response + Send>;
        struct State {
            results: Vec<Option<Result<String, Unavailable>>>,
            left: usize,
            finish: Option<Finish>,
        }
        if asked.is_empty() {
            return finish(Vec::new());
        }
        let state = Arc::new(std::sync::Mutex::new(State {
            results: asked.iter().map(|_| None).collect(),
            left: asked.len(),
            finish: Some(Box::new(finish)),
        }));
        let names: Arc<Vec<String>> = Arc::new(asked.iter().map(|(c, _)| c.clone()).collect());
        // Whoever fills the last result makes the response.
        let fill = {
            let (state, names) = (state.clone(), names.clone());
            move |i: usize, r: Result<String, Unavailable>| -> Option<Response> {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.results[i] = Some(r);
                s.left -= 1;
                if s.left > 0 {
                    return None;
                }
                let finish = s.finish.take()?;
                let mut out = Vec::new();
                for (n, r) in names.iter().zip(s.results.drain(..)) {
                    match r {
                        Some(Ok(a)) => out.push((n.clone(), a)),
                        Some(Err(e)) => return Some(unavailable(&e)),
                        None => return Some(unavailable(&Unavailable(Arc::from("no answer")))),
                    }
                }
                Some(finish(out))
            }
        };
        let mut now = None;
        for (i, (ch, info)) in asked.into_iter().enumerate() {
            let t = topic(self.app, &ch);
            let attrs = {
                let (ch, info) = (ch.clone(), info.clone());
                move |pr: Presence| attributes(&ch, &info, &pr)
            };
            let mut later = || -> crate::broker::Reply<Presence> {
                let (fill, attrs, handle, conn) =
                    (fill.clone(), attrs.clone(), self.handle.clone(), self.conn);
                Box::new(move |r| {
                    if let Some(resp) = fill(i, r.map(attrs)) {
                        handle.respond(conn, resp);
                    }
                })
            };
            let events = self.p.events(self.app);
            if let Answer::Now(r) = self.handle.broker().presence(&t, events, &mut later) {
                if let Some(resp) = fill(i, r.map(attrs.clone())) {
                    now = Some(resp);
                }
            }
        }
        now.unwrap_or_else(Response::deferred)
    }
}

fn unavailable(e: &Unavailable) -> Response {
    err(503, &format!("presence unavailable: {}", e.0))
}

fn body_json(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| err(400, "the body must be a JSON object"))
}

type Refused = (u16, String);

/// One event: validate everything, then publish on each channel. With
/// `info`, the channels' attributes (JSON object text).
fn trigger(call: &Call<'_>, ev: &Value) -> Result<Asked, Refused> {
    let (p, handle, app) = (call.p, call.handle, call.app);
    let name = ev
        .get("name")
        .and_then(Value::as_str)
        .ok_or((400, "name (a string) is required".to_string()))?;
    if name.is_empty() || name.len() > protocol::MAX_EVENT_NAME_LEN {
        return Err((400, "name must be 1 to 200 characters".into()));
    }
    let data = match ev.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => return Err((400, "data is required".into())),
    };
    if data.len() > p.cfg.max_event_size {
        return Err((
            413,
            format!(
                "data is {} bytes; the limit is {} (--pusher-max-event-size)",
                data.len(),
                p.cfg.max_event_size
            ),
        ));
    }
    let channels: Vec<String> = match (ev.get("channels"), ev.get("channel")) {
        (Some(Value::Array(a)), None) => a
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or((400, "channels must be strings".to_string()))?,
        (None, Some(Value::String(c))) => vec![c.clone()],
        _ => return Err((400, "give channel (a string) or channels (an array)".into())),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err((400, format!("1 to {MAX_CHANNELS} channels per event")));
    }
    if let Some(bad) = channels.iter().find(|c| !protocol::valid_channel(c)) {
        return Err((400, format!("invalid channel name {bad:?}")));
    }
    if channels.len() > 1
        && channels
            .iter()
            .any(|c| ChannelKind::of(c) == ChannelKind::Encrypted)
    {
        return Err((
            400,
            "an event for an encrypted channel must name only that channel".into(),
        ));
    }
    let exclude = match ev.get("socket_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(ConnId::from_u64(
            protocol::parse_socket_id(s).ok_or((400, format!("invalid socket_id {s:?}")))?,
        )),
        Some(_) => return Err((400, "socket_id must be a string".into())),
    };
    let info = ev.get("info").and_then(Value::as_str).unwrap_or("");
    let data_json = json_str(&data);
    let mut asked = Vec::new();
    for ch in &channels {
        let frame = protocol::event(name, Some(ch), &data_json, None);
        publish(handle, &topic(app, ch), &frame, exclude, keep(ch));
        inc(&p.counters.api_events_total);
        if !info.is_empty() {
            asked.push((ch.clone(), info.to_string()));
        }
    }
    Ok(asked)
}

/// `{"subscription_count":N,"user_count":M}` as asked for by `info`.
fn attributes(channel: &str, info: &str, pr: &Presence) -> String {
    let mut parts = Vec::new();
    for a in info.split(',') {
        match a.trim() {
            "subscription_count" => {
                parts.push(format!("\"subscription_count\":{}", pr.subscribers))
            }
            "user_count" if ChannelKind::of(channel) == ChannelKind::Presence => {
                parts.push(format!("\"user_count\":{}", pr.members.len()))
            }
            _ => {}
        }
    }
    format!("{{{}}}", parts.join(","))
}

fn batch(call: &Call<'_>, v: &Value) -> Response {
    let p = call.p;
    let Some(list) = v.get("batch").and_then(Value::as_array) else {
        return err(400, "batch (an array of events) is required");
    };
    if list.len() > MAX_BATCH {
        return err(400, &format!("at most {MAX_BATCH} events per batch"));
    }
    // Validate every event before publishing any.
    for (i, ev) in list.iter().enumerate() {
        if ev.get("channels").is_some() {
            return err(400, &format!("batch[{i}]: one channel per batched event"));
        }
        let size = match ev.get("data") {
            Some(Value::String(s)) => s.len(),
            Some(v) => v.to_string().len(),
            None => 0,
        };
        if size > p.cfg.max_event_size {
            return err(
                413,
                &format!("batch[{i}]: data over {} bytes", p.cfg.max_event_size),
            );
        }
    }
    // Which event (by index) each asked channel belongs to.
    let mut owners = Vec::new();
    let mut asked = Vec::new();
    for (i, ev) in list.iter().enumerate() {
        match trigger(call, ev) {
            Ok(a) => {
                owners.extend(a.iter().map(|_| i));
                asked.extend(a);
            }
            Err((s, m)) => return err(s, &format!("batch[{i}]: {m}")),
        }
    }
    let n = list.len();
    call.gather(asked, move |infos| {
        if infos.is_empty() {
            return Response::json(200, "{}");
        }
        let mut out = vec!["{}".to_string(); n];
        for (i, (_, attrs)) in owners.into_iter().zip(infos) {
            out[i] = attrs;
        }
        Response::json(200, format!("{{\"batch\":[{}]}}", out.join(",")))
    })
}

fn channels(call: &Call<'_>, prefix: &str, info: &str) -> Response {
    let want_users = info.split(',').any(|a| a.trim() == "user_count");
    if want_users && !prefix.starts_with("presence-") {
        return err(400, "info=user_count needs filter_by_prefix=presence-");
    }
    let base = topic(call.app, "");
    let full = format!("{base}{prefix}");
    call.handle.answer(
        call.conn,
        |later| call.handle.broker().presence_channels(&full, later),
        move |r| {
            let list = match r {
                Ok(l) => l,
                Err(e) => return unavailable(&e),
            };
            let out: Vec<String> = list
                .iter()
                .filter(|o| o.subscribers > 0)
                .map(|o| {
                    let name = json_str(&o.channel[base.len()..]);
                    if want_users {
                        format!("{name}:{{\"user_count\":{}}}", o.users)
                    } else {
                        format!("{name}:{{}}")
                    }
                })
                .collect();
            Response::json(200, format!("{{\"channels\":{{{}}}}}", out.join(",")))
        },
    )
}

fn channel(call: &Call<'_>, name: &str, info: &str) -> Response {
    if !protocol::valid_channel(name) {
        return err(400, &format!("invalid channel name {name:?}"));
    }
    let presence = ChannelKind::of(name) == ChannelKind::Presence;
    if !presence && info.split(',').any(|a| a.trim() == "user_count") {
        return err(400, "user_count is only available on presence channels");
    }
    let (channel, info) = (name.to_string(), info.to_string());
    call.presence(name, move |pr| {
        let attrs = attributes(&channel, &info, pr);
        let attrs = attrs.trim_start_matches('{').trim_end_matches('}');
        let sep = if attrs.is_empty() { "" } else { "," };
        Response::json(
            200,
            format!("{{\"occupied\":{}{sep}{attrs}}}", pr.subscribers > 0),
        )
    })
}

fn users(call: &Call<'_>, name: &str) -> Response {
    if !protocol::valid_channel(name) {
        return err(400, &format!("invalid channel name {name:?}"));
    }
    if ChannelKind::of(name) != ChannelKind::Presence {
        return err(400, "users are only listed for presence channels");
    }
    call.presence(name, |pr| {
        let list: Vec<String> = pr
            .members
            .iter()
            .map(|m| format!("{{\"id\":{}}}", json_str(&m.user)))
            .collect();
        Response::json(200, format!("{{\"users\":[{}]}}", list.join(",")))
    })
}

/// Close every connection signed in as the user, on every node: a
/// `TERMINATE` publication on the user's sign-in topic.
fn terminate(call: &Call<'_>, uid: &str) -> Response {
    let Some(uid) = percent_decode(uid).filter(|u| !u.is_empty() && u.len() <= 256) else {
        return err(400, "invalid user id");
    };
    let t = signin_topic(call.app, &uid);
    let (app_id, user) = (call.app.id.clone(), uid.clone());
    call.handle.answer(
        call.conn,
        |later| {
            call.handle
                .publish_with(&t, PublishOptions::unkept(TERMINATE), b"", later)
        },
        move |r| match r {
            Ok(p) => {
                log::info!(
                    "pusher: app {app_id}: terminating the connections of user {user:?} ({} here)",
                    p.recipients
                );
                Response::json(200, "{}")
            }
            Err(e) => unavailable(&e),
        },
    )
}
