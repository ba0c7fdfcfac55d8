//! Access side: `Dialer` (one session with the relay, many streams) and `LocalServer`
//! (a local port forwarded to a device service).

use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::stream::Stream;
use crate::{awaitable, block_on, errors, runtime};

/// A device as listed by the relay: `(device, online, services)`.
type DeviceRow = (String, bool, Vec<String>);

/// An access client's session with the relay; reconnects on the next call if it was lost.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Dialer {
    inner: tunnel_core::Dialer,
}

async fn connect(config: tunnel_core::ClientConfig) -> PyResult<Dialer> {
    let inner = tunnel_core::Dialer::connect(config)
        .await
        .map_err(errors::connect)?;
    Ok(Dialer { inner })
}

async fn dial(dialer: tunnel_core::Dialer, device: String, service: String) -> PyResult<Stream> {
    let stream = dialer.dial(&device, &service).await.map_err(errors::dial)?;
    Ok(Stream::new(stream, Some(dialer)))
}

async fn list(dialer: tunnel_core::Dialer) -> PyResult<Vec<DeviceRow>> {
    let devices = dialer.list().await.map_err(errors::dial)?;
    Ok(devices
        .into_iter()
        .map(|d| (d.device, d.online, d.services))
        .collect())
}

#[pymethods]
impl Dialer {
    /// Awaitable: connects and authenticates to the relay.
    #[staticmethod]
    fn connect<'py>(py: Python<'py>, config: &ClientConfig) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, connect(config.inner.clone()))
    }

    /// Blocking `connect`.
    #[staticmethod]
    #[pyo3(signature = (config, timeout=None))]
    fn connect_blocking(
        py: Python<'_>,
        config: &ClientConfig,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        block_on(py, timeout, connect(config.inner.clone()))
    }

    /// Awaitable: opens a stream to `service` on `device`.
    fn dial<'py>(
        &self,
        py: Python<'py>,
        device: String,
        service: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, dial(self.inner.clone(), device, service))
    }

    /// Blocking `dial`.
    #[pyo3(signature = (device, service, timeout=None))]
    fn dial_blocking(
        &self,
        py: Python<'_>,
        device: String,
        service: String,
        timeout: Option<f64>,
    ) -> PyResult<Stream> {
        block_on(py, timeout, dial(self.inner.clone(), device, service))
    }

    /// Awaitable: the devices this credential may reach, as `(device, online, services)`.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, list(self.inner.clone()))
    }

    /// Blocking `list`.
    #[pyo3(signature = (timeout=None))]
    fn list_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<DeviceRow>> {
        block_on(py, timeout, list(self.inner.clone()))
    }

    /// Serves `listen` (`host:port`, port 0 for any): each local connection is joined to a
    /// new stream to `service` on `device`. Binds at once; never waits.
    fn serve_local(&self, listen: &str, device: String, service: String) -> PyResult<LocalServer> {
        let std_listener = std::net::TcpListener::bind(listen).map_err(errors::io)?;
        std_listener.set_nonblocking(true).map_err(errors::io)?;
        let address = std_listener.local_addr().map_err(errors::io)?;
        let _enter = runtime().enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(errors::io)?;
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let (dialer, stop2, done2) = (self.inner.clone(), stop.clone(), done.clone());
        runtime().spawn(async move {
            let _ = tunnel_core::serve_local(
                dialer,
                listener,
                device,
                service,
                stop2.cancelled_owned(),
            )
            .await;
            done2.cancel();
        });
        Ok(LocalServer {
            address: address.to_string(),
            port: address.port(),
            stop,
            done,
        })
    }

    /// Awaitable: closes the session; open streams are cut.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dialer = self.inner.clone();
        awaitable(py, async move {
            dialer.close().await;
            Ok(())
        })
    }

    /// Blocking `close`.
    #[pyo3(signature = (timeout=None))]
    fn close_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let dialer = self.inner.clone();
        block_on(py, timeout, async move {
            dialer.close().await;
            Ok(())
        })
    }
}

/// A local port whose connections are forwarded to a device service.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct LocalServer {
    /// The bound address, `ip:port`.
    #[pyo3(get)]
    address: String,
    /// The bound port (useful after binding port 0).
    #[pyo3(get)]
    port: u16,
    stop: CancellationToken,
    done: CancellationToken,
}

#[pymethods]
impl LocalServer {
    /// Stops accepting; connections already forwarded run to their end.
    fn close(&self) {
        self.stop.cancel();
    }

    /// Awaitable: completes once the port is released.
    fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let done = self.done.clone();
        awaitable(py, async move {
            done.cancelled().await;
            Ok(())
        })
    }

    /// Blocking `wait_closed`.
    #[pyo3(signature = (timeout=None))]
    fn wait_closed_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let done = self.done.clone();
        block_on(py, timeout, async move {
            done.cancelled().await;
            Ok(())
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Dialer>()?;
    m.add_class::<LocalServer>()
}
