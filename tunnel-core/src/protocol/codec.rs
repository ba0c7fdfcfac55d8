//! Framing: how each [`Message`] becomes bytes and back. Every frame is a `u16` big-endian
//! length, one type byte, then the fields; `PROTOCOL.md` prints the same bytes as test
//! vectors, checked by the unit tests at the bottom of this file.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::status::{RefusalCode, StatusCode};
use super::{
    DeviceEntry, Forward, FrameError, MAX_FRAME_LEN, MAX_SERVICES, MAX_TOKEN_LEN, Message, Role,
    WireLimits,
};
use crate::auth::Token;

impl Message {
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
                limits,
                public_failed,
            } => {
                w.u8(0x02);
                w.0.extend_from_slice(&heartbeat_ms.to_be_bytes());
                w.str8_lossy(identity); // a display name: cut, never refused
                w.count8(public.len())?;
                for (s, port) in public {
                    w.str8(s)?;
                    w.u16(*port);
                }
                // Version 2 appends the limits; a version 1 welcome ends here.
                if let Some(l) = limits {
                    w.u16(l.max_streams);
                    w.0.extend_from_slice(&l.receive_window.to_be_bytes());
                    w.count8(public_failed.len())?;
                    for (service, why) in public_failed {
                        w.str8(service)?;
                        w.str8_lossy(why);
                    }
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
            Self::Forward(Forward {
                device,
                service,
                principal,
                caller,
                origin,
            }) => {
                w.u8(0x18);
                w.str8(device)?;
                w.str8(service)?;
                w.str8(principal)?;
                w.str8(caller)?;
                w.str8(origin)?;
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
                w.u8(code.to_u8());
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
                let mut public_failed = Vec::new();
                let limits = if r.0.is_empty() {
                    None
                } else {
                    let limits = WireLimits {
                        max_streams: r.u16()?,
                        receive_window: u32::from_be_bytes(r.array()?),
                    };
                    let n = r.count8()?;
                    public_failed.reserve(n);
                    for _ in 0..n {
                        public_failed.push((r.str8()?, r.str8()?));
                    }
                    Some(limits)
                };
                Self::Welcome {
                    heartbeat_ms,
                    identity,
                    public,
                    limits,
                    public_failed,
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
            0x18 => Self::Forward(Forward {
                device: r.str8()?,
                service: r.str8()?,
                principal: r.str8()?,
                caller: r.str8()?,
                origin: r.str8()?,
            }),
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

/// Reads one frame across polls without ever reading past its end, so the bytes after it
/// (a stream's early data, or its payload after the answer) stay for the next reader.
/// [`read_frame`] as a poll function, for a reader that must wait on something else too.
#[derive(Debug)]
pub(crate) struct FrameReader {
    max: usize,
    /// The length prefix, then the body once the length is known.
    buf: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    /// A reader of one frame of at most `max` bytes (after the length prefix).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            buf: vec![0; 2],
            filled: 0,
        }
    }

    /// Reads on until the frame is complete; an end of stream before that is an error.
    pub(crate) fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<Result<Message, FrameError>> {
        loop {
            if self.filled == self.buf.len() {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() == 2 && len > 0 {
                    if len > self.max {
                        return Poll::Ready(Err(FrameError::TooLong { len, max: self.max }));
                    }
                    self.buf.resize(2 + len, 0);
                    continue;
                }
                return Poll::Ready(Message::decode(&self.buf[2..]));
            }
            let mut rb = ReadBuf::new(&mut self.buf[self.filled..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                let eof = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended before its answer",
                );
                return Poll::Ready(Err(eof.into()));
            }
            self.filled += rb.filled().len();
        }
    }
}

/// Writes a stream's answer ([`Message::Status`]) and flushes it.
pub(crate) async fn write_status<W: AsyncWrite + Unpin>(
    io: &mut W,
    code: StatusCode,
    message: &str,
) -> Result<(), FrameError> {
    let msg = Message::Status {
        code,
        message: message.to_owned(),
    };
    write_frame(io, &msg).await
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
mod tests {
    use super::*;
    use crate::protocol::{MAX_HEADER_LEN, MAX_HELLO_LEN};

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
                    limits: None,
                    public_failed: vec![],
                },
                "0009020000138802706900",
            ),
            (
                Message::Welcome {
                    heartbeat_ms: 5000,
                    identity: "pi".into(),
                    public: vec![],
                    limits: Some(WireLimits {
                        max_streams: 128,
                        receive_window: 64 << 20,
                    }),
                    public_failed: vec![("web".into(), "busy".into())],
                },
                "0019020000138802706900 0080 04000000 01 03776562 0462757379",
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
                Message::Forward(Forward {
                    device: "pi".into(),
                    service: "ssh".into(),
                    principal: "token:a".into(),
                    caller: "a".into(),
                    origin: "r1".into(),
                }),
                "0015 18 027069 03737368 07746f6b656e3a61 0161 027231",
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
            (
                Message::Status {
                    code: StatusCode::Denied,
                    message: "no".into(),
                },
                "00051201026e6f",
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
    async fn frame_reader_stops_at_the_frame_end_and_leaves_early_data_unread() {
        let status = Message::Status {
            code: StatusCode::Ok,
            message: "fine".into(),
        };
        let mut wire = status.encode().unwrap();
        wire.extend_from_slice(b"early bytes");
        // One byte per read: the reader must carry its state across polls.
        let mut input = one_byte_reads(&wire);
        let mut reader = FrameReader::new(MAX_HEADER_LEN);
        let got = std::future::poll_fn(|cx| reader.poll_read(cx, &mut input))
            .await
            .unwrap();
        assert_eq!(got, status);
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"early bytes");
    }

    /// PROTOCOL.md's early-data vector: an acceptor reads the `Open` and leaves `hi`.
    #[tokio::test]
    async fn an_open_with_early_data_reads_as_the_header_then_the_data() {
        let wire: Vec<u8> = "000810027069037373686869"
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect();
        let mut input: &[u8] = &wire;
        let header = read_frame(&mut input, MAX_HEADER_LEN).await.unwrap();
        assert_eq!(
            header,
            Message::Open {
                device: "pi".into(),
                service: "ssh".into()
            }
        );
        assert_eq!(input, b"hi");
    }

    #[tokio::test]
    async fn frame_reader_refuses_an_oversized_length_and_a_truncated_frame() {
        let mut input: &[u8] = &[0xff, 0xff, 0x01];
        let mut reader = FrameReader::new(MAX_HEADER_LEN);
        let err = std::future::poll_fn(|cx| reader.poll_read(cx, &mut input))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLong { len: 65535, .. }));
        let mut input: &[u8] = &[0x00, 0x05, 0x07];
        let mut reader = FrameReader::new(MAX_HEADER_LEN);
        let err = std::future::poll_fn(|cx| reader.poll_read(cx, &mut input))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof));
    }

    /// A reader that hands out `data` one byte per read.
    fn one_byte_reads(data: &[u8]) -> OneByte {
        OneByte(data.to_vec().into())
    }

    struct OneByte(std::collections::VecDeque<u8>);

    impl AsyncRead for OneByte {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(b) = self.0.pop_front() {
                buf.put_slice(&[b]);
            }
            Poll::Ready(Ok(()))
        }
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
}
