//! Large socket reads under TLS while data flows, none of the buffer while it does not.
//!
//! rustls asks its socket for at most 4 KiB at a time (the read size of its deframer), so
//! a full 16 KiB record costs five `read` syscalls, and a bulk transfer one syscall per
//! 4 KiB at every TLS hop (relay, agent and access client alike). [`ReadAhead`] sits
//! between the socket and rustls: while data keeps arriving it reads up to
//! [`READ_AHEAD`] per syscall and hands rustls its 4 KiB slices from memory; on a quiet
//! connection (an idle device, a heartbeat, keystrokes) it reads straight into rustls's
//! buffer and holds nothing, so an idle session costs no more than before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per syscall while data flows: four full TLS records.
const READ_AHEAD: usize = 64 * 1024;

/// A socket whose reads are batched while busy (see the module doc). Writes pass through.
#[derive(Debug)]
pub(crate) struct ReadAhead<T> {
    io: T,
    /// Empty (unallocated) while the connection is quiet; [`READ_AHEAD`] long while busy.
    buf: Vec<u8>,
    /// `buf[pos..filled]` is read from the socket and not yet handed on.
    pos: usize,
    filled: usize,
}

impl<T> ReadAhead<T> {
    pub(crate) fn new(io: T) -> Self {
        Self {
            io,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
        }
    }

    /// Bytes read ahead and not yet handed on (tests).
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.filled - self.pos
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = out.remaining();
        if this.pos == this.filled && want > 0 {
            if this.buf.is_empty() {
                // Quiet: straight into the caller's buffer. A read that fills it says
                // more is waiting, so the next one reads ahead.
                let before = out.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                if out.filled().len() - before == want {
                    this.buf = vec![0; READ_AHEAD];
                }
                return Poll::Ready(Ok(()));
            }
            let mut ahead = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut ahead))?;
            this.filled = ahead.filled().len();
            this.pos = 0;
        }
        let n = want.min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        // Drained after a read no larger than the caller's: the flow has stopped (or the
        // socket ended), so the buffer goes until data flows again.
        if this.pos == this.filled && this.filled <= want {
            this.buf = Vec::new();
            (this.pos, this.filled) = (0, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_arrive_in_order_across_quiet_and_busy_reads() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut rx = ReadAhead::new(rx);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        for _ in 0..1000 {
            let n = rx.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut rx = ReadAhead::new(rx);
        let mut chunk = [0u8; 4096];
        tx.write_all(b"ping").await.unwrap();
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 4);
        assert_eq!(rx.buf.capacity(), 0, "a short read must not allocate");

        // A burst: the first read fills the caller's buffer, the next ones read ahead.
        tx.write_all(&[7u8; 20_000]).await.unwrap();
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 4096);
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 4096);
        assert_eq!(rx.buffered(), 20_000 - 2 * 4096);
        let rest: usize = [
            rx.read(&mut chunk).await.unwrap(),
            rx.read(&mut chunk).await.unwrap(),
            rx.read(&mut chunk).await.unwrap(),
        ]
        .iter()
        .sum();
        assert_eq!(rest, 20_000 - 2 * 4096);
        assert_eq!(rx.buffered(), 0);
        // The burst is over: the next short read gives the buffer back.
        tx.write_all(b"pong").await.unwrap();
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 4);
        assert_eq!(
            rx.buf.capacity(),
            0,
            "the buffer is freed once the flow stops"
        );
    }

    #[tokio::test]
    async fn end_of_stream_reads_as_zero_and_frees_the_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut rx = ReadAhead::new(rx);
        let mut chunk = [0u8; 1024];
        tx.write_all(&[1u8; 3000]).await.unwrap();
        drop(tx);
        let mut total = 0;
        for _ in 0..10 {
            match rx.read(&mut chunk).await.unwrap() {
                0 => break,
                n => total += n,
            }
        }
        assert_eq!(total, 3000);
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 0);
        assert_eq!(rx.buf.capacity(), 0);
    }
}
