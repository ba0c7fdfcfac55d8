//! The yamux wire vocabulary (the spec at github.com/hashicorp/yamux, `spec.md`): a 12-byte
//! header, four frame types, four flags. Only data frames carry a body; in the others the
//! length field is a value (a window increment, a ping's opaque value, a GoAway code).

/// Bytes in a frame header: version, type, flags (u16), stream ID (u32), length (u32), big
/// endian.
pub(crate) const HEADER_LEN: usize = 12;
/// The only protocol version the spec defines.
const VERSION: u8 = 0;
/// Every stream starts with this receive window in both directions (the spec's fixed
/// initial value); a larger one is granted with a window update.
pub(crate) const INITIAL_WINDOW: u32 = 256 * 1024;

/// Opens a stream (on its first data or window update frame).
pub(crate) const SYN: u16 = 1;
/// Acknowledges a stream the peer opened (or answers a ping).
pub(crate) const ACK: u16 = 2;
/// Half-closes the sender's side of a stream.
pub(crate) const FIN: u16 = 4;
/// Resets a stream at once.
pub(crate) const RST: u16 = 8;

/// GoAway codes.
pub(crate) const GO_AWAY_NORMAL: u32 = 0;
pub(crate) const GO_AWAY_PROTOCOL_ERROR: u32 = 1;

/// The four frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Stream bytes; the length is the body's.
    Data = 0,
    /// Grants the peer `length` more bytes of send window on a stream.
    WindowUpdate = 1,
    /// Liveness: a SYN ping is answered by an ACK ping with the same opaque value.
    Ping = 2,
    /// The sender takes no new streams and is closing the session; the length is a code.
    GoAway = 3,
}

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) flags: u16,
    pub(crate) stream: u32,
    pub(crate) length: u32,
}

/// A header this implementation cannot read: the session ends with a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("unsupported yamux version {0}")]
    Version(u8),
    #[error("unknown yamux frame type {0}")]
    Kind(u8),
}

impl Header {
    pub(crate) fn new(kind: Kind, flags: u16, stream: u32, length: u32) -> Self {
        Self {
            kind,
            flags,
            stream,
            length,
        }
    }

    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        if bytes[0] != VERSION {
            return Err(HeaderError::Version(bytes[0]));
        }
        let kind = match bytes[1] {
            0 => Kind::Data,
            1 => Kind::WindowUpdate,
            2 => Kind::Ping,
            3 => Kind::GoAway,
            other => return Err(HeaderError::Kind(other)),
        };
        let [_, _, f0, f1, s0, s1, s2, s3, l0, l1, l2, l3] = *bytes;
        Ok(Self {
            kind,
            flags: u16::from_be_bytes([f0, f1]),
            stream: u32::from_be_bytes([s0, s1, s2, s3]),
            length: u32::from_be_bytes([l0, l1, l2, l3]),
        })
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.kind as u8;
        out[2..4].copy_from_slice(&self.flags.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_in_the_specs_byte_order() {
        let h = Header::new(Kind::WindowUpdate, SYN | ACK, 0x0102_0304, 0x0a0b_0c0d);
        let bytes = h.encode();
        assert_eq!(bytes, [0, 1, 0, 3, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(Header::decode(&bytes), Ok(h));
    }

    #[test]
    fn an_unknown_version_or_type_is_refused() {
        let mut bytes = Header::new(Kind::Data, 0, 1, 0).encode();
        bytes[0] = 1;
        assert_eq!(Header::decode(&bytes), Err(HeaderError::Version(1)));
        bytes[0] = 0;
        bytes[1] = 4;
        assert_eq!(Header::decode(&bytes), Err(HeaderError::Kind(4)));
    }
}
