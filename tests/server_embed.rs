//! The embedding API: a custom Handler in-process, Handle calls from another
//! thread, one worker run on a thread the test owns.

mod common;

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{wait_until, IO_TIMEOUT};
use tungstenite::Message as TMsg;
use wspush::protocol::{Message, Request};
use wspush::server::{CloseReason, ConnId, ConnInfo, Context, Frame, Handler, Response, Server};

#[derive(Default, Clone)]
struct Shared {
    opened: Arc<Mutex<Vec<ConnId>>>,
    closed: Arc<Mutex<Vec<(ConnId, CloseReason)>>>,
}

struct App {
    shared: Shared,
}

impl Handler for App {
    type Conn = ConnId;

    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        info: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<ConnId, Response> {
        if req.path == "/ws" {
            Ok(info.id)
        } else {
            Err(Response::text(404, "no\n"))
        }
    }

    fn on_http(&mut self, req: &Request<'_>, _: &ConnInfo<'_>, ctx: &mut Context<'_>) -> Response {
        Response::text(200, format!("worker {} path {}\n", ctx.worker(), req.path))
    }

    fn on_open(&mut self, id: &mut ConnId, ctx: &mut Context<'_>) {
        self.shared.opened.lock().unwrap().push(*id);
        ctx.subscribe("room");
        ctx.send_text(&format!("welcome {id}"));
    }

    fn on_message(&mut self, _: &mut ConnId, msg: Message<'_>, ctx: &mut Context<'_>) {
        if let Message::Text(t) = msg {
            if let Some(topic_msg) = t.strip_prefix("pub ") {
                ctx.publish("room", Frame::text(topic_msg));
            } else if t == "unsub" {
                assert!(ctx.unsubscribe("room"));
                ctx.send_text("unsubscribed");
            }
        }
    }

    fn on_close(&mut self, id: &mut ConnId, reason: CloseReason, _: &mut Context<'_>) {
        self.shared.closed.lock().unwrap().push((*id, reason));
    }
}

fn client(addr: std::net::SocketAddr) -> (tungstenite::WebSocket<TcpStream>, u64) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), s).unwrap();
    let TMsg::Text(w) = ws.read().unwrap() else {
        panic!("no welcome")
    };
    let id: u64 = w.strip_prefix("welcome ").unwrap().parse().unwrap();
    (ws, id)
}

#[test]
fn handle_broadcast_send_close_from_another_thread() {
    let shared = Shared::default();
    let s2 = shared.clone();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .build(move |_, _| App { shared: s2.clone() })
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let runner = thread::spawn(move || server.run());

    let (mut a, a_id) = client(addr);
    let (mut b, b_id) = client(addr);
    assert_ne!(a_id, b_id);

    let h = handle.clone();
    thread::spawn(move || {
        h.broadcast(Frame::text("to everyone"));
        h.send(ConnId::from_u64(b_id), Frame::text("just b"));
    })
    .join()
    .unwrap();
    assert_eq!(a.read().unwrap(), TMsg::Text("to everyone".into()));
    assert_eq!(b.read().unwrap(), TMsg::Text("to everyone".into()));
    assert_eq!(b.read().unwrap(), TMsg::Text("just b".into()));

    // Publish through a client, unsubscribe, publish again.
    a.send(TMsg::Text("pub one".into())).unwrap();
    assert_eq!(a.read().unwrap(), TMsg::Text("one".into()));
    assert_eq!(b.read().unwrap(), TMsg::Text("one".into()));
    b.send(TMsg::Text("unsub".into())).unwrap();
    assert_eq!(b.read().unwrap(), TMsg::Text("unsubscribed".into()));
    a.send(TMsg::Text("pub two".into())).unwrap();
    assert_eq!(a.read().unwrap(), TMsg::Text("two".into()));
    handle.send(ConnId::from_u64(b_id), Frame::text("marker"));
    assert_eq!(
        b.read().unwrap(),
        TMsg::Text("marker".into()),
        "b no longer gets the room"
    );

    // Server-initiated close with a code.
    assert!(handle.close(ConnId::from_u64(a_id), 4001, "bye"));
    let code = loop {
        match a.read() {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(4001));
    while a.read().is_ok() {}

    // A stale id (a's) no longer reaches anyone.
    handle.send(ConnId::from_u64(a_id), Frame::text("ghost"));
    handle.send(ConnId::from_u64(b_id), Frame::text("after"));
    assert_eq!(b.read().unwrap(), TMsg::Text("after".into()));

    // Counters are published once per worker loop turn, after that turn's
    // writes: the client can be ahead of them. Wait for them.
    let counted = wait_until(IO_TIMEOUT, || {
        let stats = handle.stats();
        stats.get("upgrades_total").unwrap() >= 2 && stats.get("messages_in_total").unwrap() >= 3
    });
    let stats = handle.stats();
    assert!(
        counted,
        "upgrades {:?}, messages in {:?}",
        stats.get("upgrades_total"),
        stats.get("messages_in_total")
    );

    handle.shutdown();
    let code = loop {
        match b.read() {
            Ok(TMsg::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(1001));
    while b.read().is_ok() {}
    runner.join().unwrap().unwrap();
    let closed = shared.closed.lock().unwrap().clone();
    assert!(
        closed.contains(&(ConnId::from_u64(a_id), CloseReason::Server(4001))),
        "{closed:?}"
    );
    assert!(
        closed.contains(&(ConnId::from_u64(b_id), CloseReason::Shutdown)),
        "{closed:?}"
    );
    assert_eq!(shared.opened.lock().unwrap().len(), 2);
}

#[test]
fn one_worker_on_a_thread_the_embedder_owns() {
    let shared = Shared::default();
    let s2 = shared.clone();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .build(move |_, _| App { shared: s2.clone() })
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let mut workers = server.into_workers();
    assert_eq!(workers.len(), 1);
    let w = workers.pop().unwrap();
    let t = thread::Builder::new()
        .name("my-own-thread".into())
        .spawn(move || w.run())
        .unwrap();
    let resp = {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("worker 0 path /hello\n"), "{resp}");
    let (mut c, _) = client(addr);
    handle.shutdown();
    while c.read().is_ok() {}
    t.join().unwrap().unwrap();
}

/// Publishes "left" from `on_close`: a command the worker posts to itself
/// while it reaps, which must still go out in that turn.
struct Leaver;

impl Handler for Leaver {
    type Conn = ();
    fn on_upgrade(
        &mut self,
        _: &Request<'_>,
        _: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<(), Response> {
        Ok(())
    }
    fn on_open(&mut self, _: &mut (), ctx: &mut Context<'_>) {
        ctx.subscribe("room");
        ctx.send_text("hi");
    }
    fn on_close(&mut self, _: &mut (), _: CloseReason, ctx: &mut Context<'_>) {
        ctx.publish("room", Frame::text("left"));
    }
}

#[test]
fn publications_from_on_close_are_delivered_on_the_same_worker() {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .workers(1)
        // Nothing else may wake the worker: no heartbeats.
        .with(|c| {
            c.ping_interval = None;
            c.idle_timeout = None;
        })
        .build(|_, _| Leaver)
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let runner = thread::spawn(move || server.run());
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), s).unwrap();
        assert_eq!(ws.read().unwrap(), TMsg::Text("hi".into()));
        ws
    };
    let mut stays = connect();
    let mut goes = connect();
    goes.close(None).unwrap();
    while goes.read().is_ok() {}
    drop(goes);
    assert_eq!(
        stays.read().expect("the 'left' publication"),
        TMsg::Text("left".into())
    );
    handle.shutdown();
    while stays.read().is_ok() {}
    runner.join().unwrap().unwrap();
}

#[test]
fn without_so_reuseport_one_acceptor_hands_connections_to_every_worker() {
    let shared = Shared::default();
    let s2 = shared.clone();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .workers(3)
        .with(|c| c.reuse_port = false)
        .build(move |_, _| App { shared: s2.clone() })
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let runner = thread::spawn(move || server.run());
    let mut clients = Vec::new();
    let mut workers = std::collections::HashSet::new();
    for _ in 0..12 {
        let (ws, id) = client(addr);
        workers.insert(ConnId::from_u64(id).worker());
        clients.push(ws);
    }
    // Round-robin from the one acceptor: every worker got connections.
    assert_eq!(workers.len(), 3, "{workers:?}");
    // And they all work: a broadcast reaches each.
    handle.broadcast(Frame::text("all"));
    for ws in clients.iter_mut() {
        assert_eq!(ws.read().unwrap(), TMsg::Text("all".into()));
    }
    handle.shutdown();
    for mut ws in clients {
        while ws.read().is_ok() {}
    }
    runner.join().unwrap().unwrap();
}
