//! Plain HTTP responses, for requests on the same port that are not
//! WebSocket upgrades (an API, a page, a refusal).

use crate::protocol::http;

/// An HTTP response to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: String,
    /// Extra header lines, each `Name: value\r\n`.
    pub headers: String,
    /// The body.
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
    /// The answer to a HEAD request: the head (with the body's
    /// Content-Length) is sent, the body is not. Set by [`Response::for_method`].
    pub head_only: bool,
}

impl Response {
    /// A response with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            headers: String::new(),
            body: body.into().into_bytes(),
            close: false,
            head_only: false,
        }
    }

    /// A response with a JSON body (already serialized).
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response {
            content_type: "application/json".into(),
            ..Response::text(status, body)
        }
    }

    /// A response with any content type.
    pub fn with_body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            headers: String::new(),
            body: body.into(),
            close: false,
            head_only: false,
        }
    }

    /// No answer yet: the handler will give it later with
    /// [`Handle::respond`](super::Handle::respond) (e.g. after a broker's
    /// later answer). The connection reads no further request until then.
    pub fn deferred() -> Response {
        Response::text(0, "")
    }

    /// Whether this is [`Response::deferred`].
    pub fn is_deferred(&self) -> bool {
        self.status == 0
    }

    /// The 404 answer.
    pub fn not_found() -> Response {
        Response::text(404, "not found\n")
    }

    /// Add a header line.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push_str(name);
        self.headers.push_str(": ");
        self.headers.push_str(value);
        self.headers.push_str("\r\n");
        self
    }

    /// Ask for the connection to be closed after this response.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// Make this the answer to a request with `method`: for `HEAD`, the
    /// same head as for `GET` (Content-Length included) and no body, so a
    /// keep-alive connection stays in step.
    pub fn for_method(mut self, method: &str) -> Response {
        self.head_only = method == "HEAD";
        self
    }

    /// Append the encoded response to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>, close: bool) {
        if self.head_only {
            return http::write_response_head(
                out,
                self.status,
                &self.content_type,
                &self.headers,
                self.body.len(),
                close,
            );
        }
        http::write_response(
            out,
            self.status,
            &self.content_type,
            &self.headers,
            &self.body,
            close,
        );
    }
}
