// Scenarios run by tests/pusher_clients.rs against a running wspush with
// --pusher-app 1:app-key:app-secret: the real pusher-js, laravel-echo and
// pusher (Node server SDK). Usage: node scenarios.mjs PORT CASE [ARG]
// Prints "ok CASE" and exits 0, or prints the failure and exits 1.
import Pusher from "pusher-js";
import PusherServer from "pusher";
import Echo from "laravel-echo";
import http from "node:http";
import { execFile } from "node:child_process";

const HERE = new URL(".", import.meta.url).pathname;

const [, , PORT, CASE, ARG] = process.argv;
const APP = { id: "1", key: "app-key", secret: "app-secret" };
const MASTER_KEY = Buffer.alloc(32, 7).toString("base64");

const server = new PusherServer({
  appId: APP.id, key: APP.key, secret: APP.secret,
  host: "127.0.0.1", port: PORT, useTLS: false,
  encryptionMasterKeyBase64: MASTER_KEY,
});
// The same backend with a wrong secret: its signatures must be refused.
const forger = new PusherServer({
  appId: APP.id, key: APP.key, secret: "not-the-secret",
  host: "127.0.0.1", port: PORT, useTLS: false,
});

// A pusher-js client; `user` is the presence member / signed-in user;
// `backend` signs its subscriptions (the app's auth endpoint, in process).
function client({ user = null, backend = server, port = PORT } = {}) {
  return new Pusher(APP.key, {
    cluster: "mt1", wsHost: "127.0.0.1", wsPort: +port, forceTLS: false,
    enabledTransports: ["ws"], disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) =>
        cb(null, backend.authorizeChannel(socketId, channelName,
          channelName.startsWith("presence-") ? user : undefined)),
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) =>
        cb(null, backend.authenticateUser(socketId, { id: user.user_id, name: user.user_info.name })),
    },
  });
}

function echo(opts = {}) {
  return new Echo({ broadcaster: "pusher", key: APP.key, client: client(opts) });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function deferred(what, ms = 5000) {
  let resolve, reject;
  const p = new Promise((a, b) => { resolve = a; reject = b; });
  const t = setTimeout(() => reject(new Error("timed out waiting for " + what)), ms);
  p.finally(() => clearTimeout(t)).catch(() => {});
  p.resolve = resolve; p.reject = reject;
  return p;
}
// Wait (bounded) until cond() holds: for what must happen, never a fixed sleep.
async function until(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(20);
  }
}
// Signed in (pusher:signin_success) and subscribed to #server-to-user-{id}.
function signedIn(p) {
  return until(() => p.user.serverToUserChannel && p.user.serverToUserChannel.subscribed, "sign-in");
}
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function eq(a, b, msg) {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) throw new Error(`${msg}: expected ${y}, got ${x}`);
}
function connected(p) {
  const d = deferred("connected");
  if (p.connection.state === "connected") d.resolve();
  p.connection.bind("connected", () => d.resolve());
  return d;
}
function subscribed(ch) {
  const d = deferred("subscription of " + ch.name);
  ch.bind("pusher:subscription_succeeded", (data) => d.resolve(data));
  ch.bind("pusher:subscription_error", (e) => d.reject(new Error("subscription_error " + JSON.stringify(e))));
  return d;
}
function once(ch, event, ms) {
  const d = deferred(event, ms);
  ch.bind(event, (data, meta) => d.resolve(data));
  return d;
}
function never(ch, event, label) {
  const seen = [];
  ch.bind(event, (d) => seen.push(d));
  return () => eq(seen, [], label);
}

const cases = {
  async public() {
    const p = client();
    const ch = p.subscribe("news");
    await subscribed(ch);
    assert(/^\d+\.\d+$/.test(p.connection.socket_id), "socket_id is digits.digits: " + p.connection.socket_id);
    const got = once(ch, "headline");
    eq(await server.trigger("news", "headline", { title: "hello" }).then((r) => r.status), 200, "trigger status");
    eq(await got, { title: "hello" }, "event data");
    p.disconnect();
  },

  async private() {
    const p = client();
    const ch = p.subscribe("private-orders");
    await subscribed(ch);
    const got = once(ch, "created");
    await server.trigger("private-orders", "created", { id: 7 });
    eq(await got, { id: 7 }, "private event");
    p.disconnect();
  },

  async encrypted() {
    const p = client();
    const ch = p.subscribe("private-encrypted-vault");
    await subscribed(ch);
    const got = once(ch, "secret");
    await server.trigger("private-encrypted-vault", "secret", { code: "1234" });
    eq(await got, { code: "1234" }, "decrypted event");
    p.disconnect();
  },

  // Echo's .error() on a bad signature (a backend with the wrong secret),
  // and the exact error payload.
  async bad_signature() {
    const e = echo({ backend: forger });
    const err = deferred("error()");
    e.private("orders").error((x) => err.resolve(x)).subscribed(() => err.reject(new Error("subscribed with a forged signature")));
    const x = await err;
    eq(x.type, "AuthError", "type");
    eq(x.status, 401, "status");
    assert(typeof x.error === "string" && x.error.length > 0, "error message");
    e.disconnect();
  },

  // here/joining/leaving with two tabs of one user and another user.
  async presence() {
    const alice = { user_id: "1", user_info: { name: "Alice" } };
    const bob = { user_id: "2", user_info: { name: "Bob" } };
    const a1 = echo({ user: alice });
    const here1 = deferred("here a1");
    const joining = [], leaving = [];
    a1.join("room").here((m) => here1.resolve(m)).joining((m) => joining.push(m)).leaving((m) => leaving.push(m));
    eq(await here1, [{ name: "Alice" }], "a1 here");
    // A second tab of Alice: the same single member; nobody hears a join.
    const a2 = echo({ user: alice });
    const here2 = deferred("here a2");
    a2.join("room").here((m) => here2.resolve(m));
    eq(await here2, [{ name: "Alice" }], "a2 here (one member for two tabs)");
    // Bob joins: Alice's tabs hear it once each.
    const b = echo({ user: bob });
    const hereB = deferred("here b");
    const bobHearsLeave = [];
    b.join("room").here((m) => hereB.resolve(m)).leaving((m) => bobHearsLeave.push(m));
    const hb = await hereB;
    eq(hb.map((m) => m.name).sort(), ["Alice", "Bob"], "bob's here");
    await until(() => joining.length > 0, "a1 hearing bob join");
    await sleep(300);
    eq(joining, [{ name: "Bob" }], "a1 heard bob join once");
    // Alice closes one tab: still a member, nobody hears her leave.
    a2.disconnect();
    await sleep(400);
    eq(bobHearsLeave, [], "no leaving while a tab remains");
    eq((await server.get({ path: "/channels/presence-room/users" }).then((r) => r.json())).users.map((u) => u.id).sort(), ["1", "2"], "users");
    // Her last tab goes: Bob hears her leave.
    a1.disconnect();
    await until(() => bobHearsLeave.length > 0, "bob hearing alice leave");
    await sleep(300);
    eq(bobHearsLeave, [{ name: "Alice" }], "leaving after the last tab");
    b.disconnect();
  },

  // Two nodes joined through Redis (ARG: "PORT_B,PID_B"): one presence
  // channel across both, users with tabs on both nodes, the API of either
  // node seeing the whole cluster, a user terminated from the other node,
  // then node B killed without a word: its users leave, the others stay.
  async presence_cluster() {
    const [portB, pidB] = ARG.split(",");
    const serverB = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: portB, useTLS: false });
    const alice = { user_id: "1", user_info: { name: "Alice" } };
    const bob = { user_id: "2", user_info: { name: "Bob" } };
    // Alice on node A.
    const a = echo({ user: alice });
    const hereA = deferred("here a");
    const joining = [], leaving = [];
    const room = a.join("room").here((m) => hereA.resolve(m)).joining((m) => joining.push(m.name)).leaving((m) => leaving.push(m.name));
    eq(await hereA, [{ name: "Alice" }], "alice alone");
    // Bob on node B: his snapshot has Alice; Alice hears him join.
    const b = echo({ user: bob, port: portB });
    const hereB = deferred("here b");
    const bobHears = [];
    b.join("room").here((m) => hereB.resolve(m)).joining((m) => bobHears.push("+" + m.name)).leaving((m) => bobHears.push("-" + m.name));
    eq((await hereB).map((m) => m.name).sort(), ["Alice", "Bob"], "bob's here across nodes");
    await until(() => joining.length > 0, "alice hearing bob join");
    // A second tab of Alice, on node B: still one member, nobody hears a join.
    const a2 = echo({ user: alice, port: portB });
    const hereA2 = deferred("here a2");
    a2.join("room").here((m) => hereA2.resolve(m));
    eq((await hereA2).map((m) => m.name).sort(), ["Alice", "Bob"], "alice's second tab");
    // A marker event through node B's API: everything before it arrived.
    const marker = (n) => {
      const got = deferred("marker " + n);
      room.listen(".marker", (d) => { if (d.n === n) got.resolve(); });
      return serverB.trigger("presence-room", "marker", { n }).then(() => got);
    };
    await marker(1);
    eq(joining, ["Bob"], "alice heard bob once, not her own second tab");
    eq(bobHears, [], "bob heard nothing: alice was already a member");
    // Either node's API sees the whole cluster.
    for (const [s, label] of [[server, "A"], [serverB, "B"]]) {
      const users = await s.get({ path: "/channels/presence-room/users" }).then((r) => r.json());
      eq(users.users.map((u) => u.id).sort(), ["1", "2"], "users on " + label);
      const info = await s.get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } }).then((r) => r.json());
      eq(info, { occupied: true, user_count: 2, subscription_count: 3 }, "channel info on " + label);
      const list = await s.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } }).then((r) => r.json());
      eq(list, { channels: { "presence-room": { user_count: 2 } } }, "channel list on " + label);
    }
    // A user signed in on node A, terminated through node B's API.
    const carol = client({ user: { user_id: "9", user_info: { name: "Carol" } } });
    await connected(carol);
    carol.signin();
    await signedIn(carol);
    const closed = deferred("carol terminated");
    carol.connection.bind("state_change", (s) => { if (s.current === "failed" || s.current === "disconnected") closed.resolve(); });
    eq((await serverB.terminateUserConnections("9")).status, 200, "terminate through node B");
    await closed;
    // Node B dies without a word: Bob (only there) leaves; Alice (a tab on
    // A too) stays, and nobody hears her leave.
    process.kill(+pidB, "SIGKILL");
    await until(() => leaving.length > 0, "alice hearing bob leave after node B died", 15000);
    const m2 = deferred("marker 3");
    room.listen(".marker", (d) => { if (d.n === 3) m2.resolve(); });
    await server.trigger("presence-room", "marker", { n: 3 });
    await m2;
    eq(leaving, ["Bob"], "only bob left");
    const users = await server.get({ path: "/channels/presence-room/users" }).then((r) => r.json());
    eq(users, { users: [{ id: "1" }] }, "users after node B died");
    const info = await server.get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } }).then((r) => r.json());
    eq(info, { occupied: true, user_count: 1, subscription_count: 1 }, "channel info after node B died");
    a.disconnect();
  },

  // Echo's whisper: reaches the other member, not the sender; user_id added.
  async whisper() {
    const a = echo({ user: { user_id: "1", user_info: { name: "A" } } });
    const b = echo({ user: { user_id: "2", user_info: { name: "B" } } });
    const ha = deferred("a here"), hb = deferred("b here");
    const ca = a.join("chat").here(() => ha.resolve());
    const cb = b.join("chat").here(() => hb.resolve());
    await ha; await hb;
    const heard = deferred("whisper");
    const echoed = [];
    ca.listenForWhisper("typing", (d) => echoed.push(d));
    b.connector.pusher.channel("presence-chat").bind("client-typing", (d, meta) => heard.resolve([d, meta]));
    ca.whisper("typing", { typing: true });
    const [d, meta] = await heard;
    eq(d, { typing: true }, "whisper data");
    eq(meta && meta.user_id, "1", "user_id of the sender");
    await sleep(300);
    eq(echoed, [], "the sender does not get its own whisper");
    a.disconnect(); b.disconnect();
  },

  // Client events off (no --pusher-client-events): error 4301.
  async whisper_refused() {
    const p = client();
    const ch = p.subscribe("private-x");
    await subscribed(ch);
    const err = deferred("pusher:error");
    p.connection.bind("error", (e) => err.resolve(e));
    ch.trigger("client-typing", { a: 1 });
    const e = await err;
    eq(e.data && e.data.code, 4301, "code");
    p.disconnect();
  },

  // Rate limit: 10 per second accepted, the rest refused with 4301.
  async rate_limit() {
    const a = client(), b = client();
    const ca = a.subscribe("private-r"), cb = b.subscribe("private-r");
    const sa = subscribed(ca), sb = subscribed(cb);
    await sa; await sb;
    let got = 0, refused = 0;
    cb.bind("client-n", () => got++);
    a.connection.bind("error", (e) => { if (e.data && e.data.code === 4301) refused++; });
    for (let i = 0; i < 15; i++) ca.trigger("client-n", { i });
    await until(() => got >= 10 && refused >= 5, "10 accepted and 5 refused");
    await sleep(300);
    eq([got, refused], [10, 5], "accepted and refused");
    a.disconnect(); b.disconnect();
  },

  // toOthers(): a trigger with socket_id skips that socket.
  async to_others() {
    const a = echo(), b = echo();
    const sa = deferred("a sub"), sb = deferred("b sub");
    const seenA = [];
    const gotB = deferred("b event");
    a.channel("feed").subscribed(() => sa.resolve()).listen(".post", (d) => seenA.push(d));
    b.channel("feed").subscribed(() => sb.resolve()).listen(".post", (d) => gotB.resolve(d));
    await sa; await sb;
    await server.trigger("feed", "post", { n: 1 }, { socket_id: a.socketId() });
    eq(await gotB, { n: 1 }, "the other socket gets it");
    await sleep(300);
    eq(seenA, [], "the excluded socket does not");
    a.disconnect(); b.disconnect();
  },

  // Every HTTP API call of the Node SDK; a forged signature is refused.
  async api_node() {
    const alice = { user_id: "u1", user_info: { name: "Alice" } };
    const p = client({ user: alice });
    await connected(p);
    const pres = p.subscribe("presence-lobby");
    await subscribed(pres);
    const pub = p.subscribe("cache-score");
    await subscribed(pub);
    const r1 = await server.trigger(["presence-lobby", "cache-score"], "e1", "x", { info: "subscription_count,user_count" }).then((r) => r.json());
    eq(r1, { channels: { "presence-lobby": { subscription_count: 1, user_count: 1 }, "cache-score": { subscription_count: 1 } } }, "trigger with info");
    const r2 = await server.triggerBatch([{ channel: "cache-score", name: "b1", data: "1" }, { channel: "presence-lobby", name: "b2", data: { k: 2 } }]).then((r) => r.json());
    eq(r2, {}, "batch");
    const all = await server.get({ path: "/channels" }).then((r) => r.json());
    eq(Object.keys(all.channels).sort(), ["cache-score", "presence-lobby"], "channels");
    const pr = await server.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } }).then((r) => r.json());
    eq(pr, { channels: { "presence-lobby": { user_count: 1 } } }, "presence channels with user_count");
    const one = await server.get({ path: "/channels/presence-lobby", params: { info: "subscription_count,user_count" } }).then((r) => r.json());
    eq(one, { occupied: true, subscription_count: 1, user_count: 1 }, "channel info");
    const none = await server.get({ path: "/channels/empty" }).then((r) => r.json());
    eq(none, { occupied: false }, "unoccupied channel");
    const users = await server.get({ path: "/channels/presence-lobby/users" }).then((r) => r.json());
    eq(users, { users: [{ id: "u1" }] }, "users");
    // Sign in, receive a message to the user, then be terminated.
    p.signin();
    await signedIn(p);
    const toUser = deferred("sendToUser");
    p.user.bind("note", (d) => toUser.resolve(d));
    eq((await server.sendToUser("u1", "note", { hi: 1 })).status, 200, "sendToUser status");
    eq(await toUser, { hi: 1 }, "message to the user");
    // A cache channel gives a late subscriber the last event.
    const late = client();
    const lc = late.subscribe("cache-score");
    const last = once(lc, "b1");
    eq(await last, 1, "cache channel's last event");
    late.disconnect();
    // Forged requests and bad input get JSON errors.
    let status = 0;
    await forger.trigger("news", "x", "y").catch((e) => { status = e.status; });
    eq(status, 401, "forged signature");
    status = 0;
    await server.trigger("news", "x", "y".repeat(11000)).catch((e) => { status = e.status; });
    eq(status, 413, "data over 10 KB");
    status = 0;
    await server.post({ path: "/events", body: { name: "x", data: "y", channels: ["bad channel"] } }).catch((e) => { status = e.status; });
    eq(status, 400, "bad channel name");
    const closed = deferred("terminated");
    p.connection.bind("state_change", (s) => { if (s.current === "failed" || s.current === "disconnected") closed.resolve(s.current); });
    eq((await server.terminateUserConnections("u1")).status, 200, "terminate status");
    await closed;
  },

  // The Python SDK, run by python3 api.py: this side listens.
  async api_python() {
    const u = { user_id: "py1", user_info: { name: "Py" } };
    const p = client({ user: u });
    await connected(p);
    const pres = p.subscribe("presence-py");
    await subscribed(pres);
    const got = once(pres, "from-python");
    p.signin();
    await signedIn(p);
    const toUser = deferred("send_to_user");
    p.user.bind("py-note", (d) => toUser.resolve(d));
    const closed = deferred("terminated", 10000);
    p.connection.bind("state_change", (s) => { if (s.current === "failed" || s.current === "disconnected") closed.resolve(); });
    const out = await new Promise((res, rej) => execFile("python3", [HERE + "api.py", PORT], { timeout: 30000 }, (e, so, se) => e ? rej(new Error("api.py: " + e.message + "\n" + so + se)) : res(so)));
    eq(await got, { n: 1 }, "event from python");
    eq(await toUser, { hi: "py" }, "send_to_user");
    await closed;
    process.stdout.write(out);
  },

  // Webhooks to a receiver here; the Node SDK verifies their signature.
  async webhooks() {
    const events = [];
    const recv = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const wh = server.webhook({ headers: req.headers, rawBody: body });
        if (!wh.isValid()) { events.push({ name: "INVALID" }); res.writeHead(401); return res.end(); }
        for (const e of wh.getEvents()) events.push(e);
        res.writeHead(200); res.end("ok");
      });
    });
    await new Promise((r) => recv.listen(+ARG, "127.0.0.1", r));
    const a = client({ user: { user_id: "w1", user_info: {} } });
    const ch = a.subscribe("presence-hooks");
    await subscribed(ch);
    const b = client({ user: { user_id: "w2", user_info: {} } });
    const cb = b.subscribe("presence-hooks");
    await subscribed(cb);
    cb.trigger("client-hi", { x: 1 });
    await until(() => events.some((e) => e.name === "client_event"), "the client_event webhook");
    b.disconnect();
    await until(() => events.some((e) => e.name === "member_removed"), "member_removed");
    a.unsubscribe("presence-hooks");
    await until(() => events.some((e) => e.name === "channel_vacated"), "channel_vacated");
    await sleep(300);
    const names = events.map((e) => e.name + (e.user_id ? ":" + e.user_id : ""));
    eq(names, ["channel_occupied", "member_added:w1", "member_added:w2", "client_event:w2", "member_removed:w2", "member_removed:w1", "channel_vacated"], "webhook events");
    const ce = events.find((e) => e.name === "client_event");
    eq([ce.channel, ce.event, JSON.parse(ce.data)], ["presence-hooks", "client-hi", { x: 1 }], "client_event fields");
    a.disconnect();
    recv.close();
  },

  // An unknown app key: pusher-js gets 4001 (refused) and does not reconnect.
  async unknown_app() {
    const p = new Pusher("no-such-key", { cluster: "mt1", wsHost: "127.0.0.1", wsPort: +PORT, forceTLS: false, enabledTransports: ["ws"], disableStats: true });
    const err = deferred("error 4001");
    const states = [];
    p.connection.bind("error", (e) => { const d = e.error && e.error.data; if (d && d.code === 4001) err.resolve(); });
    p.connection.bind("state_change", (s) => states.push(s.current));
    await err;
    await sleep(2500);
    eq(states, ["disconnected"], "refused: disconnected, no reconnect");
  },
};

(async () => {
  const run = cases[CASE];
  if (!run) throw new Error("unknown case " + CASE);
  await run();
  console.log("ok " + CASE);
  process.exit(0);
})().catch((e) => {
  console.error("FAIL " + CASE + ": " + (e && e.stack || e));
  process.exit(1);
});
