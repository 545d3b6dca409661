//! The backend HTTP API.
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `POST /publish/{channel}` | push to the channel's subscribers | `{"channel","seq","epoch","recipients"}` |
//! | `POST /broadcast` | push to every connection | `{"recipients"}` |
//! | `POST /send/{connection_id}` | push to one connection | `{"connection","recipients"}` |
//! | `POST /users/{user_id}/send` | push to every connection of a user | `{"user","recipients"}` |
//! | `DELETE /connections/{id}` | close a connection (1000) | `{"connection","closed"}` |
//! | `GET /history/{channel}?since=N&epoch=E&limit=M` | publications after N | `{"channel","seq","epoch","complete","publications":[{"seq","data"}]}` |
//! | `GET /stats`, `GET /metrics` | counters (JSON, Prometheus) | |
//! | `GET /nodes` | the cluster's nodes (with `--redis`) | `{"node","nodes":[{"id","connections","age_ms","this"}]}` |
//!
//! The body of a push is its data: a JSON value when the request says
//! `Content-Type: application/json`, else a string. With an API key every
//! call needs `Authorization: Bearer <key>`; without one the API answers
//! only clients on loopback.

use std::sync::atomic::Ordering;

use super::channel::valid_name;
use super::envelope::{self, json_str};
use super::{auth, json_error, metrics, parse_conn_id, user_topic, PushService};
use crate::broker::{Epoch, HistoryPage, Position, PublishOptions, Published, Relay, Unavailable};
use crate::protocol::http::percent_decode;
use crate::protocol::{close, Request};
use crate::server::{ConnId, ConnInfo, Response};

/// Longest user id accepted in a path.
const MAX_USER_ID: usize = 256;

/// Answer `req` if it is an API request; `None` if the path is not the API's.
pub fn serve(svc: &PushService, req: &Request<'_>, info: &ConnInfo<'_>) -> Option<Response> {
    let path = req.path;
    let route = Route::of(path)?;
    // `GET /broadcast` is the chat room's WebSocket endpoint, not the API.
    if route == Route::Broadcast && req.method != "POST" {
        return None;
    }
    let allowed = route.method();
    if req.method != allowed && !(allowed == "GET" && req.method == "HEAD") {
        return Some(json_error(405, "method not allowed").header("Allow", allowed));
    }
    if let Err(resp) = authorize(svc, req, info) {
        return Some(resp);
    }
    Some(match route {
        Route::Stats => Response::json(200, metrics::stats_json(svc)),
        Route::Metrics => Response::with_body(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::prometheus(svc),
        ),
        Route::Publish => publish(svc, req, info.id, &path["/publish/".len()..]),
        Route::Broadcast => broadcast(svc, req, info.id),
        Route::Send => send(svc, req, info.id, &path["/send/".len()..]),
        Route::UserSend => user_send(
            svc,
            req,
            info.id,
            &path["/users/".len()..path.len() - "/send".len()],
        ),
        Route::Disconnect => disconnect(svc, info.id, &path["/connections/".len()..]),
        Route::History => history(svc, req, info.id, &path["/history/".len()..]),
        Route::Nodes => nodes(svc),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Stats,
    Metrics,
    Publish,
    Broadcast,
    Send,
    UserSend,
    Disconnect,
    History,
    Nodes,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            "/stats" => Route::Stats,
            "/metrics" => Route::Metrics,
            "/broadcast" => Route::Broadcast,
            "/nodes" => Route::Nodes,
            p if p.starts_with("/publish/") => Route::Publish,
            p if p.starts_with("/send/") => Route::Send,
            p if p.starts_with("/users/")
                && p.ends_with("/send")
                && p.len() > "/users//send".len() =>
            {
                Route::UserSend
            }
            p if p.starts_with("/connections/") => Route::Disconnect,
            p if p.starts_with("/history/") => Route::History,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Route::Stats | Route::Metrics | Route::History | Route::Nodes => "GET",
            Route::Disconnect => "DELETE",
            _ => "POST",
        }
    }
}

/// Judge an API request on its head, before its body is read: a request
/// the key or loopback rule refuses is answered at once (its body, up to
/// `--max-publish-size`, is never buffered). `None`: not refused.
pub fn refuse_early(svc: &PushService, req: &Request<'_>, info: &ConnInfo<'_>) -> Option<Response> {
    let route = Route::of(req.path)?;
    if route == Route::Broadcast && req.method != "POST" {
        return None;
    }
    authorize(svc, req, info).err()
}

/// API key when configured, else loopback only.
fn authorize(svc: &PushService, req: &Request<'_>, info: &ConnInfo<'_>) -> Result<(), Response> {
    match &svc.shared().secrets().api_key {
        Some(key) => {
            let offered = req.header("authorization").and_then(auth::bearer);
            match offered {
                Some(k) if auth::api_key_matches(k.as_bytes(), key) => Ok(()),
                Some(_) => {
                    Err(json_error(401, "wrong API key").header("WWW-Authenticate", "Bearer"))
                }
                None => Err(
                    json_error(401, "missing API key (Authorization: Bearer <key>)")
                        .header("WWW-Authenticate", "Bearer"),
                ),
            }
        }
        None => {
            if info.peer.is_some_and(|p| is_loopback(p.ip())) {
                Ok(())
            } else {
                log::debug!(
                    "API request from {:?} refused: not loopback and no --api-key",
                    info.peer
                );
                Err(json_error(
                    403,
                    "without --api-key the API only answers on loopback",
                ))
            }
        }
    }
}

/// Whether `ip` is loopback, counting an IPv4-mapped IPv6 address
/// (`::ffff:127.0.0.1`, how an IPv4 client reaches a dual-stack `[::]`
/// listener) as the IPv4 address it carries.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The request body as the JSON text of the push's data.
fn data_of(req: &Request<'_>) -> Result<String, Response> {
    let is_json = req
        .header_str("content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    let Ok(text) = std::str::from_utf8(req.body) else {
        return Err(json_error(400, "body is not valid UTF-8"));
    };
    if is_json {
        if envelope::nested_deeper_than(text.as_bytes(), envelope::MAX_JSON_DEPTH) {
            log::debug!("API body refused: {}", envelope::DEPTH_RULE);
            return Err(json_error(
                400,
                &format!("invalid body: {}", envelope::DEPTH_RULE),
            ));
        }
        // One validating pass, no document built: the publisher's JSON text
        // goes into the envelope as it was sent.
        match serde_json::from_str::<&serde_json::value::RawValue>(text) {
            Ok(v) => Ok(v.get().to_string()),
            Err(_) => Err(json_error(400, "body is not valid JSON")),
        }
    } else {
        Ok(json_str(text))
    }
}

fn count(svc: &PushService) {
    svc.shared().publications.fetch_add(1, Ordering::Relaxed);
}

/// What a publication reached: its subscribers on a single node, the
/// nodes that hear the channel in a cluster (each node counts its own).
fn reached(cluster: bool, n: u64) -> String {
    if cluster {
        format!("\"nodes\":{n}")
    } else {
        format!("\"recipients\":{n}")
    }
}

/// 503 for a broker that cannot take the request (nothing was done).
fn unavailable(e: &Unavailable) -> Response {
    log::debug!("API request refused: {e}");
    json_error(503, &format!("unavailable: {e}")).header("Retry-After", "1")
}

fn publish(svc: &PushService, req: &Request<'_>, conn: ConnId, raw: &str) -> Response {
    let channel = percent_decode(raw).unwrap_or_default();
    if !valid_name(&channel) {
        return json_error(400, super::CHANNEL_RULE);
    }
    let data = match data_of(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let name = channel.clone();
    published(
        svc,
        conn,
        &channel,
        PublishOptions::kept(envelope::CHANNEL),
        &data,
        move |p, reached| {
            format!(
                "{{\"channel\":{},\"seq\":{},\"epoch\":\"{}\",{reached}}}\n",
                json_str(&name),
                p.seq,
                p.epoch
            )
        },
    )
}

/// Publish `data` on `topic` and answer with `body(publication, reached)`
/// (`reached`: `"recipients":N`, or `"nodes":N` in a cluster), now or when
/// the broker's reply comes; 503 when the broker cannot take it.
fn published(
    svc: &PushService,
    conn: ConnId,
    topic: &str,
    opts: PublishOptions,
    data: &str,
    body: impl Fn(&Published, &str) -> String + Send + Clone + 'static,
) -> Response {
    let shared = svc.shared().clone();
    let cluster = svc.handle().broker().node() != 0;
    svc.own_handle().answer(
        conn,
        |later| {
            svc.handle()
                .publish_with(topic, opts, data.as_bytes(), later)
        },
        move |r: Result<Published, Unavailable>| match r {
            Ok(p) => {
                shared.publications.fetch_add(1, Ordering::Relaxed);
                Response::json(200, body(&p, &reached(cluster, p.recipients)))
            }
            Err(e) => unavailable(&e),
        },
    )
}

/// A relayed message's answer: how many nodes took it (a broadcast), or
/// whether the connection's node did.
fn relayed(
    svc: &PushService,
    conn: ConnId,
    msg: Relay,
    render: impl Fn(u64) -> Response + Send + Clone + 'static,
) -> Response {
    svc.own_handle().answer(
        conn,
        |later| svc.handle().broker().relay(msg, later),
        move |r| match r {
            Ok(n) => render(n),
            Err(e) => unavailable(&e),
        },
    )
}

fn broadcast(svc: &PushService, req: &Request<'_>, conn: ConnId) -> Response {
    let data = match data_of(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if svc.handle().broker().node() != 0 {
        let shared = svc.shared().clone();
        let msg = Relay::Broadcast(envelope::BROADCAST, data.into_bytes().into());
        return relayed(svc, conn, msg, move |nodes| {
            shared.publications.fetch_add(1, Ordering::Relaxed);
            Response::json(200, format!("{{\"nodes\":{nodes}}}\n"))
        });
    }
    let recipients = svc
        .handle()
        .stats()
        .total
        .websockets
        .load(Ordering::Relaxed);
    svc.handle().broadcast(envelope::broadcast_push(&data));
    count(svc);
    Response::json(200, format!("{{\"recipients\":{recipients}}}\n"))
}

fn send(svc: &PushService, req: &Request<'_>, conn: ConnId, raw: &str) -> Response {
    let Some(id) = parse_conn_id(raw) else {
        return json_error(400, "connection ids are decimal numbers");
    };
    if id.is_local() && !svc.shared().is_live(id.as_u64()) {
        return json_error(404, "no such connection");
    }
    let data = match data_of(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !id.is_local() {
        let shared = svc.shared().clone();
        let msg = Relay::Send(id, envelope::DIRECT, data.into_bytes().into());
        return relayed(svc, conn, msg, move |nodes| {
            if nodes == 0 {
                return json_error(404, "no such connection (its node is not connected)");
            }
            shared.publications.fetch_add(1, Ordering::Relaxed);
            Response::json(
                200,
                format!(
                    "{{\"connection\":\"{id}\",\"node\":{},\"relayed\":true}}\n",
                    id.node()
                ),
            )
        });
    }
    svc.handle().send(id, envelope::direct_push(&data));
    count(svc);
    Response::json(
        200,
        format!("{{\"connection\":\"{id}\",\"recipients\":1}}\n"),
    )
}

fn user_send(svc: &PushService, req: &Request<'_>, conn: ConnId, raw: &str) -> Response {
    let user = percent_decode(raw).unwrap_or_default();
    if user.is_empty() || user.len() > MAX_USER_ID || user.contains('/') {
        return json_error(400, "bad user id");
    }
    let data = match data_of(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let topic = user_topic(&user);
    published(
        svc,
        conn,
        &topic,
        PublishOptions::unkept(envelope::DIRECT),
        &data,
        move |_, reached| format!("{{\"user\":{},{reached}}}\n", json_str(&user)),
    )
}

fn disconnect(svc: &PushService, conn: ConnId, raw: &str) -> Response {
    let Some(id) = parse_conn_id(raw) else {
        return json_error(400, "connection ids are decimal numbers");
    };
    if !id.is_local() {
        let msg = Relay::Close(id, close::NORMAL, "closed by the server".into());
        return relayed(svc, conn, msg, move |nodes| {
            if nodes == 0 {
                return json_error(404, "no such connection (its node is not connected)");
            }
            Response::json(
                200,
                format!("{{\"connection\":\"{id}\",\"closed\":true}}\n"),
            )
        });
    }
    if !svc.shared().is_live(id.as_u64()) {
        return json_error(404, "no such connection");
    }
    svc.handle()
        .close(id, close::NORMAL, "closed by the server");
    Response::json(
        200,
        format!("{{\"connection\":\"{id}\",\"closed\":true}}\n"),
    )
}

/// The cluster's nodes as this node last heard of them (its heartbeat
/// reads them from Redis about once a second).
fn nodes(svc: &PushService) -> Response {
    let broker = svc.handle().broker();
    let list: Vec<String> = broker
        .nodes()
        .iter()
        .map(|n| {
            format!(
                "{{\"id\":{},\"connections\":{},\"age_ms\":{},\"this\":{}}}",
                n.id, n.connections, n.age_ms, n.this
            )
        })
        .collect();
    Response::json(
        200,
        format!(
            "{{\"node\":{},\"nodes\":[{}]}}\n",
            broker.node(),
            list.join(",")
        ),
    )
}

/// Most publications one history request returns.
const MAX_HISTORY_LIMIT: usize = 1000;

fn history(svc: &PushService, req: &Request<'_>, conn: ConnId, raw: &str) -> Response {
    let channel = percent_decode(raw).unwrap_or_default();
    if !valid_name(&channel) {
        return json_error(400, super::CHANNEL_RULE);
    }
    let (mut since, mut epoch, mut limit) = (None, None, 100);
    for (k, v) in req.query_pairs() {
        match k {
            "since" => match v.parse::<u64>() {
                Ok(n) => since = Some(n),
                Err(_) => return json_error(400, "since is a sequence number"),
            },
            "epoch" => match v.parse::<Epoch>() {
                Ok(e) => epoch = Some(e),
                Err(_) => return json_error(400, "epoch is 16 hex digits"),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => limit = n,
                _ => return json_error(400, "limit is 1 to 1000"),
            },
            _ => {}
        }
    }
    let since = since.map(|seq| Position {
        seq,
        // Without an epoch the caller means "this stream, whatever its epoch".
        epoch: epoch.unwrap_or(Epoch(0)),
    });
    let name = channel.clone();
    svc.own_handle().answer(
        conn,
        |later| svc.handle().broker().history(&channel, since, limit, later),
        move |r| match r {
            Ok(page) => history_page(&name, &page),
            Err(e) => unavailable(&e),
        },
    )
}

fn history_page(channel: &str, page: &HistoryPage) -> Response {
    let mut body = format!(
        "{{\"channel\":{},\"seq\":{},\"epoch\":\"{}\",\"complete\":{},\"publications\":[",
        json_str(channel),
        page.position.seq,
        page.position.epoch,
        page.complete
    );
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"seq\":{},\"data\":", p.seq));
        body.push_str(&String::from_utf8_lossy(p.payload()));
        body.push('}');
    }
    body.push_str("]}\n");
    Response::json(200, body)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_includes_ipv4_mapped() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:127.9.9.9",
        ] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "::2",
            "::127.0.0.1",
            "fe80::1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
