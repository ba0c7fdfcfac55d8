//! The yamux session driver: one private task owns the `yamux::Connection` and does all of
//! its I/O; [`Session`] is the cheap handle that opens streams and closes the session.
//!
//! The driver knows nothing of the tunnel protocol. A caller that must write something on
//! the socket before yamux starts (the relay's welcome) creates the session with
//! [`Session::prepare`], writes, then [`Unstarted::start`]s it: opens issued meanwhile wait
//! in the bounded command queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, TryAcquireError, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug};

use super::link::{Flush, Link, LinkIo};
use crate::config::Limits;
use crate::protocol::STREAM_OPEN_TIMEOUT;
use crate::stream::Stream;

/// Streams the peer opened that we have not accepted yet; beyond this, new ones are reset.
/// Matches yamux's ACK backlog, so a well-behaved peer never hits it.
const ACCEPT_BACKLOG: usize = 256;
/// Largest yamux data frame body: header (12 bytes) + body fill one 16 KiB TLS record.
const SPLIT_SEND_SIZE: usize = 16 * 1024 - 12;
/// Open requests the driver's queue holds before a handle's next request waits. Each
/// request queues on a fresh clone of the sender, which a futures channel always lets
/// queue one message, so the bound that holds is the stream permits: a request takes one
/// before it queues (a timed-out request stays queued until the driver skips it).
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
    pub(super) fn mark_dead(&self) {
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
    /// Cancelled once the driver is gone (ended, dropped with its runtime, or never started).
    done: CancellationToken,
    pub(crate) state: Arc<SessionState>,
}

/// Streams opened by the peer, in a bounded queue of [`ACCEPT_BACKLOG`].
///
/// The session's two queues (this one and the open requests) are `futures` channels, which
/// allocate per message, not tokio's: a tokio channel allocates its first block of 32 slots
/// when it is created, used or not, and pads its shared state to cache lines, which cost
/// every idle device 2 KiB in the relay (heaptrack, benches/RESULTS.md). Streams wait
/// boxed, so a queued one costs a small node.
pub(crate) struct Inbound(mpsc::Receiver<Box<Stream>>);

impl Inbound {
    /// The next stream the peer opened; `None` once the session ended.
    pub(crate) async fn recv(&mut self) -> Option<Stream> {
        self.0.next().await.map(|stream| *stream)
    }
}

/// A session whose driver has not started: its handle already queues opens, and nothing is
/// read from or written to the socket until [`Unstarted::start`].
pub(crate) struct Unstarted {
    config: yamux::Config,
    mode: yamux::Mode,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Box<Stream>>,
    /// Cancels the handles' `done` when dropped: by the driver task when it ends or is
    /// dropped, or here if the session never starts.
    done: DropGuard,
    close: CancellationToken,
    state: Arc<SessionState>,
}

impl Unstarted {
    /// Spawns the driver on `io`; it runs until the session ends.
    pub(crate) fn start<T>(self, io: T, span: tracing::Span)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let link = Arc::new(Mutex::new(Link::new(io, self.state.clone())));
        let driver = Driver {
            conn: yamux::Connection::new(LinkIo(link.clone()).compat(), self.config, self.mode),
            link,
            commands: self.commands,
            inbound: self.inbound,
            state: self.state,
        };
        let (close, done) = (self.close, self.done);
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
        self.state.mark_dead();
        self.state.ended.cancel();
        drop(self.done);
    }
}

impl Session {
    /// Starts the driver for an authenticated connection at once.
    pub(crate) fn spawn<T>(
        io: T,
        limits: &Limits,
        opener: Opener,
        mode: yamux::Mode,
        span: tracing::Span,
    ) -> (Self, Inbound)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (session, inbound, unstarted) = Self::prepare(limits, opener, mode);
        unstarted.start(io, span);
        (session, inbound)
    }

    /// Creates the handle of a session whose driver starts later, on a socket the caller
    /// still uses meanwhile.
    pub(crate) fn prepare(
        limits: &Limits,
        opener: Opener,
        mode: yamux::Mode,
    ) -> (Self, Inbound, Unstarted) {
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
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        // A futures channel holds `buffer` + one per sender: the driver is the only one.
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_BACKLOG - 1);
        let done = CancellationToken::new();
        let close = CancellationToken::new();
        let unstarted = Unstarted {
            config: yamux_config(limits),
            mode,
            commands: cmd_rx,
            inbound: in_tx,
            done: done.clone().drop_guard(),
            close: close.clone(),
            state: state.clone(),
        };
        let session = Self {
            commands: cmd_tx,
            close,
            done,
            state,
        };
        (session, Inbound(in_rx), unstarted)
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
            // A clone per request: a futures sender may always queue one message.
            self.commands
                .clone()
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
        tokio::select! {
            () = self.done.cancelled() => {}
            () = self.close.cancelled() => {}
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.done.is_cancelled() || self.state.is_dead()
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
    inbound: mpsc::Sender<Box<Stream>>,
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
                    match self.commands.poll_next_unpin(cx) {
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
                        if self.inbound.try_send(Box::new(stream)).is_err() {
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

/// A yamux stream in tokio's I/O traits.
pub(crate) type RawStream = Compat<yamux::Stream>;
