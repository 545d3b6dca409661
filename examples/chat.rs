//! The seed article's chat room (its `SocketService.php` + `web.html`) on
//! wspush: every message a client sends goes to every client.
//!
//! `cargo run --release --example chat`, then open http://127.0.0.1:9002/
//! in two browser tabs.

use wspush::protocol::{Message, Request};
use wspush::server::{CloseReason, ConnInfo, Context, Frame, Handler, Response, Server};

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>wspush chat</title>
<pre id="log"></pre><input id="msg" placeholder="say something, press Enter" autofocus>
<script>
const ws = new WebSocket(`ws://${location.host}/chat`, ["chat", "superchat"]);
const log = (t) => (document.getElementById("log").textContent += t + "\n");
ws.onopen = () => log(`connected (protocol: ${ws.protocol})`);
ws.onmessage = (e) => log(e.data);
ws.onclose = (e) => log(`closed (${e.code})`);
document.getElementById("msg").onkeydown = (e) => {
  if (e.key === "Enter" && e.target.value) { ws.send(e.target.value); e.target.value = ""; }
};
</script>"#;

/// Each connection is known by its id.
struct Chat;

impl Handler for Chat {
    type Conn = String;

    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        info: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<String, Response> {
        match req.path {
            "/chat" => Ok(format!("guest-{}", info.id.as_u64() % 10_000)),
            _ => Err(Response::not_found()),
        }
    }

    fn on_http(&mut self, req: &Request<'_>, _: &ConnInfo<'_>, _: &mut Context<'_>) -> Response {
        match req.path {
            "/" => Response::with_body(200, "text/html; charset=utf-8", PAGE),
            _ => Response::not_found(),
        }
    }

    fn on_open(&mut self, name: &mut String, ctx: &mut Context<'_>) {
        ctx.subscribe("chat");
        ctx.publish("chat", Frame::text(&format!("* {name} joined")));
    }

    fn on_message(&mut self, name: &mut String, msg: Message<'_>, ctx: &mut Context<'_>) {
        if let Message::Text(text) = msg {
            ctx.publish("chat", Frame::text(&format!("{name}: {text}")));
        }
    }

    fn on_close(&mut self, name: &mut String, _: CloseReason, ctx: &mut Context<'_>) {
        ctx.publish("chat", Frame::text(&format!("* {name} left")));
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let server = Server::builder()
        .listen("127.0.0.1:9002".parse().expect("address"))
        .with(|c| c.handshake.protocols = vec!["chat".into(), "superchat".into()])
        .build(|_, _| Chat)?;
    println!("chat on http://{}/", server.local_addr());
    server.run()
}
