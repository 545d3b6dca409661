//! The server runtime: thread-per-core mio workers, the fan-out hub, the
//! embedding API.
//!
//! - [`config`]: every limit and timeout, with defaults.
//! - [`handler`]: the [`Handler`] trait an application implements, and the
//!   [`Context`] its callbacks get.
//! - [`hub`]: the [`Handle`] usable from any thread, the encoded-once
//!   [`Frame`], connection ids and statistics.
//! - [`response`]: plain HTTP responses for the same port.
//! - `worker`: one mio loop per thread owning its connections.

pub mod config;
pub mod handler;
pub mod hub;
pub mod response;

mod compress;
mod conn;
mod core;
mod dispatch;
mod fanout;
mod listener;
mod outbuf;
mod timers;
#[cfg(feature = "tls")]
pub mod tls;
mod topics;
mod transport;
mod worker;

pub use crate::broker::Published;
pub use config::Config;
pub use handler::{CloseReason, ConnInfo, Context, Handler};
pub use hub::{ConnId, Frame, Handle, Stats, WorkerStats};
pub use response::Response;
pub use worker::Worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

/// A built server: listening sockets bound, workers ready to run.
pub struct Server<H: Handler = NoHandler> {
    workers: Vec<Worker<H>>,
    handle: Handle,
    local_addr: SocketAddr,
}

/// Builds a [`Server`] from a [`Config`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Address to listen on (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Number of worker threads (0: one per CPU).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Change any other setting in place.
    pub fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Bind the listening sockets and create the workers; `make_handler` is
    /// called once per worker with the worker's index and a [`Handle`].
    pub fn build<H, F>(self, make_handler: F) -> io::Result<Server<H>>
    where
        H: Handler,
        F: FnMut(usize, Handle) -> H,
    {
        Server::new(self.config, make_handler)
    }
}

/// Placeholder handler type so that `Server::builder()` needs no annotation.
#[derive(Debug)]
pub enum NoHandler {}

impl Handler for NoHandler {
    type Conn = ();
    fn on_upgrade(
        &mut self,
        _: &crate::protocol::Request<'_>,
        _: &ConnInfo<'_>,
        _: &mut Context<'_>,
    ) -> Result<(), Response> {
        match *self {}
    }
}

impl Server {
    /// Start building a server with the default configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<H: Handler> Server<H> {
    fn new<F>(mut config: Config, mut make_handler: F) -> io::Result<Self>
    where
        F: FnMut(usize, Handle) -> H,
    {
        if config.workers == 0 {
            config.workers = thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        config.workers = config.workers.min(hub::MAX_WORKERS);
        let config = Arc::new(config);
        let listeners = listener::bind_all(&config)?;
        let local_addr = listeners.local_addr;
        let (hub, parts) = hub::Hub::new(config.workers, config.max_connections)?;
        let broker: Arc<dyn crate::broker::Broker> = match () {
            #[cfg(feature = "redis")]
            _ if config.redis.is_some() => Arc::new(crate::broker::redis::RedisBroker::start(
                hub.clone(),
                config.history,
                config.redis.clone().unwrap_or_default(),
            )?),
            _ => Arc::new(crate::broker::LocalBroker::new(hub.clone(), config.history)),
        };
        let handle = Handle::new(hub, broker);
        let distribute =
            listeners.sockets.iter().filter(|s| s.is_some()).count() == 1 && config.workers > 1;
        let mut workers = Vec::with_capacity(config.workers);
        for (index, (part, socket)) in parts.into_iter().zip(listeners.sockets).enumerate() {
            let handler = make_handler(index, handle.clone());
            let distribute = distribute && socket.is_some();
            workers.push(Worker::new(
                index,
                config.clone(),
                handle.clone(),
                part,
                socket,
                handler,
                distribute,
            )?);
        }
        Ok(Server {
            workers,
            handle,
            local_addr,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for broadcasting, sending, closing, stats and shutdown.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Take the workers to run each on a thread the embedder owns
    /// ([`Worker::run`] blocks until shutdown).
    pub fn into_workers(self) -> Vec<Worker<H>> {
        self.workers
    }

    /// Run every worker on its own thread and block until all have stopped
    /// (after [`Handle::shutdown`]). Returns the first worker error.
    pub fn run(self) -> io::Result<()> {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                let name = format!("wspush-worker-{}", w.index());
                thread::Builder::new().name(name).spawn(move || w.run())
            })
            .collect::<io::Result<_>>()?;
        let mut result = Ok(());
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(_) => {
                    if result.is_ok() {
                        result = Err(io::Error::other("worker thread panicked"));
                    }
                }
            }
        }
        result
    }
}
