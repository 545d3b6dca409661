//! The dispatch to the application: HTTP requests and the upgrade, then
//! decoded frames, handed to the [`Handler`]'s callbacks.

use std::mem;

use super::conn::{HttpState, Phase, CLOSE_DONE, UPGRADED};
use super::core::{Cause, Core};
use super::handler::{CloseReason, ConnInfo, Context, Handler};
use super::hub::ConnId;
use super::response::Response;
use super::timers::Entry;
use crate::protocol::{encode, handshake, HttpError, Message, OpCode};

/// The application side: the handler and each connection's state.
pub(crate) struct App<H: Handler> {
    pub(crate) handler: H,
    pub(crate) states: Vec<Option<H::Conn>>,
}

impl<H: Handler> App<H> {
    pub(crate) fn state_slot(&mut self, key: usize) -> &mut Option<H::Conn> {
        if self.states.len() <= key {
            self.states.resize_with(key + 1, || None);
        }
        &mut self.states[key]
    }

    /// Refuse a request with the handler's response for the error.
    pub(crate) fn refuse(&mut self, core: &mut Core, key: usize, e: HttpError) {
        log::debug!("conn {}: refused: {e}", core.id_of(key));
        let resp = self.handler.on_refuse(e);
        core.respond(key, &resp, true);
    }

    /// The deferred answer to a connection's request: write it, and serve
    /// on (true: the caller reads on) unless the connection ends.
    pub(crate) fn answer(&mut self, core: &mut Core, key: usize, mut resp: Response) -> bool {
        let deadline = core.after(core.cfg.handshake_timeout);
        let Some(c) = core.conns.get_mut(key) else {
            return false;
        };
        let Some(hs) = c.http.as_mut() else {
            return false;
        };
        let Some((keep, head)) = hs.awaiting.take() else {
            return false;
        };
        resp.head_only = head;
        let keep = keep && !resp.close && !core.draining;
        hs.deadline = deadline;
        core.respond(key, &resp, !keep);
        keep
    }

    /// The broker's later answer to a subscription of `key`.
    pub(crate) fn joined(
        &mut self,
        core: &mut Core,
        key: usize,
        topic: &str,
        answer: Result<crate::broker::Joined, crate::broker::Unavailable>,
    ) {
        let id = core.id_of(key);
        if let Some(Some(state)) = self.states.get_mut(key) {
            self.handler
                .on_joined(state, topic, answer, &mut Context { core, key, id });
        }
    }

    /// A value for the handler of `key` ([`Handle::notify`](crate::server::Handle::notify)).
    pub(crate) fn notify(
        &mut self,
        core: &mut Core,
        key: usize,
        value: Box<dyn std::any::Any + Send>,
    ) {
        let id = core.id_of(key);
        if let Some(Some(state)) = self.states.get_mut(key) {
            self.handler
                .on_notify(state, value, &mut Context { core, key, id });
        }
    }

    /// A subscribed topic's stream starts again at `position`.
    pub(crate) fn reset(
        &mut self,
        core: &mut Core,
        key: usize,
        topic: &str,
        position: crate::broker::Position,
    ) {
        let id = core.id_of(key);
        if let Some(Some(state)) = self.states.get_mut(key) {
            self.handler
                .on_reset(state, topic, position, &mut Context { core, key, id });
        }
    }

    /// Serve what the connection has sent while it speaks HTTP (what
    /// `hs.buf` kept, then `fresh`): refusals, plain requests (keep-alive),
    /// or the upgrade.
    ///
    /// With nothing kept (the usual case: a whole request in one read),
    /// requests are parsed where they were read, and only an unfinished
    /// rest is copied into `hs.buf`: an upgrade allocates no request buffer.
    pub(crate) fn serve_http(
        &mut self,
        core: &mut Core,
        key: usize,
        mut hs: Box<HttpState>,
        fresh: &mut [u8],
    ) {
        let cfg = core.cfg.clone();
        // Bytes kept from earlier reads: the new ones are appended to them
        // (amortized, as a request trickling in byte by byte must not cost
        // a copy of all it sent so far per read).
        let from_kept = !hs.buf.is_empty();
        let mut kept = Vec::new();
        if from_kept {
            hs.buf.extend_from_slice(fresh);
            kept = mem::take(&mut hs.buf);
        }
        let input: &mut [u8] = if from_kept { &mut kept } else { &mut *fresh };
        // Keep the unserved rest of the input, from `$off`, in `hs.buf` (its
        // parser state counts from the rest's start) and give `hs` back to
        // the connection.
        macro_rules! keep_rest {
            ($off:expr) => {{
                let off = $off;
                if from_kept {
                    kept.drain(..off);
                    hs.buf = kept;
                } else {
                    hs.buf.extend_from_slice(&fresh[off..]);
                }
                if let Some(c) = core.conns.get_mut(key) {
                    c.http = Some(hs);
                }
                return;
            }};
        }
        // Start of the current request in `input` (pipelined requests are
        // served in place).
        let mut off = 0;
        if hs.awaiting.is_some() {
            // An answer is still to come: serve nothing more before it.
            keep_rest!(0);
        }
        loop {
            let (req, consumed) = match hs.parser.parse(&cfg.http, &input[off..]) {
                Ok(Some(done)) => done,
                Ok(None) => {
                    if !hs.head_checked {
                        if let Some(req) = hs.parser.awaiting_body(&cfg.http, &input[off..]) {
                            hs.head_checked = true;
                            let info = ConnInfo {
                                id: core.id_of(key),
                                peer: Some(hs.peer),
                                protocol: None,
                            };
                            if let Some(resp) = self.handler.on_request_head(&req, &info) {
                                log::debug!(
                                    "conn {}: request refused on its head: {}",
                                    info.id,
                                    resp.status
                                );
                                return core.respond(key, &resp, true);
                            }
                        }
                    }
                    keep_rest!(off);
                }
                Err(e) => return self.refuse(core, key, e),
            };
            let id = core.id_of(key);
            let peer = Some(hs.peer);
            if !handshake::is_upgrade(&req) {
                core.stats.http_requests_total += 1;
                let info = ConnInfo {
                    id,
                    peer,
                    protocol: None,
                };
                let resp = self
                    .handler
                    .on_http(&req, &info, &mut Context { core, key, id })
                    .for_method(req.method);
                if resp.is_deferred() {
                    hs.awaiting = Some((req.keep_alive(), resp.head_only));
                    off += consumed;
                    hs.parser.reset();
                    hs.head_checked = false;
                    keep_rest!(off);
                }
                let keep_alive = req.keep_alive() && !resp.close && !core.draining;
                core.respond(key, &resp, !keep_alive);
                if !keep_alive {
                    return;
                }
                off += consumed;
                hs.parser.reset();
                hs.head_checked = false;
                // The deadline moves; the timer entry re-arms itself when it fires.
                hs.deadline = core.after(cfg.handshake_timeout);
                if core.paused(key) {
                    // Pipelined requests whose answers are not being read:
                    // keep the rest for when the queue has drained.
                    log::debug!("conn {id}: pipelined answers over the buffer limit, pausing");
                    keep_rest!(off);
                }
                continue;
            }
            if hs.reserve.is_some() {
                // Accepted over the limit for plain HTTP only.
                log::debug!("conn {id}: upgrade refused: at --max-connections");
                let resp = Response::text(503, "server at connection limit\n");
                return core.respond(key, &resp, true);
            }
            let acc = match handshake::validate(&req, &cfg.handshake) {
                Ok(acc) => acc,
                Err(e) => return self.refuse(core, key, e),
            };
            let info = ConnInfo {
                id,
                peer,
                protocol: acc.protocol,
            };
            let state = match self
                .handler
                .on_upgrade(&req, &info, &mut Context { core, key, id })
            {
                Ok(state) => state,
                Err(resp) => {
                    log::debug!("conn {id}: upgrade refused by handler: {}", resp.status);
                    return core.respond(key, &resp, true);
                }
            };
            let deflate = core.deflate.negotiate(&req);
            let Some(c) = core.conns.get_mut(key) else {
                return;
            };
            if c.phase != Phase::Http {
                return;
            }
            c.deflate = deflate.map_or(0, |(_, bits)| bits);
            c.phase = Phase::Open;
            c.flags |= UPGRADED;
            let generation = c.generation;
            c.last_rx = core.ms;
            core.arm_heartbeat(key, generation);
            core.stats.upgrades_total += 1;
            core.stats.websockets += 1;
            core.queue_raw(key, Cause::Reply, |v| {
                handshake::write_accept_with(&acc, deflate.as_ref().map(|(p, _)| p), v)
            });
            let slot = self.state_slot(key);
            *slot = Some(state);
            if let Some(mut st) = slot.take() {
                self.handler
                    .on_open(&mut st, &mut Context { core, key, id });
                *self.state_slot(key) = Some(st);
            }
            // A first frame may have come in the same packet as the request.
            if off + consumed < input.len() {
                self.process_ws(core, key, &mut input[off + consumed..]);
            }
            return;
        }
    }

    /// An application timer came due: call the handler if its connection
    /// is still the one that set it and still open.
    pub(crate) fn timer(&mut self, core: &mut Core, e: Entry) {
        let key = e.key as usize;
        match core.conns.get(key) {
            Some(c) if c.generation == e.generation && c.phase == Phase::Open => {}
            _ => return,
        }
        let id = core.id_of(key);
        if let Some(mut st) = self.state_slot(key).take() {
            self.handler
                .on_timer(&mut st, &mut Context { core, key, id });
            *self.state_slot(key) = Some(st);
        }
    }

    /// Decode frames from `buf` and dispatch them.
    pub(crate) fn process_ws(&mut self, core: &mut Core, key: usize, buf: &mut [u8]) {
        let Some(c) = core.conns.get_mut(key) else {
            return;
        };
        let id = ConnId::new(core.index, key, c.generation);
        let rsv1 = c.deflate != 0;
        let mut dec = mem::take(&mut c.decoder);
        let mut state = self.state_slot(key).take();
        let mut off = 0;
        while off < buf.len() {
            let phase = core.conns.get(key).map(|c| c.phase).unwrap_or(Phase::Dead);
            if !matches!(phase, Phase::Open | Phase::Closing) {
                break;
            }
            let cfg = if rsv1 {
                &core.deflate.dec_cfg
            } else {
                &core.dec_cfg
            };
            let d = match dec.decode(cfg, &mut buf[off..]) {
                Ok(d) => d,
                Err(e) => {
                    core.fail(key, e);
                    break;
                }
            };
            off += d.consumed;
            let Some(msg) = d.message else { break };
            #[cfg(feature = "deflate")]
            if let (Some(op), Message::Binary(raw)) = (d.compressed, msg) {
                // permessage-deflate: inflate into the worker's buffer.
                let plain = match core.deflate.inflate(raw) {
                    Ok(plain) => plain,
                    Err(e) => {
                        core.fail(key, e);
                        break;
                    }
                };
                let msg = if op == OpCode::Text {
                    match std::str::from_utf8(&plain) {
                        Ok(t) => Message::Text(t),
                        Err(_) => {
                            core.deflate.give_back(plain);
                            core.fail(key, crate::protocol::ProtocolError::InvalidUtf8);
                            break;
                        }
                    }
                } else {
                    Message::Binary(&plain)
                };
                core.stats.messages_in_total += 1;
                if phase == Phase::Open {
                    if let Some(st) = state.as_mut() {
                        self.handler
                            .on_message(st, msg, &mut Context { core, key, id });
                    }
                }
                core.deflate.give_back(plain);
                continue;
            }
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    core.stats.messages_in_total += 1;
                    if phase == Phase::Open {
                        if let Some(st) = state.as_mut() {
                            self.handler
                                .on_message(st, msg, &mut Context { core, key, id });
                        }
                    }
                }
                Message::Ping(p) => {
                    if phase == Phase::Open {
                        core.queue_raw(key, Cause::Reply, |v| {
                            encode::frame_into(v, OpCode::Pong, p)
                        });
                    }
                }
                Message::Pong(_) => {}
                Message::Close(cf) => {
                    if let Some(c) = core.conns.get_mut(key) {
                        if phase == Phase::Open {
                            let code = cf.map(|f| f.code);
                            c.close_reason.get_or_insert(CloseReason::Client(code));
                            core.queue_control(key, |v| encode::close_into(v, code, ""));
                        }
                    }
                    if let Some(c) = core.conns.get_mut(key) {
                        c.flags |= CLOSE_DONE;
                    }
                    core.linger(key);
                    core.mark_dirty(key);
                    break;
                }
            }
        }
        if dec.is_idle() {
            dec.release_buffers();
        }
        if let Some(c) = core.conns.get_mut(key) {
            c.decoder = dec;
        }
        *self.state_slot(key) = state;
    }
}
