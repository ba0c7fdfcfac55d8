//! Joining the two ends of a stream at the relay: ask the device for a stream (the
//! `Incoming` header and its answer, under one deadline), then splice it to the caller's
//! stream or public TCP connection in a tracked task that shutdown waits for.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, info};

use super::Inner;
use super::events::{Counters, Event, StreamInfo};
use super::public::reset;
use crate::mux::Session;
use crate::protocol::{
    self, FrameReader, MAX_HEADER_LEN, Message, STREAM_OPEN_TIMEOUT, StatusCode,
};
use crate::splice::splice;
use crate::stream::Stream;

/// Most of a caller's early data (bytes it sent before the device answered) passed on to
/// the device while the relay waits for the answer. Below yamux's smallest stream window
/// (256 KiB), so passing it on never waits for a device that has not accepted yet; the
/// rest waits for the splice.
const EARLY_DATA_MAX: usize = 64 * 1024;
/// Size of one read of early data.
const EARLY_CHUNK: usize = 16 * 1024;

/// Why a caller's stream was not joined to the device's.
#[derive(Debug)]
pub(super) enum NotJoined {
    /// Refused (by the device, or by the relay's checks), or the device could not be
    /// reached: the caller is told, with this status and message.
    Refused(StatusCode, String),
    /// The caller failed (a reset) while the relay waited for the device's answer. Nobody
    /// is left to tell, and the device did not refuse: the device's stream is reset, so its
    /// service sees a failure, not a completed request.
    CallerGone(io::Error),
}

impl NotJoined {
    /// A refusal with `code` and `message`.
    pub(super) fn refused(code: StatusCode, message: impl Into<String>) -> Self {
        Self::Refused(code, message.into())
    }
}

/// Opens a stream to the device, sends the `Incoming` header and waits for its answer,
/// passing on meanwhile what the caller has already sent (early data, up to
/// [`EARLY_DATA_MAX`]), so a first request rides with the open. Opening and answering
/// share one [`STREAM_OPEN_TIMEOUT`], the caller's own deadline. On a refusal the device
/// has read none of the early data, and the caller is told it was not delivered. A caller
/// that fails meanwhile ends the open: the device's stream is dropped unanswered, which
/// resets it.
pub(super) async fn ask_device<C: AsyncRead + Unpin>(
    session: &Session,
    incoming: &Message,
    caller: &mut C,
) -> Result<Stream, NotJoined> {
    let unavailable = |m: String| NotJoined::Refused(StatusCode::Unavailable, m);
    let answer = async {
        let mut stream = session.open().await.map_err(|e| Err(e.to_string()))?;
        protocol::write_frame(&mut stream, incoming)
            .await
            .map_err(Ok)?;
        let heard = read_answer(&mut stream, caller).await.map_err(Ok)?;
        Ok::<_, Result<protocol::FrameError, String>>((stream, heard))
    };
    match tokio::time::timeout(STREAM_OPEN_TIMEOUT, answer).await {
        Ok(Err(Err(open))) => Err(unavailable(format!("cannot reach the device: {open}"))),
        Ok(Ok((
            stream,
            Heard::Answer(Message::Status {
                code: StatusCode::Ok,
                ..
            }),
        ))) => Ok(stream),
        Ok(Ok((_, Heard::Answer(Message::Status { code, message })))) => {
            Err(NotJoined::Refused(code, message))
        }
        Ok(Ok((_, Heard::Answer(other)))) => {
            Err(unavailable(format!("device answered {}", other.name())))
        }
        Ok(Ok((_, Heard::CallerFailed(e)))) => Err(NotJoined::CallerGone(e)),
        Ok(Err(Ok(e))) => Err(unavailable(format!("device stream failed: {e}"))),
        Err(_) => Err(unavailable("the device did not answer in time".into())),
    }
}

/// What the relay heard first while it waited for the device's answer.
enum Heard {
    /// The device's answer.
    Answer(Message),
    /// A failed read of the caller. Reported here, not left for the splice: a reset
    /// socket fails one read only (Linux), so the splice's next read would see a clean
    /// end, and the device a completed request.
    CallerFailed(io::Error),
}

/// Reads the device's answer; until it comes, copies what the caller sends to the device
/// (at most [`EARLY_DATA_MAX`]; an end of the caller's stream is left for the splice).
async fn read_answer<C: AsyncRead + Unpin>(
    device: &mut Stream,
    caller: &mut C,
) -> Result<Heard, protocol::FrameError> {
    enum Step {
        Answer(Result<Message, protocol::FrameError>),
        Early(io::Result<usize>),
    }
    let mut reader = FrameReader::new(MAX_HEADER_LEN);
    let mut chunk = Vec::new();
    let mut passed = 0;
    loop {
        let step = std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = reader.poll_read(cx, device) {
                return Poll::Ready(Step::Answer(answer));
            }
            if passed >= EARLY_DATA_MAX {
                return Poll::Pending;
            }
            if chunk.is_empty() {
                chunk = vec![0; EARLY_CHUNK];
            }
            let mut buf = ReadBuf::new(&mut chunk[..EARLY_CHUNK.min(EARLY_DATA_MAX - passed)]);
            match Pin::new(&mut *caller).poll_read(cx, &mut buf) {
                Poll::Ready(res) => Poll::Ready(Step::Early(res.map(|()| buf.filled().len()))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match step {
            Step::Answer(answer) => return answer.map(Heard::Answer),
            Step::Early(Err(e)) => return Ok(Heard::CallerFailed(e)),
            // The caller is done sending: the splice sees the end again.
            Step::Early(Ok(0)) => passed = EARLY_DATA_MAX,
            Step::Early(Ok(n)) => {
                tokio::io::AsyncWriteExt::write_all(device, &chunk[..n]).await?;
                passed += n;
            }
        }
    }
}

/// Who a joined stream connects.
pub(super) struct Joined {
    pub(super) caller: String,
    pub(super) device: String,
    pub(super) service: String,
    /// A public caller's address.
    pub(super) peer: Option<SocketAddr>,
    /// The other relay of a cross-relay stream.
    pub(super) relay: Option<String>,
}

/// The caller's end of a joined stream: an access client's stream or a public TCP
/// connection, and how to end it abruptly.
pub(super) trait CallerEnd: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ends the connection so its peer sees a failure, not a clean close.
    fn reset(self);
}

impl CallerEnd for Stream {
    fn reset(self) {
        drop(self); // a yamux stream dropped without shutdown is reset
    }
}

impl CallerEnd for TcpStream {
    fn reset(self) {
        reset(self);
    }
}

/// Joins the caller's end to a device stream in a task that shutdown waits for. The stream
/// is listed in [`Relay::streams`](crate::Relay::streams) with live byte counts until it
/// ends; an operator can cut it; `idle` without a byte either way ends it too. An abrupt
/// end resets both ends. `hold` (slots in caps) is released when it ends.
pub(super) fn spawn_join<C: CallerEnd, H: Send + 'static>(
    relay: &Inner,
    caller: C,
    mut device: Stream,
    who: Joined,
    idle: Option<Duration>,
    hold: H,
) {
    let id = relay.tables.next_id();
    let (counters, cut) = relay.tables.add_stream(StreamInfo {
        id,
        caller: who.caller.clone(),
        device: who.device.clone(),
        service: who.service.clone(),
        relay: who.relay.clone(),
        since: SystemTime::now(),
        up: 0,
        down: 0,
    });
    relay.tables.emit(Event::StreamOpened {
        stream: id,
        caller: who.caller.clone(),
        device: who.device.clone(),
        service: who.service.clone(),
        peer: who.peer,
        relay: who.relay.clone(),
    });
    crate::metrics::stream_opened(who.peer.is_some());
    let tables = relay.tables.clone();
    let task = async move {
        let started = Instant::now();
        let activity = Arc::new(Activity::new());
        let mut watched = Watched {
            inner: caller,
            activity: activity.clone(),
            counters: counters.clone(),
        };
        let idle_for = async {
            match idle {
                Some(idle) => activity.idle_for(idle).await,
                None => std::future::pending().await,
            }
        };
        let clean = tokio::select! {
            clean = join(&mut watched, &mut device) => clean,
            () = idle_for => {
                info!(?idle, "connection idle; closing");
                false
            }
            () = cut.cancelled() => {
                info!("stream cut by the operator");
                false
            }
        };
        if !clean {
            watched.inner.reset();
        }
        drop(hold);
        tables.remove_stream(id);
        let (up, down) = (
            counters.up.load(Ordering::Relaxed),
            counters.down.load(Ordering::Relaxed),
        );
        crate::metrics::stream_closed(who.peer.is_some(), up, down);
        tables.emit(Event::StreamClosed {
            stream: id,
            caller: who.caller,
            device: who.device,
            service: who.service,
            up,
            down,
            duration: started.elapsed(),
            clean,
        });
    };
    relay
        .streams
        .spawn(task.instrument(tracing::Span::current()));
}

/// Copies both ways; returns whether both directions ended cleanly. On failure the caller
/// drops both ends, which resets the yamux streams.
async fn join<A>(a: &mut A, device: &mut Stream) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    match splice(a, device).await {
        Ok((up, down)) => {
            info!(up, down, elapsed = ?started.elapsed(), "stream closed");
            true
        }
        Err(e) => {
            info!(error = %e, "stream reset");
            false
        }
    }
}

/// When a connection last moved a byte, in milliseconds since `base`.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    /// Completes once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// The caller's end of a joined stream, noting every read and write in its [`Activity`]
/// and its byte counters (reads from the caller go up to the device).
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    counters: Arc<Counters>,
}

impl<T> Watched<T> {
    /// Notes a write to the caller (bytes going down from the device).
    fn wrote(&self, res: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = res {
            self.counters.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        if res.is_ready() {
            self.activity.touch();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if res.is_ready() {
            self.activity.touch();
            let n = (buf.filled().len() - before) as u64;
            self.counters.up.fetch_add(n, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&res);
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        self.wrote(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
