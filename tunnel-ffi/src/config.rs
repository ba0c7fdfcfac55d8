//! `ClientConfig`: how to reach and trust the relay, and which credential to present.

use pyo3::prelude::*;
use tunnel_core::{RelayTrust, SpkiPin, TlsIdentity, Token};

use crate::errors;

/// Relay address, trust (pin or CA file) and credential, validated once. The token is
/// kept only inside; `repr()` shows `token=<redacted>`.
#[pyclass(frozen, module = "tunnel._native")]
pub(crate) struct ClientConfig {
    pub(crate) inner: tunnel_core::ClientConfig,
    has_token: bool,
}

#[pymethods]
impl ClientConfig {
    #[new]
    #[pyo3(signature = (relay, *, pin=None, ca_file=None, token=None, server_name=None, cert_file=None, key_file=None))]
    fn new(
        relay: String,
        pin: Option<&str>,
        ca_file: Option<std::path::PathBuf>,
        token: Option<String>,
        server_name: Option<String>,
        cert_file: Option<std::path::PathBuf>,
        key_file: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let trust = match (pin, ca_file) {
            (Some(pin), None) => RelayTrust::Pin(pin.parse::<SpkiPin>().map_err(errors::config)?),
            (None, Some(path)) => RelayTrust::ca_file(path).map_err(errors::config)?,
            _ => return Err(errors::config_msg("give exactly one of pin= and ca_file=")),
        };
        let mut inner = tunnel_core::ClientConfig::new(relay, trust);
        if let Some(name) = server_name {
            inner = inner.server_name(name);
        }
        let token = token.map(Token::new).filter(|t| !t.expose().is_empty());
        let has_token = token.is_some();
        if let Some(token) = token {
            inner = inner.token(token);
        }
        match (cert_file, key_file) {
            (Some(cert), Some(key)) => {
                let identity = TlsIdentity::from_pem_files(cert, key).map_err(errors::config)?;
                inner = inner.client_cert(identity);
            }
            (None, None) => {}
            _ => return Err(errors::config_msg("give both cert_file= and key_file=")),
        }
        Ok(Self { inner, has_token })
    }

    /// The relay address as given (`host:port`).
    #[getter]
    fn relay(&self) -> &str {
        self.inner.relay_addr()
    }

    fn __repr__(&self) -> String {
        let token = if self.has_token { "<redacted>" } else { "None" };
        format!(
            "ClientConfig(relay={:?}, token={token})",
            self.inner.relay_addr()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClientConfig>()
}
