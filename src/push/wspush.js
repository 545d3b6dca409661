/*! wspush.js: a small dependency-free browser client for wspush (`/ws`).
 *
 *   const client = new WsPush({ channels: ["news"] });   // url defaults to ws(s)://<this host>/ws
 *   client.on("publication", (p) => console.log(p.channel, p.seq, p.data));
 *   client.on("recovery_failed", (r) => refetch(r.channel)); // history lost: reload the state
 *   client.connect();
 *   await client.subscribe("chat.lobby");       // resolves with {channel, seq, epoch, recovered}
 *   await client.publish("chat.lobby", { text: "hi" }); // resolves with {channel, seq}
 *
 * Options (all optional):
 *   url            the /ws endpoint (default: ws: or wss: to this page's host, path /ws)
 *   token          a JWT, sent as ?token= on each connection
 *   getToken       async () => string: called before every connection attempt (wins over token)
 *   channels       channels to subscribe to on connect
 *   minDelay       reconnect backoff floor in ms (1000)
 *   maxDelay       reconnect backoff ceiling in ms (30000)
 *   pingInterval   heartbeat period in ms (20000); a ping unanswered for pongTimeout
 *   pongTimeout    ms (10000) closes the socket and reconnects
 *
 * Methods:
 *   connect() / disconnect()   start (and keep) / stop the connection
 *   subscribe(ch)              kept across reconnects; resolves on the server's `subscribed`
 *                              (at once when already subscribed; when disconnected, on the
 *                              next connection), rejects on its `error`
 *   unsubscribe(ch)            resolves on `unsubscribed` (at once when not connected)
 *   publish(ch, data)          resolves with {channel, seq}; rejects if not connected
 *   ping()                     resolves with the round trip in ms
 *   refresh(token?)            sends {"op":"refresh"} with this token (or getToken()'s);
 *                              resolves with {exp}; later connections use it too. Without
 *                              a refresh the server closes at the token's exp (an `error`
 *                              token_expired, close 3000) and the client reconnects, asking
 *                              getToken for a new one
 *   subscriptions()            [{channel, state, seq, epoch}], state "subscribing"|"subscribed"
 *   on(event, fn) / off(event, fn)
 *   WsPush.validChannel(name)  whether the server accepts this channel name
 * Properties: state, connectionId, user, active (connect() in force), stats
 *   ({duplicates, gaps, reconnects}).
 *
 * Events:
 *   publication      {channel, seq, data}: in order, each seq at most once
 *   broadcast        data
 *   direct           data
 *   state            (state, detail): "connecting" | "connected" | "disconnected";
 *                    on "disconnected" detail = {code, reason, welcomed, delay, attempt}
 *                    (delay: ms until the next attempt, null when not reconnecting)
 *   subscribed       {channel, seq, epoch, recovered} for each `subscribed` from the server;
 *                    recovered: true (missed publications follow), false, or null (fresh)
 *   recovery_failed  {channel, seq, epoch}: a resume was refused (history gone or a new
 *                    epoch); nothing old is replayed, the stream restarts after seq
 *   gap              {channel, expected, seq}: publications were skipped (the server
 *                    promises this never happens while resume works)
 *   unsubscribed     {channel, reason}: the server ended a subscription by itself (e.g. a
 *                    refreshed token no longer allows the channel); it leaves the set
 *   pong             {rtt}
 *   error            {code, message, op, channel}: every error from the server (a request's
 *                    promise is rejected as well) and protocol oddities
 *
 * Resume: the client remembers the last seq and the epoch of each channel and
 * resubscribes after a reconnect with `since`, so the server replays what was
 * missed (`recovered:true`) or says it cannot (`recovery_failed`). Publications
 * at or below the last seq seen are dropped (counted in stats.duplicates).
 *
 * Reconnect: jittered exponential backoff, uniformly random between minDelay
 * and min(maxDelay, minDelay * 2^attempt); reset by each successful welcome.
 * A channel the server refuses is dropped from the set (an `error` event says why);
 * after two upgrades in a row closed before the welcome (an upgrade refused,
 * e.g. a channel the token does not allow) the client connects without
 * channels in the URL and subscribes one by one, so each refusal gets a reason.
 */
(function (global) {
  "use strict";

  const WELCOME_TIMEOUT_MS = 10000;
  const CHANNEL_RE = /^[A-Za-z0-9_.:@-]{1,128}$/;
  const CHANNEL_RULE = "channel names are [A-Za-z0-9_.:@-]{1,128}";

  function WsPushError(code, message, op, channel) {
    const e = new Error((op ? op + (channel ? " " + channel : "") + ": " : "") + code + (message ? " – " + message : ""));
    e.code = code;
    e.serverMessage = message;
    e.op = op;
    e.channel = channel;
    return e;
  }

  class WsPush {
    constructor(opts) {
      opts = opts || {};
      this.url = opts.url || WsPush.defaultUrl();
      this.token = opts.token || null;
      this.getToken = opts.getToken || null;
      this.minDelay = opts.minDelay ?? 1000;
      this.maxDelay = opts.maxDelay ?? 30000;
      this.pingInterval = opts.pingInterval ?? 20000;
      this.pongTimeout = opts.pongTimeout ?? 10000;
      this.state = "disconnected";
      this.connectionId = null;
      this.user = null;
      this.active = false;
      this.stats = { duplicates: 0, gaps: 0, reconnects: 0 };
      // channel -> {seq, epoch, state: "subscribing"|"subscribed", waiters: [{resolve, reject}]}
      this._subs = new Map();
      this._handlers = new Map();
      this._ws = null;
      this._conn = null; // per socket: {welcomed, onServer: Set, pingAt, timers}
      this._pending = new Map(); // id -> {op, channel, resolve, reject}
      this._nextId = 1;
      this._attempt = 0;
      this._refused = 0; // consecutive sockets closed before the welcome
      this._retryTimer = null;
      for (const ch of opts.channels || []) {
        if (!WsPush.validChannel(ch)) throw new TypeError(CHANNEL_RULE + ": " + JSON.stringify(ch));
        this._want(ch);
      }
      if (typeof window !== "undefined") {
        const retryNow = () => { if (this.active && this._retryTimer) { this._attempt = 0; this.connect(); } };
        window.addEventListener("online", retryNow);
        if (typeof document !== "undefined") {
          document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") retryNow(); });
        }
      }
    }

    static validChannel(name) {
      return typeof name === "string" && CHANNEL_RE.test(name);
    }

    static defaultUrl() {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      return proto + "//" + location.host + "/ws";
    }

    // ---- events ------------------------------------------------------------

    on(name, fn) {
      if (!this._handlers.has(name)) this._handlers.set(name, new Set());
      this._handlers.get(name).add(fn);
      return this;
    }

    off(name, fn) {
      const s = this._handlers.get(name);
      if (s) s.delete(fn);
      return this;
    }

    _emit(name, ...args) {
      const s = this._handlers.get(name);
      if (!s) return;
      for (const fn of [...s]) {
        try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); } // never break the client
      }
    }

    _setState(state, detail) {
      this.state = state;
      this._emit("state", state, detail);
    }

    // ---- public API ----------------------------------------------------------

    subscriptions() {
      return [...this._subs].map(([channel, s]) => ({ channel, state: s.state, seq: s.seq, epoch: s.epoch }));
    }

    connect() {
      this.active = true;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      if (this._ws || this.state === "connecting") return;
      this._open();
    }

    disconnect() {
      this.active = false;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      const ws = this._ws;
      if (ws) {
        try { ws.close(1000, "bye"); } catch (_) { /* already closing */ }
        this._drop(ws, { code: 1000, reason: "bye" });
      } else if (this.state !== "disconnected") {
        this._setState("disconnected", { code: null, reason: "", welcomed: false, delay: null, attempt: 0 });
      }
      this._attempt = 0;
      this._refused = 0; // a closed-by-us socket says nothing about refusals
    }

    subscribe(channel) {
      if (!WsPush.validChannel(channel)) return Promise.reject(WsPushError("invalid_channel", CHANNEL_RULE, "subscribe", channel));
      const s = this._want(channel);
      if (s.state === "subscribed") return Promise.resolve(this._info(channel, s, null));
      const p = new Promise((resolve, reject) => s.waiters.push({ resolve, reject }));
      const c = this._conn;
      if (c && c.welcomed && !c.onServer.has(channel)) this._sendSubscribe(channel, s);
      return p;
    }

    unsubscribe(channel) {
      const s = this._subs.get(channel);
      this._subs.delete(channel);
      if (s) for (const w of s.waiters) w.reject(WsPushError("unsubscribed", "unsubscribed before the server answered", "subscribe", channel));
      const c = this._conn;
      if (!c || !c.welcomed || !c.onServer.has(channel)) return Promise.resolve({ channel });
      c.onServer.delete(channel);
      return this._request({ op: "unsubscribe", channel });
    }

    publish(channel, data) {
      return this._request({ op: "publish", channel, data });
    }

    ping() {
      const t0 = performance.now();
      return this._request({ op: "ping" }).then(() => performance.now() - t0);
    }

    async refresh(token) {
      if (token === undefined && this.getToken) token = await this.getToken();
      if (typeof token !== "string" || !token) throw WsPushError("invalid_token", "no token to refresh with", "refresh");
      this.token = token; // for later connections when there is no getToken
      return this._request({ op: "refresh", token });
    }

    // ---- requests --------------------------------------------------------------

    _send(obj) {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(obj));
      return true;
    }

    // Send with an id; the promise settles on the reply carrying that id.
    _request(obj, internal) {
      return new Promise((resolve, reject) => {
        const c = this._conn;
        if (!c || !c.welcomed) {
          reject(WsPushError("not_connected", "not connected", obj.op, obj.channel));
          return;
        }
        const id = this._nextId++;
        obj.id = id;
        this._pending.set(id, { op: obj.op, channel: obj.channel, resolve, reject, internal: !!internal });
        if (!this._send(obj)) {
          this._pending.delete(id);
          reject(WsPushError("not_connected", "not connected", obj.op, obj.channel));
        }
      });
    }

    _want(channel) {
      let s = this._subs.get(channel);
      if (!s) {
        s = { seq: null, epoch: null, state: "subscribing", waiters: [] };
        this._subs.set(channel, s);
      }
      return s;
    }

    _since(s) {
      return s.seq !== null && s.epoch ? { seq: s.seq, epoch: s.epoch } : null;
    }

    _sendSubscribe(channel, s) {
      const msg = { op: "subscribe", channel };
      const since = this._since(s);
      if (since) msg.since = since;
      this._conn.onServer.add(channel);
      // The reply is handled by _onSubscribed (it carries the channel); a
      // refusal by _onError. The promise itself only needs swallowing.
      this._request(msg, true).catch(() => {});
    }

    _info(channel, s, recovered) {
      return { channel, seq: s.seq, epoch: s.epoch, recovered };
    }

    // ---- connection lifecycle ----------------------------------------------------

    async _open() {
      this._setState("connecting");
      let token = this.token;
      try {
        if (this.getToken) token = await this.getToken();
      } catch (e) {
        this._emit("error", { code: "token", message: "getToken failed: " + (e && e.message), op: null, channel: null });
        this._setState("disconnected", this._retry(null, "", false));
        return;
      }
      if (!this.active || this._ws) return; // disconnect() or connect() meanwhile
      const q = new URLSearchParams();
      // Channels go into the URL so they are subscribed atomically with the
      // upgrade (a known position as since=channel:seq:epoch).
      if (this._refused < 2) {
        for (const [ch, s] of this._subs) {
          const since = this._since(s);
          if (since) q.append("since", ch + ":" + since.seq + ":" + since.epoch);
          else q.append("channel", ch);
        }
      }
      if (token) q.append("token", token);
      const qs = q.toString();
      let ws;
      try {
        ws = new WebSocket(this.url + (qs ? (this.url.includes("?") ? "&" : "?") + qs : ""));
      } catch (e) {
        this._emit("error", { code: "connect", message: String(e && e.message), op: null, channel: null });
        this._setState("disconnected", this._retry(null, "", false));
        return;
      }
      this._ws = ws;
      const c = { welcomed: false, onServer: new Set(), pingAt: 0, pingTimer: null, pongTimer: null, welcomeTimer: null };
      this._conn = c;
      c.welcomeTimer = setTimeout(() => {
        if (this._ws === ws && !c.welcomed) {
          this._emit("error", { code: "no_welcome", message: "no welcome from the server", op: null, channel: null });
          try { ws.close(); } catch (_) { /* ignore */ }
          this._drop(ws, { code: null, reason: "no welcome" });
        }
      }, WELCOME_TIMEOUT_MS);
      ws.onmessage = (m) => { if (this._ws === ws) this._onMessage(m.data); };
      ws.onclose = (e) => { if (this._ws === ws) this._drop(ws, e); };
    }

    // The socket is gone (closed by either side, or given up on).
    _drop(ws, closeEvent) {
      if (this._ws !== ws) return;
      const c = this._conn;
      this._ws = null;
      this._conn = null;
      clearTimeout(c.welcomeTimer);
      clearInterval(c.pingTimer);
      clearTimeout(c.pongTimer);
      ws.onmessage = ws.onclose = null;
      const pending = [...this._pending.values()];
      this._pending.clear();
      for (const p of pending) p.reject(WsPushError("disconnected", "the connection closed before the answer", p.op, p.channel));
      for (const s of this._subs.values()) s.state = "subscribing";
      this.connectionId = null;
      if (c.welcomed) this._refused = 0;
      else this._refused++;
      const code = closeEvent && closeEvent.code ? closeEvent.code : null;
      const reason = (closeEvent && closeEvent.reason) || "";
      this._setState("disconnected", this._retry(code, reason, c.welcomed));
    }

    // Schedule the next attempt if the connection is wanted; the state detail.
    _retry(code, reason, welcomed) {
      let delay = null;
      if (this.active) {
        this._attempt++;
        const cap = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this._attempt));
        delay = this.minDelay + Math.random() * Math.max(0, cap - this.minDelay);
        clearTimeout(this._retryTimer);
        this._retryTimer = setTimeout(() => {
          this._retryTimer = null;
          if (this.active && !this._ws) { this.stats.reconnects++; this._open(); }
        }, delay);
      }
      return { code, reason, welcomed, delay, attempt: this._attempt };
    }

    _heartbeat() {
      const c = this._conn;
      if (!c || c.pingAt) return;
      const ws = this._ws;
      c.pingAt = performance.now();
      this._request({ op: "ping" }, true).then(() => {
        if (this._conn !== c) return;
        const rtt = performance.now() - c.pingAt;
        c.pingAt = 0;
        clearTimeout(c.pongTimer);
        this._emit("pong", { rtt });
      }, () => {});
      c.pongTimer = setTimeout(() => {
        if (this._ws !== ws || !c.pingAt) return;
        this._emit("error", { code: "no_pong", message: "no pong within " + this.pongTimeout + " ms", op: "ping", channel: null });
        try { ws.close(); } catch (_) { /* ignore */ }
        this._drop(ws, { code: null, reason: "no pong" });
      }, this.pongTimeout);
    }

    // ---- messages --------------------------------------------------------------

    _onMessage(text) {
      let m;
      try { m = JSON.parse(text); } catch (_) { m = null; }
      if (m === null || typeof m !== "object") {
        this._emit("error", { code: "bad_message", message: "unexpected message: " + String(text).slice(0, 200), op: null, channel: null });
        return;
      }
      if (typeof m.channel === "string" && typeof m.seq === "number" && !("op" in m)) return this._onPublication(m);
      if (m.broadcast === true) return this._emit("broadcast", m.data);
      if (m.direct === true) return this._emit("direct", m.data);
      const req = m.id !== undefined ? this._pending.get(m.id) : undefined;
      if (req) this._pending.delete(m.id);
      switch (m.op) {
        case "welcome": return this._onWelcome(m);
        case "subscribed": this._onSubscribed(m); break;
        case "error": return this._onError(m, req);
        case "unsubscribed": if (!req) return this._onEnded(m); break;
        case "pong": case "published": case "refreshed": break;
        default:
          this._emit("error", { code: "bad_message", message: "unknown message: " + String(text).slice(0, 200), op: null, channel: null });
      }
      if (req) {
        const r = Object.assign({}, m);
        delete r.op; delete r.id;
        req.resolve(r);
      }
    }

    _onWelcome(m) {
      const c = this._conn;
      c.welcomed = true;
      clearTimeout(c.welcomeTimer);
      this._attempt = 0;
      this._refused = 0;
      this.connectionId = String(m.connection);
      this.user = m.user == null ? null : String(m.user);
      for (const ch of Array.isArray(m.channels) ? m.channels : []) {
        const s = this._subs.get(ch);
        c.onServer.add(ch);
        if (!s) {
          // Unsubscribed while connecting.
          c.onServer.delete(ch);
          this._request({ op: "unsubscribe", channel: ch }, true).catch(() => {});
          continue;
        }
        // Subscribed with the upgrade. (A server with history follows up with
        // a `subscribed` carrying seq and epoch.)
        s.state = "subscribed";
        const ws = s.waiters.splice(0);
        for (const w of ws) w.resolve(this._info(ch, s, null));
      }
      // Channels the server did not take from the URL: ask one by one, so a
      // refusal says why.
      for (const [ch, s] of this._subs) if (!c.onServer.has(ch)) this._sendSubscribe(ch, s);
      this._setState("connected", { connection: this.connectionId, user: this.user });
      c.pingTimer = setInterval(() => this._heartbeat(), this.pingInterval);
      this._heartbeat();
    }

    _onSubscribed(m) {
      const ch = m.channel;
      const s = this._subs.get(ch);
      const c = this._conn;
      if (!s) {
        // Unsubscribed meanwhile; undo unless an unsubscribe is on its way.
        if (c && c.onServer.has(ch)) {
          c.onServer.delete(ch);
          this._request({ op: "unsubscribe", channel: ch }, true).catch(() => {});
        }
        return;
      }
      const recovered = typeof m.recovered === "boolean" ? m.recovered : null;
      if (typeof m.epoch === "string") s.epoch = m.epoch;
      if (typeof m.seq === "number") {
        // recovered:true: the missed publications follow, keep our position.
        if (recovered === false || s.seq === null) s.seq = m.seq;
        else if (recovered === null && m.seq > s.seq) {
          // A fresh subscription past our position: what lies between is lost.
          this._gap(ch, s.seq + 1, m.seq + 1);
          s.seq = m.seq;
        }
      }
      s.state = "subscribed";
      const info = this._info(ch, s, recovered);
      for (const w of s.waiters.splice(0)) w.resolve(info);
      this._emit("subscribed", info);
      if (recovered === false) this._emit("recovery_failed", { channel: ch, seq: s.seq, epoch: s.epoch });
    }

    // The server ended a subscription by itself (e.g. a refreshed token no
    // longer allows the channel): the channel leaves the set.
    _onEnded(m) {
      const ch = m.channel;
      const s = this._subs.get(ch);
      this._subs.delete(ch);
      if (this._conn) this._conn.onServer.delete(ch);
      const reason = typeof m.reason === "string" ? m.reason : "";
      if (s) for (const w of s.waiters) w.reject(WsPushError("unsubscribed", reason, "subscribe", ch));
      this._emit("unsubscribed", { channel: ch, reason });
    }

    _onPublication(m) {
      const s = this._subs.get(m.channel);
      if (!s) return; // unsubscribed meanwhile
      if (s.seq !== null) {
        if (m.seq <= s.seq) { this.stats.duplicates++; return; }
        if (m.seq > s.seq + 1) this._gap(m.channel, s.seq + 1, m.seq);
      }
      s.seq = m.seq;
      this._emit("publication", { channel: m.channel, seq: m.seq, data: m.data });
    }

    _gap(channel, expected, seq) {
      this.stats.gaps++;
      this._emit("gap", { channel, expected, seq });
    }

    _onError(m, req) {
      const op = req ? req.op : null;
      const channel = req ? req.channel || null : null;
      const err = WsPushError(m.code || "error", m.message || "", op, channel);
      if (req && op === "subscribe") {
        // Refused: drop the channel (the app may add it again).
        const s = this._subs.get(channel);
        if (this._conn) this._conn.onServer.delete(channel);
        if (s && s.state !== "subscribed") {
          this._subs.delete(channel);
          for (const w of s.waiters) w.reject(err);
        }
      }
      this._emit("error", { code: err.code, message: m.message || "", op, channel });
      if (req) req.reject(err);
    }
  }

  global.WsPush = WsPush;
})(typeof window !== "undefined" ? window : globalThis);
