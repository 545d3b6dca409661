//! Formats: how a publication's frame is built from its data.
//!
//! A publication travels as data (the application's bytes) with a
//! [`Format`] naming the function that wraps it in a WebSocket frame for a
//! given channel, sequence number and epoch. The broker calls it once per
//! publication (per node, with Redis: every node builds its own frame from
//! the same data), never per recipient. Formats 0–15 are the server's own;
//! applications register theirs (16–255) once at start, before publishing.

use std::sync::OnceLock;

use super::{Encoded, Epoch};
use crate::server::Frame;

/// What a format's function is given.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The publication's sequence number in the channel.
    pub seq: u64,
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The application's data.
    pub data: &'a [u8],
}

/// Builds the frame of a publication.
pub type EncodeFn = fn(&Meta<'_>) -> Encoded;

/// The name of an [`EncodeFn`], small enough to travel with the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format(pub u8);

static TABLE: [OnceLock<EncodeFn>; 256] = [const { OnceLock::new() }; 256];

fn frame(m: &Meta<'_>) -> Encoded {
    Encoded::whole(Frame::from_encoded(std::sync::Arc::from(m.data)))
}

fn text(m: &Meta<'_>) -> Encoded {
    Encoded::whole(Frame::text(&String::from_utf8_lossy(m.data)))
}

fn binary(m: &Meta<'_>) -> Encoded {
    Encoded::whole(Frame::binary(m.data))
}

impl Format {
    /// The data is a complete encoded frame, sent as it is.
    pub const FRAME: Format = Format(0);
    /// The data is the payload of a text message.
    pub const TEXT: Format = Format(1);
    /// The data is the payload of a binary message.
    pub const BINARY: Format = Format(2);
    /// The first number applications may [`register`](Format::register).
    pub const FIRST_CUSTOM: u8 = 16;

    /// Register `f` under this format (once per process; a second
    /// registration of the same function is harmless, of another one is
    /// refused with `false`).
    pub fn register(self, f: EncodeFn) -> bool {
        let slot = &TABLE[self.0 as usize];
        let set = *slot.get_or_init(|| f);
        std::ptr::fn_addr_eq(set, f)
    }

    /// Whether a function is registered under this format.
    pub fn is_known(self) -> bool {
        self.function().is_some()
    }

    fn function(self) -> Option<EncodeFn> {
        match self {
            Format::FRAME => Some(frame),
            Format::TEXT => Some(text),
            Format::BINARY => Some(binary),
            Format(n) => TABLE[n as usize].get().copied(),
        }
    }

    /// The frame for `m` (an unregistered format sends the data as binary).
    pub fn encode(self, m: &Meta<'_>) -> Encoded {
        match self.function() {
            Some(f) => f(m),
            None => binary(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shout(m: &Meta<'_>) -> Encoded {
        Encoded::whole(Frame::text(&format!("{}:{}", m.channel, m.seq)))
    }

    fn other(m: &Meta<'_>) -> Encoded {
        binary(m)
    }

    #[test]
    fn builtin_and_registered_formats_build_frames() {
        let m = Meta {
            channel: "c",
            seq: 7,
            epoch: Epoch(1),
            data: b"hi",
        };
        let e = Format::TEXT.encode(&m);
        assert_eq!(e.frame.bytes(), Frame::text("hi").bytes());
        let raw = Frame::binary(b"xyz");
        let m2 = Meta {
            data: raw.bytes(),
            ..m
        };
        assert_eq!(Format::FRAME.encode(&m2).frame, raw);
        let f = Format(200);
        assert!(!f.is_known());
        assert!(f.register(shout));
        assert!(f.register(shout), "the same function again is fine");
        assert!(!f.register(other), "another function is refused");
        assert_eq!(f.encode(&m).frame.bytes(), Frame::text("c:7").bytes());
    }
}
