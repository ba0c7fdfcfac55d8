//! TLS: the relay's identity, how clients verify it (SPKI pin or CA roots), and the rustls
//! configurations. TLS 1.3 only; the crypto provider is always passed explicitly.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::protocol::ALPN_ALL;

/// The crypto provider of every configuration: the enabled one's defaults, with the suite
/// that is fastest on this CPU offered first.
///
/// - **With AES instructions** (x86 AES-NI and PCLMULQDQ, Armv8 AES and PMULL):
///   TLS13_AES_128_GCM_SHA256 first. rustls offers AES-256-GCM first; AES-128-GCM is TLS
///   1.3's mandatory suite, Go's first choice on such CPUs, and 10 rounds against 14: it
///   seals a 16 KiB record 1.06–1.2× faster on the bench machine, and every byte of a tunnel
///   is sealed and opened once per TLS hop (benches/RESULTS.md 5.16).
/// - **Without them** (Raspberry Pi 4 and earlier, many IoT SoCs, 32-bit Arm, where the
///   check is not available): TLS13_CHACHA20_POLY1305_SHA256 first. AES in software is
///   several times slower there than ChaCha20, and it is the device that encrypts most of
///   its bytes (Go and BoringSSL choose the same way; RESULTS.md 5.18).
///
/// The client's order decides (rustls's default server), so a device without AES gets
/// ChaCha20 from a relay that has AES, at some CPU cost to the relay, and older peers
/// still get AES-256-GCM. No suite is removed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = enabled_provider();
    order_suites(&mut provider.cipher_suites, cpu_has_aes());
    Arc::new(provider)
}

/// The enabled provider's defaults, as rustls ships them: aws-lc-rs when its feature is
/// on, which is the one a build asks for by name (`ring` is a default feature, and
/// default features are hard to turn off deep in a dependency tree).
fn enabled_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::default_provider();
}

/// Whether this CPU has the instructions that make AES-GCM fast (checked at run time:
/// one binary serves CPUs with and without them).
fn cpu_has_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    // Rust's "aes" on aarch64 is FEAT_AES with FEAT_PMULL (GHASH's multiply).
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    return false;
}

/// Moves AES-128-GCM (`aes_in_hardware`) or ChaCha20-Poly1305 to the front, keeping the
/// others in their order.
fn order_suites(suites: &mut [rustls::SupportedCipherSuite], aes_in_hardware: bool) {
    let first = if aes_in_hardware {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    } else {
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    };
    if let Some(at) = suites.iter().position(|s| s.suite() == first) {
        suites[..=at].rotate_right(1);
    }
}

/// A SHA-256 pin of a certificate's public key (SubjectPublicKeyInfo), written
/// `sha256:<64 hex digits>`. It survives certificate renewal with the same key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    /// The pin of a DER certificate's public key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, ConfigError> {
        let cert = CertificateDer::from(cert_der);
        let parsed = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| ConfigError::Certificate(format!("cannot parse certificate: {e}")))?;
        Ok(Self(
            Sha256::digest(parsed.subject_public_key_info().as_ref()).into(),
        ))
    }
}

impl std::str::FromStr for SpkiPin {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Pin(s.chars().take(80).collect());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        crate::hex::decode_32(hex).map(Self).ok_or_else(bad)
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

/// How a client decides that it talks to the real relay. There is no "accept anything".
#[derive(Clone)]
pub enum RelayTrust {
    /// The relay's certificate must carry this public key (any name, any issuer).
    Pin(SpkiPin),
    /// The relay's certificate must chain to these roots and name the relay host.
    Roots(Arc<RootCertStore>),
}

impl RelayTrust {
    /// Trust the CA certificates in a PEM file (WebPKI verification with host name check).
    pub fn ca_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        load_roots(path.as_ref()).map(|roots| Self::Roots(Arc::new(roots)))
    }
}

/// Reads every certificate of a PEM file into a root store.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
            roots
                .add(cert.map_err(|e| pem_error(path, e))?)
                .map_err(|e| ConfigError::Certificate(format!("{}: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(ConfigError::Certificate(format!(
                "{}: no certificates",
                path.display()
            )));
        }
        Ok(roots)
    }
}

impl fmt::Debug for RelayTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pin(p) => write!(f, "Pin({p})"),
            Self::Roots(r) => write!(f, "Roots({} certificates)", r.len()),
        }
    }
}

impl From<SpkiPin> for RelayTrust {
    fn from(pin: SpkiPin) -> Self {
        Self::Pin(pin)
    }
}

/// A certificate chain and its private key: the relay's TLS identity, or a device's client
/// certificate for mutual TLS. The key never appears in `Debug` output.
pub struct TlsIdentity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("pin", &self.pin().ok())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_error(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, e))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        Self::from_der(chain, key)
    }

    /// Loads a PEM certificate chain and key from memory.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ConfigError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Certificate(format!("certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ConfigError::Certificate(format!("key PEM: {e}")))?;
        Self::from_der(chain, key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, ConfigError> {
        if chain.is_empty() {
            return Err(ConfigError::Certificate(
                "no certificate in the chain".into(),
            ));
        }
        // Catch a key that does not belong to the certificate now, not at the first handshake.
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| ConfigError::Certificate(format!("unusable private key: {e}")))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| {
            ConfigError::Certificate(format!("key does not match certificate: {e}"))
        })?;
        Ok(Self { chain, key })
    }

    /// Generates a self-signed certificate for `names` (DNS names or IP addresses) with a
    /// fresh ECDSA P-256 key. For a first try, tests and the demo; pin it with [`TlsIdentity::pin`].
    pub fn generate_self_signed(names: &[&str]) -> Result<Self, ConfigError> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)
            .map_err(|e| {
            ConfigError::Certificate(format!("cannot generate certificate: {e}"))
        })?;
        let key = PrivateKeyDer::try_from(signing_key.serialize_der())
            .map_err(|e| ConfigError::Certificate(format!("generated key: {e}")))?;
        Self::from_der(vec![cert.der().clone()], key)
    }

    /// The SHA-256 pin of the leaf certificate's public key, as clients pass it.
    pub fn pin(&self) -> Result<SpkiPin, ConfigError> {
        SpkiPin::of_certificate(&self.chain[0])
    }

    /// Writes the chain and the key as PEM files; the key file is readable by its owner only.
    pub fn save_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), ConfigError> {
        crate::util::write_private(key.as_ref(), self.key_pem().as_bytes())?;
        crate::util::write_private(cert.as_ref(), self.cert_pem().as_bytes())
    }

    /// The relay's own identity kept in a state directory: `relay.crt` and `relay.key` in
    /// `dir` if both exist, else a self-signed certificate for `names`, generated and saved
    /// there (the directory is created) so that the pin survives restarts. Returns whether
    /// it was generated now.
    pub fn load_or_generate(
        dir: impl AsRef<Path>,
        names: &[&str],
    ) -> Result<(Self, bool), ConfigError> {
        let dir = dir.as_ref();
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        if cert.exists() && key.exists() {
            return Ok((Self::from_pem_files(&cert, &key)?, false));
        }
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let identity = Self::generate_self_signed(names)?;
        identity.save_pem_files(&cert, &key)?;
        Ok((identity, true))
    }

    /// The chain as PEM text (leaf first).
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// The private key as PKCS#8 PEM text. Handle with care: this is the secret.
    pub fn key_pem(&self) -> String {
        pem_block("PRIVATE KEY", self.key.secret_der())
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> ConfigError {
    ConfigError::Certificate(format!("{}: {e}", path.display()))
}

/// The relay's server configuration: TLS 1.3, ALPN `tunnel/2` then `tunnel/1`, optional client certificates
/// verified against `client_roots` (clients without one may still present a token).
pub(crate) fn server_config(
    identity: &TlsIdentity,
    client_roots: Option<Arc<RootCertStore>>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| ConfigError::Certificate(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    config.alpn_protocols = ALPN_ALL.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

impl TlsIdentity {
    /// A TLS 1.3 server configuration with this identity for a listener of the
    /// application's own (an HTTPS admin API next to the relay), offering `alpn` (for
    /// example `http/1.1`). The relay's own listener does not use this.
    pub fn server_config_for(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConfigError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| ConfigError::Certificate(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A client configuration that verifies the relay by `trust` and presents `client_cert` if any.
pub(crate) fn client_config(
    trust: &RelayTrust,
    client_cert: Option<&TlsIdentity>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    let builder = match trust {
        RelayTrust::Roots(roots) => builder.with_root_certificates(roots.clone()),
        RelayTrust::Pin(pin) => builder
            .dangerous() // a custom verifier; it still checks the handshake signature
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: *pin,
                provider,
            })),
    };
    let mut config = match client_cert {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| ConfigError::Certificate(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN_ALL.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server name sent in SNI and checked against the certificate under [`RelayTrust::Roots`].
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ConfigError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| ConfigError::Address(host.to_owned()))
}

/// Accepts exactly the certificates whose public key hashes to the pin. The TLS 1.3
/// signature is still verified, so the relay must hold the private key.
#[derive(Debug)]
struct PinVerifier {
    pin: SpkiPin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match SpkiPin::of_certificate(end_entity) {
            Ok(pin) if pin == self.pin => Ok(ServerCertVerified::assertion()),
            Ok(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            Err(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client certificate chain (end entity first, DER) against `roots` alone and
/// returns the DNS names it was issued for. A relay's TLS accepts a client certificate
/// issued by any of its client roots; an authenticator that trusts only one of them (a
/// cluster CA, say) calls this to know that its CA issued this one.
pub fn verify_client_cert(
    chain: &[Vec<u8>],
    roots: Arc<RootCertStore>,
) -> Result<Vec<String>, ConfigError> {
    let (end, rest) = chain
        .split_first()
        .ok_or_else(|| ConfigError::Certificate("no client certificate".into()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| ConfigError::Certificate(format!("client roots: {e}")))?;
    let end = CertificateDer::from(end.as_slice());
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    verifier
        .verify_client_cert(&end, &intermediates, UnixTime::now())
        .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    let cert = webpki::EndEntityCert::try_from(&end)
        .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    Ok(cert.valid_dns_names().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_round_trips_through_its_text_form() {
        let id = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
        let pin = id.pin().unwrap();
        let text = pin.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<SpkiPin>().unwrap(), pin);
    }

    #[test]
    fn malformed_pins_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:00",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(bad.parse::<SpkiPin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_survives_a_pem_round_trip_with_the_same_pin() {
        let id = TlsIdentity::generate_self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let back = TlsIdentity::from_pem(&id.cert_pem(), &id.key_pem()).unwrap();
        assert_eq!(back.pin().unwrap(), id.pin().unwrap());
    }

    #[test]
    fn a_key_from_another_certificate_is_refused_at_load_time() {
        let a = TlsIdentity::generate_self_signed(&["a"]).unwrap();
        let b = TlsIdentity::generate_self_signed(&["b"]).unwrap();
        let err = TlsIdentity::from_pem(&a.cert_pem(), &b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    /// The cipher suite both ends agree on when `client` dials the relay's configuration.
    async fn negotiated(
        client: Arc<rustls::ClientConfig>,
        id: &TlsIdentity,
    ) -> rustls::CipherSuite {
        let server = server_config(id, None).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(b);
        let name = ServerName::try_from("localhost").unwrap();
        let connect = tokio_rustls::TlsConnector::from(client).connect(name, a);
        let (server, client) = tokio::join!(accept, connect);
        let (server, client) = (server.unwrap(), client.unwrap());
        let suite = client
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite();
        assert_eq!(
            server
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .unwrap()
                .suite(),
            suite
        );
        suite
    }

    #[tokio::test]
    async fn our_peers_agree_on_the_suite_this_cpu_runs_fastest() {
        let id = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
        let client = client_config(&RelayTrust::Pin(id.pin().unwrap()), None).unwrap();
        let expected = if cpu_has_aes() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(negotiated(client, &id).await, expected);
    }

    /// A client pinning `id` that offers `first` first, then the provider's defaults.
    fn client_preferring(
        id: &TlsIdentity,
        first: rustls::CipherSuite,
    ) -> Arc<rustls::ClientConfig> {
        let mut provider = enabled_provider();
        provider.cipher_suites.sort_by_key(|s| s.suite() != first);
        let provider = Arc::new(provider);
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: id.pin().unwrap(),
                provider,
            }))
            .with_no_client_auth();
        Arc::new(client)
    }

    #[tokio::test]
    async fn a_peer_preferring_aes_256_gcm_still_gets_it() {
        // An older build of this project offered rustls's default order.
        let id = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
        let suite = rustls::CipherSuite::TLS13_AES_256_GCM_SHA384;
        assert_eq!(negotiated(client_preferring(&id, suite), &id).await, suite);
    }

    #[tokio::test]
    async fn a_device_without_aes_instructions_gets_chacha20_from_a_relay_that_has_them() {
        // The relay's own order (AES-128-GCM first here) must not override the device's.
        let id = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
        let suite = rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
        assert_eq!(negotiated(client_preferring(&id, suite), &id).await, suite);
    }

    #[test]
    fn the_cpu_picks_the_first_suite_and_the_rest_keep_their_order() {
        use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
        for (aes, first) in [
            (true, TLS13_AES_128_GCM_SHA256),
            (false, TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            let mut suites = enabled_provider().cipher_suites;
            let before: Vec<_> = suites.iter().map(|s| s.suite()).collect();
            order_suites(&mut suites, aes);
            let after: Vec<_> = suites.iter().map(|s| s.suite()).collect();
            assert_eq!(after[0], first, "aes in hardware: {aes}");
            assert_eq!(after.len(), before.len());
            let rest = |v: &[rustls::CipherSuite]| -> Vec<rustls::CipherSuite> {
                v.iter().copied().filter(|s| *s != first).collect()
            };
            assert_eq!(rest(&after), rest(&before));
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let id = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
        let pem = id.key_pem();
        let secret_line = pem.lines().nth(1).unwrap();
        assert!(!format!("{id:?}").contains(secret_line));
    }
}
