//! The state of one yamux session, without I/O: the stream table with its windows and read
//! buffers, and the frames waiting to be written. Stream handles call into it under the
//! session's lock (read, write, shut down, drop); the driver feeds it the bytes it reads
//! ([`Conn::input`]) and writes out what it queued ([`Conn::out`]).
//!
//! Stream bytes are copied once on each side: from the read buffer into the stream's own
//! buffer (so a stream that does not read pins nothing but its window), and from the
//! writer straight into the frame queue that the driver hands to TLS. No frame allocates.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Context, Poll, Waker};

use tokio::io::ReadBuf;

use super::frame::{
    ACK, FIN, GO_AWAY_NORMAL, HEADER_LEN, Header, HeaderError, INITIAL_WINDOW, Kind, RST, SYN,
};

/// Largest data frame body we send: header and body fill one 16 KiB TLS record.
pub(crate) const SPLIT_SEND_SIZE: usize = 16 * 1024 - HEADER_LEN;
/// Frames queued for the driver past which writers wait: enough for the driver to hand TLS
/// eight full records per round, small enough that a keystroke queued behind a bulk
/// transfer leaves within a few hundred microseconds.
pub(crate) const OUT_LIMIT: usize = 128 * 1024;
/// Queued control frames (window updates, ping answers, resets) past which the session is
/// ended: only a peer that sends pings or opens streams without ever reading our answers
/// gets here, since stream data stops at [`OUT_LIMIT`].
pub(crate) const OUT_HARD_LIMIT: usize = OUT_LIMIT + 1024 * 1024;
/// Outbound streams the peer has not acknowledged yet past which opens wait (the spec's
/// suggested backlog). We acknowledge a peer's stream when the application accepts it
/// ([`Conn::acknowledge`]), not when it arrives: so a peer that opens faster than we
/// accept waits here, instead of overflowing our accept queue of the same size, which
/// resets what does not fit.
pub(crate) const ACK_BACKLOG: usize = 256;
/// Largest per-stream receive window we grant, whatever the configured session window.
pub(crate) const MAX_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// A stream's read buffer is freed when a read empties it and it is larger than this: an
/// idle stream after a transfer holds no buffer, a chatty one keeps a small one.
const KEEP_RECV_BUFFER: usize = 4 * 1024;
/// A stream's read buffer starts at this size when a large frame arrives (bulk data), so
/// that it rarely grows (each growth copies what it holds); freeing it when a read empties
/// it and allocating it again costs far less than the copies.
const BULK_RECV_BUFFER: usize = 64 * 1024;

/// Which stream IDs this end opens: the spec gives odd ones to the client (the end that
/// dialled the connection) and even ones to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// How a session ended, for the streams still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Closed in order (GoAway, end of file): streams that read their FIN still end
    /// cleanly; every other read or write fails.
    Clean,
    /// Lost (I/O error, protocol error, local close): every stream fails.
    Lost,
}

/// Why [`Conn::open`] could not open a stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFail {
    /// [`ACK_BACKLOG`] streams are waiting for the peer's acknowledgement: try again later.
    Backlog,
    /// The session holds as many streams as its limit.
    TooMany,
    /// The session is over, the peer sent GoAway, or the stream IDs ran out.
    Closed,
}

/// The peer broke the protocol: the session ends with a GoAway carrying the error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("a {0:?} frame on stream 0")]
    StreamZero(Kind),
    #[error("stream {0} opened twice")]
    Reopened(u32),
    #[error("stream {0} opened with this end's ID parity")]
    WrongParity(u32),
    #[error("a data frame of {length} bytes on stream {stream}, over its receive window")]
    OverWindow { stream: u32, length: u32 },
    #[error("data on stream {0} after its FIN")]
    AfterFin(u32),
    #[error("the peer does not read: over {OUT_HARD_LIMIT} bytes of frames queued for it")]
    NotReading,
}

/// One open stream, from its handle's creation to its drop.
#[derive(Debug, Default)]
struct Slot {
    /// Bytes received and not read yet; at most the window we granted. A ring: appending
    /// and reading never move what is already there.
    recv: VecDeque<u8>,
    /// Bytes the peer may still send before our next window update.
    recv_window: u32,
    /// Bytes read since our last window update.
    consumed: u32,
    /// Bytes handed out by [`Conn::take`] and not released yet.
    taken: u32,
    /// Bytes we may still send.
    send_window: u32,
    /// Opened here and not announced yet: the first frame carries SYN.
    syn_pending: bool,
    /// Opened here and not acknowledged by the peer yet (counts in [`Conn::unacked`]).
    unacked: bool,
    /// Opened by the peer and not acknowledged yet: the application has not accepted it.
    ack_pending: bool,
    /// We sent FIN.
    local_fin: bool,
    /// The peer sent FIN: reads end once `recv` is drained.
    remote_fin: bool,
    /// The peer reset the stream.
    reset: bool,
    /// A writer waits for room in the frame queue (counts in [`Conn::room_waiters`]).
    wants_room: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// What [`Conn::input`] took from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// Bytes of complete frames consumed from the front.
    pub(crate) consumed: usize,
    /// Bytes the next (incomplete) frame needs in all, header included.
    pub(crate) need: usize,
}

/// The session's state: see the module docs.
#[derive(Debug)]
pub(crate) struct Conn {
    side: Side,
    /// The receive window each stream gets.
    window: u32,
    /// Most streams open at once, both directions together.
    max_streams: usize,
    streams: HashMap<u32, Slot>,
    /// The next ID to open; `None` once they ran out.
    next_id: Option<u32>,
    unacked: usize,
    room_waiters: usize,
    /// Frames for the driver to write, in order.
    pub(crate) out: Vec<u8>,
    /// Tasks to wake once the lock is released.
    pub(crate) wake: Vec<Waker>,
    /// An acknowledgement arrived or a backlog slot freed: waiting opens may retry.
    pub(crate) backlog_moved: bool,
    /// The peer sent GoAway: it takes no new streams.
    go_away: bool,
    end: Option<End>,
}

impl Conn {
    pub(crate) fn new(side: Side, window: u32, max_streams: usize) -> Self {
        Self {
            side,
            window: window.clamp(INITIAL_WINDOW, MAX_STREAM_WINDOW),
            max_streams,
            streams: HashMap::new(),
            next_id: Some(match side {
                Side::Client => 1,
                Side::Server => 2,
            }),
            unacked: 0,
            room_waiters: 0,
            out: Vec::new(),
            wake: Vec::new(),
            backlog_moved: false,
            go_away: false,
            end: None,
        }
    }

    fn push(&mut self, header: Header, body: &[u8]) {
        self.out.extend_from_slice(&header.encode());
        self.out.extend_from_slice(body);
    }

    /// Opens a stream; the peer learns of it with the stream's first frame.
    pub(crate) fn open(&mut self) -> Result<u32, OpenFail> {
        if self.refuses_opens() {
            return Err(OpenFail::Closed);
        }
        if self.unacked >= ACK_BACKLOG {
            return Err(OpenFail::Backlog);
        }
        if self.streams.len() >= self.max_streams {
            return Err(OpenFail::TooMany);
        }
        let id = self.next_id.ok_or(OpenFail::Closed)?;
        self.next_id = id.checked_add(2);
        self.unacked += 1;
        self.streams.insert(
            id,
            Slot {
                recv_window: self.window,
                send_window: INITIAL_WINDOW,
                syn_pending: true,
                unacked: true,
                ..Slot::default()
            },
        );
        Ok(id)
    }

    /// The flags a stream's next frame carries: SYN on its first one, after which a window
    /// larger than the spec's initial one is granted.
    fn announce(&mut self, id: u32) -> u16 {
        let Some(slot) = self.streams.get_mut(&id) else {
            return 0;
        };
        if !std::mem::take(&mut slot.syn_pending) {
            return 0;
        }
        let extra = self.window - INITIAL_WINDOW;
        if extra > 0 {
            self.push(Header::new(Kind::WindowUpdate, SYN, id, extra), &[]);
            0
        } else {
            SYN
        }
    }

    /// Reads from a stream's buffer; see [`super::RawStream`] for what each end means.
    pub(crate) fn read(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(slot) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(lost()));
        };
        if !slot.recv.is_empty() {
            let n = buf.remaining().min(slot.recv.len());
            let (front, back) = slot.recv.as_slices();
            let from_front = n.min(front.len());
            buf.put_slice(&front[..from_front]);
            buf.put_slice(&back[..n - from_front]);
            slot.recv.drain(..n);
            if slot.recv.is_empty() && slot.recv.capacity() > KEEP_RECV_BUFFER {
                slot.recv = VecDeque::new();
            }
            // n <= the window, a u32.
            slot.consumed += n as u32;
            self.grant(id);
            return Poll::Ready(Ok(()));
        }
        if slot.remote_fin || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if slot.reset {
            return Poll::Ready(Err(reset()));
        }
        if self.end.is_some() {
            return Poll::Ready(Err(lost()));
        }
        register(&mut slot.reader, cx);
        Poll::Pending
    }

    /// Grants the peer the window a stream's reader freed, once it is a quarter of the
    /// window (a window update per read would double the frames of a bulk transfer).
    fn grant(&mut self, id: u32) {
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        if slot.consumed >= self.window / 4 && !slot.remote_fin && !slot.reset && self.end.is_none()
        {
            let delta = std::mem::take(&mut slot.consumed);
            slot.recv_window += delta;
            self.push(Header::new(Kind::WindowUpdate, 0, id, delta), &[]);
        }
    }

    /// Hands a stream's buffered bytes over whole: swaps its buffer with `into` (which
    /// must be empty), so no byte is copied. The peer gets that window back only as
    /// [`Conn::release`] reports the bytes delivered. `Ready(Ok)` with `into` still empty
    /// is the end of the stream; the errors are [`Conn::read`]'s.
    pub(crate) fn take(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        into: &mut VecDeque<u8>,
    ) -> Poll<io::Result<()>> {
        debug_assert!(into.is_empty());
        let Some(slot) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(lost()));
        };
        if !slot.recv.is_empty() {
            // recv.len() <= the window, a u32.
            slot.taken += slot.recv.len() as u32;
            std::mem::swap(&mut slot.recv, into);
            return Poll::Ready(Ok(()));
        }
        // Nothing to take: the stream is quiet, so it keeps no large buffer.
        if slot.recv.capacity() > KEEP_RECV_BUFFER {
            slot.recv = VecDeque::new();
        }
        if slot.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if slot.reset {
            return Poll::Ready(Err(reset()));
        }
        if self.end.is_some() {
            return Poll::Ready(Err(lost()));
        }
        register(&mut slot.reader, cx);
        Poll::Pending
    }

    /// `n` bytes from [`Conn::take`] were delivered: their window goes back to the peer.
    pub(crate) fn release(&mut self, id: u32, n: usize) {
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(slot.taken);
        slot.taken -= n;
        slot.consumed += n;
        self.grant(id);
    }

    /// Queues as much of `data` as the stream's send window and the frame queue take.
    pub(crate) fn write(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writable(id)?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.wait_for_window(id, cx) || self.wait_for_room(id, cx) {
            return Poll::Pending;
        }
        let mut written = 0;
        while written < data.len() && self.out.len() < OUT_LIMIT {
            let flags = self.announce(id);
            let Some(slot) = self.streams.get_mut(&id) else {
                break;
            };
            // `send_window` is a u32, so `n` fits one.
            let n = (data.len() - written)
                .min(slot.send_window as usize)
                .min(SPLIT_SEND_SIZE);
            if n == 0 {
                break;
            }
            slot.send_window -= n as u32;
            self.push(
                Header::new(Kind::Data, flags, id, n as u32),
                &data[written..written + n],
            );
            written += n;
        }
        Poll::Ready(Ok(written))
    }

    /// Whether the stream may still be written to.
    fn writable(&self, id: u32) -> io::Result<()> {
        let Some(slot) = self.streams.get(&id) else {
            return Err(lost());
        };
        if slot.reset {
            return Err(reset());
        }
        if self.end.is_some() {
            return Err(lost());
        }
        if slot.local_fin {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the stream was shut down",
            ));
        }
        Ok(())
    }

    /// True (and the writer registered) if the stream's send window is spent.
    fn wait_for_window(&mut self, id: u32, cx: &Context<'_>) -> bool {
        match self.streams.get_mut(&id) {
            Some(slot) if slot.send_window == 0 => {
                register(&mut slot.writer, cx);
                true
            }
            _ => false,
        }
    }

    /// True (and the writer registered) if the frame queue is full.
    fn wait_for_room(&mut self, id: u32, cx: &Context<'_>) -> bool {
        if self.out.len() < OUT_LIMIT {
            return false;
        }
        if let Some(slot) = self.streams.get_mut(&id) {
            register(&mut slot.writer, cx);
            if !std::mem::replace(&mut slot.wants_room, true) {
                self.room_waiters += 1;
            }
        }
        true
    }

    /// Takes up to `max` bytes of the stream's send window for one frame, which the caller
    /// fills and queues with [`Conn::submit`]: so a splice can read straight into the
    /// frame. Waits while the window is spent.
    pub(crate) fn reserve(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        self.writable(id)?;
        if self.wait_for_window(id, cx) {
            return Poll::Pending;
        }
        let Some(slot) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(lost()));
        };
        // `send_window` is a u32, so `n` fits one.
        let n = max.min(slot.send_window as usize);
        slot.send_window -= n as u32;
        Poll::Ready(Ok(n))
    }

    /// Queues `frame` (`HEADER_LEN` bytes of room for the header, then at most the body
    /// [`Conn::reserve`] allowed) as one data frame, and gives back the part of `reserved`
    /// it did not use. The buffer is taken whole when no other frame waits (no copy);
    /// `frame` is left empty either way. Waits while the frame queue is full; an empty
    /// body queues nothing.
    pub(crate) fn submit(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        frame: &mut Vec<u8>,
        reserved: usize,
    ) -> Poll<io::Result<()>> {
        let body = frame.len().saturating_sub(HEADER_LEN);
        debug_assert!(body <= reserved, "a frame over its reservation");
        if body > 0 {
            self.writable(id)?;
            if self.wait_for_room(id, cx) {
                return Poll::Pending;
            }
        }
        let Some(slot) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(lost()));
        };
        let body = body.min(reserved);
        frame.truncate(HEADER_LEN + body);
        // Saturating, as window updates are: the peer may have granted up to u32::MAX
        // while the reservation was out.
        let unused = u32::try_from(reserved - body).unwrap_or(u32::MAX);
        slot.send_window = slot.send_window.saturating_add(unused);
        if body > 0 {
            let flags = self.announce(id);
            let header = Header::new(Kind::Data, flags, id, body as u32);
            frame[..HEADER_LEN].copy_from_slice(&header.encode());
            if self.out.is_empty() {
                std::mem::swap(&mut self.out, frame);
            } else {
                self.out.extend_from_slice(&frame[..HEADER_LEN + body]);
            }
        }
        frame.clear();
        Poll::Ready(Ok(()))
    }

    /// Sends FIN after what the stream already wrote.
    pub(crate) fn shutdown(&mut self, id: u32) -> io::Result<()> {
        let Some(slot) = self.streams.get_mut(&id) else {
            return Err(lost());
        };
        if slot.local_fin {
            return Ok(());
        }
        if slot.reset {
            return Err(reset());
        }
        if self.end.is_some() {
            return Err(lost());
        }
        slot.local_fin = true;
        let flags = self.announce(id) | FIN;
        self.push(Header::new(Kind::WindowUpdate, flags, id, 0), &[]);
        Ok(())
    }

    /// Forgets a stream whose handle is gone; resets it unless it ended both ways (or was
    /// never announced).
    pub(crate) fn drop_stream(&mut self, id: u32) {
        let Some(slot) = self.streams.remove(&id) else {
            return;
        };
        // A burst of streams must not leave its table behind (buckets are ~100 bytes).
        if self.streams.capacity() > 16 && self.streams.len() * 4 < self.streams.capacity() {
            self.streams.shrink_to(self.streams.len() * 2);
        }
        if slot.unacked {
            self.unacked -= 1;
            self.backlog_moved = true;
        }
        if slot.wants_room {
            self.room_waiters -= 1;
        }
        let finished = slot.local_fin && slot.remote_fin;
        if self.end.is_none() && !slot.syn_pending && !slot.reset && !finished {
            // A peer's stream dropped before it was accepted is acknowledged with its
            // reset, so the peer's backlog and meter see a stream it knows end.
            let flags = if slot.ack_pending { RST | ACK } else { RST };
            self.push(Header::new(Kind::WindowUpdate, flags, id, 0), &[]);
        }
    }

    /// Takes the queued frames for the driver, leaving `spare` (emptied) in their place,
    /// and wakes writers that waited for room.
    pub(crate) fn take_out(&mut self, spare: &mut Vec<u8>) {
        spare.clear();
        std::mem::swap(&mut self.out, spare);
        if self.room_waiters > 0 {
            self.room_waiters = 0;
            for slot in self.streams.values_mut() {
                if std::mem::take(&mut slot.wants_room) {
                    wake(&mut slot.writer, &mut self.wake);
                }
            }
        }
    }

    /// Consumes every complete frame at the front of `buf`. Streams the peer opened are
    /// appended to `accepted`.
    pub(crate) fn input(
        &mut self,
        buf: &[u8],
        accepted: &mut Vec<u32>,
    ) -> Result<Parsed, ProtocolError> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            let Some(head) = rest.first_chunk::<HEADER_LEN>() else {
                return Ok(Parsed {
                    consumed: at,
                    need: HEADER_LEN,
                });
            };
            let header = Header::decode(head)?;
            let body = match header.kind {
                Kind::Data => {
                    // No stream may be sent more than the window we grant: this also bounds
                    // what a frame makes us buffer before it is complete.
                    if header.length > self.window {
                        return Err(ProtocolError::OverWindow {
                            stream: header.stream,
                            length: header.length,
                        });
                    }
                    header.length as usize
                }
                _ => 0,
            };
            if rest.len() < HEADER_LEN + body {
                return Ok(Parsed {
                    consumed: at,
                    need: HEADER_LEN + body,
                });
            }
            self.frame(header, &rest[HEADER_LEN..HEADER_LEN + body], accepted)?;
            at += HEADER_LEN + body;
            if self.out.len() > OUT_HARD_LIMIT {
                return Err(ProtocolError::NotReading);
            }
        }
    }

    fn frame(
        &mut self,
        h: Header,
        body: &[u8],
        accepted: &mut Vec<u32>,
    ) -> Result<(), ProtocolError> {
        match h.kind {
            Kind::Ping => {
                if h.flags & SYN != 0 {
                    self.push(Header::new(Kind::Ping, ACK, 0, h.length), &[]);
                }
                return Ok(());
            }
            Kind::GoAway => {
                // The peer is closing the session: the driver ends it once this input is
                // processed (the peer flushed its streams' last bytes before the GoAway).
                self.go_away = true;
                self.backlog_moved = true;
                return Ok(());
            }
            Kind::Data | Kind::WindowUpdate if h.stream == 0 => {
                return Err(ProtocolError::StreamZero(h.kind));
            }
            Kind::Data | Kind::WindowUpdate => {}
        }
        let id = h.stream;
        if h.flags & SYN != 0 && !self.accept(id, accepted)? {
            return Ok(());
        }
        let Some(slot) = self.streams.get_mut(&id) else {
            // A stream we reset or never knew: what is in flight for it is dropped.
            return Ok(());
        };
        if h.flags & ACK != 0 && std::mem::take(&mut slot.unacked) {
            self.unacked -= 1;
            self.backlog_moved = true;
        }
        match h.kind {
            Kind::Data if !body.is_empty() && !slot.reset => {
                if slot.remote_fin {
                    return Err(ProtocolError::AfterFin(id));
                }
                // `body.len()` is the frame's u32 length.
                let len = body.len() as u32;
                if len > slot.recv_window {
                    return Err(ProtocolError::OverWindow {
                        stream: id,
                        length: len,
                    });
                }
                slot.recv_window -= len;
                if slot.recv.capacity() == 0 && body.len() > KEEP_RECV_BUFFER {
                    slot.recv
                        .reserve(BULK_RECV_BUFFER.min(self.window as usize));
                }
                slot.recv.extend(body);
                wake(&mut slot.reader, &mut self.wake);
            }
            Kind::WindowUpdate if h.length > 0 => {
                slot.send_window = slot.send_window.saturating_add(h.length);
                wake(&mut slot.writer, &mut self.wake);
            }
            _ => {}
        }
        if h.flags & FIN != 0 {
            slot.remote_fin = true;
            wake(&mut slot.reader, &mut self.wake);
        }
        if h.flags & RST != 0 {
            slot.reset = true;
            wake(&mut slot.reader, &mut self.wake);
            wake(&mut slot.writer, &mut self.wake);
        }
        Ok(())
    }

    /// A SYN from the peer: true if the stream is now open (acknowledged later, when the
    /// application accepts it: [`Conn::acknowledge`]), false if it was refused with a
    /// reset (too many streams, or the session is closing).
    fn accept(&mut self, id: u32, accepted: &mut Vec<u32>) -> Result<bool, ProtocolError> {
        let ours = match self.side {
            Side::Client => !id.is_multiple_of(2),
            Side::Server => id.is_multiple_of(2),
        };
        if ours {
            return Err(ProtocolError::WrongParity(id));
        }
        if self.streams.contains_key(&id) {
            return Err(ProtocolError::Reopened(id));
        }
        if self.streams.len() >= self.max_streams || self.end.is_some() {
            self.push(Header::new(Kind::WindowUpdate, RST, id, 0), &[]);
            return Ok(false);
        }
        // The peer may send the spec's initial window until our acknowledgement grants
        // the rest.
        self.streams.insert(
            id,
            Slot {
                recv_window: INITIAL_WINDOW,
                send_window: INITIAL_WINDOW,
                ack_pending: true,
                ..Slot::default()
            },
        );
        accepted.push(id);
        Ok(true)
    }

    /// The application accepted a stream the peer opened: acknowledges it, with the rest
    /// of our window, which frees a slot of the peer's [`ACK_BACKLOG`]. True if it queued
    /// the acknowledgement; false for a stream already acknowledged, reset or ended.
    pub(crate) fn acknowledge(&mut self, id: u32) -> bool {
        let Some(slot) = self.streams.get_mut(&id) else {
            return false;
        };
        if !slot.ack_pending || slot.reset || self.end.is_some() {
            return false;
        }
        slot.ack_pending = false;
        let extra = self.window - INITIAL_WINDOW;
        slot.recv_window += extra;
        self.push(Header::new(Kind::WindowUpdate, ACK, id, extra), &[]);
        true
    }

    /// Ends the session for every stream and wakes them all. A clean end first queues a
    /// GoAway for the driver to send.
    pub(crate) fn end(&mut self, how: End) {
        if self.end.is_some() {
            return;
        }
        if how == End::Clean {
            self.push(Header::new(Kind::GoAway, 0, 0, GO_AWAY_NORMAL), &[]);
        }
        self.end = Some(how);
        self.backlog_moved = true;
        for slot in self.streams.values_mut() {
            wake(&mut slot.reader, &mut self.wake);
            wake(&mut slot.writer, &mut self.wake);
        }
    }

    /// No stream can open any more: the session ended or the peer sent GoAway (before
    /// the driver has stopped).
    pub(crate) fn refuses_opens(&self) -> bool {
        self.end.is_some() || self.go_away
    }

    /// The peer sent GoAway.
    pub(crate) fn peer_went_away(&self) -> bool {
        self.go_away
    }

    /// Queues a GoAway with an error code (the session is ending on a protocol error).
    pub(crate) fn go_away(&mut self, code: u32) {
        self.push(Header::new(Kind::GoAway, 0, 0, code), &[]);
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn check_invariants(&self) {
        for slot in self.streams.values() {
            // Granted = not yet sent + buffered + taken + read but not yet granted again.
            let granted = slot.recv_window as usize
                + slot.recv.len()
                + slot.taken as usize
                + slot.consumed as usize;
            // A peer's stream gets the whole window with our acknowledgement.
            let window = if slot.ack_pending {
                INITIAL_WINDOW
            } else {
                self.window
            };
            assert_eq!(granted, window as usize);
        }
        assert!(self.out.len() <= OUT_HARD_LIMIT + 2 * HEADER_LEN);
        assert!(self.streams.len() <= self.max_streams);
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn wake(slot: &mut Option<Waker>, list: &mut Vec<Waker>) {
    if let Some(w) = slot.take() {
        list.push(w);
    }
}

pub(crate) fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "tunnel session lost")
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "stream reset by the far end",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, flags: u16, stream: u32, body: &[u8], length: u32) -> Vec<u8> {
        let mut out = Header::new(kind, flags, stream, length).encode().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn data(flags: u16, stream: u32, body: &[u8]) -> Vec<u8> {
        frame(Kind::Data, flags, stream, body, body.len() as u32)
    }

    /// Feeds bytes as the peer's; returns the streams it opened or the protocol error.
    fn feed(conn: &mut Conn, bytes: &[u8]) -> Result<Vec<u32>, ProtocolError> {
        let mut accepted = Vec::new();
        let parsed = conn.input(bytes, &mut accepted)?;
        assert_eq!(parsed.consumed, bytes.len(), "a partial frame was left");
        Ok(accepted)
    }

    /// The frames queued for the peer, decoded.
    fn sent(conn: &mut Conn) -> Vec<Header> {
        let mut out = Vec::new();
        conn.take_out(&mut out);
        let mut headers = Vec::new();
        let mut rest = &out[..];
        while let Some((head, tail)) = rest.split_first_chunk::<HEADER_LEN>() {
            let h = Header::decode(head).unwrap();
            let body = if h.kind == Kind::Data {
                h.length as usize
            } else {
                0
            };
            rest = &tail[body..];
            headers.push(h);
        }
        headers
    }

    fn read_all(conn: &mut Conn, id: u32) -> Poll<io::Result<Vec<u8>>> {
        let waker = futures::task::noop_waker();
        let mut into = vec![0u8; 1 << 20];
        let mut buf = ReadBuf::new(&mut into);
        match conn.read(id, &mut Context::from_waker(&waker), &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().to_vec())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    #[test]
    fn a_peer_stream_is_acknowledged_once_accepted_and_its_bytes_read_in_order() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let mut bytes = data(SYN, 1, b"hello ");
        bytes.extend(data(0, 1, b"world"));
        assert_eq!(feed(&mut conn, &bytes).unwrap(), [1]);
        // Not acknowledged until the application accepts it, and only once.
        assert_eq!(sent(&mut conn), []);
        assert!(conn.acknowledge(1));
        assert!(!conn.acknowledge(1));
        assert_eq!(
            sent(&mut conn),
            [Header::new(Kind::WindowUpdate, ACK, 1, 0)]
        );
        let Poll::Ready(Ok(got)) = read_all(&mut conn, 1) else {
            panic!()
        };
        assert_eq!(got, b"hello world");
        assert!(read_all(&mut conn, 1).is_pending());
        feed(&mut conn, &frame(Kind::WindowUpdate, FIN, 1, &[], 0)).unwrap();
        assert!(matches!(read_all(&mut conn, 1), Poll::Ready(Ok(v)) if v.is_empty()));
    }

    #[test]
    fn a_peer_stream_gets_the_initial_window_until_accepted_then_the_whole_one() {
        let window = 4 * INITIAL_WINDOW;
        let mut conn = Conn::new(Side::Server, window, 8);
        let initial = vec![1u8; INITIAL_WINDOW as usize];
        feed(&mut conn, &data(SYN, 1, &initial)).unwrap();
        conn.check_invariants();
        // Over the initial window before our acknowledgement: the peer broke the protocol.
        let err = feed(&mut conn, &data(0, 1, b"x")).unwrap_err();
        assert!(
            matches!(err, ProtocolError::OverWindow { stream: 1, .. }),
            "{err}"
        );

        let mut conn = Conn::new(Side::Server, window, 8);
        feed(&mut conn, &data(SYN, 1, &initial)).unwrap();
        assert!(conn.acknowledge(1));
        assert_eq!(
            sent(&mut conn),
            [Header::new(
                Kind::WindowUpdate,
                ACK,
                1,
                window - INITIAL_WINDOW
            )]
        );
        feed(
            &mut conn,
            &data(0, 1, &vec![2u8; (window - INITIAL_WINDOW) as usize]),
        )
        .unwrap();
        conn.check_invariants();
    }

    #[test]
    fn a_stream_dropped_before_it_was_accepted_is_acknowledged_with_its_reset() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        feed(&mut conn, &data(SYN, 1, b"x")).unwrap();
        conn.drop_stream(1);
        assert_eq!(
            sent(&mut conn),
            [Header::new(Kind::WindowUpdate, RST | ACK, 1, 0)]
        );
    }

    #[test]
    fn a_reset_stream_is_never_acknowledged() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        feed(&mut conn, &data(SYN, 1, b"x")).unwrap();
        feed(&mut conn, &frame(Kind::WindowUpdate, RST, 1, &[], 0)).unwrap();
        assert!(!conn.acknowledge(1));
        assert_eq!(sent(&mut conn), []);
        conn.check_invariants();
    }

    #[test]
    fn reading_a_quarter_window_grants_it_back() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let quarter = vec![7u8; INITIAL_WINDOW as usize / 4];
        feed(&mut conn, &data(SYN, 1, &quarter)).unwrap();
        sent(&mut conn);
        let Poll::Ready(Ok(got)) = read_all(&mut conn, 1) else {
            panic!()
        };
        assert_eq!(got.len(), quarter.len());
        let update = INITIAL_WINDOW / 4;
        assert_eq!(
            sent(&mut conn),
            [Header::new(Kind::WindowUpdate, 0, 1, update)]
        );
        conn.check_invariants();
    }

    #[test]
    fn bytes_over_the_window_end_the_session() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let big = vec![0u8; INITIAL_WINDOW as usize / 2 + 1];
        feed(&mut conn, &data(SYN, 1, &big)).unwrap();
        let err = feed(&mut conn, &data(0, 1, &big)).unwrap_err();
        assert!(
            matches!(err, ProtocolError::OverWindow { stream: 1, .. }),
            "{err}"
        );
        // A frame announcing more than any window is refused before its body arrives.
        let header = Header::new(Kind::Data, 0, 1, 1 << 31).encode();
        assert!(conn.input(&header, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_peer_opening_with_our_parity_or_twice_breaks_the_protocol() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let err = feed(&mut conn, &data(SYN, 2, b"x")).unwrap_err();
        assert_eq!(err, ProtocolError::WrongParity(2));
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        feed(&mut conn, &data(SYN, 1, b"x")).unwrap();
        assert_eq!(
            feed(&mut conn, &data(SYN, 1, b"x")),
            Err(ProtocolError::Reopened(1))
        );
    }

    #[test]
    fn streams_over_the_limit_are_reset_and_the_session_lives() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 2);
        let mut bytes = Vec::new();
        for id in [1, 3, 5] {
            bytes.extend(data(SYN, id, b"x"));
        }
        assert_eq!(feed(&mut conn, &bytes).unwrap(), [1, 3]);
        let rst = Header::new(Kind::WindowUpdate, RST, 5, 0);
        assert!(sent(&mut conn).contains(&rst));
        conn.check_invariants();
    }

    #[test]
    fn a_ping_is_answered_with_its_value() {
        let mut conn = Conn::new(Side::Client, INITIAL_WINDOW, 8);
        feed(&mut conn, &frame(Kind::Ping, SYN, 0, &[], 0xfeed)).unwrap();
        assert_eq!(sent(&mut conn), [Header::new(Kind::Ping, ACK, 0, 0xfeed)]);
    }

    #[test]
    fn a_peer_that_never_reads_its_ping_answers_ends_the_session() {
        let mut conn = Conn::new(Side::Client, INITIAL_WINDOW, 8);
        let ping = frame(Kind::Ping, SYN, 0, &[], 1);
        let flood: Vec<u8> = ping.repeat(OUT_HARD_LIMIT / HEADER_LEN + 2);
        assert_eq!(feed(&mut conn, &flood), Err(ProtocolError::NotReading));
    }

    #[test]
    fn a_write_is_split_into_frames_within_the_send_window() {
        let mut conn = Conn::new(Side::Client, INITIAL_WINDOW, 8);
        let id = conn.open().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let big = vec![1u8; INITIAL_WINDOW as usize * 2];
        let mut total = 0;
        while let Poll::Ready(Ok(n)) = conn.write(id, &mut cx, &big[total..]) {
            total += n;
            conn.take_out(&mut Vec::new());
        }
        // Pending: the window is spent, and nothing past it was queued.
        assert_eq!(total, INITIAL_WINDOW as usize);
        feed(&mut conn, &frame(Kind::WindowUpdate, ACK, id, &[], 100)).unwrap();
        let Poll::Ready(Ok(n)) = conn.write(id, &mut cx, &big) else {
            panic!()
        };
        assert_eq!(n, 100);
        let first = sent(&mut conn);
        assert_eq!(first, [Header::new(Kind::Data, 0, id, 100)]);
    }

    #[test]
    fn taken_bytes_are_granted_back_only_as_they_are_released() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let quarter = INITIAL_WINDOW as usize / 4;
        let body = vec![7u8; quarter + 10];
        feed(&mut conn, &data(SYN, 1, &body)).unwrap();
        sent(&mut conn);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut taken = VecDeque::new();
        assert!(matches!(
            conn.take(1, &mut cx, &mut taken),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(taken.len(), body.len());
        conn.check_invariants();
        assert!(
            sent(&mut conn).is_empty(),
            "nothing granted before delivery"
        );
        conn.release(1, quarter - 1);
        assert!(sent(&mut conn).is_empty(), "under a quarter window");
        conn.release(1, 11);
        let grants = sent(&mut conn);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].kind, Kind::WindowUpdate);
        assert_eq!(grants[0].length as usize, quarter + 10);
        conn.check_invariants();
        // Nothing left: the stream waits, and its FIN then reads as the end.
        taken.clear();
        assert!(conn.take(1, &mut cx, &mut taken).is_pending());
        feed(&mut conn, &frame(Kind::WindowUpdate, FIN, 1, &[], 0)).unwrap();
        assert!(matches!(
            conn.take(1, &mut cx, &mut taken),
            Poll::Ready(Ok(()))
        ));
        assert!(taken.is_empty());
    }

    #[test]
    fn a_reserved_frame_is_queued_whole_and_what_it_did_not_use_given_back() {
        let mut conn = Conn::new(Side::Client, INITIAL_WINDOW, 8);
        let id = conn.open().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Ok(reserved)) = conn.reserve(id, &mut cx, 64 * 1024) else {
            panic!("the window is open");
        };
        assert_eq!(reserved, 64 * 1024);
        let mut frame = vec![0u8; HEADER_LEN];
        frame.extend_from_slice(&[9u8; 1000]);
        assert!(matches!(
            conn.submit(id, &mut cx, &mut frame, reserved),
            Poll::Ready(Ok(()))
        ));
        assert!(frame.is_empty());
        let mut out = Vec::new();
        conn.take_out(&mut out);
        let header = Header::decode(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            (header.kind, header.flags, header.stream, header.length),
            (Kind::Data, SYN, id, 1000)
        );
        assert_eq!(&out[HEADER_LEN..], &[9u8; 1000][..]);
        // The unused 63 KiB came back: the rest of the window is still there.
        let Poll::Ready(Ok(rest)) = conn.reserve(id, &mut cx, usize::MAX) else {
            panic!("the window is open");
        };
        assert_eq!(rest, INITIAL_WINDOW as usize - 1000);
    }

    #[test]
    fn a_reservation_given_back_after_the_largest_grant_saturates_the_window() {
        let mut conn = Conn::new(Side::Client, INITIAL_WINDOW, 8);
        let id = conn.open().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            conn.reserve(id, &mut cx, 1000),
            Poll::Ready(Ok(1000))
        ));
        // The peer grants all it can while the reservation is out.
        feed(&mut conn, &frame(Kind::WindowUpdate, 0, id, &[], u32::MAX)).unwrap();
        let mut nothing = Vec::new();
        assert!(matches!(
            conn.submit(id, &mut cx, &mut nothing, 1000),
            Poll::Ready(Ok(()))
        ));
        let Poll::Ready(Ok(window)) = conn.reserve(id, &mut cx, usize::MAX) else {
            panic!("the window is open");
        };
        assert_eq!(window, u32::MAX as usize);
    }

    #[test]
    fn a_reset_reads_the_bytes_before_it_then_fails() {
        let mut conn = Conn::new(Side::Server, INITIAL_WINDOW, 8);
        let mut bytes = data(SYN, 1, b"last");
        bytes.extend(frame(Kind::WindowUpdate, RST, 1, &[], 0));
        feed(&mut conn, &bytes).unwrap();
        assert!(matches!(read_all(&mut conn, 1), Poll::Ready(Ok(v)) if v == b"last"));
        let Poll::Ready(Err(e)) = read_all(&mut conn, 1) else {
            panic!()
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
