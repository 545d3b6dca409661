//! Incremental UTF-8 validation across frames and fragments.
//!
//! Fails as soon as a prefix can no longer be the start of valid UTF-8
//! (e.g. `F4 90`, or an overlong lead), not only at the end of the message.
//! The bulk of each chunk is checked by the standard library's validator;
//! only a code point split across chunks (at most 3 bytes) is carried over.

/// The state of a text message being validated chunk by chunk (5 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    len: u8,
}

/// The input is not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Byte width of the sequence a valid lead byte starts.
#[inline]
fn width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            pending: [0; 4],
            len: 0,
        }
    }

    /// Whether a code point is split at the current position.
    pub fn is_pending(&self) -> bool {
        self.len != 0
    }

    /// Check the next chunk of the message.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.len > 0 {
            let have = self.len as usize;
            let need = width(self.pending[0]) - have;
            let take = need.min(chunk.len());
            self.pending[have..have + take].copy_from_slice(&chunk[..take]);
            let total = have + take;
            chunk = &chunk[take..];
            match std::str::from_utf8(&self.pending[..total]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix: the chunk ended inside the code point.
                    self.len = total as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error),
                None => {
                    let tail = &chunk[e.valid_up_to()..];
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// The message ended: valid only if no code point is left unfinished.
    /// Resets the validator for the next message.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let pending = self.len;
        self.len = 0;
        if pending == 0 {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Forget any state (start of a new message).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let expect = std::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..a]).is_ok()
                    && v.feed(&bytes[a..b]).is_ok()
                    && v.feed(&bytes[b..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, expect, "{bytes:x?} split at {a},{b}");
            }
        }
        expect
    }

    #[test]
    fn valid_and_invalid_in_every_split() {
        assert!(check_all_splits("κόσμε €𝄞 a".as_bytes()));
        assert!(!check_all_splits(
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"
        ));
        assert!(!check_all_splits(b"ab\xf4\x90\x80\x80"));
        assert!(!check_all_splits(b"\xc0\xaf"));
        assert!(!check_all_splits(b"abc\xe2\x82"));
        assert!(!check_all_splits(b"\x80"));
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut v = Utf8Validator::new();
        // F4 90 can never start a valid sequence (> U+10FFFF): fail at once.
        assert!(v.feed(b"hello\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"hello\xed\xa0"), Err(Utf8Error)); // surrogate
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xff"), Err(Utf8Error));
    }

    #[test]
    fn unfinished_code_point_fails_at_finish() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xe2\x82").is_ok());
        assert!(v.is_pending());
        assert_eq!(v.finish(), Err(Utf8Error));
        assert!(!v.is_pending());
    }
}
