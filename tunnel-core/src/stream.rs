//! The public [`Stream`]: one tunnelled byte stream, and the splice helper.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::mux::{RawStream, SessionState};

/// Buffer per direction while data flows through a splice: large enough that yamux frames
/// fill whole TLS records (tokio's default of 8 KiB halves throughput). Freed when the
/// direction goes quiet.
pub(crate) const SPLICE_BUFFER: usize = 64 * 1024;
/// Buffer per direction while a splice is quiet (an idle ssh session, a held-open
/// connection): with tokio's `copy_bidirectional` every idle tunnelled connection held
/// 2 × 64 KiB at the relay. A read that fills this switches to [`SPLICE_BUFFER`].
const QUIET_BUFFER: usize = 2 * 1024;

/// One tunnelled, ordered, reliable byte stream: tokio `AsyncRead + AsyncWrite`.
///
/// - `shutdown()` half-closes: the far end reads end-of-stream and may still reply.
/// - Dropping the stream without `shutdown()` resets it; the far end reads an error.
/// - If the session under the stream dies (relay gone, heartbeat lost), reads and writes
///   fail with `ConnectionReset`; an abrupt failure never looks like a clean end of stream.
///   One limit: after *you* have shut down your write half, a reset by the far side reads
///   as end of stream (yamux cannot tell the two apart once both halves are closed).
pub struct Stream {
    inner: RawStream,
    session: Arc<SessionState>,
    /// Completes when the session ends; polled whenever the stream would wait, so no
    /// reader or writer outlives its session.
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    write_closed: bool,
    /// This stream's slot in the session's stream limit, freed on drop.
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    pub(crate) fn new(
        inner: RawStream,
        session: Arc<SessionState>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let ended = Box::pin(session.ended.clone().cancelled_owned());
        Self {
            inner,
            session,
            ended,
            write_closed: false,
            _permit: permit,
        }
    }

    /// Turns `Pending` into a reset once the session has ended.
    fn pending_or_lost<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.ended.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(lost())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "tunnel session lost")
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.get_ref().id())
            .finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let Poll::Ready(res) = Pin::new(&mut this.inner).poll_read(cx, buf) else {
            return this.pending_or_lost(cx);
        };
        res.map_err(|e| reset_if_dead(e, &this.session))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            // End of stream: tell a FIN from a reset or a lost session.
            if this.session.is_dead() {
                return Poll::Ready(Err(lost()));
            }
            if this.inner.get_ref().is_closed() && !this.write_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset by the far end",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(res) => Poll::Ready(res.map_err(|e| reset_if_dead(e, &this.session))),
            Poll::Pending => this.pending_or_lost(cx),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(res) => Poll::Ready(res.map_err(|e| reset_if_dead(e, &this.session))),
            Poll::Pending => this.pending_or_lost(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(res) => {
                res.map_err(|e| reset_if_dead(e, &this.session))?;
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.pending_or_lost(cx),
        }
    }
}

fn reset_if_dead(e: io::Error, session: &SessionState) -> io::Error {
    if session.is_dead() { lost() } else { e }
}

/// Copies both ways until both directions have ended, carrying half-close across. On an
/// error, returns it; the caller drops both ends, which resets them.
pub(crate) async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(
        pump(&mut a_read, &mut b_write),
        pump(&mut b_read, &mut a_write)
    )
}

/// Copies one direction to its end, then half-closes the writer. Holds a large buffer only
/// while data keeps coming: idle, it waits with a small one.
async fn pump<R, W>(r: &mut R, w: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut quiet = [0u8; QUIET_BUFFER];
    let mut busy: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let n = if busy.is_empty() {
            let n = r.read(&mut quiet).await?;
            w.write_all(&quiet[..n]).await?;
            if n == QUIET_BUFFER {
                busy = vec![0; SPLICE_BUFFER];
            }
            n
        } else {
            // `read` is cancel-safe: a read that would wait is dropped, and so is the
            // large buffer, until the next burst.
            let ready = r.read(&mut busy).now_or_never();
            let Some(n) = ready else {
                busy = Vec::new();
                w.flush().await?;
                continue;
            };
            let n = n?;
            w.write_all(&busy[..n]).await?;
            n
        };
        if n == 0 {
            break;
        }
        total += n as u64;
        if busy.is_empty() {
            w.flush().await?;
        }
    }
    w.shutdown().await?;
    Ok(total)
}
