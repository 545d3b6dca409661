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

use std::collections::BTreeMap;

use serde_json::Value;

use super::app::App;
use super::metrics::inc;
use super::protocol::{self, ChannelKind};
use super::{publish, sign, topic, user_key, Pusher};
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
pub fn serve(p: &Pusher, handle: &Handle, req: &Request<'_>) -> Option<Response> {
    let resp = answer(p, handle, req)?;
    if resp.status >= 400 {
        inc(&p.counters.api_refusals_total);
    }
    Some(resp)
}

fn answer(p: &Pusher, handle: &Handle, req: &Request<'_>) -> Option<Response> {
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
    Some(match route {
        Route::Events => match body_json(req.body) {
            Ok(v) => match trigger(p, handle, &app, &v) {
                Ok(Some(info)) => Response::json(200, format!("{{\"channels\":{info}}}")),
                Ok(None) => Response::json(200, "{}"),
                Err((s, m)) => err(s, &m),
            },
            Err(e) => e,
        },
        Route::Batch => match body_json(req.body) {
            Ok(v) => batch(p, handle, &app, &v),
            Err(e) => e,
        },
        Route::Channels => channels(
            p,
            &app,
            query("filter_by_prefix").as_deref().unwrap_or(""),
            query("info").as_deref().unwrap_or(""),
        ),
        Route::Channel(name) => channel(
            p,
            handle,
            &app,
            &name,
            query("info").as_deref().unwrap_or(""),
        ),
        Route::Users(name) => users(p, &app, &name),
        Route::Terminate(uid) => terminate(p, handle, &app, uid),
    })
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
fn trigger(p: &Pusher, handle: &Handle, app: &App, ev: &Value) -> Result<Option<String>, Refused> {
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
    let mut infos = Vec::new();
    for ch in &channels {
        let frame = protocol::event(name, Some(ch), &data_json, None);
        let t = topic(app, ch);
        publish(handle, &t, &frame, exclude, protocol::is_cache(ch));
        inc(&p.counters.api_events_total);
        if !info.is_empty() {
            infos.push(format!(
                "{}:{}",
                json_str(ch),
                attributes(p, handle, &t, ch, info)
            ));
        }
    }
    Ok((!info.is_empty()).then(|| format!("{{{}}}", infos.join(","))))
}

/// `{"subscription_count":N,"user_count":M}` as asked for by `info`.
fn attributes(p: &Pusher, handle: &Handle, topic: &str, channel: &str, info: &str) -> String {
    let (subs, members) = p.membership.counts(topic);
    let _ = handle;
    let mut parts = Vec::new();
    for a in info.split(',') {
        match a.trim() {
            "subscription_count" => parts.push(format!("\"subscription_count\":{subs}")),
            "user_count" if ChannelKind::of(channel) == ChannelKind::Presence => {
                parts.push(format!("\"user_count\":{members}"))
            }
            _ => {}
        }
    }
    format!("{{{}}}", parts.join(","))
}

fn batch(p: &Pusher, handle: &Handle, app: &App, v: &Value) -> Response {
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
    let mut infos = Vec::new();
    let mut any_info = false;
    for (i, ev) in list.iter().enumerate() {
        match trigger(p, handle, app, ev) {
            Ok(Some(info)) => {
                any_info = true;
                // The object of the one channel: `{"ch":{...}}` → `{...}`.
                let inner = serde_json::from_str::<Value>(&info)
                    .ok()
                    .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
                    .unwrap_or(Value::Object(Default::default()));
                infos.push(inner.to_string());
            }
            Ok(None) => infos.push("{}".into()),
            Err((s, m)) => return err(s, &format!("batch[{i}]: {m}")),
        }
    }
    if any_info {
        Response::json(200, format!("{{\"batch\":[{}]}}", infos.join(",")))
    } else {
        Response::json(200, "{}")
    }
}

fn channels(p: &Pusher, app: &App, prefix: &str, info: &str) -> Response {
    let want_users = info.split(',').any(|a| a.trim() == "user_count");
    if want_users && !prefix.starts_with("presence-") {
        return err(400, "info=user_count needs filter_by_prefix=presence-");
    }
    let base = topic(app, "");
    let mut out = BTreeMap::new();
    for (t, _, members) in p.membership.channels(&format!("{base}{prefix}")) {
        let name = t[base.len()..].to_string();
        let attrs = if want_users {
            format!("{{\"user_count\":{members}}}")
        } else {
            "{}".into()
        };
        out.insert(name, attrs);
    }
    let list: Vec<String> = out
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    Response::json(200, format!("{{\"channels\":{{{}}}}}", list.join(",")))
}

fn channel(p: &Pusher, handle: &Handle, app: &App, name: &str, info: &str) -> Response {
    if !protocol::valid_channel(name) {
        return err(400, &format!("invalid channel name {name:?}"));
    }
    let presence = ChannelKind::of(name) == ChannelKind::Presence;
    if !presence && info.split(',').any(|a| a.trim() == "user_count") {
        return err(400, "user_count is only available on presence channels");
    }
    let t = topic(app, name);
    let (subs, _) = p.membership.counts(&t);
    let attrs = attributes(p, handle, &t, name, info);
    let attrs = attrs.trim_start_matches('{').trim_end_matches('}');
    let sep = if attrs.is_empty() { "" } else { "," };
    Response::json(200, format!("{{\"occupied\":{}{sep}{attrs}}}", subs > 0))
}

fn users(p: &Pusher, app: &App, name: &str) -> Response {
    if !protocol::valid_channel(name) {
        return err(400, &format!("invalid channel name {name:?}"));
    }
    if ChannelKind::of(name) != ChannelKind::Presence {
        return err(400, "users are only listed for presence channels");
    }
    let ids = p.membership.user_ids(&topic(app, name));
    let list: Vec<String> = ids
        .iter()
        .map(|i| format!("{{\"id\":{}}}", json_str(i)))
        .collect();
    Response::json(200, format!("{{\"users\":[{}]}}", list.join(",")))
}

fn terminate(p: &Pusher, handle: &Handle, app: &App, uid: &str) -> Response {
    let Some(uid) = percent_decode(uid).filter(|u| !u.is_empty() && u.len() <= 256) else {
        return err(400, "invalid user id");
    };
    let conns = p.membership.user_conns(&user_key(app, &uid));
    for id in &conns {
        handle.close(
            *id,
            protocol::UNAUTHORIZED,
            "connection terminated by the server",
        );
    }
    log::info!(
        "pusher: app {}: terminated {} connections of user {uid:?}",
        app.id,
        conns.len()
    );
    Response::json(200, "{}")
}
