//! What devices and access clients share: the client configuration, the handshake with the
//! relay and the heartbeat that keeps the session honest.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::Token;
use crate::config::{HEARTBEAT_MISSES, Limits, MIN_HEARTBEAT};
use crate::error::{ConfigError, ConnectError};
use crate::mux::{Inbound, Opener, Session};
use crate::protocol::{self, ALPN, HANDSHAKE_TIMEOUT, MAX_HELLO_LEN, Message, Role, VERSION};
use crate::tls::{RelayTrust, TlsIdentity};

/// How to reach and trust the relay, and which credential to present. Shared by
/// [`Listener`](crate::Listener) and [`Dialer`](crate::Dialer).
#[derive(Clone)]
pub struct ClientConfig {
    relay: String,
    trust: RelayTrust,
    server_name: Option<String>,
    token: Option<Token>,
    client_cert: Option<TlsIdentity>,
    limits: Limits,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("relay", &self.relay)
            .field("trust", &self.trust)
            .field("token", &self.token) // redacted by Token's Debug
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A client of the relay at `relay` (`host:port`), verified by `trust`
    /// (a [`SpkiPin`](crate::SpkiPin) or CA roots). Add a credential with
    /// [`token`](Self::token) or [`client_cert`](Self::client_cert).
    pub fn new(relay: impl Into<String>, trust: impl Into<RelayTrust>) -> Self {
        Self {
            relay: relay.into(),
            trust: trust.into(),
            server_name: None,
            token: None,
            client_cert: None,
            limits: Limits::default(),
        }
    }
    /// Presents this bearer token.
    pub fn token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }
    /// Presents this TLS client certificate (mutual TLS).
    pub fn client_cert(mut self, identity: TlsIdentity) -> Self {
        self.client_cert = Some(identity);
        self
    }
    /// The name to send in SNI and, with CA roots, to check in the relay's certificate.
    /// Default: the host part of the relay address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
    /// Stream limits of the session; keep them equal to the relay's.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// The relay address as given.
    pub fn relay_addr(&self) -> &str {
        &self.relay
    }

    fn host(&self) -> Result<&str, ConfigError> {
        let (host, port) = self
            .relay
            .rsplit_once(':')
            .ok_or_else(|| ConfigError::Address(self.relay.clone()))?;
        port.parse::<u16>()
            .map_err(|_| ConfigError::Address(self.relay.clone()))?;
        Ok(host)
    }
}

/// An established session with the relay.
pub(crate) struct Connected {
    pub(crate) session: Session,
    pub(crate) inbound: Inbound,
    pub(crate) identity: String,
    pub(crate) public: Vec<(String, u16)>,
}

/// What the client asks for in its hello.
pub(crate) struct HelloRequest {
    pub(crate) role: Role,
    pub(crate) device: String,
    pub(crate) services: Vec<String>,
    pub(crate) public: Vec<(String, u16)>,
}

/// Connects, verifies the relay, authenticates and starts the session and its heartbeat,
/// all under [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn connect(
    cfg: &ClientConfig,
    request: HelloRequest,
) -> Result<Connected, ConnectError> {
    cfg.limits.validate()?;
    let host = cfg.host()?.to_owned();
    let name = crate::tls::server_name(cfg.server_name.as_deref().unwrap_or(&host))?;
    let tls_config = crate::tls::client_config(&cfg.trust, cfg.client_cert.as_ref())?;
    let span =
        info_span!("session", relay = %cfg.relay, role = ?request.role, device = %request.device);
    let handshake = async {
        let tcp =
            TcpStream::connect(&cfg.relay)
                .await
                .map_err(|source| ConnectError::Unreachable {
                    addr: cfg.relay.clone(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(ConnectError::Alpn);
        }
        let hello = Message::Hello {
            version: VERSION,
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
            } => Ok((tls, heartbeat_ms, identity, public)),
            Message::Refused { code, message } => {
                let _ = tls.shutdown().await;
                Err(ConnectError::Refused { code, message })
            }
            other => Err(ConnectError::Protocol(format!(
                "expected welcome, got {}",
                other.name()
            ))),
        }
    };
    let (tls, heartbeat_ms, identity, public) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .instrument(span.clone())
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let interval = Duration::from_millis(u64::from(heartbeat_ms)).max(MIN_HEARTBEAT);
    let opener = match request.role {
        Role::Access => Opener::Local,
        Role::Device => Opener::Remote,
    };
    let (session, inbound) = Session::spawn(
        tls,
        &cfg.limits,
        opener,
        yamux::Mode::Client,
        span.clone(),
        None,
    );
    tokio::spawn(heartbeat(session.clone(), interval).instrument(span));
    Ok(Connected {
        session,
        inbound,
        identity,
        public,
    })
}

/// Classifies a TLS failure: certificate problems on either side are permanent and named.
fn tls_error(e: std::io::Error) -> ConnectError {
    use rustls::AlertDescription as A;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(_)) => ConnectError::BadCertificate(e.to_string()),
        // With TLS 1.3 the relay judges our certificate after our side of the handshake
        // is done, so this alert can also arrive while reading the welcome. DecryptError is
        // what a certificate signed by an untrusted key with a trusted name earns.
        Some(rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError,
        )) => ConnectError::CertificateRejected(e.to_string()),
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

/// Client side of the heartbeat: a ping every `interval` on the control stream, and the
/// session is closed when a pong is more than two intervals late. A dead relay is thus
/// noticed within three intervals.
async fn heartbeat(session: Session, interval: Duration) {
    let reason = heartbeat_loop(&session, interval).await;
    if !session.is_closed() {
        warn!(reason, "heartbeat failed; closing session");
        session.close();
    }
}

async fn heartbeat_loop(session: &Session, interval: Duration) -> &'static str {
    let Ok(mut control) = session.open().await else {
        return "cannot open the control stream";
    };
    let deadline = interval * (HEARTBEAT_MISSES - 1);
    if protocol::write_frame(&mut control, &Message::Control)
        .await
        .is_err()
    {
        return "control stream write failed";
    }
    let mut nonce = 0u64;
    loop {
        nonce = nonce.wrapping_add(1);
        if protocol::write_frame(&mut control, &Message::Ping(nonce))
            .await
            .is_err()
        {
            return "control stream write failed";
        }
        match tokio::time::timeout(
            deadline,
            protocol::read_frame(&mut control, protocol::MAX_HEADER_LEN),
        )
        .await
        {
            Ok(Ok(Message::Pong(n))) if n == nonce => debug!(nonce, "pong"),
            Ok(Ok(_)) => return "unexpected message on the control stream",
            Ok(Err(_)) => return "control stream closed",
            Err(_) => return "relay missed its heartbeats",
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = session.closed() => return "session closed",
        }
    }
}
