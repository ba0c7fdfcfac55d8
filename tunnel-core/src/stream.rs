//! The public [`Stream`]: one tunnelled byte stream over a yamux stream, which reports a
//! lost session as an error and never as a clean end.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::mux::{RawStream, SessionState};

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
