//! Device side: `Listener` (the device's presence on the relay) and `Incoming` (one caller
//! asking for a service, to accept or refuse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tunnel_core::{DeviceConfig, ListenerState, Refusal};

use crate::config::ClientConfig;
use crate::stream::Stream;
use crate::{awaitable, block_on, errors, runtime};

/// `(kind, last_error, public_ports, public_failed)`: kind is `connected`, `reconnecting`
/// or `stopped`; `public_failed` lists the public ports the relay left out, with why.
type StateRow = (
    &'static str,
    Option<String>,
    Vec<(String, u16)>,
    Vec<(String, String)>,
);

/// A device registered with the relay; reconnects by itself until closed.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Listener {
    inner: Arc<tunnel_core::Listener>,
    forwarding: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn bind(config: DeviceConfig) -> PyResult<Listener> {
    let inner = tunnel_core::Listener::bind(config)
        .await
        .map_err(errors::connect)?;
    Ok(Listener {
        inner: Arc::new(inner),
        forwarding: Mutex::new(None),
    })
}

async fn accept(listener: Arc<tunnel_core::Listener>) -> PyResult<Option<Incoming>> {
    Ok(listener.accept().await.map(Incoming::new))
}

async fn wait_connected(
    listener: Arc<tunnel_core::Listener>,
    timeout: f64,
) -> PyResult<Vec<(String, u16)>> {
    let timeout = Duration::try_from_secs_f64(timeout)
        .map_err(|_| errors::config_msg("timeout must be >= 0 seconds"))?;
    listener
        .wait_connected(timeout)
        .await
        .map_err(errors::connect)
}

async fn wait_stopped(listener: Arc<tunnel_core::Listener>) -> PyResult<()> {
    let mut state = listener.watch_state();
    let _ = state
        .wait_for(|s| matches!(s, ListenerState::Stopped))
        .await;
    Ok(())
}

fn device_config(
    config: &ClientConfig,
    device: String,
    services: Vec<String>,
    public: Vec<(String, u16)>,
) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(config.inner.clone(), device);
    for s in services {
        cfg = cfg.service(s);
    }
    for (s, port) in public {
        cfg = cfg.public(s, port);
    }
    cfg
}

#[pymethods]
impl Listener {
    /// Awaitable: connects and registers `device` with `services`. Fails at once on errors
    /// retrying cannot fix; otherwise keeps retrying in the background.
    #[staticmethod]
    #[pyo3(signature = (config, device, services, public=Vec::new()))]
    fn bind<'py>(
        py: Python<'py>,
        config: &ClientConfig,
        device: String,
        services: Vec<String>,
        public: Vec<(String, u16)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, bind(device_config(config, device, services, public)))
    }

    /// Blocking `bind`.
    #[staticmethod]
    #[pyo3(signature = (config, device, services, public=Vec::new(), timeout=None))]
    fn bind_blocking(
        py: Python<'_>,
        config: &ClientConfig,
        device: String,
        services: Vec<String>,
        public: Vec<(String, u16)>,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let cfg = device_config(config, device, services, public);
        block_on(py, timeout, bind(cfg))
    }

    /// Awaitable: the next caller, or `None` once the listener is closed.
    fn accept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, accept(self.inner.clone()))
    }

    /// Blocking `accept`.
    #[pyo3(signature = (timeout=None))]
    fn accept_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Incoming>> {
        block_on(py, timeout, accept(self.inner.clone()))
    }

    /// The connection state as `(kind, last_error, public_ports, public_failed)`.
    fn state(&self) -> StateRow {
        match self.inner.state() {
            ListenerState::Connected {
                public,
                public_failed,
                ..
            } => ("connected", None, public, public_failed),
            ListenerState::Reconnecting { last_error } => {
                ("reconnecting", Some(last_error), Vec::new(), Vec::new())
            }
            _ => ("stopped", None, Vec::new(), Vec::new()),
        }
    }

    /// Awaitable: waits until connected (returns the public ports) or raises after `timeout`.
    fn wait_connected<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, wait_connected(self.inner.clone(), timeout))
    }

    /// Blocking `wait_connected`.
    fn wait_connected_blocking(
        &self,
        py: Python<'_>,
        timeout: f64,
    ) -> PyResult<Vec<(String, u16)>> {
        block_on(py, None, wait_connected(self.inner.clone(), timeout))
    }

    /// Forwards every incoming stream to the local address of its service
    /// (`{"ssh": "127.0.0.1:22"}`) in the background, until the listener is closed.
    /// Services missing from `targets` are refused as unknown.
    fn forward(&self, targets: HashMap<String, String>) -> PyResult<()> {
        let mut slot = self
            .forwarding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Err(errors::config_msg("this listener is already forwarding"));
        }
        let listener = self.inner.clone();
        *slot = Some(runtime().spawn(async move {
            tunnel_core::forward(&listener, targets).await;
        }));
        Ok(())
    }

    /// Disconnects and stops reconnecting; accepted streams are cut. Never waits.
    fn close(&self) {
        self.inner.close();
    }

    /// Awaitable: completes once the listener has stopped.
    fn wait_stopped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, wait_stopped(self.inner.clone()))
    }

    /// Blocking: waits until the listener stops (after `close()`), or `TimeoutError`.
    #[pyo3(signature = (timeout=None))]
    fn wait_stopped_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        block_on(py, timeout, wait_stopped(self.inner.clone()))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// A caller asking for one of the device's services. Answer promptly with `accept` or
/// `refuse`; dropping it unanswered resets the caller's stream.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Incoming {
    /// The service asked for.
    #[pyo3(get)]
    service: String,
    /// The caller's identity name at the relay (`public` for a public-port connection).
    #[pyo3(get)]
    caller: String,
    /// For a public-port connection, the remote `ip:port` the relay saw.
    #[pyo3(get)]
    peer: Option<String>,
    inner: Mutex<Option<tunnel_core::Incoming>>,
}

impl Incoming {
    fn new(inner: tunnel_core::Incoming) -> Self {
        Self {
            service: inner.service().to_owned(),
            caller: inner.caller().to_owned(),
            peer: inner.peer().map(str::to_owned),
            inner: Mutex::new(Some(inner)),
        }
    }

    fn take(&self) -> PyResult<tunnel_core::Incoming> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| errors::config_msg("this incoming stream was already answered"))
    }
}

async fn answer_accept(incoming: tunnel_core::Incoming) -> PyResult<Stream> {
    let stream = incoming.accept().await.map_err(errors::io)?;
    Ok(Stream::new(stream, None))
}

async fn answer_refuse(
    incoming: tunnel_core::Incoming,
    why: Refusal,
    message: String,
) -> PyResult<()> {
    incoming.refuse(why, &message).await.map_err(errors::io)
}

fn refusal(reason: &str) -> PyResult<Refusal> {
    Ok(match reason {
        "denied" => Refusal::Denied,
        "unknown_service" => Refusal::UnknownService,
        "target_refused" => Refusal::TargetRefused,
        "unavailable" => Refusal::Unavailable,
        other => {
            return Err(errors::config_msg(format!(
                "unknown refusal {other:?}: want denied, unknown_service, target_refused or unavailable"
            )));
        }
    })
}

#[pymethods]
impl Incoming {
    /// Awaitable: accepts; the caller's open succeeds and returns the stream.
    fn accept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, answer_accept(self.take()?))
    }

    /// Blocking `accept`.
    #[pyo3(signature = (timeout=None))]
    fn accept_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Stream> {
        block_on(py, timeout, answer_accept(self.take()?))
    }

    /// Awaitable: refuses; the caller's open fails with the matching error and `message`.
    /// `reason` is `denied`, `unknown_service`, `target_refused` or `unavailable`.
    #[pyo3(signature = (reason="denied", message=String::new()))]
    fn refuse<'py>(
        &self,
        py: Python<'py>,
        reason: &str,
        message: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let why = refusal(reason)?;
        awaitable(py, answer_refuse(self.take()?, why, message))
    }

    /// Blocking `refuse`.
    #[pyo3(signature = (reason="denied", message=String::new(), timeout=None))]
    fn refuse_blocking(
        &self,
        py: Python<'_>,
        reason: &str,
        message: String,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let why = refusal(reason)?;
        block_on(py, timeout, answer_refuse(self.take()?, why, message))
    }

    fn __repr__(&self) -> String {
        format!(
            "Incoming(service={:?}, caller={:?}, peer={:?})",
            self.service, self.caller, self.peer
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Listener>()?;
    m.add_class::<Incoming>()
}
