//! The yamux session: [`Session`], the cheap handle that opens streams and closes the
//! session, and the one private driver task per connection that does all of its I/O.
//!
//! Streams open without a round trip through the driver: an open takes an ID under the
//! session's lock, and the stream's first frame (with its first bytes) announces it. The
//! driver reads whole chunks from the socket, hands complete frames to the session state,
//! and writes the frames every stream queued in one go, flushing once per round.
//!
//! The driver knows nothing of the tunnel protocol. A caller that must write something on
//! the socket before yamux starts (the relay's welcome) creates the session with
//! [`Session::prepare`], writes, then [`Unstarted::start`]s it: frames queued meanwhile
//! wait for the driver.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug};

use super::conn::{Conn, End, OpenFail, ProtocolError, Side};
use super::frame::{GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, HEADER_LEN};
use super::stream::RawStream;
use crate::config::Limits;
use crate::protocol::STREAM_OPEN_TIMEOUT;
use crate::stream::Stream;
use crate::util::lock;

/// How long a local close may spend flushing the streams' last bytes and the GoAway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Iterations of the driver loop before it yields to the scheduler.
const POLL_BUDGET: usize = 64;
/// Read buffer the driver allocates while bytes flow: four full TLS records per read.
const READ_CHUNK: usize = 64 * 1024;
/// An idle session holds no read buffer: it waits on a stack buffer of this size, and a
/// read that fits it (a heartbeat, a keystroke) frees the read buffer again once parsed.
const READ_PROBE: usize = 2048;
/// A write round that moved less than this frees the write buffer: a quiet session holds
/// no buffer between rounds, which keeps idle devices cheap.
const KEEP_WRITE_BUFFER_AFTER: usize = 16 * 1024;

/// An open request could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("session closed")]
    Closed,
    #[error("too many streams on this session")]
    TooManyStreams,
    #[error("timed out waiting for a stream slot")]
    Timeout,
}

/// State shared by the handle, the driver and every stream of one session.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Set as soon as the connection under yamux fails or the session is closed, before
    /// the streams are woken.
    dead: AtomicBool,
    /// Cancelled when the session is over for any reason.
    pub(crate) ended: CancellationToken,
    /// One permit per open stream, in both directions: the configured limit, below the
    /// yamux-level one in [`Conn`], so an open over it fails just that stream.
    permits: Arc<Semaphore>,
    /// The streams, their windows and the frames to write.
    pub(super) conn: Mutex<Conn>,
    /// The driver task, woken when frames are queued for an idle driver.
    pub(super) driver: AtomicWaker,
    /// Opens waiting for the peer to acknowledge earlier streams.
    pub(super) acks: Notify,
    /// Every [`Session`] handle and the [`Inbound`] receiver are gone.
    handles_gone: AtomicBool,
}

impl SessionState {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }
    /// Ends the session for every stream, and wakes them and any waiting open.
    fn end(&self, how: End) {
        let wake = {
            let mut conn = lock(&self.conn);
            conn.end(how);
            std::mem::take(&mut conn.wake)
        };
        wake.into_iter().for_each(std::task::Waker::wake);
        self.acks.notify_waiters();
    }
}

/// Which end opens the data streams of a session. The opener counts its streams against a
/// slightly lower limit than the acceptor, which releases a finished stream a little later
/// than the opener does; so a well-behaved opener at its limit is never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// This end opens the data streams (access client; relay towards a device).
    Local,
    /// The peer opens them (device; relay towards an access client).
    Remote,
}

/// Marks the session's handles gone when the last one drops, and wakes the driver.
#[derive(Debug)]
struct Handles(Arc<SessionState>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.handles_gone.store(true, Ordering::Release);
        self.0.driver.wake();
    }
}

/// Handle to one yamux session. Cloning is cheap; the session ends when [`Session::close`]
/// is called, the peer goes away, or every handle and the inbound receiver are dropped.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    close: CancellationToken,
    /// Cancelled once the driver is gone (ended, dropped with its runtime, or never started).
    done: CancellationToken,
    pub(crate) state: Arc<SessionState>,
    _handles: Arc<Handles>,
}

/// Streams opened by the peer and not accepted yet, in a queue bounded by the session's
/// stream limit: each queued stream holds one of its permits, so the queue never refuses
/// one. A stream is acknowledged only when it leaves the queue ([`Inbound::recv`]), so a
/// peer that honours the spec's ACK backlog ([`ACK_BACKLOG`](super::conn::ACK_BACKLOG))
/// has at most 256 here, and one that opens faster than we accept waits for us.
///
/// A `futures` channel, which allocates per message, not tokio's: a tokio channel allocates
/// its first block of 32 slots when it is created, used or not, and pads its shared state to
/// cache lines, which cost every idle device 1 KiB in the relay (heaptrack,
/// benches/RESULTS.md). Streams wait boxed, so a queued one costs a small node.
pub(crate) struct Inbound {
    streams: mpsc::Receiver<Box<Stream>>,
    _handles: Arc<Handles>,
}

impl Inbound {
    /// The next stream the peer opened, acknowledged now (so the peer may open another);
    /// `None` once the session ended.
    pub(crate) async fn recv(&mut self) -> Option<Stream> {
        let stream = *self.streams.next().await?;
        stream.acknowledge();
        Some(stream)
    }
}

/// A session whose driver has not started: its handle already opens streams, and nothing
/// is read from or written to the socket until [`Unstarted::start`].
///
/// Dropped without starting (its task cancelled, say), it abandons the session.
pub(crate) struct Unstarted(Option<Parts>);

struct Parts {
    inbound: mpsc::Sender<Box<Stream>>,
    /// Cancels the handles' `done` when dropped: by the driver task when it ends or is
    /// dropped, or on abandon if the session never starts.
    done: DropGuard,
    close: CancellationToken,
    state: Arc<SessionState>,
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(parts) = self.0.take() {
            parts.state.mark_dead();
            parts.state.end(End::Lost);
            parts.state.ended.cancel();
        }
    }
}

impl Unstarted {
    /// Spawns the driver on `io`; it runs until the session ends.
    pub(crate) fn start<T>(mut self, io: T, span: tracing::Span)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(parts) = self.0.take() else {
            return;
        };
        // Boxed: an async fn keeps its by-value arguments apart from its locals, and the
        // spawned block keeps its own copy, so an inline driver (the TLS stream is 1.5 KB)
        // was held three times by every session's task (heaptrack: 5.4 KB per idle device).
        let driver = Box::new(Driver {
            io,
            state: parts.state,
            inbound: parts.inbound,
            read: Vec::new(),
            read_at: 0,
            need: HEADER_LEN,
            idle: true,
            writing: Vec::new(),
            written: 0,
            round: 0,
            unflushed: false,
            accepted: Vec::new(),
            wake: Vec::new(),
            eof: false,
        });
        let (close, done) = (parts.close, parts.done);
        tokio::spawn(
            async move {
                let _done = done;
                driver.run(close).await;
            }
            .instrument(span),
        );
    }

    /// Gives up on a session that will never start: every handle sees it closed.
    pub(crate) fn abandon(self) {
        drop(self);
    }
}

impl Session {
    /// Starts the driver for an authenticated connection at once.
    pub(crate) fn spawn<T>(
        io: T,
        limits: &Limits,
        opener: Opener,
        side: Side,
        span: tracing::Span,
    ) -> (Self, Inbound)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (session, inbound, unstarted) = Self::prepare(limits, opener, side);
        unstarted.start(io, span);
        (session, inbound)
    }

    /// Creates the handle of a session whose driver starts later, on a socket the caller
    /// still uses meanwhile.
    pub(crate) fn prepare(
        limits: &Limits,
        opener: Opener,
        side: Side,
    ) -> (Self, Inbound, Unstarted) {
        let permits = match opener {
            Opener::Local => {
                limits.max_streams - (limits.max_streams / 8).min(limits.max_streams - 1)
            }
            Opener::Remote => limits.max_streams,
        };
        let streams = limits.yamux_streams();
        // `Limits::validate` keeps the window within a u32; `Conn` clamps it per stream.
        let window = u32::try_from(limits.receive_window / streams).unwrap_or(u32::MAX);
        let state = Arc::new(SessionState {
            dead: AtomicBool::new(false),
            ended: CancellationToken::new(),
            permits: Arc::new(Semaphore::new(permits)),
            conn: Mutex::new(Conn::new(side, window, streams)),
            driver: AtomicWaker::new(),
            acks: Notify::new(),
            handles_gone: AtomicBool::new(false),
        });
        // A futures channel holds `buffer` + one per sender (the driver): room for every
        // permit, so a stream that got one always fits. It allocates per message only.
        let (in_tx, in_rx) = mpsc::channel(permits);
        let done = CancellationToken::new();
        let close = CancellationToken::new();
        let handles = Arc::new(Handles(state.clone()));
        let unstarted = Unstarted(Some(Parts {
            inbound: in_tx,
            done: done.clone().drop_guard(),
            close: close.clone(),
            state: state.clone(),
        }));
        let session = Self {
            close,
            done,
            state,
            _handles: handles.clone(),
        };
        let inbound = Inbound {
            streams: in_rx,
            _handles: handles,
        };
        (session, inbound, unstarted)
    }

    /// Opens a stream. The peer sees it only once something is written on it; it waits
    /// while 256 opened streams are still unacknowledged, up to [`STREAM_OPEN_TIMEOUT`].
    pub(crate) async fn open(&self) -> Result<Stream, OpenError> {
        let permit = match self.state.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(OpenError::TooManyStreams),
            Err(TryAcquireError::Closed) => return Err(OpenError::Closed),
        };
        if self.state.is_dead() {
            return Err(OpenError::Closed);
        }
        let request = async {
            loop {
                let acked = self.state.acks.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                match lock(&self.state.conn).open() {
                    Ok(id) => return Ok(id),
                    Err(OpenFail::Backlog) => {}
                    Err(OpenFail::TooMany) => return Err(OpenError::TooManyStreams),
                    Err(OpenFail::Closed) => return Err(OpenError::Closed),
                }
                acked.await;
            }
        };
        let id = tokio::time::timeout(STREAM_OPEN_TIMEOUT, request)
            .await
            .map_err(|_| OpenError::Timeout)??;
        let raw = RawStream::new(id, self.state.clone());
        Ok(Stream::new(raw, self.state.clone(), permit))
    }

    /// Closes the session: the driver drops the socket, and every stream fails with
    /// `ConnectionReset`. Returns at once.
    pub(crate) fn close(&self) {
        self.state.mark_dead();
        self.close.cancel();
        self.state.ended.cancel();
    }

    /// Waits until the session is over: closed locally (heartbeat lost, replaced, stopped)
    /// or its driver has stopped.
    pub(crate) async fn closed(&self) {
        tokio::select! {
            () = self.done.cancelled() => {}
            () = self.close.cancelled() => {}
        }
    }

    /// The session takes no new stream: closed, ended, or the peer said GoAway (a caller
    /// that finds it so opens a fresh session rather than retrying this one).
    pub(crate) fn is_closed(&self) -> bool {
        self.done.is_cancelled() || self.state.is_dead() || lock(&self.state.conn).refuses_opens()
    }
}

/// Why the driver stopped.
enum Outcome {
    ClosedLocally,
    ClosedByPeer,
    HandlesDropped,
    Failed(io::Error),
    Protocol(ProtocolError),
}

struct Driver<T> {
    io: T,
    state: Arc<SessionState>,
    inbound: mpsc::Sender<Box<Stream>>,
    /// Bytes read and not parsed yet (a partial frame); no allocation while idle.
    read: Vec<u8>,
    /// Where the unparsed bytes start in `read`.
    read_at: usize,
    /// Bytes the frame at `read_at` needs in all.
    need: usize,
    /// No read buffer is held: the next read goes to a stack buffer first.
    idle: bool,
    /// Frames taken from the session for writing; `written` of them are on the socket.
    writing: Vec<u8>,
    written: usize,
    /// Bytes written since the write buffer was last emptied.
    round: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// Streams the peer opened in the last input, to hand out.
    accepted: Vec<u32>,
    /// Tasks the last input or write woke, swapped out of the session to wake unlocked.
    wake: Vec<std::task::Waker>,
    eof: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    async fn run(mut self: Box<Self>, close: CancellationToken) {
        let outcome = tokio::select! {
            // A local close wins over a simultaneous "all handles dropped".
            biased;
            () = close.cancelled() => Outcome::ClosedLocally,
            outcome = self.serve() => outcome,
        };
        let (how, goodbye) = match &outcome {
            Outcome::ClosedLocally => {
                lock(&self.state.conn).go_away(GO_AWAY_NORMAL);
                (End::Lost, true)
            }
            Outcome::HandlesDropped | Outcome::ClosedByPeer => (End::Clean, true),
            Outcome::Failed(_) => (End::Lost, false),
            Outcome::Protocol(_) => {
                lock(&self.state.conn).go_away(GO_AWAY_PROTOCOL_ERROR);
                (End::Lost, true)
            }
        };
        if how == End::Lost {
            self.state.mark_dead();
        }
        // A clean end queues a GoAway; streams fail from here on, so nothing else queues.
        self.state.end(how);
        if goodbye {
            // Flush what streams already wrote (a last reply, a FIN), the GoAway, then a TLS
            // close_notify; gives up at once on a connection that already failed.
            let goodbye = async {
                std::future::poll_fn(|cx| self.poll_write_out(cx).map_ok(|_| ())).await?;
                self.io.shutdown().await
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
        }
        self.state.ended.cancel();
        match outcome {
            Outcome::ClosedLocally => debug!("session ended: closed locally"),
            Outcome::ClosedByPeer => debug!("session ended: closed by peer"),
            Outcome::HandlesDropped => debug!("session ended: all handles dropped"),
            Outcome::Failed(e) => debug!("session ended: connection error: {e}"),
            Outcome::Protocol(e) => debug!("session ended: yamux protocol error: {e}"),
        }
    }

    /// Reads, parses and writes until the session ends: every turn reads what the socket
    /// has, hands out the streams the peer opened, and writes what the streams queued.
    async fn serve(&mut self) -> Outcome {
        std::future::poll_fn(|cx| {
            self.state.driver.register(cx.waker());
            for _ in 0..POLL_BUDGET {
                if self.state.handles_gone.load(Ordering::Acquire) {
                    return Poll::Ready(Outcome::HandlesDropped);
                }
                let mut progress = false;
                if !self.eof {
                    match self.poll_input(cx) {
                        Poll::Ready(Ok(true)) => progress = true,
                        Poll::Ready(Ok(false)) => self.eof = true,
                        Poll::Ready(Err(outcome)) => return Poll::Ready(outcome),
                        Poll::Pending => {}
                    }
                }
                match self.poll_write_out(cx) {
                    Poll::Ready(Ok(wrote)) => progress |= wrote,
                    Poll::Ready(Err(e)) => {
                        self.state.mark_dead();
                        return Poll::Ready(Outcome::Failed(e));
                    }
                    Poll::Pending => {}
                }
                if self.eof {
                    return Poll::Ready(Outcome::ClosedByPeer);
                }
                if !progress {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Reads what the socket has and feeds the complete frames to the session. `Ok(false)`
    /// at the end of the connection.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Outcome>> {
        let n = match ready!(self.poll_read(cx)) {
            Ok(n) => n,
            Err(e) => {
                self.state.mark_dead();
                return Poll::Ready(Err(Outcome::Failed(e)));
            }
        };
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        let (parsed, went_away, backlog_moved) = {
            let mut conn = lock(&self.state.conn);
            let parsed = conn.input(&self.read[self.read_at..], &mut self.accepted);
            std::mem::swap(&mut conn.wake, &mut self.wake);
            let moved = std::mem::take(&mut conn.backlog_moved);
            (parsed, conn.peer_went_away(), moved)
        };
        self.wake.drain(..).for_each(std::task::Waker::wake);
        if backlog_moved {
            self.state.acks.notify_waiters();
        }
        let parsed = parsed.map_err(Outcome::Protocol)?;
        self.read_at += parsed.consumed;
        if self.read_at == self.read.len() {
            self.read.clear();
            self.read_at = 0;
            if n < READ_PROBE {
                self.read = Vec::new();
                self.idle = true;
            }
        }
        self.need = parsed.need;
        for id in self.accepted.drain(..) {
            // Dropping a stream resets it: the peer learns at once.
            let raw = RawStream::new(id, self.state.clone());
            let Ok(permit) = self.state.permits.clone().try_acquire_owned() else {
                debug!("stream limit reached; resetting inbound stream");
                continue;
            };
            let stream = Stream::new(raw, self.state.clone(), permit);
            if self.inbound.try_send(Box::new(stream)).is_err() {
                // The queue has room for every permit: only a dropped receiver gets here.
                debug!("no longer accepting; resetting inbound stream");
            }
        }
        if went_away {
            return Poll::Ready(Err(Outcome::ClosedByPeer));
        }
        Poll::Ready(Ok(true))
    }

    /// One read from the socket into the read buffer; `Ok(0)` at the end of the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.idle {
            let mut probe = [MaybeUninit::<u8>::uninit(); READ_PROBE];
            let mut buf = ReadBuf::uninit(&mut probe);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            // A full probe means more is coming: room for a chunk at once.
            let n = buf.filled().len();
            self.read = Vec::with_capacity(if n == READ_PROBE { READ_CHUNK } else { n });
            self.read.extend_from_slice(buf.filled());
            self.idle = false;
            return Poll::Ready(Ok(buf.filled().len()));
        }
        // Compacts only when the room runs short: a partial frame is moved at most once
        // per chunk, not after every read.
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4
            || self.read.capacity() - self.read_at < self.need
        {
            self.make_room(self.need);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Moves the unparsed bytes (at most one incomplete frame) to the front of the read
    /// buffer, which then holds `need` bytes and has room for a chunk's read.
    fn make_room(&mut self, need: usize) {
        if self.read_at > 0 {
            self.read.copy_within(self.read_at.., 0);
            self.read.truncate(self.read.len() - self.read_at);
            self.read_at = 0;
        }
        let want = need.max(self.read.len() + READ_CHUNK / 4).max(READ_CHUNK);
        self.read.reserve(want.saturating_sub(self.read.len()));
    }

    /// Writes the frames the streams queued, then flushes. `Ok(true)` if it wrote any;
    /// `Pending` while the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        loop {
            if self.written == self.writing.len() {
                {
                    let mut conn = lock(&self.state.conn);
                    if conn.out.is_empty() {
                        break;
                    }
                    if self.round < KEEP_WRITE_BUFFER_AFTER {
                        self.writing = Vec::new();
                    }
                    conn.take_out(&mut self.writing);
                    std::mem::swap(&mut conn.wake, &mut self.wake);
                }
                self.wake.drain(..).for_each(std::task::Waker::wake);
                self.written = 0;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.writing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.round += n;
            self.unflushed = true;
            wrote = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
            if self.round < KEEP_WRITE_BUFFER_AFTER {
                self.writing = Vec::new();
                self.written = 0;
            }
            self.round = 0;
        }
        Poll::Ready(Ok(wrote))
    }
}

/// The size of a session driver's future for an `io` of type `T` (without the boxed driver).
#[cfg(test)]
pub(crate) fn driver_future_size<T: AsyncRead + AsyncWrite + Unpin>() -> usize {
    fn size<A, B, F>(_: fn(A, B) -> F) -> usize {
        size_of::<F>()
    }
    size(Driver::<T>::run)
}

/// Two ends of one stream, over two sessions on an in-memory pipe; the sessions live as
/// long as the pair.
#[cfg(test)]
pub(crate) struct StreamPair {
    pub(crate) near: Stream,
    pub(crate) far: Stream,
    _sessions: [(Session, Inbound); 2],
}

#[cfg(test)]
impl StreamPair {
    pub(crate) async fn new(limits: &Limits) -> Self {
        use tokio::io::AsyncReadExt;
        let (a, b) = tokio::io::duplex(256 * 1024);
        let near = Session::spawn(
            a,
            limits,
            Opener::Local,
            Side::Client,
            tracing::Span::none(),
        );
        let mut far = Session::spawn(
            b,
            limits,
            Opener::Remote,
            Side::Server,
            tracing::Span::none(),
        );
        let mut stream = near.0.open().await.expect("open");
        // The peer learns of a stream with its first byte.
        stream.write_all(b"!").await.expect("announce");
        let mut accepted = far.1.recv().await.expect("accept");
        let mut one = [0u8];
        accepted.read_exact(&mut one).await.expect("first byte");
        Self {
            near: stream,
            far: accepted,
            _sessions: [near, far],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::conn::ACK_BACKLOG;
    use super::*;

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_session_whose_peer_said_go_away_is_closed_while_its_driver_still_flushes() {
        use super::super::frame::{Header, Kind};
        // A pipe the raw peer never reads: after the GoAway, the driver spends its
        // CLOSE_TIMEOUT trying to flush, and a caller must not take the session as open
        // meanwhile (the Dialer would retry its open on it and fail again).
        let (a, mut peer) = tokio::io::duplex(4096);
        let (near, _inbound) = Session::spawn(
            a,
            &Limits::default(),
            Opener::Local,
            Side::Client,
            tracing::Span::none(),
        );
        let mut stream = near.open().await.expect("open");
        stream.write_all(&[7u8; 64 * 1024]).await.expect("queued");
        peer.write_all(&Header::new(Kind::GoAway, 0, 0, GO_AWAY_NORMAL).encode())
            .await
            .expect("go away");
        let refused = tokio::time::timeout(WAIT, async {
            loop {
                match near.open().await {
                    Err(e) => return e,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("opens are refused in time");
        assert!(matches!(refused, OpenError::Closed), "{refused:?}");
        assert!(
            !near.done.is_cancelled(),
            "the driver is still flushing (the case under test)"
        );
        assert!(near.is_closed());
        drop(peer);
    }

    #[tokio::test]
    async fn a_burst_of_opens_past_the_accept_queue_waits_for_accepts_and_loses_none() {
        // Four times the accept queue, all opened (each with a byte) before the far end
        // accepts any: those past the queue must wait for the peer's accepts, not be reset.
        const STREAMS: usize = 4 * ACK_BACKLOG;
        let limits = Limits::for_streams(2 * STREAMS);
        let (a, b) = tokio::io::duplex(1024 * 1024);
        let (near, _near_inbound) = Session::spawn(
            a,
            &limits,
            Opener::Local,
            Side::Client,
            tracing::Span::none(),
        );
        let (_far, mut far_inbound) = Session::spawn(
            b,
            &limits,
            Opener::Remote,
            Side::Server,
            tracing::Span::none(),
        );
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = opened.clone();
        let opener = tokio::spawn(async move {
            let mut streams = Vec::with_capacity(STREAMS);
            for i in 0..STREAMS {
                let mut stream = near.open().await.expect("open");
                stream.write_all(&[i as u8]).await.expect("first byte");
                counter.fetch_add(1, Ordering::Relaxed);
                streams.push(stream);
            }
            streams
        });
        // Lets the opener run into the backlog while nothing is accepted: it stops there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_accepts = opened.load(Ordering::Relaxed);
        assert!(
            (1..=ACK_BACKLOG).contains(&before_accepts),
            "{before_accepts} streams opened before any was accepted"
        );
        for i in 0..STREAMS {
            let mut stream = tokio::time::timeout(WAIT, far_inbound.recv())
                .await
                .expect("accept in time")
                .expect("a stream");
            let mut byte = [0u8];
            tokio::time::timeout(WAIT, stream.read_exact(&mut byte))
                .await
                .expect("first byte in time")
                .unwrap_or_else(|e| panic!("stream {i} lost its first byte: {e}"));
            assert_eq!(byte[0], i as u8, "streams arrive in the order opened");
        }
        let streams = tokio::time::timeout(WAIT, opener).await.unwrap().unwrap();
        assert_eq!(streams.len(), STREAMS);
    }
}
