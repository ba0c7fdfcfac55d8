//! The public [`Stream`]: one tunnelled byte stream over a yamux stream, which reports a
//! lost session as an error and never as a clean end.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::error::DialError;
use crate::mux::{HEADER_LEN, RawStream, SessionState};
use crate::protocol::{
    FrameError, FrameReader, MAX_HEADER_LEN, Message, STREAM_OPEN_TIMEOUT, StatusCode,
};

/// One tunnelled, ordered, reliable byte stream: tokio `AsyncRead + AsyncWrite`.
///
/// - `shutdown()` half-closes: the far end reads end-of-stream and may still reply.
/// - Dropping the stream without `shutdown()` resets it; the far end reads an error.
/// - If the session under the stream dies (relay gone, heartbeat lost), reads and writes
///   fail with `ConnectionReset`; an abrupt failure never looks like a clean end of stream.
///   A reset by the far end reads as `ConnectionReset` too, after the bytes it sent
///   before it.
/// - A stream from [`Dialer::dial_early`](crate::Dialer::dial_early) reads the relay's
///   answer on its first read: a refusal is that read's error (see there).
pub struct Stream {
    inner: RawStream,
    session: Arc<SessionState>,
    /// Completes when the session ends; polled whenever the stream would wait, so no
    /// reader or writer outlives its session.
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The opener's answer, when it is read lazily (early data).
    answer: Answer,
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
            answer: Answer::Ok,
            _permit: permit,
        }
    }

    /// Acknowledges a stream the peer opened, once it is accepted.
    pub(crate) fn acknowledge(&self) {
        self.inner.acknowledge();
    }

    /// The opener's answer (a [`Message::Status`]) comes first in the stream and is read
    /// by the first read, within [`STREAM_OPEN_TIMEOUT`]; bytes written before it are
    /// early data.
    pub(crate) fn expect_answer(&mut self) {
        self.answer = Answer::Pending(Box::new(Pending {
            reader: FrameReader::new(MAX_HEADER_LEN),
            written: 0,
            deadline: Box::pin(tokio::time::sleep(STREAM_OPEN_TIMEOUT)),
        }));
    }

    /// Reads the answer if it is pending: `Ready(Ok)` once the stream is open.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pending = match &mut self.answer {
            Answer::Ok => return Poll::Ready(Ok(())),
            Answer::Failed { kind, text } => {
                return Poll::Ready(Err(io::Error::new(*kind, text.clone())));
            }
            Answer::Pending(p) => p,
        };
        let undelivered = pending.written;
        let error = match pending.reader.poll_read(cx, &mut self.inner) {
            Poll::Ready(Ok(Message::Status {
                code: StatusCode::Ok,
                ..
            })) => {
                self.answer = Answer::Ok;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(Message::Status { code, message })) => {
                let message = if undelivered > 0 {
                    format!(
                        "{message} (the {undelivered} bytes written before this answer were not delivered)"
                    )
                } else {
                    message
                };
                let e = DialError::from_status(code, message);
                io::Error::new(io::ErrorKind::ConnectionRefused, e)
            }
            Poll::Ready(Ok(other)) => {
                let e = DialError::Protocol(format!("expected status, got {}", other.name()));
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
            Poll::Ready(Err(FrameError::Io(e))) => reset_if_dead(e, &self.session),
            Poll::Ready(Err(e)) => io::Error::new(
                io::ErrorKind::InvalidData,
                DialError::Protocol(e.to_string()),
            ),
            Poll::Pending => {
                if pending.deadline.as_mut().poll(cx).is_ready() {
                    io::Error::new(io::ErrorKind::TimedOut, DialError::Timeout)
                } else {
                    return self.pending_or_lost(cx);
                }
            }
        };
        // The first failure carries the typed error; later calls repeat its text.
        self.answer = Answer::Failed {
            kind: error.kind(),
            text: error.to_string(),
        };
        Poll::Ready(Err(error))
    }

    /// The splice's read: takes the stream's buffered bytes whole instead of copying them
    /// (see [`RawStream::poll_take`]); `into` left empty is the end of the stream. The
    /// window goes back to the peer as [`Stream::release`] reports bytes delivered.
    pub(crate) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<u8>,
    ) -> Poll<io::Result<()>> {
        if !matches!(self.answer, Answer::Ok) {
            std::task::ready!(self.poll_answer(cx))?;
        }
        let Poll::Ready(res) = self.inner.poll_take(cx, into) else {
            return self.pending_or_lost(cx);
        };
        res.map_err(|e| reset_if_dead(e, &self.session))?;
        self.end_or_lost(into.is_empty())
    }

    /// `n` bytes from [`Stream::poll_take`] were delivered.
    pub(crate) fn release(&mut self, n: usize) {
        self.inner.release(n);
    }

    /// The splice's write, first half: reserves up to `max` bytes of send window for one
    /// frame that the caller fills behind [`HEADER_LEN`] bytes of room and queues with
    /// [`Stream::poll_submit`].
    pub(crate) fn poll_reserve(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        if let Answer::Failed { kind, text } = &self.answer {
            return Poll::Ready(Err(io::Error::new(*kind, text.clone())));
        }
        match self.inner.poll_reserve(cx, max) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_failed(cx, e))),
            Poll::Pending => self.pending_or_lost(cx),
        }
    }

    /// The splice's write, second half: queues the frame, taking its buffer whole when it
    /// can, and leaves `frame` empty.
    pub(crate) fn poll_submit(
        &mut self,
        cx: &mut Context<'_>,
        frame: &mut Vec<u8>,
        reserved: usize,
    ) -> Poll<io::Result<()>> {
        let body = frame.len().saturating_sub(HEADER_LEN);
        match self.inner.poll_submit(cx, frame, reserved) {
            Poll::Ready(Ok(())) => {
                if let Answer::Pending(p) = &mut self.answer {
                    p.written += body as u64;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_failed(cx, e))),
            Poll::Pending => self.pending_or_lost(cx),
        }
    }

    /// What a read that found no byte means: the end of the stream, unless the session
    /// died under it (a FIN never looks like a lost session).
    fn end_or_lost(&self, nothing: bool) -> Poll<io::Result<()>> {
        if nothing && self.session.is_dead() {
            return Poll::Ready(Err(lost()));
        }
        Poll::Ready(Ok(()))
    }

    /// The error a failed write reports.
    fn write_failed(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        // A refused stream is closed by the far end, maybe before this write: its answer,
        // already here, is the error to give. The read side of a closed stream never
        // waits, so this takes no reader's wakeup.
        if matches!(self.answer, Answer::Pending(_))
            && let Poll::Ready(Err(refused)) = self.poll_answer(cx)
        {
            return refused;
        }
        reset_if_dead(e, &self.session)
    }

    /// Turns `Pending` into a reset once the session has ended.
    fn pending_or_lost<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.ended.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(lost())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Whether a stream's answer is still to be read (see [`Stream::expect_answer`]).
enum Answer {
    /// Open: the answer was `ok`, or the stream was handed over open.
    Ok,
    /// Not read yet.
    Pending(Box<Pending>),
    /// Refused or broken before it opened: every later read and write fails.
    Failed { kind: io::ErrorKind, text: String },
}

struct Pending {
    reader: FrameReader,
    /// Early data written meanwhile, for the refusal's message.
    written: u64,
    deadline: Pin<Box<Sleep>>,
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "tunnel session lost")
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.id())
            .finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !matches!(this.answer, Answer::Ok) {
            std::task::ready!(this.poll_answer(cx))?;
        }
        let before = buf.filled().len();
        let Poll::Ready(res) = Pin::new(&mut this.inner).poll_read(cx, buf) else {
            return this.pending_or_lost(cx);
        };
        res.map_err(|e| reset_if_dead(e, &this.session))?;
        this.end_or_lost(buf.filled().len() == before && buf.remaining() > 0)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Only a known refusal stops a write: polling the answer here would take the read
        // side's wakeup from a task that reads.
        if let Answer::Failed { kind, text } = &this.answer {
            return Poll::Ready(Err(io::Error::new(*kind, text.clone())));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if let Answer::Pending(p) = &mut this.answer {
                    p.written += n as u64;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.write_failed(cx, e))),
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
            Poll::Ready(res) => Poll::Ready(res.map_err(|e| reset_if_dead(e, &this.session))),
            Poll::Pending => this.pending_or_lost(cx),
        }
    }
}

fn reset_if_dead(e: io::Error, session: &SessionState) -> io::Error {
    if session.is_dead() { lost() } else { e }
}
