//! Reference peer for `wsload`: the same endpoints as wspush, on
//! fastwebsockets + hyper, single-threaded (tokio current_thread).
//!
//! - `GET /echo`: echo every message (text as text, binary as binary).
//! - `GET /broadcast`: every message any client sends is delivered to every
//!   client of /broadcast, the sender included, in the same order for all.
//!
//! Usage: `peer-fastwebsockets --listen 127.0.0.1:9002`

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastwebsockets::{
    upgrade, FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::io::BufWriter;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// One outgoing frame: opcode and shared payload (a broadcast is one
/// allocation shared by every recipient).
type Out = (OpCode, Bytes);

#[derive(Default)]
struct Room {
    next_id: u64,
    members: Vec<(u64, UnboundedSender<Out>)>,
}

type Shared = Arc<Mutex<Room>>;

async fn serve(
    mut req: Request<Incoming>,
    room: Shared,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let path = req.uri().path().to_string();
    if path != "/echo" && path != "/broadcast" {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    if !upgrade::is_upgrade_request(&req) {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        return Ok(r);
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = client(fut, path == "/broadcast", room).await;
    });
    Ok(response)
}

async fn client(
    fut: upgrade::UpgradeFut,
    broadcast: bool,
    room: Shared,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    if !broadcast {
        // The canonical fastwebsockets echo loop: one task, read then write.
        let mut ws = FragmentCollector::new(ws);
        loop {
            let frame = ws.read_frame().await?;
            match frame.opcode {
                OpCode::Close => return Ok(()),
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
                _ => {}
            }
        }
    }
    // Broadcast: a reader task and a writer task joined by a queue of shared
    // frames; the writer corks (buffered writes, one flush when the queue is
    // empty), as fastwebsockets documents for buffered streams.
    let (rx, mut tx) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, BufWriter::with_capacity(64 * 1024, w))
    });
    let mut rx = FragmentCollectorRead::new(rx);
    let (out_tx, mut out_rx) = unbounded_channel::<Out>();

    let writer = tokio::spawn(async move {
        'outer: while let Some((op, bytes)) = out_rx.recv().await {
            let mut close = op == OpCode::Close;
            if tx
                .write_frame(Frame::new(true, op, None, Payload::Borrowed(&bytes)))
                .await
                .is_err()
            {
                break;
            }
            while !close {
                let Ok((op, bytes)) = out_rx.try_recv() else {
                    break;
                };
                close = op == OpCode::Close;
                if tx
                    .write_frame(Frame::new(true, op, None, Payload::Borrowed(&bytes)))
                    .await
                    .is_err()
                {
                    break 'outer;
                }
            }
            if tx.flush().await.is_err() || close {
                break;
            }
        }
    });

    let id = {
        let mut r = room.lock().unwrap();
        r.next_id += 1;
        let id = r.next_id;
        r.members.push((id, out_tx.clone()));
        id
    };

    let obligated = out_tx.clone();
    let mut send_fn = move |frame: Frame<'_>| {
        let _ = obligated.send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
        async { Ok::<(), WebSocketError>(()) }
    };
    let result = loop {
        let frame = match rx.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match frame.opcode {
            OpCode::Close => break Ok(()),
            OpCode::Text | OpCode::Binary => {
                let bytes = Bytes::copy_from_slice(&frame.payload);
                let r = room.lock().unwrap();
                for (_, m) in &r.members {
                    let _ = m.send((frame.opcode, bytes.clone()));
                }
            }
            _ => {}
        }
    };
    room.lock().unwrap().members.retain(|(m, _)| *m != id);
    drop(out_tx);
    let _ = writer.await;
    result
}

fn main() {
    let mut listen = "127.0.0.1:9002".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "-h" | "--help" => {
                println!("peer-fastwebsockets --listen ADDR  (/echo, /broadcast; one thread)");
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
        eprintln!("peer-fastwebsockets listening on {listen}");
        let room: Shared = Arc::default();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let room = room.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = service_fn(move |req| serve(req, room.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
}
