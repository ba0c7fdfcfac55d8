//! [`RawStream`]: the handle of one yamux stream, which reads and writes through the
//! session's [`Conn`](super::conn::Conn) under its lock.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Conn;
use super::session::SessionState;
use crate::util::lock;

/// One yamux stream, in tokio's I/O traits.
///
/// - A read returns buffered bytes first; then end of stream once the peer sent FIN, or
///   `ConnectionReset` if the peer reset the stream or the session ended without its FIN.
/// - A write queues frames for the driver within the stream's send window; `flush` has
///   nothing to do (the driver writes every round).
/// - `shutdown` sends FIN after what was written. Dropping the handle resets the stream
///   unless both sides sent FIN.
pub(crate) struct RawStream {
    id: u32,
    state: Arc<SessionState>,
}

impl RawStream {
    pub(crate) fn new(id: u32, state: Arc<SessionState>) -> Self {
        Self { id, state }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The application accepted this stream the peer opened: see [`Conn::acknowledge`].
    pub(crate) fn acknowledge(&self) {
        self.with(|conn| conn.acknowledge(self.id));
    }

    /// Takes the stream's buffered bytes whole: see [`Conn::take`].
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<u8>,
    ) -> Poll<io::Result<()>> {
        self.with(|conn| conn.take(self.id, cx, into))
    }

    /// Bytes from [`RawStream::poll_take`] were delivered: see [`Conn::release`].
    pub(crate) fn release(&self, n: usize) {
        self.with(|conn| conn.release(self.id, n));
    }

    /// Reserves send window for one frame: see [`Conn::reserve`].
    pub(crate) fn poll_reserve(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        self.with(|conn| conn.reserve(self.id, cx, max))
    }

    /// Queues a frame filled after [`RawStream::poll_reserve`]: see [`Conn::submit`].
    pub(crate) fn poll_submit(
        &self,
        cx: &mut Context<'_>,
        frame: &mut Vec<u8>,
        reserved: usize,
    ) -> Poll<io::Result<()>> {
        self.with(|conn| conn.submit(self.id, cx, frame, reserved))
    }

    /// Runs `f` under the session's lock, then wakes the driver if `f` queued the first
    /// frames of its next round (a driver already writing takes later ones by itself).
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> R {
        let (result, wake_driver) = {
            let mut conn = lock(&self.state.conn);
            let was_empty = conn.out.is_empty();
            let result = f(&mut conn);
            (result, was_empty && !conn.out.is_empty())
        };
        if wake_driver {
            self.state.driver.wake();
        }
        result
    }
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|conn| conn.read(self.id, cx, buf))
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|conn| conn.write(self.id, cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.with(|conn| conn.shutdown(self.id)))
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        let freed = self.with(|conn| {
            conn.drop_stream(self.id);
            std::mem::take(&mut conn.backlog_moved)
        });
        if freed {
            self.state.acks.notify_waiters();
        }
    }
}
