//! Rust futures as asyncio futures.
//!
//! Like `pyo3_async_runtimes::tokio::future_into_py` (whose runtime we share), with two
//! differences that matter here: one task per awaitable instead of two, and a safe exit.
//! A result is handed to Python from a blocking-pool thread; if that thread took the GIL
//! while the interpreter finalizes, CPython would end the thread under Rust frames and
//! abort the process. So an `atexit` hook ([`at_exit`]) stops new hand-overs and waits,
//! GIL released, for those in flight.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::oneshot;

use crate::{guarded, runtime};

/// Result hand-overs that may be holding or taking the GIL right now.
static DELIVERING: AtomicUsize = AtomicUsize::new(0);
/// Set at interpreter exit: results are dropped instead of handed over.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Longest the exit hook waits for hand-overs in flight (each takes microseconds once it
/// has the GIL, which the hook releases).
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Done-callback of the asyncio future: wakes the Rust side, which drops the Rust future
/// if it is still running (the asyncio future was cancelled).
#[pyclass(frozen)]
struct CancelOnDone {
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }
}

/// Runs on the event loop's thread: completes `future` unless it was cancelled meanwhile.
#[pyfunction]
fn _complete(future: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    let method = if ok { "set_result" } else { "set_exception" };
    future.call_method1(method, (value,))?;
    Ok(())
}

static COMPLETE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Wraps `fut` as an asyncio future of the running loop; cancelling that future drops
/// `fut`, which cancels the Rust work.
pub(crate) fn awaitable<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = PyResult<T>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let (tx, rx) = oneshot::channel();
    let callback = CancelOnDone {
        tx: Mutex::new(Some(tx)),
    };
    future.call_method1("add_done_callback", (callback,))?;
    let (event_loop, target) = (event_loop.unbind(), future.clone().unbind());
    runtime().spawn(async move {
        tokio::select! {
            result = guarded(fut) => deliver(event_loop, target, result),
            _ = rx => {} // cancelled (or dropped): `fut` is dropped here
        }
    });
    Ok(future)
}

/// The running asyncio loop; `RuntimeError` outside one.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio")?.call_method0("get_running_loop")
}

/// A future of `event_loop`, already done with `result`: for an answer known at the call
/// (bytes already buffered), at the cost of two Python calls instead of a task, a
/// blocking-pool thread and a `call_soon_threadsafe` wakeup of the loop. Awaiting it does
/// not yield to the loop; callers bound how often they answer this way.
pub(crate) fn ready<'py>(
    event_loop: &Bound<'py, PyAny>,
    result: PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let future = event_loop.call_method0("create_future")?;
    match result {
        Ok(value) => future.call_method1("set_result", (value,))?,
        Err(e) => future.call_method1("set_exception", (e.into_value(event_loop.py()),))?,
    };
    Ok(future)
}

fn deliver<T>(event_loop: Py<PyAny>, future: Py<PyAny>, result: PyResult<T>)
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    // A blocking-pool thread: waiting for the GIL must not stall a runtime worker.
    runtime().spawn_blocking(move || {
        DELIVERING.fetch_add(1, Ordering::SeqCst);
        if !EXITING.load(Ordering::SeqCst) {
            Python::try_attach(|py| {
                let (ok, value) = match result.and_then(|v| v.into_py_any(py)) {
                    Ok(v) => (true, v),
                    Err(e) => (false, e.into_value(py).into_any()),
                };
                let complete = COMPLETE.get_or_try_init(py, || {
                    wrap_pyfunction!(_complete, py).map(|f| f.into_any().unbind())
                });
                if let Ok(complete) = complete {
                    // Fails only if the loop is closed; nobody waits for the result then.
                    let _ = event_loop
                        .bind(py)
                        .call_method1("call_soon_threadsafe", (complete, future, ok, value));
                }
            });
        }
        DELIVERING.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Registered with `atexit` by the Python package: stops handing results to Python and
/// waits (GIL released, at most [`EXIT_WAIT`]) for hand-overs already in flight.
#[pyfunction]
pub(crate) fn at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while DELIVERING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
