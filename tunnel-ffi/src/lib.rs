//! Python bindings of `tunnel-core`: the `tunnel._native` extension module.
//!
//! Thin on purpose: every protocol and I/O step runs in `tunnel-core` on one shared tokio
//! runtime; this crate only converts arguments, results and errors. The Python package
//! (`python/tunnel`) builds the public asyncio and blocking APIs on top of these classes.
//!
//! Conventions, so that the Python layer never gets two return types from one call:
//! - a method without suffix that waits returns an asyncio awaitable (it must be called
//!   with a running event loop, which the Python wrappers guarantee);
//! - the same operation with `_blocking` waits on the calling thread with the GIL
//!   released, answers Ctrl-C within [`SIGNAL_POLL`], and takes an optional timeout.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use pyo3::prelude::*;

pub(crate) use bridge::{awaitable, ready, running_loop};

mod bridge;
mod config;
mod dialer;
mod errors;
mod listener;
mod relay;
mod stream;

/// How often a blocking wait wakes to let Python run signal handlers (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The one tokio runtime of the process, shared by the asyncio and the blocking APIs.
/// Built on first use (not at import), so `import tunnel` starts no threads.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` to completion, turning a panic into `tunnel.InternalError`.
pub(crate) async fn guarded<T>(fut: impl Future<Output = PyResult<T>>) -> PyResult<T> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(errors::from_panic(&*panic)))
}

/// Blocks the calling thread on `fut` with the GIL released. Wakes every [`SIGNAL_POLL`]
/// to run Python's signal handlers: a `KeyboardInterrupt` they raise drops `fut` (which
/// cancels the work) and propagates. Past `timeout`, raises the builtin `TimeoutError`.
pub(crate) fn block_on<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    fut: impl Future<Output = PyResult<T>> + Send,
) -> PyResult<T> {
    let deadline = timeout
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .map(|d| Instant::now() + d)
                .map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err("timeout must be >= 0 seconds")
                })
        })
        .transpose()?;
    let rt = runtime();
    let mut fut = Box::pin(guarded(fut));
    loop {
        let slice = deadline.map_or(SIGNAL_POLL, |d| {
            SIGNAL_POLL.min(d.saturating_duration_since(Instant::now()))
        });
        // The timer must be created inside the runtime, hence the async block.
        let step =
            py.detach(|| rt.block_on(async { tokio::time::timeout(slice, fut.as_mut()).await }));
        if let Ok(result) = step {
            return result;
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(pyo3::exceptions::PyTimeoutError::new_err("timed out"));
        }
    }
}

/// A fresh random token (`tun_` and 256 bits as hex), for credentials of an in-process relay.
#[pyfunction]
fn generate_token() -> PyResult<String> {
    tunnel_core::Token::generate()
        .map(|t| t.expose().to_owned())
        .map_err(errors::config)
}

/// Starts, once per process, the thread that gives memory freed by a load back to the
/// system (`tunnel_memory`); whether it runs.
#[pyfunction]
fn give_back_memory() -> bool {
    tunnel_memory::give_back_memory()
}

/// Test hook: panics inside a blocking call or an awaitable, which must surface as
/// `tunnel.InternalError` instead of aborting the interpreter.
#[pyfunction]
fn _panic_for_test(py: Python<'_>, awaited: bool) -> PyResult<Bound<'_, PyAny>> {
    let boom = async { panic!("deliberate panic for a test") };
    if awaited {
        awaitable::<()>(py, boom)
    } else {
        block_on::<()>(py, None, boom).map(|()| py.None().into_bound(py))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_name("tunnel-rt")
        // Results reach Python from blocking-pool threads (see `bridge`); idle ones exit
        // after this, so a quiet process returns to its worker threads.
        .thread_keep_alive(Duration::from_secs(2));
    pyo3_async_runtimes::tokio::init(builder);
    m.add_function(wrap_pyfunction!(generate_token, m)?)?;
    m.add_function(wrap_pyfunction!(give_back_memory, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(bridge::at_exit, m)?)?;
    config::register(m)?;
    dialer::register(m)?;
    errors::register(m)?;
    listener::register(m)?;
    relay::register(m)?;
    stream::register(m)?;
    Ok(())
}
