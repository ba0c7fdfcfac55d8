//! The cluster CA: relays prove to each other that they belong to the cluster with a
//! certificate it issued, whose DNS name is the relay's ID. A peer's certificate is
//! checked against this CA alone, even when the relay also trusts a CA for devices.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tunnel_core::{
    AuthRejected, AuthRequest, Authenticator, BoxFuture, ConfigError, Identity, TlsIdentity,
};

/// The CA certificate in a cluster CA directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key in a cluster CA directory (keep it off relays that need not issue).
pub const CA_KEY: &str = "ca.key";

/// The cluster CA: its certificate, and its key when this process may issue.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: Option<String>,
}

fn cert_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Certificate(e.to_string())
}

impl ClusterCa {
    /// A new CA (a self-signed certificate that may sign relay certificates).
    pub fn generate() -> Result<Self, ConfigError> {
        let params = ca_params()?;
        let key = rcgen::KeyPair::generate().map_err(cert_error)?;
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    /// Reads `ca.crt` (and `ca.key` if present) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::Certificate(format!("{}: {e}", path.display())))
        };
        let cert_pem = read(CA_CERT)?;
        let key_pem = dir
            .join(CA_KEY)
            .exists()
            .then(|| read(CA_KEY))
            .transpose()?;
        Ok(Self { cert_pem, key_pem })
    }

    /// Writes `ca.crt` and `ca.key` into `dir` (created; the key readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        std::fs::create_dir_all(dir).map_err(|e| ConfigError::Certificate(e.to_string()))?;
        let key = self
            .key_pem
            .as_deref()
            .ok_or_else(|| ConfigError::Certificate("this CA has no key to save".into()))?;
        // A TlsIdentity writes both files privately and atomically.
        TlsIdentity::from_pem(&self.cert_pem, key)?
            .save_pem_files(dir.join(CA_CERT), dir.join(CA_KEY))
    }

    /// Issues a certificate for relay `relay_id` (its DNS name), for both ends of the
    /// relay-to-relay links. Needs the CA key.
    pub fn issue(&self, relay_id: &str) -> Result<TlsIdentity, ConfigError> {
        let key_pem = self
            .key_pem
            .as_deref()
            .ok_or_else(|| ConfigError::Certificate(format!("no {CA_KEY}: cannot issue")))?;
        let ca_key = rcgen::KeyPair::from_pem(key_pem).map_err(cert_error)?;
        // The issuer's name and key identify the CA in what it signs; its parameters are
        // the same every time (see `ca_params`), so they need not be parsed back.
        let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
        let mut params =
            rcgen::CertificateParams::new(vec![relay_id.to_owned()]).map_err(cert_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, relay_id);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
        TlsIdentity::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The relay certificate of `relay_id` from `dir` (`<id>.crt`, `<id>.key`); issued
    /// and saved there first when missing and the CA key is present.
    pub fn relay_identity(&self, dir: &Path, relay_id: &str) -> Result<TlsIdentity, ConfigError> {
        let (cert, key) = relay_files(dir, relay_id);
        if cert.exists() && key.exists() {
            return TlsIdentity::from_pem_files(&cert, &key);
        }
        let identity = self.issue(relay_id)?;
        identity.save_pem_files(&cert, &key)?;
        Ok(identity)
    }

    /// The CA as the only root: what peers' certificates are checked against.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, ConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.map_err(cert_error)?).map_err(cert_error)?;
        }
        if roots.is_empty() {
            return Err(ConfigError::Certificate(
                "the cluster CA file holds no certificate".into(),
            ));
        }
        Ok(Arc::new(roots))
    }
}

impl ClusterCa {
    /// The client roots of a relay in the cluster: this CA (for peers) and, if given, the
    /// CA file of device certificates.
    pub fn roots_with(&self, device_ca: Option<&Path>) -> Result<RootCertStore, ConfigError> {
        let mut roots = (*self.roots()?).clone();
        if let Some(path) = device_ca {
            let pem = std::fs::read(path)
                .map_err(|e| ConfigError::Certificate(format!("{}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(cert_error)?).map_err(cert_error)?;
            }
        }
        Ok(roots)
    }
}

/// The CA's own certificate parameters: the same for every cluster CA (only the key
/// differs), so an issuer can be rebuilt from the key alone.
fn ca_params() -> Result<rcgen::CertificateParams, ConfigError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tunnel cluster CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Where a relay's cluster certificate and key live in a CA directory.
pub fn relay_files(dir: &Path, relay_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{relay_id}.crt")),
        dir.join(format!("{relay_id}.key")),
    )
}

/// Authenticates peer relays: a client certificate issued by the cluster CA makes the
/// session a [relay peer](Identity::relay_peer) named by the certificate's DNS name. Put
/// it first in a [`FirstOf`](tunnel_core::FirstOf); anything else falls through.
pub struct PeerAuthenticator {
    roots: Arc<RootCertStore>,
}

impl PeerAuthenticator {
    /// Peers whose certificates `ca` issued.
    pub fn new(ca: &ClusterCa) -> Result<Self, ConfigError> {
        Ok(Self { roots: ca.roots()? })
    }
}

impl Authenticator for PeerAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let der = request
                .client_cert
                .as_ref()
                .ok_or_else(|| AuthRejected::new("no client certificate"))?;
            if request.device.is_some() {
                return Err(AuthRejected::new("a relay peer does not register devices"));
            }
            let names =
                tunnel_core::verify_client_cert(std::slice::from_ref(der), self.roots.clone())
                    .map_err(|e| AuthRejected::new(format!("not a cluster certificate: {e}")))?;
            let id = names
                .into_iter()
                .next()
                .ok_or_else(|| AuthRejected::new("cluster certificate names no relay"))?;
            Ok(Identity::relay_peer(id))
        })
    }
}
