//! Joining the two ends of a stream at the relay: ask the device for a stream (the
//! `Incoming` header and its answer, under one deadline), then splice it to the caller's
//! stream or public TCP connection in a tracked task that shutdown waits for.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, info};

use super::Inner;
use super::public::reset;
use crate::mux::Session;
use crate::protocol::{self, MAX_HEADER_LEN, Message, STREAM_OPEN_TIMEOUT, StatusCode};
use crate::splice::splice;
use crate::stream::Stream;

/// Opens a stream to the device, sends the `Incoming` header and waits for its answer.
/// Opening and answering share one [`STREAM_OPEN_TIMEOUT`], the caller's own deadline.
pub(super) async fn ask_device(
    session: &Session,
    incoming: &Message,
) -> Result<Stream, (StatusCode, String)> {
    let unavailable = |m: String| (StatusCode::Unavailable, m);
    let answer = async {
        let mut stream = session.open().await.map_err(|e| Err(e.to_string()))?;
        protocol::write_frame(&mut stream, incoming)
            .await
            .map_err(Ok)?;
        let reply = protocol::read_frame(&mut stream, MAX_HEADER_LEN)
            .await
            .map_err(Ok)?;
        Ok::<_, Result<protocol::FrameError, String>>((stream, reply))
    };
    match tokio::time::timeout(STREAM_OPEN_TIMEOUT, answer).await {
        Ok(Err(Err(open))) => Err(unavailable(format!("cannot reach the device: {open}"))),
        Ok(Ok((
            stream,
            Message::Status {
                code: StatusCode::Ok,
                ..
            },
        ))) => Ok(stream),
        Ok(Ok((_, Message::Status { code, message }))) => Err((code, message)),
        Ok(Ok((_, other))) => Err(unavailable(format!("device answered {}", other.name()))),
        Ok(Err(Ok(e))) => Err(unavailable(format!("device stream failed: {e}"))),
        Err(_) => Err(unavailable("the device did not answer in time".into())),
    }
}

/// Joins an access stream to a device stream in a tracked task, so shutdown can wait for it.
pub(super) fn spawn_splice(relay: &Inner, mut access: Stream, mut device: Stream) {
    let task = async move {
        join(&mut access, &mut device).await;
    };
    relay
        .streams
        .spawn(task.instrument(tracing::Span::current()));
}

/// Joins a public TCP connection to a device stream; an abrupt end resets the TCP side,
/// and so does `idle` without a byte either way. `hold` (the connection's slots in the
/// public caps) is released when the splice ends.
pub(super) fn spawn_splice_tcp<H: Send + 'static>(
    relay: &Inner,
    tcp: TcpStream,
    mut device: Stream,
    idle: Duration,
    hold: H,
) {
    let task = async move {
        let activity = Arc::new(Activity::new());
        let mut watched = Watched {
            inner: tcp,
            activity: activity.clone(),
        };
        let clean = tokio::select! {
            clean = join(&mut watched, &mut device) => clean,
            () = activity.idle_for(idle) => {
                info!(?idle, "public connection idle; closing");
                false
            }
        };
        if !clean {
            reset(watched.inner);
        }
        drop(hold);
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

/// A connection that notes every read and write in its [`Activity`].
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if res.is_ready() {
            self.activity.touch();
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
        if res.is_ready() {
            self.activity.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
