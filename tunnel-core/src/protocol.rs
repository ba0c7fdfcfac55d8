//! The wire vocabulary: every message, its framing, the limits and the timeouts.
//!
//! Reading this file tells the whole protocol; `PROTOCOL.md` describes the same bytes with
//! test vectors (checked by the unit tests at the bottom of this file).
//!
//! Layers: TCP (`TCP_NODELAY`) → TLS 1.3 with ALPN [`ALPN`] → one [`Message::Hello`] from the
//! client and one [`Message::Welcome`] or [`Message::Refused`] from the relay, on the raw TLS
//! stream → yamux. On yamux, every stream starts with one header frame written by the opener
//! ([`Message::Open`], [`Message::Incoming`], [`Message::List`] or [`Message::Control`]) and
//! the acceptor's immediate answer ([`Message::Status`], [`Message::DeviceList`] or
//! [`Message::Pong`]s); after an `ok` status the stream carries raw bytes both ways.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::Token;

/// ALPN protocol id; also the major protocol version. A peer that negotiates anything else,
/// or nothing, is refused right after the TLS handshake.
pub(crate) const ALPN: &[u8] = b"tunnel/1";
/// Version byte carried in the hello; lets a relay refuse clients below its minimum.
pub(crate) const VERSION: u8 = 1;

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

/// Why the relay refused a session (the `refused` frame of the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The credential is unknown or wrong (one uniform answer for every auth failure).
    AuthFailed,
    /// The relay does not speak this protocol version.
    UnsupportedVersion,
    /// The credential may not register this device ID.
    DeviceIdDenied,
    /// Another credential holds this device ID right now.
    DeviceIdTaken,
    /// A public port was asked for and is not allowed (no range, not granted, outside the
    /// range). A port that is allowed but busy is refused as [`RefusalCode::Unavailable`].
    PublicPortDenied,
    /// The hello was malformed.
    BadRequest,
    /// The relay is shutting down or over a limit; try again later.
    Unavailable,
    /// A code this version does not know (from a newer relay).
    Other(u8),
}

impl RefusalCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::AuthFailed => 1,
            Self::UnsupportedVersion => 2,
            Self::DeviceIdDenied => 3,
            Self::DeviceIdTaken => 4,
            Self::PublicPortDenied => 5,
            Self::BadRequest => 6,
            Self::Unavailable => 7,
            Self::Other(c) => c,
        }
    }
    fn from_u8(c: u8) -> Self {
        match c {
            1 => Self::AuthFailed,
            2 => Self::UnsupportedVersion,
            3 => Self::DeviceIdDenied,
            4 => Self::DeviceIdTaken,
            5 => Self::PublicPortDenied,
            6 => Self::BadRequest,
            7 => Self::Unavailable,
            c => Self::Other(c),
        }
    }
    /// Whether retrying with the same credential and request can succeed later.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::AuthFailed
                | Self::UnsupportedVersion
                | Self::DeviceIdDenied
                | Self::PublicPortDenied
                | Self::BadRequest
        )
    }
}

/// The answer to a stream header ([`Message::Status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusCode {
    /// Accepted: raw bytes follow.
    Ok = 0,
    /// The caller's grants do not allow this (device, service).
    Denied = 1,
    /// No session is registered for this device ID.
    DeviceOffline = 2,
    /// The device did not declare this service.
    UnknownService = 3,
    /// The device could not connect to the service's local address.
    TargetRefused = 4,
    /// The header was malformed or not allowed on this kind of session.
    BadRequest = 5,
    /// A limit was hit, the device did not answer in time, or the relay is shutting down.
    Unavailable = 6,
}

impl StatusCode {
    fn from_u8(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::Ok,
            1 => Self::Denied,
            2 => Self::DeviceOffline,
            3 => Self::UnknownService,
            4 => Self::TargetRefused,
            5 => Self::BadRequest,
            6 => Self::Unavailable,
            _ => return None,
        })
    }
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
    },
    /// 0x03, relay → client: refused; the relay closes the connection after this frame.
    Refused { code: RefusalCode, message: String },
    /// 0x10, access client → relay, stream header: join me to this device's service.
    Open { device: String, service: String },
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
            Self::Incoming { .. } => "incoming",
            Self::Status { .. } => "status",
            Self::List => "list",
            Self::DeviceList(_) => "device-list",
            Self::Control => "control",
            Self::Ping(_) => "ping",
            Self::Pong(_) => "pong",
        }
    }

    /// Encodes the message as one frame (length prefix included).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut w = Writer(vec![0, 0]);
        match self {
            Self::Hello {
                version,
                role,
                token,
                device,
                services,
                public,
            } => {
                w.u8(0x01);
                w.u8(*version);
                w.u8(*role as u8);
                w.str16(token.expose())?;
                w.str8(device)?;
                w.count8(services.len())?;
                for s in services {
                    w.str8(s)?;
                }
                w.count8(public.len())?;
                for (s, port) in public {
                    w.str8(s)?;
                    w.u16(*port);
                }
            }
            Self::Welcome {
                heartbeat_ms,
                identity,
                public,
            } => {
                w.u8(0x02);
                w.0.extend_from_slice(&heartbeat_ms.to_be_bytes());
                w.str8_lossy(identity); // a display name: cut, never refused
                w.count8(public.len())?;
                for (s, port) in public {
                    w.str8(s)?;
                    w.u16(*port);
                }
            }
            Self::Refused { code, message } => {
                w.u8(0x03);
                w.u8(code.to_u8());
                w.str8_lossy(message);
            }
            Self::Open { device, service } => {
                w.u8(0x10);
                w.str8(device)?;
                w.str8(service)?;
            }
            Self::Incoming {
                service,
                caller,
                peer,
            } => {
                w.u8(0x11);
                w.str8(service)?;
                w.str8_lossy(caller);
                w.str8(peer)?;
            }
            Self::Status { code, message } => {
                w.u8(0x12);
                w.u8(*code as u8);
                w.str8_lossy(message);
            }
            Self::List => w.u8(0x13),
            Self::DeviceList(entries) => {
                w.u8(0x14);
                w.u16(u16::try_from(entries.len()).map_err(|_| FrameError::Malformed("list"))?);
                for e in entries {
                    w.str8(&e.device)?;
                    w.u8(u8::from(e.online));
                    w.count8(e.services.len())?;
                    for s in &e.services {
                        w.str8(s)?;
                    }
                }
            }
            Self::Control => w.u8(0x15),
            Self::Ping(n) => {
                w.u8(0x16);
                w.0.extend_from_slice(&n.to_be_bytes());
            }
            Self::Pong(n) => {
                w.u8(0x17);
                w.0.extend_from_slice(&n.to_be_bytes());
            }
        }
        let len = w.0.len() - 2;
        let len16 = u16::try_from(len).map_err(|_| FrameError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        })?;
        w.0[..2].copy_from_slice(&len16.to_be_bytes());
        Ok(w.0)
    }

    /// Decodes one frame body (without the length prefix).
    pub(crate) fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            0x01 => {
                let version = r.u8()?;
                let role = match r.u8()? {
                    1 => Role::Device,
                    2 => Role::Access,
                    _ => return Err(FrameError::Malformed("role")),
                };
                let token = Token::from_wire(r.str16(MAX_TOKEN_LEN)?);
                let device = r.str8()?;
                let n = r.count8()?;
                let mut services = Vec::with_capacity(n);
                for _ in 0..n {
                    services.push(r.str8()?);
                }
                let n = r.count8()?;
                let mut public = Vec::with_capacity(n);
                for _ in 0..n {
                    public.push((r.str8()?, r.u16()?));
                }
                Self::Hello {
                    version,
                    role,
                    token,
                    device,
                    services,
                    public,
                }
            }
            0x02 => {
                let heartbeat_ms = u32::from_be_bytes(r.array()?);
                let identity = r.str8()?;
                let n = r.count8()?;
                let mut public = Vec::with_capacity(n);
                for _ in 0..n {
                    public.push((r.str8()?, r.u16()?));
                }
                Self::Welcome {
                    heartbeat_ms,
                    identity,
                    public,
                }
            }
            0x03 => Self::Refused {
                code: RefusalCode::from_u8(r.u8()?),
                message: r.str8()?,
            },
            0x10 => Self::Open {
                device: r.str8()?,
                service: r.str8()?,
            },
            0x11 => Self::Incoming {
                service: r.str8()?,
                caller: r.str8()?,
                peer: r.str8()?,
            },
            0x12 => {
                let code = StatusCode::from_u8(r.u8()?).ok_or(FrameError::Malformed("status"))?;
                Self::Status {
                    code,
                    message: r.str8()?,
                }
            }
            0x13 => Self::List,
            0x14 => {
                let n = usize::from(r.u16()?);
                // Each entry takes at least 3 bytes: never trust the count for allocation.
                let mut entries = Vec::with_capacity(n.min(r.0.len() / 3));
                for _ in 0..n {
                    let device = r.str8()?;
                    let online = r.u8()? != 0;
                    let k = r.count8()?;
                    let mut services = Vec::with_capacity(k);
                    for _ in 0..k {
                        services.push(r.str8()?);
                    }
                    entries.push(DeviceEntry {
                        device,
                        online,
                        services,
                    });
                }
                Self::DeviceList(entries)
            }
            0x15 => Self::Control,
            0x16 => Self::Ping(u64::from_be_bytes(r.array()?)),
            0x17 => Self::Pong(u64::from_be_bytes(r.array()?)),
            t => return Err(FrameError::UnknownType(t)),
        };
        if !r.0.is_empty() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(msg)
    }
}

/// Reads one frame of at most `max` bytes. The length is checked before anything is
/// allocated, so a hostile length costs nothing.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> Result<Message, FrameError> {
    let len = usize::from(io.read_u16().await?);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let mut body = vec![0; len];
    io.read_exact(&mut body).await?;
    Message::decode(&body)
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    msg: &Message,
) -> Result<(), FrameError> {
    io.write_all(&msg.encode()?).await?;
    io.flush().await?;
    Ok(())
}

/// Whether `s` is a valid device or service name: 1 to 63 bytes of `A-Z a-z 0-9 . _ -`.
pub(crate) fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn count8(&mut self, n: usize) -> Result<(), FrameError> {
        self.u8(u8::try_from(n).map_err(|_| FrameError::Malformed("list too long"))?);
        Ok(())
    }
    fn str8(&mut self, s: &str) -> Result<(), FrameError> {
        self.u8(u8::try_from(s.len()).map_err(|_| FrameError::Malformed("string too long"))?);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    /// Human-readable messages are cut to fit rather than refused.
    fn str8_lossy(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let cut = &s[..end];
        self.u8(cut.len() as u8); // at most 255 by construction
        self.0.extend_from_slice(cut.as_bytes());
    }
    fn str16(&mut self, s: &str) -> Result<(), FrameError> {
        self.u16(u16::try_from(s.len()).map_err(|_| FrameError::Malformed("string too long"))?);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn count8(&mut self) -> Result<usize, FrameError> {
        let n = usize::from(self.u8()?);
        if n > MAX_SERVICES {
            return Err(FrameError::Malformed("too many items"));
        }
        Ok(n)
    }
    fn utf8(&mut self, n: usize) -> Result<String, FrameError> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::Malformed("invalid utf-8"))
    }
    fn str8(&mut self) -> Result<String, FrameError> {
        let n = usize::from(self.u8()?);
        self.utf8(n)
    }
    fn str16(&mut self, max: usize) -> Result<String, FrameError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(FrameError::Malformed("string too long"));
        }
        self.utf8(n)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The test vectors printed in PROTOCOL.md, byte for byte.
    #[test]
    fn encodings_match_protocol_md_vectors() {
        let cases: Vec<(Message, &str)> = vec![
            (
                Message::Hello {
                    version: 1,
                    role: Role::Device,
                    token: Token::from_wire("tk".into()),
                    device: "pi".into(),
                    services: vec!["ssh".into()],
                    public: vec![("ssh".into(), 20022)],
                },
                "00160101010002746b02706901037373680103737368 4e36",
            ),
            (
                Message::Hello {
                    version: 1,
                    role: Role::Access,
                    token: Token::from_wire("tk".into()),
                    device: String::new(),
                    services: vec![],
                    public: vec![],
                },
                "000a0101020002746b000000",
            ),
            (
                Message::Welcome {
                    heartbeat_ms: 5000,
                    identity: "pi".into(),
                    public: vec![],
                },
                "0009020000138802706900",
            ),
            (
                Message::Refused {
                    code: RefusalCode::AuthFailed,
                    message: "no".into(),
                },
                "00050301026e6f",
            ),
            (
                Message::Open {
                    device: "pi".into(),
                    service: "ssh".into(),
                },
                "0008100270690373 7368",
            ),
            (
                Message::Incoming {
                    service: "ssh".into(),
                    caller: "ann".into(),
                    peer: String::new(),
                },
                "000a110373736803616e6e00",
            ),
            (
                Message::Status {
                    code: StatusCode::Ok,
                    message: String::new(),
                },
                "0003120000",
            ),
            (
                Message::Status {
                    code: StatusCode::TargetRefused,
                    message: "x".into(),
                },
                "000412040178",
            ),
            (Message::List, "000113"),
            (
                Message::DeviceList(vec![DeviceEntry {
                    device: "pi".into(),
                    online: true,
                    services: vec!["ssh".into()],
                }]),
                "000c1400010270690101037373 68",
            ),
            (Message::Control, "000115"),
            (Message::Ping(7), "0009160000000000000007"),
            (Message::Pong(7), "0009170000000000000007"),
        ];
        for (msg, vector) in cases {
            let want: String = vector.split_whitespace().collect();
            let bytes = msg.encode().unwrap();
            assert_eq!(hex(&bytes), want, "{msg:?}");
            assert_eq!(Message::decode(&bytes[2..]).unwrap(), msg);
        }
    }

    #[test]
    fn every_truncation_of_a_frame_is_an_error_not_a_panic() {
        let msg = Message::Hello {
            version: 1,
            role: Role::Device,
            token: Token::from_wire("secret".into()),
            device: "pi-42".into(),
            services: vec!["ssh".into(), "web".into()],
            public: vec![("web".into(), 0)],
        };
        let bytes = msg.encode().unwrap();
        for cut in 0..bytes.len() - 2 {
            assert!(Message::decode(&bytes[2..2 + cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_types_are_refused() {
        assert!(matches!(
            Message::decode(&[0x13, 0]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            Message::decode(&[0x7f]),
            Err(FrameError::UnknownType(0x7f))
        ));
        assert!(matches!(
            Message::decode(&[]),
            Err(FrameError::Malformed(_))
        ));
        // Status with an unknown code.
        assert!(Message::decode(&[0x12, 0x99, 0]).is_err());
    }

    #[test]
    fn list_counts_above_the_cap_are_refused_before_allocating() {
        // Hello claiming 255 services in a 10-byte frame.
        let body = [0x01, 1, 1, 0, 0, 0, 0xff];
        assert!(matches!(
            Message::decode(&body),
            Err(FrameError::Malformed("too many items"))
        ));
        // Device list claiming 65535 entries with no bytes behind the count.
        assert!(Message::decode(&[0x14, 0xff, 0xff]).is_err());
    }

    #[tokio::test]
    async fn read_frame_refuses_a_length_over_the_cap_without_reading_the_body() {
        let mut input: &[u8] = &[0xff, 0xff, 0x01];
        let err = read_frame(&mut input, MAX_HELLO_LEN).await.unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLong {
                len: 65535,
                max: MAX_HELLO_LEN
            }
        ));
        assert_eq!(input, &[0x01], "the body must not be consumed");
    }

    #[tokio::test]
    async fn frames_round_trip_through_an_io_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let msg = Message::Open {
            device: "pi-42".into(),
            service: "ssh".into(),
        };
        write_frame(&mut a, &msg).await.unwrap();
        assert_eq!(read_frame(&mut b, MAX_HEADER_LEN).await.unwrap(), msg);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let msg = Message::Status {
            code: StatusCode::Denied,
            message: "é".repeat(200),
        };
        let bytes = msg.encode().unwrap();
        let Message::Status { message, .. } = Message::decode(&bytes[2..]).unwrap() else {
            panic!("not a status")
        };
        assert_eq!(message.len(), 254);
    }

    #[test]
    fn names_are_restricted_to_a_safe_alphabet() {
        for ok in ["pi-42", "ssh", "web.v2", "a_b", &"x".repeat(63)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "127.0.0.1:22", &"x".repeat(64), "é", "*"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
