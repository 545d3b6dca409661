//! Close codes (RFC 6455 §7.4) and close-frame payloads.

use super::error::ProtocolError;

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: the endpoint is going away (server shutdown, page navigation).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: a data type the endpoint cannot accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1005: no status code was present (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// 1006: closed abnormally, without a close frame (never sent on the wire).
pub const ABNORMAL: u16 = 1006;
/// 1007: payload inconsistent with the message type (invalid UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: message too big.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: unexpected server condition.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1013: try again later (server overloaded).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Whether `code` may appear in a close frame on the wire: 1000-1003,
/// 1007-1014 and the application/private range 3000-4999. Everything else
/// (0-999, 1004-1006, 1015, 1016-2999, 5000+) is invalid.
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A decoded close frame: a status code and a UTF-8 reason (at most 123 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The close code.
    pub code: u16,
    /// The reason, possibly empty.
    pub reason: &'a str,
}

/// Parse and check a close payload: empty (no code), or a valid code and a
/// UTF-8 reason. A one-byte payload or a bad code is 1002; a bad reason 1007.
pub fn parse_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseLengthOne),
        [hi, lo, rest @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(rest).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// The longest prefix of `reason` that fits a close frame (123 bytes) and
/// ends on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
