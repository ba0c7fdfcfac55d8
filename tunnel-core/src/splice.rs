//! Splicing a tunnel [`Stream`] with another byte stream both ways (relay: caller ↔
//! device; device: stream ↔ local service; access: local connection ↔ stream), carrying
//! half-close across and saying which side failed.
//!
//! The data path of one byte through a splice, with no copy of the splice's own:
//! - **out of the stream**: the stream's buffer is taken whole ([`Stream::poll_take`]) and
//!   written to the other end from there;
//! - **into the stream**: the other end is read straight into a frame behind room for its
//!   header, which the session queues whole when no other frame waits
//!   ([`Stream::poll_submit`]).
//!
//! Both directions run in the caller's task, polled in turn: no `split()` lock, no task per
//! direction. A quiet direction holds no buffer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Stream;
use crate::mux::HEADER_LEN;

/// Largest frame body a splice reads at once while data flows: one read of the other end
/// becomes one frame, its header and body 64 KiB (tokio's default of 8 KiB halves
/// throughput; the receiving session reads 64 KiB at a time).
const BUSY_FRAME: usize = 64 * 1024 - HEADER_LEN;
/// Frame body while a direction is quiet (an idle ssh session, a held-open connection):
/// a read that fills it switches to [`BUSY_FRAME`] until a read would wait.
const QUIET_FRAME: usize = 2 * 1024;
/// A buffer taken from the stream is kept for the next take if it is at most this large;
/// a larger one is freed when the direction goes quiet.
const KEEP_BUFFER: usize = 4 * 1024;
/// Rounds one direction makes per poll before it yields, so that a peer that never stops
/// sending cannot starve the other direction or the runtime.
const ROUNDS_PER_POLL: usize = 16;

/// Which end of a splice an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The first argument of [`splice`].
    A,
    /// The second argument of [`splice`]: the tunnel stream.
    B,
}

/// A splice failed on one of its two ends.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub(crate) struct SpliceError {
    /// The end whose read, write or shutdown failed.
    pub(crate) side: Side,
    #[source]
    pub(crate) source: io::Error,
}

fn on(side: Side) -> impl Fn(io::Error) -> SpliceError {
    move |source| SpliceError { side, source }
}

/// Copies both ways until both directions have ended, carrying half-close across; returns
/// the bytes moved `(a → b, b → a)`. On an error, returns it with the side it came from; the
/// caller drops both ends, which resets the tunnel stream.
pub(crate) async fn splice<A>(a: &mut A, b: &mut Stream) -> Result<(u64, u64), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = IntoStream::default();
    let mut down = OutOfStream::default();
    poll_fn(|cx| {
        let up = up.poll(cx, a, b)?;
        let down = down.poll(cx, a, b)?;
        match (up, down) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Where a direction is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Copying,
    /// The reader ended: half-closing the writer.
    ShuttingDown,
    Done,
}

impl Phase {
    /// Once the reader ended, half-closes the direction's writer `w` (on `side`); `None`
    /// while the direction is still copying.
    fn poll_end<W>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        side: Side,
    ) -> Option<Poll<Result<(), SpliceError>>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        match self {
            Self::Copying => None,
            Self::Done => Some(Poll::Ready(Ok(()))),
            Self::ShuttingDown => Some(Pin::new(w).poll_shutdown(cx).map(|done| {
                done.map_err(on(side))?;
                *self = Self::Done;
                Ok(())
            })),
        }
    }
}

/// `a → b`: reads into frames and queues them on the stream.
#[derive(Default)]
struct IntoStream {
    /// Header room, then the body read and not queued yet.
    frame: Vec<u8>,
    /// Send window reserved for `frame`.
    reserved: usize,
    busy: bool,
    total: u64,
    phase: Phase,
}

impl IntoStream {
    fn poll<A>(
        &mut self,
        cx: &mut Context<'_>,
        a: &mut A,
        b: &mut Stream,
    ) -> Poll<Result<u64, SpliceError>>
    where
        A: AsyncRead + Unpin + ?Sized,
    {
        for _ in 0..ROUNDS_PER_POLL {
            if let Some(ended) = self.phase.poll_end(cx, &mut *b, Side::B) {
                ready!(ended)?;
                return Poll::Ready(Ok(self.total));
            }
            if self.frame.len() > HEADER_LEN {
                ready!(b.poll_submit(cx, &mut self.frame, self.reserved)).map_err(on(Side::B))?;
                self.reserved = 0;
                continue;
            }
            if self.reserved == 0 {
                // The reservation comes first, so while the window is spent this direction
                // does not read `a` (its end of file or failure is seen once the peer grants
                // more, which its reading of what we sent always does).
                let Poll::Ready(reserved) = b.poll_reserve(cx, BUSY_FRAME) else {
                    // Stalled by the peer: keep no large buffer meanwhile (a swap may have
                    // handed us the session's write buffer).
                    if self.frame.capacity() > HEADER_LEN + BUSY_FRAME {
                        self.frame = Vec::new();
                    }
                    return Poll::Pending;
                };
                self.reserved = reserved.map_err(on(Side::B))?;
            }
            let room = self
                .reserved
                .min(if self.busy { BUSY_FRAME } else { QUIET_FRAME });
            self.frame.clear();
            self.frame.reserve(HEADER_LEN + room);
            self.frame.resize(HEADER_LEN, 0);
            let read = tokio_util::io::poll_read_buf(
                Pin::new(&mut *a),
                cx,
                &mut (&mut self.frame).limit(room),
            );
            match read {
                Poll::Pending => {
                    // Quiet: no buffer while waiting (the reservation stays: this
                    // direction is the stream's only writer).
                    self.busy = false;
                    self.frame = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(on(Side::A)(e))),
                Poll::Ready(Ok(0)) => {
                    // Gives the reservation back; an empty frame queues nothing.
                    self.frame.clear();
                    ready!(b.poll_submit(cx, &mut self.frame, self.reserved))
                        .map_err(on(Side::B))?;
                    self.reserved = 0;
                    self.frame = Vec::new();
                    self.phase = Phase::ShuttingDown;
                }
                Poll::Ready(Ok(n)) => {
                    self.total += n as u64;
                    if n == QUIET_FRAME {
                        self.busy = true;
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `b → a`: takes the stream's buffered bytes and writes them out.
#[derive(Default)]
struct OutOfStream {
    /// Taken from the stream and not written yet.
    buf: VecDeque<u8>,
    unflushed: bool,
    total: u64,
    phase: Phase,
}

impl OutOfStream {
    fn poll<A>(
        &mut self,
        cx: &mut Context<'_>,
        a: &mut A,
        b: &mut Stream,
    ) -> Poll<Result<u64, SpliceError>>
    where
        A: AsyncWrite + Unpin + ?Sized,
    {
        for _ in 0..ROUNDS_PER_POLL {
            if let Some(ended) = self.phase.poll_end(cx, &mut *a, Side::A) {
                ready!(ended)?;
                return Poll::Ready(Ok(self.total));
            }
            if self.buf.is_empty() {
                match b.poll_take(cx, &mut self.buf) {
                    Poll::Pending => {
                        if self.buf.capacity() > KEEP_BUFFER {
                            self.buf = VecDeque::new();
                        }
                        if self.unflushed {
                            ready!(Pin::new(&mut *a).poll_flush(cx)).map_err(on(Side::A))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(on(Side::B)(e))),
                    Poll::Ready(Ok(())) if self.buf.is_empty() => {
                        self.buf = VecDeque::new();
                        self.phase = Phase::ShuttingDown;
                        continue;
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
            let (front, back) = self.buf.as_slices();
            let write = if back.is_empty() || !a.is_write_vectored() {
                Pin::new(&mut *a).poll_write(cx, front)
            } else {
                let both = [IoSlice::new(front), IoSlice::new(back)];
                Pin::new(&mut *a).poll_write_vectored(cx, &both)
            };
            let n = ready!(write).map_err(on(Side::A))?;
            if n == 0 {
                return Poll::Ready(Err(on(Side::A)(io::ErrorKind::WriteZero.into())));
            }
            self.buf.drain(..n);
            self.total += n as u64;
            self.unflushed = true;
            b.release(n);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::time::Duration;

    use super::*;
    use crate::config::Limits;
    use crate::mux::StreamPair;

    #[tokio::test]
    async fn a_splice_carries_both_directions_to_their_end_and_counts_bytes() {
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let pair = StreamPair::new(&Limits::default()).await;
        let (mut b, mut b_far) = (pair.near, pair.far);
        let task = tokio::spawn(async move { splice(&mut a, &mut b).await });
        a_far.write_all(b"hello").await.unwrap();
        a_far.shutdown().await.unwrap();
        b_far.write_all(b"hi").await.unwrap();
        b_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        got.clear();
        a_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        assert_eq!(task.await.unwrap().unwrap(), (5, 2));
    }

    /// Bytes whose position can be checked: a slice that arrived shifted or twice fails.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    }

    #[tokio::test]
    async fn bulk_bytes_cross_a_splice_whole_both_ways_through_small_pipes() {
        const LEN: usize = 5 * 1024 * 1024 + 123;
        // A small pipe on the plain side makes writes partial and the stream's buffer
        // fill and wrap while the splice waits.
        let (mut a, a_far) = tokio::io::duplex(7 * 1024);
        let pair = StreamPair::new(&Limits::default()).await;
        let (mut b, b_far) = (pair.near, pair.far);
        let splice = tokio::spawn(async move { splice(&mut a, &mut b).await });
        let (up, down) = (pattern(LEN, 1), pattern(LEN, 2));
        let sender = |mut w: Box<dyn AsyncWrite + Send + Unpin>, data: Vec<u8>| async move {
            for piece in data.chunks(3000) {
                w.write_all(piece).await.unwrap();
            }
            w.shutdown().await.unwrap();
            w
        };
        let receiver = |mut r: Box<dyn AsyncRead + Send + Unpin>| async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let (a_read, a_write) = tokio::io::split(a_far);
        let (b_read, b_write) = tokio::io::split(b_far);
        let (_, _, at_b, at_a) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(
                sender(Box::new(a_write), up.clone()),
                sender(Box::new(b_write), down.clone()),
                receiver(Box::new(b_read)),
                receiver(Box::new(a_read)),
            )
        })
        .await
        .expect("the transfer finishes");
        assert!(
            at_b == up,
            "a → b: {} of {LEN} bytes, or misplaced",
            at_b.len()
        );
        assert!(
            at_a == down,
            "b → a: {} of {LEN} bytes, or misplaced",
            at_a.len()
        );
        assert_eq!(splice.await.unwrap().unwrap(), (LEN as u64, LEN as u64));
    }

    #[tokio::test]
    async fn a_reset_stream_fails_the_splice_on_the_stream_side() {
        let (mut a, _a_far) = tokio::io::duplex(1024);
        let pair = StreamPair::new(&Limits::default()).await;
        let (mut b, far) = (pair.near, pair.far);
        let splice = tokio::spawn(async move { splice(&mut a, &mut b).await });
        drop(far);
        let err = tokio::time::timeout(Duration::from_secs(10), splice)
            .await
            .expect("the splice ends")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.side, Side::B);
        assert_eq!(err.source.kind(), io::ErrorKind::ConnectionReset);
        // The stream's reset, not a lost session.
        assert!(
            err.source.to_string().contains("reset by the far end"),
            "{}",
            err.source
        );
    }

    #[tokio::test]
    async fn a_failed_read_names_the_side_it_came_from() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
        }
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                b: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let pair = StreamPair::new(&Limits::default()).await;
        let mut b = pair.near;
        let err = splice(&mut Broken, &mut b).await.unwrap_err();
        assert_eq!(err.side, Side::A);
        assert_eq!(err.source.kind(), io::ErrorKind::BrokenPipe);
    }
}
