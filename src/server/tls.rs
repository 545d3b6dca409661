//! TLS for `wss://` and `https://` on the same listener, with rustls.
//!
//! rustls's `ServerConnection` is sans-IO, so it fits the worker loop: the
//! socket's bytes go in with `read_tls`, plaintext comes out of `reader()`,
//! replies go into `writer()` and out with `write_tls` — no extra thread,
//! no blocking. The certificate can be replaced while the server runs
//! ([`TlsAcceptor::reload`]); connections already open keep theirs.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The server's TLS settings: a certificate chain and key, replaceable.
pub struct TlsAcceptor {
    config: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

/// A rustls server configuration from PEM files: the certificate chain
/// (leaf first) and its private key; ALPN `http/1.1`; the `ring` provider.
pub fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let bad = |what: &str, path: &Path, e: &dyn fmt::Display| {
        io::Error::other(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(bad("certificate", cert, &"no CERTIFICATE in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("private key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl TlsAcceptor {
    /// An acceptor serving the certificate and key in these PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
        Ok(TlsAcceptor {
            config: RwLock::new(server_config(cert, key)?),
        })
    }

    /// Serve a new certificate and key to connections accepted from now on;
    /// on error the one in force stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> io::Result<()> {
        let cfg = server_config(cert, key)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = cfg;
        Ok(())
    }

    /// TLS state for a newly accepted connection.
    pub(crate) fn accept(&self) -> io::Result<Box<ServerConnection>> {
        let cfg = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ServerConnection::new(cfg)
            .map(Box::new)
            .map_err(io::Error::other)
    }
}

/// Read plaintext, feeding the socket's bytes to TLS as needed.
pub(crate) fn read(
    tls: &mut ServerConnection,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            // 0: the peer's close_notify.
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(sock)? == 0 {
            return Ok(0);
        }
        if let Err(e) = tls.process_new_packets() {
            // Send the alert rustls queued, then fail the connection.
            let _ = (Sink { tls, sock }).drain();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Plaintext in, ciphertext to the socket.
pub(crate) struct Sink<'a> {
    pub tls: &'a mut ServerConnection,
    pub sock: &'a mut TcpStream,
}

impl Sink<'_> {
    /// Write TLS's pending bytes; `WouldBlock` if the socket is full.
    pub fn drain(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(self.sock)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(b)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Ciphertext first: plaintext is taken only while the socket keeps up
        // (rustls buffers at most its own limit).
        self.drain()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        match self.drain() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
