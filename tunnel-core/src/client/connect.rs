//! The client's side of the handshake: TCP, TLS with the relay verified, ALPN, the hello
//! and the relay's welcome or refusal, all under [`HANDSHAKE_TIMEOUT`]; then the yamux
//! session with the limits the relay announced, and its heartbeat.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, info_span};

use super::ClientConfig;
use super::heartbeat::heartbeat;
use crate::auth::Token;
use crate::config::{Limits, MIN_HEARTBEAT};
use crate::error::ConnectError;
use crate::mux::{Inbound, Opener, Session, Side};
use crate::protocol::validate::printable;
use crate::protocol::{self, HANDSHAKE_TIMEOUT, MAX_HELLO_LEN, Message, Role, version_of};

/// An established session with the relay.
pub(crate) struct Connected {
    /// The relay that accepted (one of the configured addresses).
    pub(crate) relay: String,
    pub(crate) session: Session,
    pub(crate) inbound: Inbound,
    pub(crate) identity: String,
    pub(crate) public: Vec<(String, u16)>,
    /// Public ports asked for and left out by the relay, `(service, why)`.
    pub(crate) public_failed: Vec<(String, String)>,
}

/// What the client asks for in its hello.
pub(crate) struct HelloRequest {
    pub(crate) role: Role,
    pub(crate) device: String,
    pub(crate) services: Vec<String>,
    pub(crate) public: Vec<(String, u16)>,
}

/// Deadline for the TCP connect to one address when there are several to try: a relay
/// that is down or cut off must not hold the others back for the whole handshake deadline.
pub(crate) const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the first relay that accepts, in [`ClientConfig::attempt_order`], and
/// remembers it. A permanent refusal (credential, certificate) ends the search at once:
/// every relay of a cluster would say the same.
pub(crate) async fn connect(
    cfg: &ClientConfig,
    request: HelloRequest,
) -> Result<Connected, ConnectError> {
    cfg.limits.validate()?;
    cfg.validate_addrs()?;
    let tls_config = crate::tls::client_config(&cfg.trust, cfg.client_cert.as_ref())?;
    let order = cfg.attempt_order();
    let several = order.len() > 1;
    let mut last = None;
    for (index, relay) in order {
        let addrs = match resolve(relay).await {
            Ok(addrs) => addrs,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let several = several || addrs.len() > 1;
        for addr in addrs {
            match connect_to(cfg, relay, addr, several, &tls_config, &request).await {
                Ok(connected) => {
                    cfg.prefer(index);
                    return Ok(connected);
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    debug!(relay, %addr, error = %e, "relay not available; trying the next");
                    last = Some(e);
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::Unreachable {
        addr: cfg.relay.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to nothing"),
    }))
}

/// Every address `relay` (`host:port`) resolves to, under [`RELAY_CONNECT_TIMEOUT`].
async fn resolve(relay: &str) -> Result<Vec<SocketAddr>, ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        addr: relay.to_owned(),
        source,
    };
    let lookup = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, tokio::net::lookup_host(relay));
    match lookup.await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => Err(unreachable(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "name resolution timed out",
        ))),
    }
}

/// Connects to one address of `relay`, verifies it, authenticates and starts the session
/// and its heartbeat, all under [`HANDSHAKE_TIMEOUT`] (the TCP connect under
/// [`RELAY_CONNECT_TIMEOUT`] when there are other addresses to try).
async fn connect_to(
    cfg: &ClientConfig,
    relay: &str,
    addr: SocketAddr,
    several: bool,
    tls_config: &Arc<rustls::ClientConfig>,
    request: &HelloRequest,
) -> Result<Connected, ConnectError> {
    let host = super::host_of(relay)?;
    let name = crate::tls::server_name(cfg.server_name.as_deref().unwrap_or(host))?;
    let span = info_span!("session", %relay, role = ?request.role, device = %request.device);
    let handshake = async {
        let unreachable = |source| ConnectError::Unreachable {
            addr: relay.to_owned(),
            source,
        };
        let tcp = if several {
            match tokio::time::timeout(RELAY_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(tcp) => tcp.map_err(unreachable)?,
                Err(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                    return Err(unreachable(e));
                }
            }
        } else {
            TcpStream::connect(addr).await.map_err(unreachable)?
        };
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(tls_config.clone())
            .connect(name, crate::read_ahead::ReadAhead::new(tcp))
            .await
            .map_err(tls_error)?;
        let Some(version) = version_of(tls.get_ref().1.alpn_protocol()) else {
            return Err(ConnectError::Alpn);
        };
        let hello = Message::Hello {
            version,
            role: request.role,
            token: cfg
                .token
                .clone()
                .unwrap_or_else(|| Token::from_wire(String::new())),
            device: request.device.clone(),
            services: request.services.clone(),
            public: request.public.clone(),
        };
        protocol::write_frame(&mut tls, &hello)
            .await
            .map_err(protocol_error)?;
        match protocol::read_frame(&mut tls, MAX_HELLO_LEN)
            .await
            .map_err(protocol_error)?
        {
            Message::Welcome {
                heartbeat_ms,
                identity,
                public,
                limits,
                public_failed,
            } => Ok((tls, heartbeat_ms, identity, public, (limits, public_failed))),
            Message::Refused { code, message } => {
                let _ = tls.shutdown().await;
                let message = printable(&message);
                Err(ConnectError::Refused { code, message })
            }
            other => Err(ConnectError::Protocol(format!(
                "expected welcome, got {}",
                other.name()
            ))),
        }
    };
    let (tls, heartbeat_ms, identity, public, (announced, public_failed)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .instrument(span.clone())
            .await
            .map_err(|_| ConnectError::Timeout)??;
    // A version 2 relay says which limits the session runs with; a version 1 relay does
    // not, and the configured ones (which must then match the relay's) apply.
    let limits = match announced {
        Some(wire) => Limits::from_wire(wire).map_err(|e| {
            ConnectError::Protocol(format!("the relay announced unusable limits: {e}"))
        })?,
        None => cfg.limits,
    };
    let interval = Duration::from_millis(u64::from(heartbeat_ms)).max(MIN_HEARTBEAT);
    let opener = match request.role {
        Role::Access => Opener::Local,
        Role::Device => Opener::Remote,
    };
    let (session, inbound) = Session::spawn(tls, &limits, opener, Side::Client, span.clone());
    tokio::spawn(heartbeat(session.clone(), interval).instrument(span));
    Ok(Connected {
        relay: relay.to_owned(),
        session,
        inbound,
        identity,
        public,
        public_failed: public_failed
            .into_iter()
            .map(|(service, why)| (service, printable(&why)))
            .collect(),
    })
}

/// Classifies a TLS failure: certificate problems on either side are permanent and named,
/// and keep the rustls error as their source.
fn tls_error(e: std::io::Error) -> ConnectError {
    use rustls::AlertDescription as A;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match rustls_error {
        Some(r @ rustls::Error::InvalidCertificate(_)) => ConnectError::BadCertificate(r),
        // With TLS 1.3 the relay judges our certificate after our side of the handshake
        // is done, so this alert can also arrive while reading the welcome. DecryptError is
        // what a certificate signed by an untrusted key with a trusted name earns.
        Some(
            r @ rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateRequired
                | A::AccessDenied
                | A::DecryptError,
            ),
        ) => ConnectError::CertificateRejected(r),
        _ => ConnectError::Tls(e),
    }
}

fn protocol_error(e: protocol::FrameError) -> ConnectError {
    match e {
        protocol::FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ConnectError::Protocol("the relay closed the connection during the handshake".into())
        }
        protocol::FrameError::Io(io) => tls_error(io),
        other => ConnectError::Protocol(other.to_string()),
    }
}
