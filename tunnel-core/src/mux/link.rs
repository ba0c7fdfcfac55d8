//! The socket under yamux, shared by yamux (through [`LinkIo`]) and the session driver
//! (through [`Flush`]): writes are gathered and flushed once per driver round, and I/O
//! errors mark the session dead before yamux wakes its streams.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::session::SessionState;
use crate::util::lock;

/// Size of the write buffer between yamux and TLS: four yamux frames (header + body of
/// `SPLIT_SEND_SIZE`), so the frames of one driver round leave as four full TLS records in
/// one `writev` instead of a record and a syscall each. Allocated only while data flows.
const WRITE_BUFFER: usize = 64 * 1024;
/// A flush that moved less than this frees the write buffer: a quiet session (heartbeats,
/// keystrokes) holds no buffer between rounds, which keeps idle devices cheap.
const KEEP_BUFFER_AFTER: usize = 16 * 1024;

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
pub(super) struct Link<T> {
    io: T,
    /// Frames gathered for the next write; `written` of them are already on the socket.
    buf: Vec<u8>,
    written: usize,
    state: Arc<SessionState>,
}

impl<T> Link<T> {
    pub(super) fn new(io: T, state: Arc<SessionState>) -> Self {
        Self {
            io,
            buf: Vec::new(),
            written: 0,
            state,
        }
    }
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
pub(super) trait Flush: Send + Sync {
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: AsyncWrite + Unpin + Send> Flush for Mutex<Link<T>> {
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(self).poll_flush_all(cx)
    }
}

/// yamux's side of a [`Link`].
pub(super) struct LinkIo<T>(pub(super) Arc<Mutex<Link<T>>>);

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
