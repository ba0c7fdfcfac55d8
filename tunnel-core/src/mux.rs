//! The yamux session driver: one private task owns the `yamux::Connection` and does all of
//! its I/O; [`Session`] is the cheap handle that opens streams and closes the session.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::config::Limits;
use crate::protocol::{HANDSHAKE_TIMEOUT, STREAM_OPEN_TIMEOUT};
use crate::stream::Stream;

/// Streams the peer opened that we have not accepted yet; beyond this, new ones are reset.
/// Matches yamux's ACK backlog, so a well-behaved peer never hits it.
const ACCEPT_BACKLOG: usize = 256;
/// Size of the write buffer between yamux and TLS: four yamux frames (header + body of
/// `SPLIT_SEND_SIZE`), so the frames of one driver round leave as four full TLS records in
/// one `writev` instead of a record and a syscall each. Allocated only while data flows.
const WRITE_BUFFER: usize = 64 * 1024;
/// A flush that moved less than this frees the write buffer: a quiet session (heartbeats,
/// keystrokes) holds no buffer between rounds, which keeps idle devices cheap.
const KEEP_BUFFER_AFTER: usize = 16 * 1024;
/// Largest yamux data frame body: header (12 bytes) + body fill one 16 KiB TLS record.
const SPLIT_SEND_SIZE: usize = 16 * 1024 - 12;
/// Commands queued to the driver; each open request waits its turn here.
const COMMAND_QUEUE: usize = 64;
/// How long a local close may spend flushing the streams' last bytes and the GoAway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Iterations of the driver loop before it yields to the scheduler.
const POLL_BUDGET: usize = 64;

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

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>),
}

/// State shared by the handle, the driver and every stream of one session.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Set as soon as the connection under yamux fails or the session is closed, *before*
    /// yamux wakes the streams; a stream reading end-of-stream after that reports an error.
    dead: AtomicBool,
    /// Cancelled when the session is over for any reason. Streams wait on it too: yamux
    /// does not wake streams after a graceful close, so without it a reader could hang.
    pub(crate) ended: CancellationToken,
    /// One permit per open stream, in both directions. yamux ends the *whole* session when
    /// an open exceeds its own stream limit, so we count first and fail just that stream.
    permits: Arc<Semaphore>,
}

impl SessionState {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
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

/// Handle to one yamux session. Cloning is cheap; the session ends when [`Session::close`]
/// is called, the peer goes away, or every handle and the inbound receiver are dropped.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    commands: mpsc::Sender<Command>,
    close: CancellationToken,
    done: watch::Receiver<bool>,
    pub(crate) state: Arc<SessionState>,
}

/// Streams opened by the peer.
pub(crate) type Inbound = mpsc::Receiver<Stream>;

/// Bytes to write on the socket before yamux starts (the relay's welcome), once `go`
/// fires: the relay registers the device before the device learns it is registered.
pub(crate) struct Preamble {
    pub(crate) bytes: Vec<u8>,
    pub(crate) go: oneshot::Receiver<()>,
}

impl Session {
    /// Starts the driver task for an authenticated connection.
    pub(crate) fn spawn<T>(
        io: T,
        limits: &Limits,
        opener: Opener,
        mode: yamux::Mode,
        span: tracing::Span,
        preamble: Option<Preamble>,
    ) -> (Self, Inbound)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let permits = match opener {
            Opener::Local => {
                limits.max_streams - (limits.max_streams / 8).min(limits.max_streams - 1)
            }
            Opener::Remote => limits.max_streams,
        };
        let state = Arc::new(SessionState {
            dead: AtomicBool::new(false),
            ended: CancellationToken::new(),
            permits: Arc::new(Semaphore::new(permits)),
        });
        let link = Arc::new(Mutex::new(Link {
            io,
            buf: Vec::new(),
            written: 0,
            state: state.clone(),
        }));
        let config = yamux_config(limits);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let (done_tx, done_rx) = watch::channel(false);
        let close = CancellationToken::new();
        let close2 = close.clone();
        let state2 = state.clone();
        tokio::spawn(
            async move {
                if let Some(Preamble { bytes, go }) = preamble {
                    let write = async {
                        go.await
                            .map_err(|_| io::Error::other("session abandoned"))?;
                        lock(&link).buf = bytes;
                        std::future::poll_fn(|cx| lock(&link).poll_flush_all(cx)).await
                    };
                    let sent = tokio::time::timeout(HANDSHAKE_TIMEOUT, write)
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
                    if let Err(e) = sent {
                        debug!(error = %e, "preamble not sent; ending session");
                        state2.mark_dead();
                        state2.ended.cancel();
                        let _ = done_tx.send(true);
                        return;
                    }
                }
                let driver = Driver {
                    conn: yamux::Connection::new(LinkIo(link.clone()).compat(), config, mode),
                    link,
                    commands: cmd_rx,
                    inbound: in_tx,
                    state: state2,
                };
                driver.run(close2).await;
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        (
            Self {
                commands: cmd_tx,
                close,
                done: done_rx,
                state,
            },
            in_rx,
        )
    }

    /// Opens a stream. The peer sees it only once something is written on it; it waits
    /// while 256 opened streams are still unacknowledged, up to [`STREAM_OPEN_TIMEOUT`].
    pub(crate) async fn open(&self) -> Result<Stream, OpenError> {
        let permit = match self.state.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(OpenError::TooManyStreams),
            Err(TryAcquireError::Closed) => return Err(OpenError::Closed),
        };
        let (tx, rx) = oneshot::channel();
        let request = async {
            self.commands
                .send(Command::Open(tx))
                .await
                .map_err(|_| OpenError::Closed)?;
            match rx.await {
                Ok(Ok(raw)) => Ok(Stream::new(raw.compat(), self.state.clone(), permit)),
                Ok(Err(yamux::ConnectionError::TooManyStreams)) => Err(OpenError::TooManyStreams),
                Ok(Err(_)) | Err(_) => Err(OpenError::Closed),
            }
        };
        tokio::time::timeout(STREAM_OPEN_TIMEOUT, request)
            .await
            .map_err(|_| OpenError::Timeout)?
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
        let mut done = self.done.clone();
        tokio::select! {
            _ = done.wait_for(|d| *d) => {}
            () = self.close.cancelled() => {}
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.done.borrow() || self.state.is_dead()
    }
}

fn yamux_config(limits: &Limits) -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // Headroom over our own permit count: yamux still counts streams whose handles were
    // just dropped, and a peer over yamux's limit kills the session.
    let max_streams = limits.yamux_streams();
    // Order matters: yamux asserts window >= streams * 256 KiB on every setter call, so
    // shrink the stream count before the window. `Limits` validated the pair already.
    cfg.set_max_num_streams(max_streams);
    cfg.set_max_connection_receive_window(Some(limits.receive_window));
    cfg.set_split_send_size(SPLIT_SEND_SIZE);
    cfg
}

struct Driver<T> {
    conn: yamux::Connection<T>,
    /// The socket under `conn`, for the flush at the end of each round.
    link: Arc<dyn Flush>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Stream>,
    state: Arc<SessionState>,
}

impl<T: futures::AsyncRead + futures::AsyncWrite + Unpin> Driver<T> {
    async fn run(mut self, close: CancellationToken) {
        let outcome = tokio::select! {
            // A local close wins over a simultaneous "all handles dropped".
            biased;
            () = close.cancelled() => "closed locally".to_owned(),
            outcome = self.serve() => outcome,
        };
        // Flush what streams already wrote (a last reply, a FIN), then GoAway and a TLS
        // close_notify; returns at once on a connection that already failed. yamux forgets
        // its streams here without waking them: `ended` wakes them instead.
        let closing = std::future::poll_fn(|cx| self.conn.poll_close(cx));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        // Not `mark_dead` here: after a graceful end (GoAway, close_notify) a stream that
        // received its FIN ends cleanly. Failures were marked where they were seen.
        self.state.ended.cancel();
        debug!(outcome, "session ended");
    }

    /// Serves open requests and inbound streams in one poll loop: `poll_next_inbound` does
    /// all reading and writing, so it is polled on every turn, and an open waiting for the
    /// ACK backlog sees the ACKs that release it.
    async fn serve(&mut self) -> String {
        let mut pending: Option<oneshot::Sender<_>> = None;
        let mut commands_open = true;
        std::future::poll_fn(|cx| {
            for _ in 0..POLL_BUDGET {
                if pending.is_none() && commands_open {
                    match self.commands.poll_recv(cx) {
                        Poll::Ready(Some(Command::Open(tx))) => pending = Some(tx),
                        Poll::Ready(None) => commands_open = false,
                        Poll::Pending => {}
                    }
                }
                if pending.as_ref().is_some_and(|tx| tx.is_closed()) {
                    pending = None; // the caller gave up
                    continue;
                }
                if pending.is_some()
                    && let Poll::Ready(result) = self.conn.poll_new_outbound(cx)
                {
                    if let Some(tx) = pending.take() {
                        let _ = tx.send(result);
                    }
                    continue;
                }
                match self.conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(raw))) => {
                        // Dropping a stream resets it: the peer learns at once.
                        let Ok(permit) = self.state.permits.clone().try_acquire_owned() else {
                            debug!("stream limit reached; resetting inbound stream");
                            continue;
                        };
                        let stream = Stream::new(raw.compat(), self.state.clone(), permit);
                        if self.inbound.try_send(stream).is_err() {
                            debug!("accept backlog full or closed; resetting inbound stream");
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.state.mark_dead();
                        return Poll::Ready(format!("connection error: {e}"));
                    }
                    Poll::Ready(None) => return Poll::Ready("closed by peer".to_owned()),
                    Poll::Pending => {
                        if !commands_open && self.inbound.is_closed() {
                            return Poll::Ready("all handles dropped".to_owned());
                        }
                        return self.flush(cx);
                    }
                }
            }
            cx.waker().wake_by_ref();
            self.flush(cx)
        })
        .await
    }
}

impl<T> Driver<T> {
    /// Sends what yamux wrote during this round; yamux has nothing more to do for now.
    /// `Pending` either way: the socket wakes the driver when it can take more.
    fn flush(&self, cx: &mut Context<'_>) -> Poll<String> {
        match self.link.poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(format!("connection error: {e}")),
            _ => Poll::Pending,
        }
    }
}

/// The socket under yamux, shared by yamux (through [`LinkIo`]) and the driver.
///
/// Writes are gathered: yamux flushes after every frame, which would cost one TLS record
/// and one syscall per frame (half the relay's CPU time in a profile). Here yamux's flush
/// is a no-op and the driver flushes once per round, when yamux has nothing left to do, so
/// latency is unchanged and a bulk transfer leaves in 64 KiB writes.
///
/// It is also watched: a read or write error marks the session dead before yamux itself
/// learns of it and wakes its streams. A clean end (TLS close_notify, then end of file) is
/// not an error: streams that were finished before it stay finished.
struct Link<T> {
    io: T,
    /// Frames gathered for the next write; `written` of them are already on the socket.
    buf: Vec<u8>,
    written: usize,
    state: Arc<SessionState>,
}

fn lock<T>(link: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: AsyncWrite + Unpin> Link<T> {
    fn watch<R>(&self, res: io::Result<R>) -> io::Result<R> {
        if res.is_err() {
            self.state.mark_dead();
        }
        res
    }

    /// Writes the gathered frames out.
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let res = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]));
            match self.watch(res)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.written += n,
            }
        }
        if self.buf.len() < KEEP_BUFFER_AFTER {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_buf(cx))?;
        let res = ready!(Pin::new(&mut self.io).poll_flush(cx));
        Poll::Ready(self.watch(res))
    }
}

/// The driver's side of a [`Link`], without its type parameter.
trait Flush: Send + Sync {
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: AsyncWrite + Unpin + Send> Flush for Mutex<Link<T>> {
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(self).poll_flush_all(cx)
    }
}

/// yamux's side of a [`Link`].
struct LinkIo<T>(Arc<Mutex<Link<T>>>);

impl<T: AsyncRead + Unpin> AsyncRead for LinkIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut link = lock(&self.0);
        let res = ready!(Pin::new(&mut link.io).poll_read(cx, buf));
        if res.is_err() {
            link.state.mark_dead();
        }
        Poll::Ready(res)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LinkIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut link = lock(&self.0);
        if link.buf.len() + data.len() > WRITE_BUFFER {
            ready!(link.poll_write_buf(cx))?;
        }
        if data.len() >= WRITE_BUFFER {
            let res = ready!(Pin::new(&mut link.io).poll_write(cx, data));
            return Poll::Ready(link.watch(res));
        }
        if link.buf.capacity() == 0 {
            link.buf.reserve_exact(WRITE_BUFFER);
        }
        link.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    /// Deferred to the end of the driver's round (see [`Link`]).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut link = lock(&self.0);
        ready!(link.poll_flush_all(cx))?;
        Pin::new(&mut link.io).poll_shutdown(cx)
    }
}

/// A yamux stream in tokio's I/O traits.
pub(crate) type RawStream = Compat<yamux::Stream>;
