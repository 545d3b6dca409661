//! Errors of the protocol core. Each one knows what to answer: an HTTP
//! status (before the upgrade) or a WebSocket close code (after it).

use std::fmt;

use super::close;

/// A request that must be refused with an HTTP status before any upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request head exceeds the configured size limit (431).
    HeadTooLarge,
    /// More header fields than the configured limit (431).
    TooManyHeaders,
    /// `Content-Length` exceeds the configured body limit (413).
    BodyTooLarge,
    /// The request line is not `METHOD SP target SP HTTP/x.y` (400).
    BadRequestLine,
    /// A header line is malformed (400).
    BadHeader,
    /// An HTTP version other than 1.0 or 1.1 (505).
    UnsupportedHttpVersion,
    /// `Content-Length` is not a number, or appears twice with different values (400).
    BadContentLength,
    /// A `Transfer-Encoding` body, which this server does not implement (501).
    TransferEncodingNotSupported,
    /// A WebSocket upgrade with a method other than GET (405).
    MethodNotAllowed,
    /// A WebSocket upgrade over HTTP/1.0 (400).
    UpgradeRequiresHttp11,
    /// No `Host` header (400).
    MissingHost,
    /// `Upgrade` does not contain the token `websocket` (400).
    NotWebSocketUpgrade,
    /// `Connection` does not contain the token `upgrade` (400).
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` is missing or does not decode to 16 bytes (400).
    BadKey,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedWebSocketVersion,
    /// `Origin` is not on the allowlist (403).
    OriginNotAllowed,
}

impl HttpError {
    /// The HTTP status code to answer with.
    pub fn status(self) -> u16 {
        use HttpError::*;
        match self {
            HeadTooLarge | TooManyHeaders => 431,
            BodyTooLarge => 413,
            UnsupportedHttpVersion => 505,
            TransferEncodingNotSupported => 501,
            MethodNotAllowed => 405,
            UnsupportedWebSocketVersion => 426,
            OriginNotAllowed => 403,
            BadRequestLine
            | BadHeader
            | BadContentLength
            | UpgradeRequiresHttp11
            | MissingHost
            | NotWebSocketUpgrade
            | MissingConnectionUpgrade
            | BadKey => 400,
        }
    }

    /// A one-line, plain-text reason for the response body and the log.
    pub fn reason(self) -> &'static str {
        use HttpError::*;
        match self {
            HeadTooLarge => "request head too large",
            TooManyHeaders => "too many header fields",
            BodyTooLarge => "request body too large",
            BadRequestLine => "malformed request line",
            BadHeader => "malformed header field",
            UnsupportedHttpVersion => "HTTP version not supported",
            BadContentLength => "invalid Content-Length",
            TransferEncodingNotSupported => {
                "Transfer-Encoding is not supported; send Content-Length"
            }
            MethodNotAllowed => "WebSocket upgrade requires GET",
            UpgradeRequiresHttp11 => "WebSocket upgrade requires HTTP/1.1",
            MissingHost => "missing Host header",
            NotWebSocketUpgrade => "Upgrade header must contain websocket",
            MissingConnectionUpgrade => "Connection header must contain upgrade",
            BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            UnsupportedWebSocketVersion => "unsupported Sec-WebSocket-Version; use 13",
            OriginNotAllowed => "origin not allowed",
        }
    }

    /// Extra header lines this refusal must carry (each ending in CRLF).
    pub fn extra_headers(self) -> &'static str {
        match self {
            HttpError::UnsupportedWebSocketVersion => "Sec-WebSocket-Version: 13\r\n",
            HttpError::MethodNotAllowed => "Allow: GET\r\n",
            _ => "",
        }
    }

    /// Append the complete HTTP refusal (status line, headers, one-line body) to `out`.
    /// The response asks the client to close the connection.
    pub fn write_response(self, out: &mut Vec<u8>) {
        let mut body = String::with_capacity(64);
        body.push_str(self.reason());
        body.push('\n');
        super::http::write_response(
            out,
            self.status(),
            "text/plain; charset=utf-8",
            self.extra_headers(),
            body.as_bytes(),
            true,
        );
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}

/// A WebSocket protocol violation by the peer, after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without a mask (1002).
    UnmaskedFrame,
    /// A server frame with a mask (1002; only in the client role).
    MaskedFrame,
    /// RSV bits set that no negotiated extension defines (1002).
    ReservedBits,
    /// A reserved opcode: 3-7 or 0xB-0xF (1002).
    ReservedOpcode(u8),
    /// A control frame longer than 125 bytes (1002).
    ControlFrameTooLong,
    /// A control frame without FIN (1002).
    FragmentedControlFrame,
    /// A continuation frame with no message in progress (1002).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (1002).
    ExpectedContinuation,
    /// A 64-bit length with its most significant bit set (1002).
    LengthOverflow,
    /// A frame longer than the configured maximum frame size (1009).
    FrameTooLarge,
    /// A message longer than the configured maximum message size (1009).
    MessageTooLarge,
    /// A text message or close reason that is not valid UTF-8 (1007).
    InvalidUtf8,
    /// A close frame whose payload is exactly one byte (1002).
    CloseLengthOne,
    /// A close frame carrying a code that may not be sent (1002).
    InvalidCloseCode(u16),
    /// A permessage-deflate message that is not valid deflate data (1007:
    /// RFC 7692 §8 only says to fail the connection; its payload is
    /// inconsistent with the message type, as RFC 6455 §7.4.1 defines 1007).
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code to send before closing the connection.
    pub fn close_code(self) -> u16 {
        use ProtocolError::*;
        match self {
            FrameTooLarge | MessageTooLarge => close::MESSAGE_TOO_BIG,
            InvalidUtf8 | InvalidCompressedData => close::INVALID_PAYLOAD,
            _ => close::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame and the log.
    pub fn reason(self) -> &'static str {
        use ProtocolError::*;
        match self {
            UnmaskedFrame => "client frames must be masked",
            MaskedFrame => "server frames must not be masked",
            ReservedBits => "reserved bits set",
            ReservedOpcode(_) => "reserved opcode",
            ControlFrameTooLong => "control frame longer than 125 bytes",
            FragmentedControlFrame => "fragmented control frame",
            UnexpectedContinuation => "continuation without a message",
            ExpectedContinuation => "new message inside a fragmented message",
            LengthOverflow => "frame length has its top bit set",
            FrameTooLarge => "frame too large",
            MessageTooLarge => "message too large",
            InvalidUtf8 => "invalid UTF-8",
            CloseLengthOne => "close frame of length 1",
            InvalidCloseCode(_) => "invalid close code",
            InvalidCompressedData => "invalid compressed data",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "{} ({op:#x})", self.reason())?,
            ProtocolError::InvalidCloseCode(c) => write!(f, "{} ({c})", self.reason())?,
            _ => f.write_str(self.reason())?,
        }
        write!(f, " [close {}]", self.close_code())
    }
}

impl std::error::Error for ProtocolError {}

/// Any error of the protocol core: refused before the upgrade (HTTP status)
/// or a protocol violation after it (close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Answer with this HTTP status and close the connection.
    Http(HttpError),
    /// Send a close frame with this code and close the connection.
    Protocol(ProtocolError),
}

impl Error {
    /// The HTTP status to send, when the error happened before the upgrade.
    pub fn http_status(self) -> Option<u16> {
        match self {
            Error::Http(e) => Some(e.status()),
            Error::Protocol(_) => None,
        }
    }

    /// The close code to send, when the error happened after the upgrade.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Error::Http(_) => None,
            Error::Protocol(e) => Some(e.close_code()),
        }
    }
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        Error::Http(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Http(e) => e.fmt(f),
            Error::Protocol(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}
