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
    /// The admin API's address and an admin token for it, when `admin_listen` was given.
    admin: Option<(String, String)>,
}

/// The control plane behind `Relay(admin_listen=…)`: the store in `state_dir`, with the
/// given credentials imported, and a fresh admin token.
struct Admin {
    plane: tunnel_server::ControlPlane,
    token: String,
}

fn control_plane(
    dir: &std::path::Path,
    credentials: &[CredentialRow],
    token_file: Option<&PathBuf>,
) -> PyResult<Admin> {
    let fail = |e: &dyn std::fmt::Display| errors::relay_msg(format!("control plane: {e}"));
    runtime().block_on(async {
        let plane = tunnel_server::ControlPlane::open(dir, false, "python")
            .await
            .map_err(|e| fail(&e))?;
        let mut file = match token_file {
            Some(path) => TokenFile::load(path).map_err(errors::config)?,
            None => TokenFile::default(),
        };
        for (name, token, devices, access, public) in credentials {
            file.tokens.push(tunnel_core::TokenEntry {
                name: name.clone(),
                hash: Token::new(token.clone()).hash().to_string(),
                devices: devices.clone(),
                access: access.clone(),
                public: *public,
            });
        }
        plane
            .credentials()
            .import(&file)
            .await
            .map_err(|e| errors::config_msg(e.to_string()))?;
        // A fresh name per start: the store may hold the admins of earlier runs.
        let nonce = Token::generate()
            .map_err(errors::config)?
            .hash()
            .to_string();
        let name = format!("python-{}", &nonce[7..19]);
        let token = tunnel_server::api::new_admin_token(plane.store().as_ref(), &name)
            .await
            .map_err(|e| fail(&e))?;
        Ok(Admin {
            plane,
            token: token.expose().to_owned(),
        })
    })
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
        cert_names=vec!["localhost".to_owned()], state_dir=None, grace=10.0, heartbeat=None, public_ports=None,
        admin_listen=None
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
        admin_listen: Option<&str>,
    ) -> PyResult<Self> {
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key),
            (None, None) => self_signed(&cert_names, state_dir.clone()),
            _ => return Err(errors::config_msg("give both cert_file= and key_file=")),
        }
        .map_err(errors::config)?;
        // With the admin API, credentials live in the store (and can change live);
        // without it, in memory.
        let mut admin = match (admin_listen, &state_dir) {
            (Some(_), Some(dir)) => Some(control_plane(dir, &credentials, token_file.as_ref())?),
            (Some(_), None) => {
                return Err(errors::config_msg(
                    "admin_listen= needs state_dir= (the store of the control plane)",
                ));
            }
            (None, _) => None,
        };
        let builder = match &admin {
            Some(a) => tunnel_core::Relay::builder(identity, a.plane.authenticator())
                .events(a.plane.auditor()),
            None => tunnel_core::Relay::builder(identity, authenticator(credentials, token_file)?),
        };
        let mut builder = builder.grace_period(secs("grace", grace)?);
        if let Some(h) = heartbeat {
            builder = builder.heartbeat_interval(secs("heartbeat", h)?);
        }
        if let Some((low, high)) = public_ports {
            builder = builder.public_ports(low..=high);
        }
        let relay = builder.build().map_err(errors::config)?;
        let (stop, done) = (CancellationToken::new(), CancellationToken::new());
        let admin = match (admin.take(), admin_listen) {
            (Some(mut a), Some(addr)) => {
                let _enter = runtime().enter();
                a.plane.start(&relay);
                let std_admin = std::net::TcpListener::bind(addr).map_err(errors::io)?;
                std_admin.set_nonblocking(true).map_err(errors::io)?;
                let bound = std_admin.local_addr().map_err(errors::io)?;
                let listener = tokio::net::TcpListener::from_std(std_admin).map_err(errors::io)?;
                let (relay, token) = (relay.clone(), a.token.clone());
                let stopped = stop.clone().cancelled_owned();
                runtime().spawn(async move {
                    // Serves until the relay stops, then ends enforcement too.
                    let plane = a.plane;
                    let _ = plane.serve_api(relay, listener, None, stopped).await;
                    plane.close();
                });
                Some((bound.to_string(), token))
            }
            _ => None,
        };

        let std_listener = std::net::TcpListener::bind(listen).map_err(errors::io)?;
        std_listener.set_nonblocking(true).map_err(errors::io)?;
        let addr = std_listener.local_addr().map_err(errors::io)?;
        let _enter = runtime().enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(errors::io)?;
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
            admin,
        })
    }

    /// The admin API's `ip:port`, when started with `admin_listen=`.
    #[getter]
    fn admin_address(&self) -> Option<String> {
        self.admin.as_ref().map(|a| a.0.clone())
    }

    /// A bearer token for the admin API (created for this relay), when started with
    /// `admin_listen=`.
    #[getter]
    fn admin_token(&self) -> Option<String> {
        self.admin.as_ref().map(|a| a.1.clone())
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
