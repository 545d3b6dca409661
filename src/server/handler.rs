//! The [`Handler`] trait an application implements, and the [`Context`]
//! its callbacks use to act.

use std::net::SocketAddr;

use super::core::{Cause, Core};
use super::hub::{ConnId, Frame, Handle};
use super::response::Response;
use crate::broker::{
    Answer, Joined, Position, Publication, PublishOptions, Published, Reply, Unavailable,
};
use crate::protocol::{HttpError, Message, ProtocolError, Request};

/// Why a WebSocket connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame (its code, if any).
    Client(Option<u16>),
    /// The server closed it (application, API or [`Handle::close`]).
    Server(u16),
    /// The client broke the protocol; this close code was sent.
    Protocol(ProtocolError),
    /// The client did not read fast enough (over `max_buffered`).
    SlowConsumer,
    /// Silent past the idle timeout.
    IdleTimeout,
    /// The server is shutting down (1001 was sent).
    Shutdown,
    /// The TCP connection ended without a close handshake.
    Abnormal,
}

/// What a callback knows about its connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo<'a> {
    /// The connection's id.
    pub id: ConnId,
    /// The peer's address, if the socket still knows it.
    pub peer: Option<SocketAddr>,
    /// The subprotocol chosen in the handshake.
    pub protocol: Option<&'a str>,
}

/// An application running inside the workers. One instance per worker; its
/// callbacks run on that worker's thread and must not block.
///
/// Defaults: plain HTTP requests get 404; `on_open`, `on_message` and
/// `on_close` do nothing.
pub trait Handler: Send + 'static {
    /// Per-connection state, created by [`Handler::on_upgrade`].
    type Conn: Send + 'static;

    /// A valid WebSocket upgrade request (RFC 6455 checks already passed):
    /// accept it with the connection's state, or refuse it with a response
    /// (e.g. 401, 404).
    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        info: &ConnInfo<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<Self::Conn, Response>;

    /// A plain HTTP request (not an upgrade). Default: 404.
    fn on_http(
        &mut self,
        req: &Request<'_>,
        info: &ConnInfo<'_>,
        ctx: &mut Context<'_>,
    ) -> Response {
        let _ = (req, info, ctx);
        Response::not_found()
    }

    /// The head of a plain HTTP request has arrived and its body is still
    /// coming: return a response to refuse it without reading the body
    /// (e.g. 401 for a missing key), `None` to wait for the body. Default:
    /// `None`.
    fn on_request_head(&mut self, req: &Request<'_>, info: &ConnInfo<'_>) -> Option<Response> {
        let _ = (req, info);
        None
    }

    /// The response for a request refused before the handler saw it
    /// (malformed, too large, failed RFC 6455 checks). Default: the status
    /// with a one-line plain-text reason.
    fn on_refuse(&mut self, err: HttpError) -> Response {
        let mut r = Response::text(err.status(), format!("{}\n", err.reason()));
        r.headers.push_str(err.extra_headers());
        r
    }

    /// The connection is open (the 101 answer is queued).
    fn on_open(&mut self, conn: &mut Self::Conn, ctx: &mut Context<'_>) {
        let _ = (conn, ctx);
    }

    /// A complete text or binary message.
    fn on_message(&mut self, conn: &mut Self::Conn, msg: Message<'_>, ctx: &mut Context<'_>) {
        let _ = (conn, msg, ctx);
    }

    /// A deadline set with [`Context::set_timer`] came due (one call per
    /// `set_timer`; check what is due yourself, e.g. after a deadline moved).
    fn on_timer(&mut self, conn: &mut Self::Conn, ctx: &mut Context<'_>) {
        let _ = (conn, ctx);
    }

    /// The broker's later answer to [`Context::subscribe_since`]
    /// ([`Answer::Later`]): on success the connection is subscribed and the
    /// replay, if any, should be sent now; on failure it is not subscribed.
    /// Default: nothing.
    fn on_joined(
        &mut self,
        conn: &mut Self::Conn,
        topic: &str,
        joined: Result<Joined, Unavailable>,
        ctx: &mut Context<'_>,
    ) {
        let _ = (conn, topic, joined, ctx);
    }

    /// The stream of a topic this connection subscribes to was lost (a new
    /// epoch) or has a gap its history no longer covers: publications go on
    /// from `position`, and what came between is not recoverable. Default:
    /// nothing.
    fn on_reset(
        &mut self,
        conn: &mut Self::Conn,
        topic: &str,
        position: Position,
        ctx: &mut Context<'_>,
    ) {
        let _ = (conn, topic, position, ctx);
    }

    /// A value sent to this connection with
    /// [`Handle::notify`](crate::server::Handle::notify) (e.g. a broker's
    /// later answer the handler asked for). Default: nothing.
    fn on_notify(
        &mut self,
        conn: &mut Self::Conn,
        value: Box<dyn std::any::Any + Send>,
        ctx: &mut Context<'_>,
    ) {
        let _ = (conn, value, ctx);
    }

    /// The connection has ended; it can no longer be sent to.
    fn on_close(&mut self, conn: &mut Self::Conn, reason: CloseReason, ctx: &mut Context<'_>) {
        let _ = (conn, reason, ctx);
    }
}

/// What a callback can do: send to its own connection or any other,
/// broadcast, publish, subscribe, close.
pub struct Context<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) key: usize,
    pub(crate) id: ConnId,
}

impl Context<'_> {
    /// The id of the connection this callback is about.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The index of the worker running this callback.
    pub fn worker(&self) -> usize {
        self.core.index
    }

    /// A handle to the whole server.
    pub fn handle(&self) -> &Handle {
        &self.core.handle
    }

    /// Send a text message to this connection.
    pub fn send_text(&mut self, text: &str) {
        self.core
            .queue_owned(self.key, crate::protocol::OpCode::Text, text.as_bytes());
    }

    /// Send a binary message to this connection.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.core
            .queue_owned(self.key, crate::protocol::OpCode::Binary, data);
    }

    /// Send an encoded frame to this connection.
    pub fn send(&mut self, frame: &Frame) {
        let shared = std::rc::Rc::new(frame.clone().into_shared());
        self.core.queue_shared(self.key, &shared, Cause::Reply);
    }

    /// Send an encoded frame to any connection (this worker's directly, other
    /// workers' through the hub).
    pub fn send_to(&mut self, id: ConnId, frame: Frame) {
        if id.is_local() && id.worker() == self.core.index {
            if let Some(key) = self.core.lookup(id) {
                let shared = std::rc::Rc::new(frame.into_shared());
                let cause = if key == self.key {
                    Cause::Reply
                } else {
                    Cause::Push
                };
                self.core.queue_shared(key, &shared, cause);
            }
        } else {
            self.core.handle.send(id, frame);
        }
    }

    /// Send `frame` to every open connection of every worker.
    pub fn broadcast(&mut self, frame: Frame) {
        self.core.handle.broadcast(frame);
    }

    /// Send `frame` to every subscriber of `topic` (see [`Handle::publish`]).
    pub fn publish(&mut self, topic: &str, frame: Frame) -> Answer<Published> {
        self.core.handle.publish(topic, frame)
    }

    /// Publish through the broker's one entry point (see [`Handle::publish_with`]).
    pub fn publish_with(
        &mut self,
        topic: &str,
        opts: PublishOptions,
        data: &[u8],
        later: &mut dyn FnMut() -> Reply<Published>,
    ) -> Answer<Published> {
        self.core.handle.publish_with(topic, opts, data, later)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.core.peer_addr(self.key)
    }

    /// Subscribe this connection to `topic`. False if it already was, or is
    /// not an open WebSocket, or the broker refused at once.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        matches!(
            self.core.subscribe(self.key, topic, None),
            Some(Answer::Now(Ok(_)) | Answer::Later)
        )
    }

    /// Subscribe this connection to `topic`, resuming after `since` when
    /// given: the answer says where live publications start and, with
    /// `since`, whether the gap was recovered. Send the recovered
    /// publications with [`Context::send_publication`] right away, in order:
    /// live ones follow them with no gap and no duplicate. A broker that
    /// answers later ([`Answer::Later`]) calls [`Handler::on_joined`]; until
    /// then the connection receives nothing of the topic. `None` if the
    /// connection already was subscribed, or is not an open WebSocket.
    pub fn subscribe_since(
        &mut self,
        topic: &str,
        since: Option<Position>,
    ) -> Option<Answer<Joined>> {
        self.core.subscribe(self.key, topic, since)
    }

    /// Send a publication's frame to this connection (e.g. a replay).
    pub fn send_publication(&mut self, p: &Publication) {
        self.send(p.frame());
    }

    /// Unsubscribe this connection from `topic`. False if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.core.unsubscribe(self.key, topic)
    }

    /// Call [`Handler::on_timer`] for this connection after `after`
    /// (durations past 24 days fire at 24 days: check and set again).
    pub fn set_timer(&mut self, after: std::time::Duration) {
        self.core.set_timer(self.key, after);
    }

    /// The topics this connection is subscribed to.
    pub fn topics(&self) -> Vec<std::sync::Arc<str>> {
        self.core.topics_of(self.key)
    }

    /// Number of topics this connection is subscribed to.
    pub fn subscriptions(&self) -> usize {
        self.core.subscription_count(self.key)
    }

    /// Number of subscribers of `topic` on this worker.
    pub fn local_subscribers(&self, topic: &str) -> usize {
        self.core.topics.subscriber_count(topic)
    }

    /// Bytes queued for this connection and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.core.buffered(self.key)
    }

    /// Close this connection with `code` and `reason` (a close handshake).
    pub fn close(&mut self, code: u16, reason: &str) {
        self.core
            .close_conn(self.key, code, reason, CloseReason::Server(code));
    }

    /// Close another connection (through the hub when it is on another worker).
    pub fn close_other(&mut self, id: ConnId, code: u16, reason: &str) {
        if id.is_local() && id.worker() == self.core.index {
            if let Some(key) = self.core.lookup(id) {
                self.core
                    .close_conn(key, code, reason, CloseReason::Server(code));
            }
        } else {
            self.core.handle.close(id, code, reason);
        }
    }
}
