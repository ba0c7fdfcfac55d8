//! The wire vocabulary: every message, the limits and the timeouts. Reading this module tells
//! the whole protocol; `PROTOCOL.md` describes the same bytes with test vectors.
//!
//! - [`codec`]: how a message becomes a frame and back.
//! - [`status`]: the one status table (wire code → Rust error → Python exception).
//! - [`validate`]: the name rules and the device declaration checks both ends share.
//!
//! Layers: TCP (`TCP_NODELAY`) → TLS 1.3 with ALPN [`ALPN_V2`] (or [`ALPN_V1`]) → one
//! [`Message::Hello`] from the client and one [`Message::Welcome`] or [`Message::Refused`]
//! from the relay, on the raw TLS stream → yamux. On yamux, every stream starts with one
//! header frame written by the opener ([`Message::Open`], [`Message::Incoming`],
//! [`Message::List`] or [`Message::Control`]) and the acceptor's immediate answer
//! ([`Message::Status`], [`Message::DeviceList`] or [`Message::Pong`]s); after an `ok` status
//! the stream carries raw bytes both ways.

mod codec;
pub(crate) mod status;
pub(crate) mod validate;

use std::time::Duration;

use crate::auth::Token;

pub(crate) use codec::{FrameReader, read_frame, write_frame, write_status};
pub(crate) use status::{ErrorKind, RefusalCode, StatusCode};
pub(crate) use validate::is_valid_name;

/// ALPN id of protocol version 2: as version 1, and the relay's welcome announces the
/// session limits ([`WireLimits`]) the client must use. Offered first by clients and
/// preferred by the relay.
pub(crate) const ALPN_V2: &[u8] = b"tunnel/2";
/// ALPN id of protocol version 1 (no limits in the welcome), still spoken both ways so that
/// old clients reach new relays and new clients reach old relays. A peer that negotiates
/// anything else, or nothing, is refused right after the TLS handshake.
pub(crate) const ALPN_V1: &[u8] = b"tunnel/1";
/// Every ALPN id this build speaks, most preferred first.
pub(crate) const ALPN_ALL: [&[u8]; 2] = [ALPN_V2, ALPN_V1];

/// The protocol version a negotiated ALPN id stands for; the hello carries the same number.
pub(crate) fn version_of(alpn: Option<&[u8]>) -> Option<u8> {
    match alpn {
        Some(ALPN_V2) => Some(2),
        Some(ALPN_V1) => Some(1),
        _ => None,
    }
}

/// Largest frame accepted before authentication: the hello is small, and an
/// unauthenticated peer must not make the relay allocate more than this.
pub(crate) const MAX_HELLO_LEN: usize = 4096;
/// Largest per-stream header (open, incoming, status, ping): names are short.
pub(crate) const MAX_HEADER_LEN: usize = 1024;
/// Largest frame of all (the device list); the u16 length prefix cannot say more.
pub(crate) const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// Longest device or service name: fits a DNS label, prints on one line.
pub(crate) const MAX_NAME_LEN: usize = 63;
/// Longest token accepted on the wire; real tokens are 68 bytes.
pub(crate) const MAX_TOKEN_LEN: usize = 1024;
/// Most services one device may declare, and most public ports it may ask for.
pub(crate) const MAX_SERVICES: usize = 64;

/// Deadline for TCP connect + TLS handshake + hello/welcome, on both ends: a peer that is
/// slower than this is gone or hostile (slowloris).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a stream's header and for the answer to it; covers the device's connect to
/// its local target, which has its own shorter [`TARGET_CONNECT_TIMEOUT`].
pub(crate) const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for the device's TCP connect to a local service (`127.0.0.1:22`): a LAN host that
/// does not answer in this time is reported as `target refused`.
pub(crate) const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is connecting, declared in the hello; the credential decides whether it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A device: registers a device ID and accepts streams.
    Device = 1,
    /// An access client: opens streams to devices and lists them.
    Access = 2,
}

/// Session limits both ends of a yamux session must agree on, announced by the relay in its
/// welcome (version 2): yamux ends a whole session whose peer opens more streams than its
/// own limit, so the client takes the relay's numbers instead of configuring its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireLimits {
    /// Most concurrent streams on the session.
    pub(crate) max_streams: u16,
    /// Most bytes buffered for reading across the session's streams.
    pub(crate) receive_window: u32,
}

/// The fields of a [`Message::Forward`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forward {
    pub(crate) device: String,
    pub(crate) service: String,
    /// The caller's principal (`token:alice`), resolved by the receiving relay.
    pub(crate) principal: String,
    /// The caller's identity name, for the device and the logs.
    pub(crate) caller: String,
    /// The sending relay's ID, for the audit trail.
    pub(crate) origin: String,
}

/// One device in a [`Message::DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceEntry {
    pub(crate) device: String,
    pub(crate) online: bool,
    pub(crate) services: Vec<String>,
}

/// Every message of the protocol. Each travels as one frame: `u16` big-endian length of what
/// follows, one type byte, then the fields. Strings are `u8` length + UTF-8 (`u16` length for
/// the token), lists are a count then the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// 0x01, client → relay, first frame on the TLS stream: who I am and what I want.
    Hello {
        version: u8,
        role: Role,
        /// Bearer token; empty when the credential is the TLS client certificate.
        /// A [`Token`] so that `Debug` output of a message never shows it.
        token: Token,
        /// Device role: the device ID to register. Access role: empty.
        device: String,
        /// Device role: the service names it offers.
        services: Vec<String>,
        /// Device role: `(service, port)` to publish on the relay; port 0 = any allowed.
        public: Vec<(String, u16)>,
    },
    /// 0x02, relay → client: accepted; yamux starts right after this frame.
    Welcome {
        /// How often the client must send a ping on its control stream, in milliseconds.
        heartbeat_ms: u32,
        /// The identity name the credential mapped to.
        identity: String,
        /// Public ports actually bound: `(service, port)`.
        public: Vec<(String, u16)>,
        /// Version 2 only: the session limits the client must use. Absent in version 1,
        /// where both ends fall back to their configured [`Limits`](crate::Limits).
        limits: Option<WireLimits>,
        /// Version 2 only (encoded after `limits`, and only with it): public ports asked
        /// for and left out, `(service, why)`; the session goes on without them.
        public_failed: Vec<(String, String)>,
    },
    /// 0x03, relay → client: refused; the relay closes the connection after this frame.
    Refused { code: RefusalCode, message: String },
    /// 0x10, access client → relay, stream header: join me to this device's service.
    Open { device: String, service: String },
    /// 0x18, relay → relay, stream header (cluster): join this caller, whom the sending
    /// relay authenticated, to this device's service. Accepted only on a session of a
    /// [relay peer](crate::Identity::relay_peer); the receiving relay checks `principal`'s
    /// own grants and serves only devices it holds itself (never forwards again).
    Forward(Forward),
    /// 0x11, relay → device, stream header: a caller wants this service.
    Incoming {
        service: String,
        /// Identity name of the caller, or `public` for a public-port connection.
        caller: String,
        /// Remote address of a public-port connection; empty for private access.
        peer: String,
    },
    /// 0x12, acceptor → opener: the answer to `Open`/`Incoming`/`List`/`Control`.
    Status { code: StatusCode, message: String },
    /// 0x13, access client → relay, stream header: which devices may I reach?
    List,
    /// 0x14, relay → access client: the answer to `List`.
    DeviceList(Vec<DeviceEntry>),
    /// 0x15, client → relay, stream header: this stream carries heartbeats.
    Control,
    /// 0x16, client → relay on the control stream.
    Ping(u64),
    /// 0x17, relay → client on the control stream: echoes the ping's nonce.
    Pong(u64),
}

/// A frame that could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Message {
    /// Short name for logs and errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Welcome { .. } => "welcome",
            Self::Refused { .. } => "refused",
            Self::Open { .. } => "open",
            Self::Forward(_) => "forward",
            Self::Incoming { .. } => "incoming",
            Self::Status { .. } => "status",
            Self::List => "list",
            Self::DeviceList(_) => "device-list",
            Self::Control => "control",
            Self::Ping(_) => "ping",
            Self::Pong(_) => "pong",
        }
    }
}

#[cfg(test)]
mod proptests;
