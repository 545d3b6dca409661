//! Reference peer for `wsload`: the same endpoints as wspush, on
//! tokio-tungstenite, single-threaded (tokio current_thread).
//!
//! - `GET /echo`: echo every message (text as text, binary as binary).
//! - `GET /broadcast`: every message any client sends is delivered to every
//!   client of /broadcast, the sender included, in the same order for all.
//!
//! Usage: `peer-tokio-tungstenite --listen 127.0.0.1:9003`

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Room {
    next_id: u64,
    members: Vec<(u64, UnboundedSender<Message>)>,
}

type Shared = Arc<Mutex<Room>>;

async fn client(stream: tokio::net::TcpStream, room: Shared) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_string();
        if path != "/echo" && path != "/broadcast" {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(e);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
        return;
    };
    let broadcast = path == "/broadcast";
    if !broadcast {
        // The canonical echo loop: one task, read then send.
        let mut ws = ws;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        return;
    }
    // Broadcast: a reader and a writer task joined by a queue; the writer
    // corks (feed everything queued, then one flush).
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            // Cork: queue everything already waiting, then one flush.
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let id = {
        let mut r = room.lock().unwrap();
        r.next_id += 1;
        let id = r.next_id;
        r.members.push((id, tx.clone()));
        id
    };
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                let r = room.lock().unwrap();
                for (_, m) in &r.members {
                    let _ = m.send(msg.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    room.lock().unwrap().members.retain(|(m, _)| *m != id);
    drop(tx);
    let _ = writer.await;
}

fn main() {
    let mut listen = "127.0.0.1:9003".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "-h" | "--help" => {
                println!("peer-tokio-tungstenite --listen ADDR  (/echo, /broadcast; one thread)");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("peer-tokio-tungstenite listening on {listen}");
        let room: Shared = Arc::default();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(client(stream, room.clone()));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}
