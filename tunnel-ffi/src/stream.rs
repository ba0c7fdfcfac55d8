//! `Stream`: one tunnelled byte stream, shaped for asyncio transports and plain sockets.
//!
//! Reads are awaited directly on the read half. Writes never wait: `write()` appends the
//! bytes to a queue that a writer task owning the write half empties (like an asyncio
//! transport's buffer), and `drain()` waits until the queue is small again. So a caller
//! that writes and then reads, without draining, still sends its bytes at once. The queue
//! is bounded: past [`WRITE_HARD_LIMIT`] queued bytes, `write()` raises
//! `WriteBufferFullError` instead of growing it.
//!
//! The data path of one byte:
//! - read, when bytes are already buffered (a bulk transfer that Python drains slower than
//!   it arrives): the multiplexer's stream buffer → this stream's read buffer (reused, see
//!   [`Reader`]) → a Python `bytes`, all on the caller's thread, and the awaitable is
//!   returned already done ([`Shared::read_now`]). Two copies, no task, no thread hop.
//! - read that must wait: the same into the read buffer, then the `Vec` handed over → a
//!   Python `bytes` (pyo3 copies it there, holding the GIL on a blocking-pool thread; see
//!   `bridge.rs`). Three copies; the middle one is what avoids zeroing up to [`MAX_READ`]
//!   bytes per read.
//! - write: Python `bytes` → the write queue (one copy, under the queue lock) → taken
//!   whole by the writer task → yamux frames of at most 16 KiB.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{awaitable, block_on, errors, ready, running_loop};

/// Largest single read: bounds the read buffer a stream keeps (see [`Reader`]).
const MAX_READ: usize = 1 << 20;
/// Reads in a row that [`Shared::read_now`] may answer at once before one is awaited: an
/// awaited read hands control back to the event loop, which a done awaitable does not. The
/// read half is refilled by tokio's threads while Python reads, so without this bound a
/// `while data := await r.read(n)` loop could starve every other task (and its own
/// timeouts and cancellation) for as long as data keeps coming.
const READS_BEFORE_YIELD: usize = 16;
/// `drain()` returns once at most this many bytes wait in the write queue (asyncio's
/// default low-water mark is 16 KiB; larger keeps the tunnel busy while Python refills it).
const DRAIN_LOW_WATER: usize = 64 * 1024;
/// `write()` raises once more than this many bytes are queued: the hard cap that keeps a
/// caller who never awaits `drain()` from growing the queue without limit. Like an asyncio
/// transport, the queue accepts writes past the drain mark and relies on `drain()` for flow
/// control; this cap sits far above it (256 × [`DRAIN_LOW_WATER`]) so that only a missing
/// `drain()` reaches it, never a burst between two drains. A single write is accepted whole
/// while the queue is at or below the cap, so the queue holds at most the cap plus one write
/// (whose bytes the caller already held).
const WRITE_HARD_LIMIT: usize = 16 << 20;

/// The read half and the buffer it reads into.
///
/// The buffer is zeroed once, when it grows, and reused; each read copies only the bytes
/// it got out of it. (Until the multiplexer was our own, the core stream was a
/// `Compat<yamux::Stream>`, whose `poll_read` zeroed the whole unfilled buffer on every
/// poll, up to [`MAX_READ`] bytes per read; a fresh buffer per read would also cost an
/// allocation.) Memory: one buffer per stream as large as the largest read asked (at most
/// [`MAX_READ`]), released with the read half.
struct Reader {
    half: ReadHalf<tunnel_core::Stream>,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads up to `max` bytes (at most [`MAX_READ`]) into the reused buffer.
    async fn read(&mut self, max: usize) -> io::Result<&[u8]> {
        let want = max.clamp(1, MAX_READ);
        if self.buf.len() < want {
            self.buf.resize(want, 0); // zeroed once here, never again by `Compat`
        }
        let n = self.half.read(&mut self.buf[..want]).await?;
        Ok(&self.buf[..n])
    }
}

/// The write queue, shared by `write()` and the writer task.
#[derive(Default)]
struct Queue {
    /// Bytes written and not yet taken by the writer task, in order (small writes coalesce).
    data: Vec<u8>,
    /// `write_eof()` was called: half-close once `data` is sent; later writes are refused.
    eof: bool,
    /// `close()`, `abort()` or drop: the writer sends `data` (unless aborted), then stops.
    closed: bool,
}

/// What readers, writers and the writer task share.
struct Shared {
    reader: tokio::sync::Mutex<Option<Reader>>,
    /// Awaited reads issued and not finished (see [`Awaiting`]): while any is, a new read
    /// must queue behind it, so [`Shared::read_now`] stands aside.
    awaiting: AtomicUsize,
    /// Reads answered at once since the last awaited one (see [`READS_BEFORE_YIELD`]).
    at_once: AtomicUsize,
    /// Cancelled by `close()`/`abort()`: pending reads end, further reads see end of stream.
    closing: CancellationToken,
    /// Cancelled once both halves are released.
    finished: CancellationToken,
    queue: Mutex<Queue>,
    /// Woken (with a stored permit) whenever `queue` gains work for the writer task.
    queued: Notify,
    /// Bytes queued and not yet handed to the tunnel (in `queue` or being written).
    pending: AtomicUsize,
    /// Woken whenever `pending` shrinks or the writer stops.
    progress: Notify,
    /// The write error that stopped the writer, reported by the next write or drain.
    error: Mutex<Option<(io::ErrorKind, String)>>,
    writer_done: CancellationToken,
    /// Set by `abort()` before the queue ends, so the writer does not half-close first.
    aborted: AtomicBool,
    /// The access client's session, released only after the stream itself, so that the
    /// stream's last frame (FIN or reset) goes out before the session closes.
    session: Mutex<Option<tunnel_core::Dialer>>,
}

/// One tunnelled, ordered, reliable byte stream (see the module docs for the write model).
/// Dropping it without `close()` closes it gracefully once queued bytes are sent.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Stream {
    shared: Arc<Shared>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Stream {
    /// Wraps a core stream. `session` keeps the access client's session open until the
    /// stream is fully closed, even if the Python `Dialer` is gone (a one-shot
    /// `open_connection` owns no other handle to it).
    pub(crate) fn new(stream: tunnel_core::Stream, session: Option<tunnel_core::Dialer>) -> Self {
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            reader: tokio::sync::Mutex::new(Some(Reader {
                half: read,
                buf: Vec::new(),
            })),
            awaiting: AtomicUsize::new(0),
            at_once: AtomicUsize::new(0),
            closing: CancellationToken::new(),
            finished: CancellationToken::new(),
            queue: Mutex::new(Queue::default()),
            queued: Notify::new(),
            pending: AtomicUsize::new(0),
            progress: Notify::new(),
            error: Mutex::new(None),
            writer_done: CancellationToken::new(),
            aborted: AtomicBool::new(false),
            session: Mutex::new(session),
        });
        let task = crate::runtime().spawn(writer(write, shared.clone()));
        Self {
            shared,
            writer: Mutex::new(Some(task)),
        }
    }

    /// Queues `data`, or a half-close if `data` is `None`.
    fn send(&self, data: Option<&[u8]>) -> PyResult<()> {
        if let Some(err) = self.shared.take_error() {
            return Err(err);
        }
        let mut queue = self.shared.lock_queue();
        if queue.closed || queue.eof {
            return Err(errors::io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )));
        }
        match data {
            Some(data) => {
                let pending = self.shared.pending.load(Ordering::SeqCst);
                if pending > WRITE_HARD_LIMIT {
                    return Err(errors::write_buffer_full(pending, WRITE_HARD_LIMIT));
                }
                queue.data.extend_from_slice(data);
                self.shared.pending.fetch_add(data.len(), Ordering::SeqCst);
            }
            None => queue.eof = true,
        }
        drop(queue);
        self.shared.queued.notify_one();
        Ok(())
    }

    /// Ends the write side: queued bytes are sent, then a half-close, then both halves go.
    fn close_inner(&self) {
        self.shared.lock_queue().closed = true;
        self.shared.queued.notify_one(); // the writer finishes the queue, shuts down, releases
        self.shared.closing.cancel();
    }
}

impl Shared {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_error(&self) -> Option<PyErr> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .map(|(kind, msg)| errors::io(io::Error::new(kind, msg)))
    }

    /// A read that needs no waiting: bytes already buffered, end of stream, an error, or
    /// the stream closed. `None` when it would wait, while an earlier awaited read is not
    /// finished (reads keep the order they were issued in), or once every
    /// [`READS_BEFORE_YIELD`] reads: then it is awaited as usual.
    fn read_now<'py>(&self, py: Python<'py>, max: usize) -> Option<PyResult<Bound<'py, PyBytes>>> {
        if self.awaiting.load(Ordering::SeqCst) > 0
            || self.at_once.fetch_add(1, Ordering::SeqCst) >= READS_BEFORE_YIELD
        {
            return None;
        }
        if self.closing.is_cancelled() {
            return Some(Ok(PyBytes::new(py, b"")));
        }
        let mut guard = self.reader.try_lock().ok()?;
        let Some(reader) = guard.as_mut() else {
            return Some(Ok(PyBytes::new(py, b"")));
        };
        // Polled once with a no-op waker: if it would wait, the awaited read that follows
        // polls again and registers its own waker, and no byte is taken meanwhile.
        let _runtime = crate::runtime().enter();
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let read = reader.read(max).now_or_never()?;
            Some(read.map(<[u8]>::len))
        }));
        match polled {
            Ok(None) => None,
            Ok(Some(Ok(n))) => Some(Ok(PyBytes::new(py, &reader.buf[..n]))),
            Ok(Some(Err(e))) => Some(Err(errors::io(e))),
            Err(panic) => Some(Err(errors::from_panic(&*panic))),
        }
    }

    /// Registers an awaited read before it is spawned; see [`Awaiting`].
    fn awaited(self: &Arc<Self>) -> Awaiting {
        self.awaiting.fetch_add(1, Ordering::SeqCst);
        self.at_once.store(0, Ordering::SeqCst);
        Awaiting(self.clone())
    }

    async fn read(&self, max: usize) -> PyResult<Vec<u8>> {
        let mut guard = self.reader.lock().await;
        let Some(reader) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        tokio::select! {
            data = reader.read(max) => Ok(data.map_err(errors::io)?.to_vec()),
            () = self.closing.cancelled() => Ok(Vec::new()),
        }
    }

    /// Waits until at most `low` bytes are queued; reports a write error.
    async fn drain(&self, low: usize) -> PyResult<()> {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(err) = self.take_error() {
                return Err(err);
            }
            if self.pending.load(Ordering::SeqCst) <= low || self.writer_done.is_cancelled() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Releases the read half (the write half is the writer task's), then the session.
    async fn release(&self) {
        self.reader.lock().await.take();
        let session = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(session);
        self.finished.cancel();
    }
}

/// One awaited read in flight, from its call until its future finishes or is dropped
/// (cancelled, or never polled).
struct Awaiting(Arc<Shared>);

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer task's next job, taken from the queue under its lock.
enum Job {
    Data(Vec<u8>),
    /// Half-close: the far end reads end of stream; reading goes on.
    Eof,
    Stop,
    Wait,
}

/// Owns the write half: writes queued bytes in order, half-closes on request, and once the
/// queue is closed (close or drop) and empty shuts down gracefully and releases the stream.
async fn writer(mut half: WriteHalf<tunnel_core::Stream>, shared: Arc<Shared>) {
    let mut eof_sent = false;
    let mut failed = false;
    loop {
        let job = {
            let mut queue = shared.lock_queue();
            if !queue.data.is_empty() {
                Job::Data(std::mem::take(&mut queue.data))
            } else if queue.eof && !eof_sent {
                Job::Eof
            } else if queue.closed {
                Job::Stop
            } else {
                Job::Wait
            }
        };
        let result = match job {
            Job::Data(data) => write_counted(&mut half, &data, &shared).await,
            Job::Eof => {
                eof_sent = true;
                half.shutdown().await
            }
            Job::Stop => break,
            Job::Wait => {
                shared.queued.notified().await;
                continue;
            }
        };
        if let Err(e) = result {
            *shared.error.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((e.kind(), e.to_string()));
            failed = true;
        }
        shared.progress.notify_waiters();
        if failed {
            break;
        }
    }
    if !failed && !eof_sent && !shared.aborted.load(Ordering::SeqCst) {
        let _ = half.shutdown().await;
    }
    shared.writer_done.cancel();
    shared.progress.notify_waiters();
    // Reading ends with the write side only on close/drop (`closing`); a half-closed
    // stream keeps its read half until then.
    shared.closing.cancelled().await;
    drop(half);
    shared.release().await;
}

/// Writes all of `data`, counting each piece the tunnel takes off `pending` at once, so
/// that `drain()` sees progress within a large write.
async fn write_counted(
    half: &mut WriteHalf<tunnel_core::Stream>,
    mut data: &[u8],
    shared: &Shared,
) -> io::Result<()> {
    while !data.is_empty() {
        let n = half.write(data).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        shared.pending.fetch_sub(n, Ordering::SeqCst);
        shared.progress.notify_waiters();
        data = &data[n..];
    }
    Ok(())
}

#[pymethods]
impl Stream {
    /// Awaitable: up to `n` bytes; `b""` at end of stream or after `close()`.
    fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        // The loop first: without one, this raises before any byte is taken.
        let event_loop = running_loop(py)?;
        if let Some(result) = self.shared.read_now(py, n) {
            return ready(&event_loop, result.map(Bound::into_any));
        }
        let awaiting = self.shared.awaited();
        // `awaiting` lives as long as the read's future: done, cancelled or never polled.
        awaitable(py, async move { awaiting.0.read(n).await })
    }

    /// Blocking `read`: up to `n` bytes, or `TimeoutError` after `timeout` seconds.
    #[pyo3(signature = (n, timeout=None))]
    fn read_blocking<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if let Some(result) = self.shared.read_now(py, n) {
            return result;
        }
        let awaiting = self.shared.awaited();
        let data = block_on(py, timeout, async move { awaiting.0.read(n).await })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Queues `data` for sending; never waits. Raises if the stream failed or was closed,
    /// and `WriteBufferFullError` if more than [`WRITE_HARD_LIMIT`] bytes are queued (the
    /// caller must await `drain()` between writes).
    fn write(&self, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(Some(data))
    }

    /// Queues a half-close after the bytes already queued.
    fn write_eof(&self) -> PyResult<()> {
        self.send(None)
    }

    /// Bytes queued and not yet handed to the tunnel.
    fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Awaitable: waits until the write queue is small; raises the error that stopped it.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        awaitable(py, async move { shared.drain(DRAIN_LOW_WATER).await })
    }

    /// Blocking: waits until every queued byte is handed to the tunnel.
    #[pyo3(signature = (timeout=None))]
    fn flush_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let shared = self.shared.clone();
        block_on(py, timeout, async move { shared.drain(0).await })
    }

    /// Closes gracefully: queued bytes go out, then end of stream; pending reads return
    /// `b""`. Never waits; see `wait_closed`.
    fn close(&self) {
        self.close_inner();
    }

    /// Resets the stream at once: queued bytes are dropped, the far end reads an error.
    fn abort(&self) {
        self.shared.aborted.store(true, Ordering::SeqCst);
        {
            let mut queue = self.shared.lock_queue();
            queue.closed = true;
            queue.data = Vec::new(); // dropped, not sent: free it now
        }
        self.shared.closing.cancel();
        let task = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let shared = self.shared.clone();
        crate::runtime().spawn(async move {
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
            // The aborted writer could not say it stopped: a waiting `drain()` must end.
            shared.pending.store(0, Ordering::SeqCst);
            shared.writer_done.cancel();
            shared.progress.notify_waiters();
            shared.release().await;
        });
    }

    /// Whether `close()` or `abort()` was called.
    fn is_closing(&self) -> bool {
        self.shared.closing.is_cancelled()
    }

    /// Awaitable: completes once the stream is fully released after `close()`/`abort()`.
    fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let finished = self.shared.finished.clone();
        awaitable(py, async move {
            finished.cancelled().await;
            Ok(())
        })
    }

    /// Blocking `wait_closed`.
    #[pyo3(signature = (timeout=None))]
    fn wait_closed_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let finished = self.shared.finished.clone();
        block_on(py, timeout, async move {
            finished.cancelled().await;
            Ok(())
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.close_inner();
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Stream>()
}
