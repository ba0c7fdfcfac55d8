//! `Stream`: one tunnelled byte stream, shaped for asyncio transports and plain sockets.
//!
//! Reads are awaited directly on the read half. Writes never wait: `write()` queues the
//! bytes for a writer task that owns the write half (like an asyncio transport's buffer),
//! and `drain()` waits until the queue is small again. So a caller that writes and then
//! reads, without draining, still sends its bytes at once.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{awaitable, block_on, errors};

/// Largest single read: bounds the buffer one `read(n)` allocates.
const MAX_READ: usize = 1 << 20;
/// `drain()` returns once at most this many bytes wait in the write queue (asyncio's
/// default low-water mark is 16 KiB; larger keeps the tunnel busy while Python refills it).
const DRAIN_LOW_WATER: usize = 64 * 1024;

enum Op {
    Data(Vec<u8>),
    /// Half-close: the far end reads end of stream; reading goes on.
    Eof,
}

/// What readers, writers and the writer task share.
struct Shared {
    reader: tokio::sync::Mutex<Option<ReadHalf<tunnel_core::Stream>>>,
    /// Cancelled by `close()`/`abort()`: pending reads end, further reads see end of stream.
    closing: CancellationToken,
    /// Cancelled once both halves are released.
    finished: CancellationToken,
    /// Bytes queued and not yet handed to the tunnel.
    pending: AtomicUsize,
    /// Woken whenever `pending` shrinks or the writer stops.
    progress: Notify,
    /// The write error that stopped the writer, reported by the next write or drain.
    error: Mutex<Option<(io::ErrorKind, String)>>,
    writer_done: CancellationToken,
    /// Set by `abort()` before the queue ends, so the writer does not half-close first.
    aborted: std::sync::atomic::AtomicBool,
    /// The access client's session, released only after the stream itself, so that the
    /// stream's last frame (FIN or reset) goes out before the session closes.
    session: Mutex<Option<tunnel_core::Dialer>>,
}

/// One tunnelled, ordered, reliable byte stream (see the module docs for the write model).
/// Dropping it without `close()` closes it gracefully once queued bytes are sent.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Stream {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::UnboundedSender<Op>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Stream {
    /// Wraps a core stream. `session` keeps the access client's session open until the
    /// stream is fully closed, even if the Python `Dialer` is gone (a one-shot
    /// `open_connection` owns no other handle to it).
    pub(crate) fn new(stream: tunnel_core::Stream, session: Option<tunnel_core::Dialer>) -> Self {
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            reader: tokio::sync::Mutex::new(Some(read)),
            closing: CancellationToken::new(),
            finished: CancellationToken::new(),
            pending: AtomicUsize::new(0),
            progress: Notify::new(),
            error: Mutex::new(None),
            writer_done: CancellationToken::new(),
            aborted: std::sync::atomic::AtomicBool::new(false),
            session: Mutex::new(session),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let shared_for_task = shared.clone();
        let task = crate::runtime().spawn(writer(write, rx, shared_for_task));
        Self {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(task)),
        }
    }

    fn send(&self, op: Op) -> PyResult<()> {
        if let Some(err) = self.shared.take_error() {
            return Err(err);
        }
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let len = match &op {
            Op::Data(d) => d.len(),
            Op::Eof => 0,
        };
        let sent = tx.as_ref().is_some_and(|tx| {
            self.shared.pending.fetch_add(len, Ordering::SeqCst);
            tx.send(op).is_ok()
        });
        if sent {
            Ok(())
        } else {
            Err(errors::io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )))
        }
    }

    /// Ends the write side: queued bytes are sent, then a half-close, then both halves go.
    fn close_inner(&self) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(tx); // the writer task finishes the queue, shuts down and releases everything
        self.shared.closing.cancel();
    }
}

impl Shared {
    fn take_error(&self) -> Option<PyErr> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .map(|(kind, msg)| errors::io(io::Error::new(kind, msg)))
    }

    async fn read(&self, max: usize) -> PyResult<Vec<u8>> {
        let mut reader = self.reader.lock().await;
        let Some(half) = reader.as_mut() else {
            return Ok(Vec::new());
        };
        // Uninitialised capacity (read_buf): zeroing `max` bytes per read would cost more
        // than the read when the tunnel hands over one frame at a time.
        let mut buf = Vec::with_capacity(max.clamp(1, MAX_READ));
        tokio::select! {
            n = half.read_buf(&mut buf) => {
                n.map_err(errors::io)?;
                Ok(buf)
            }
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

/// Owns the write half: writes queued bytes in order, half-closes on request, and on the
/// end of the queue (close or drop) shuts down gracefully and releases the stream.
async fn writer(
    mut half: WriteHalf<tunnel_core::Stream>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    shared: Arc<Shared>,
) {
    let mut eof_sent = false;
    let mut failed = false;
    while let Some(op) = rx.recv().await {
        let result = match op {
            Op::Data(data) => {
                let r = half.write_all(&data).await;
                shared.pending.fetch_sub(data.len(), Ordering::SeqCst);
                r
            }
            Op::Eof if eof_sent => Ok(()),
            Op::Eof => {
                eof_sent = true;
                half.shutdown().await
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

#[pymethods]
impl Stream {
    /// Awaitable: up to `n` bytes; `b""` at end of stream or after `close()`.
    fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        awaitable(py, async move { shared.read(n).await })
    }

    /// Blocking `read`: up to `n` bytes, or `TimeoutError` after `timeout` seconds.
    #[pyo3(signature = (n, timeout=None))]
    fn read_blocking(&self, py: Python<'_>, n: usize, timeout: Option<f64>) -> PyResult<Vec<u8>> {
        let shared = self.shared.clone();
        block_on(py, timeout, async move { shared.read(n).await })
    }

    /// Queues `data` for sending; never waits. Raises if the stream failed or was closed.
    fn write(&self, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(Op::Data(data.to_vec()))
    }

    /// Queues a half-close after the bytes already queued.
    fn write_eof(&self) -> PyResult<()> {
        self.send(Op::Eof)
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
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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
