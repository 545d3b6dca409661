//! The daemon's built-in endpoints.
//!
//! - `GET /echo`: a WebSocket that echoes every message (text as text,
//!   binary as binary).
//! - `GET /broadcast`: the chat room: every message any client sends is
//!   delivered to every client of `/broadcast`, the sender included, in one
//!   order for all.
//! - A plain GET on those paths: 426; anything else: 404.

use crate::protocol::{Message, Request};
use crate::server::{ConnInfo, Context, Frame, Handler, Response};

/// The hub topic of the `/broadcast` room.
pub const BROADCAST_TOPIC: &str = "wspush:/broadcast";

/// Which endpoint a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/echo`
    Echo,
    /// `/broadcast`
    Broadcast,
}

/// The handler serving the built-in endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routes;

fn route(path: &str) -> Option<Route> {
    match path {
        "/echo" => Some(Route::Echo),
        "/broadcast" => Some(Route::Broadcast),
        _ => None,
    }
}

impl Handler for Routes {
    type Conn = Route;

    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        _: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<Route, Response> {
        route(req.path).ok_or_else(Response::not_found)
    }

    fn on_http(&mut self, req: &Request<'_>, _: &ConnInfo<'_>, _: &mut Context<'_>) -> Response {
        match route(req.path) {
            Some(_) => Response::text(
                426,
                "this endpoint speaks WebSocket: send an Upgrade request\n",
            )
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13"),
            None => Response::not_found(),
        }
    }

    fn on_open(&mut self, route: &mut Route, ctx: &mut Context<'_>) {
        if *route == Route::Broadcast {
            ctx.subscribe(BROADCAST_TOPIC);
        }
    }

    fn on_message(&mut self, route: &mut Route, msg: Message<'_>, ctx: &mut Context<'_>) {
        match (*route, msg) {
            (Route::Echo, Message::Text(t)) => ctx.send_text(t),
            (Route::Echo, Message::Binary(b)) => ctx.send_binary(b),
            (Route::Broadcast, Message::Text(t)) => {
                ctx.publish(BROADCAST_TOPIC, Frame::text(t));
            }
            (Route::Broadcast, Message::Binary(b)) => {
                ctx.publish(BROADCAST_TOPIC, Frame::binary(b));
            }
            _ => {}
        }
    }
}
