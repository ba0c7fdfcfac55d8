//! `Relay`: a relay served in-process, for tests and small deployments.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;
use tunnel_core::{
    ConfigError, Grants, Identity, TlsIdentity, Token, TokenAuthenticator, TokenFile,
};

use crate::{awaitable, block_on, errors, runtime};

/// One credential: `(name, token, devices it may register, "device/service" grants, public)`.
type CredentialRow = (String, String, Vec<String>, Vec<String>, bool);

/// A relay running on the shared runtime until `close()`.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct Relay {
    relay: tunnel_core::Relay,
    /// The bound address, `ip:port`.
    #[pyo3(get)]
    address: String,
    /// The bound port (useful after binding port 0).
    #[pyo3(get)]
    port: u16,
    stop: CancellationToken,
    done: CancellationToken,
    /// Why serving stopped, if it failed.
    failure: Arc<Mutex<Option<String>>>,
}

fn authenticator(
    credentials: Vec<CredentialRow>,
    token_file: Option<PathBuf>,
) -> PyResult<TokenAuthenticator> {
    let mut auth = match token_file {
        Some(path) => TokenFile::load(path)
            .and_then(|f| TokenAuthenticator::from_token_file(&f))
            .map_err(errors::config)?,
        None => TokenAuthenticator::new(),
    };
    for (name, token, devices, access, public) in credentials {
        let token = Token::new(token);
        if token.expose().is_empty() {
            return Err(errors::config_msg(format!(
                "credential {name:?}: empty token"
            )));
        }
        let grants = Grants::from_lists(&devices, &access, public).map_err(errors::config)?;
        auth.insert(token.hash(), Identity::new(name, grants))
            .map_err(errors::config)?;
    }
    if auth.is_empty() {
        return Err(errors::config_msg(
            "a relay needs at least one credential (credentials= or token_file=)",
        ));
    }
    Ok(auth)
}

/// A self-signed identity: loaded from `state_dir` if it holds one, else generated (and
/// saved there, as `tunnel-relay` does, so the files are interchangeable).
fn self_signed(names: &[String], state_dir: Option<PathBuf>) -> Result<TlsIdentity, ConfigError> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match state_dir {
        Some(dir) => TlsIdentity::load_or_generate(dir, &names).map(|(identity, _)| identity),
        None => TlsIdentity::generate_self_signed(&names),
    }
}

fn secs(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| errors::config_msg(format!("{what} must be >= 0 seconds")))
}

#[pymethods]
impl Relay {
    /// Binds `listen` and serves at once. The TLS identity is `cert_file`/`key_file`, or a
    /// self-signed certificate generated for `cert_names` (clients then trust its `pin`),
    /// kept in `state_dir` when given so that the pin survives restarts.
    #[new]
    #[pyo3(signature = (
        credentials, *, listen="127.0.0.1:0", token_file=None, cert_file=None, key_file=None,
        cert_names=vec!["localhost".to_owned()], state_dir=None, grace=10.0, heartbeat=None, public_ports=None
    ))]
    #[allow(clippy::too_many_arguments)] // reason: mirrors Python keyword arguments
    fn new(
        credentials: Vec<CredentialRow>,
        listen: &str,
        token_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        cert_names: Vec<String>,
        state_dir: Option<PathBuf>,
        grace: f64,
        heartbeat: Option<f64>,
        public_ports: Option<(u16, u16)>,
    ) -> PyResult<Self> {
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key),
            (None, None) => self_signed(&cert_names, state_dir),
            _ => return Err(errors::config_msg("give both cert_file= and key_file=")),
        }
        .map_err(errors::config)?;
        let mut builder =
            tunnel_core::Relay::builder(identity, authenticator(credentials, token_file)?)
                .grace_period(secs("grace", grace)?);
        if let Some(h) = heartbeat {
            builder = builder.heartbeat_interval(secs("heartbeat", h)?);
        }
        if let Some((low, high)) = public_ports {
            builder = builder.public_ports(low..=high);
        }
        let relay = builder.build().map_err(errors::config)?;

        let std_listener = std::net::TcpListener::bind(listen).map_err(errors::io)?;
        std_listener.set_nonblocking(true).map_err(errors::io)?;
        let addr = std_listener.local_addr().map_err(errors::io)?;
        let _enter = runtime().enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(errors::io)?;
        let (stop, done) = (CancellationToken::new(), CancellationToken::new());
        let failure = Arc::new(Mutex::new(None));
        runtime().spawn({
            let (relay, stop, done, failure) =
                (relay.clone(), stop.clone(), done.clone(), failure.clone());
            async move {
                if let Err(e) = relay.serve(listener, stop.cancelled_owned()).await {
                    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                }
                done.cancel();
            }
        });
        Ok(Self {
            relay,
            address: addr.to_string(),
            port: addr.port(),
            stop,
            done,
            failure,
        })
    }

    /// The relay's public-key pin (`sha256:<hex>`), which clients pass as `pin=`.
    #[getter]
    fn pin(&self) -> String {
        self.relay.pin().to_string()
    }

    /// IDs of the devices online right now, sorted.
    fn online_devices(&self) -> Vec<String> {
        self.relay.online_devices()
    }

    /// Starts a graceful shutdown (running streams get the grace period). Never waits.
    fn close(&self) {
        self.stop.cancel();
    }

    /// Whether serving has ended.
    fn is_closed(&self) -> bool {
        self.done.is_cancelled()
    }

    /// Awaitable: completes once the relay has stopped; raises if serving failed.
    fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (done, failure) = (self.done.clone(), self.failure.clone());
        awaitable(py, wait_done(done, failure))
    }

    /// Blocking `wait_closed`.
    #[pyo3(signature = (timeout=None))]
    fn wait_closed_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let (done, failure) = (self.done.clone(), self.failure.clone());
        block_on(py, timeout, wait_done(done, failure))
    }

    fn __repr__(&self) -> String {
        format!("Relay(address={:?}, pin={:?})", self.address, self.pin())
    }
}

async fn wait_done(done: CancellationToken, failure: Arc<Mutex<Option<String>>>) -> PyResult<()> {
    done.cancelled().await;
    let failure = failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match failure {
        Some(msg) => Err(errors::relay_msg(msg)),
        None => Ok(()),
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Relay>()
}
