//! The relay's side of the handshake: pre-auth caps, TLS, ALPN, the hello and
//! authentication, all under [`HANDSHAKE_TIMEOUT`]. A peer that fails here never reaches
//! yamux; one that speaks the protocol is told why in a `Refused` frame.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::info;

use super::events::Event;
use super::limit::Slot;
pub(super) use super::preauth::source_key;
use super::{Inner, Tls};
use crate::auth::{AuthRequest, Identity};
use crate::protocol::validate::check_declaration;
use crate::protocol::{
    self, HANDSHAKE_TIMEOUT, MAX_HELLO_LEN, Message, RefusalCode, Role, version_of,
};

/// An authenticated connection, ready for its session.
pub(super) struct Accepted {
    pub(super) tls: Tls,
    pub(super) hello: Hello,
    pub(super) identity: Identity,
    /// The protocol version both ends speak (from ALPN).
    pub(super) version: u8,
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// This identity's slot in the per-identity session cap, held for the session's life.
    pub(super) slot: Slot<String>,
}

/// A validated hello.
pub(crate) struct Hello {
    pub(super) role: Role,
    pub(super) device: String,
    pub(super) services: Vec<String>,
    pub(super) public: Vec<(String, u16)>,
}

impl Hello {
    fn validate(&self) -> Result<(), String> {
        match self.role {
            Role::Access => {
                if !self.device.is_empty() || !self.services.is_empty() || !self.public.is_empty() {
                    return Err("an access client declares no device, services or ports".into());
                }
                Ok(())
            }
            Role::Device => check_declaration(&self.device, &self.services, &self.public)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Why a handshake was refused: what the client is told, and what the log says (which may
/// name more than the client may learn, never a secret).
struct HandshakeRefusal {
    code: RefusalCode,
    message: String,
    log: String,
}

impl HandshakeRefusal {
    fn new(code: RefusalCode, message: &str, log: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
            log: log.to_owned(),
        }
    }
}

/// Deadline for the first byte of the TLS ClientHello after the TCP accept: a real client
/// sends it at once (one round trip covers even a satellite link); a connection that stays
/// silent is a slot held by someone who is not trying to log in.
pub(super) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

impl Inner {
    /// TLS, ALPN, hello and authentication, under one deadline (and the first TLS byte
    /// under a shorter one). Failures are answered with a `Refused` frame where the peer
    /// speaks our protocol, and logged without secrets.
    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<Box<Accepted>> {
        let attempt = async {
            let mut first = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await {
                Ok(Ok(1..)) => {}
                Ok(Ok(0)) => return Err("closed before sending anything".to_owned()),
                Ok(Err(e)) => return Err(format!("tcp: {e}")),
                Err(_) => return Err("no TLS byte within the first-byte deadline".to_owned()),
            }
            let mut tls = self
                .tls
                .accept(crate::read_ahead::ReadAhead::new(tcp))
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let Some(version) = version_of(tls.get_ref().1.alpn_protocol()) else {
                return Err("client did not negotiate ALPN tunnel/2 or tunnel/1".to_owned());
            };
            let msg = match protocol::read_frame(&mut tls, MAX_HELLO_LEN).await {
                Ok(m) => m,
                Err(e) => {
                    refuse(&mut tls, RefusalCode::BadRequest, "malformed hello").await;
                    return Err(format!("hello: {e}"));
                }
            };
            match self.check_hello(msg, version, &tls, peer).await {
                Ok((hello, identity, slot)) => Ok(Accepted {
                    tls,
                    hello,
                    identity,
                    version,
                    peer,
                    slot,
                }),
                Err(r) => {
                    crate::metrics::handshake_failed(metric_reason(r.code));
                    if matches!(r.code, RefusalCode::AuthFailed | RefusalCode::Revoked) {
                        self.tables.emit(Event::AuthFailed {
                            peer,
                            reason: r.log.clone(),
                        });
                    }
                    refuse(&mut tls, r.code, &r.message).await;
                    Err(r.log)
                }
            }
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
            Ok(Ok(done)) => {
                crate::metrics::handshake_done(started.elapsed());
                Some(Box::new(done))
            }
            Ok(Err(reason)) => {
                if reason.starts_with("tls") || reason.starts_with("no TLS") {
                    crate::metrics::handshake_failed("tls");
                }
                info!(reason, "handshake refused");
                None
            }
            Err(_) => {
                crate::metrics::handshake_failed("timeout");
                info!("handshake timed out");
                None
            }
        }
    }

    async fn check_hello(
        &self,
        msg: Message,
        negotiated: u8,
        tls: &Tls,
        peer: SocketAddr,
    ) -> Result<(Hello, Identity, Slot<String>), HandshakeRefusal> {
        let Message::Hello {
            version,
            role,
            token,
            device,
            services,
            public,
        } = msg
        else {
            return Err(HandshakeRefusal::new(
                RefusalCode::BadRequest,
                "expected hello",
                "first frame not a hello",
            ));
        };
        if version != negotiated {
            let text = format!(
                "protocol version {version} does not match the negotiated tunnel/{negotiated}"
            );
            return Err(HandshakeRefusal::new(
                RefusalCode::UnsupportedVersion,
                &text,
                &text,
            ));
        }
        let hello = Hello {
            role,
            device,
            services,
            public,
        };
        hello
            .validate()
            .map_err(|m| HandshakeRefusal::new(RefusalCode::BadRequest, &m, &m))?;
        let request = AuthRequest {
            peer,
            token: (!token.expose().is_empty()).then_some(token),
            client_cert: tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            device: (role == Role::Device).then(|| hello.device.clone()),
        };
        // Handshakes already in flight when the source was cut off are not authenticated
        // either: a correct guess must not succeed while the source is blocked.
        if self.auth_failures.is_blocked(source_key(peer.ip())) {
            return Err(HandshakeRefusal::new(
                RefusalCode::AuthFailed,
                "authentication failed",
                "source throttled after failed authentications",
            ));
        }
        let identity = self
            .authenticator
            .authenticate(&request)
            .await
            .map_err(|e| {
                self.auth_failures.failed(source_key(peer.ip()));
                let (code, why) = if e.is_revoked() {
                    (RefusalCode::Revoked, "credential revoked or expired")
                } else {
                    (RefusalCode::AuthFailed, "authentication failed")
                };
                HandshakeRefusal::new(code, why, &e.to_string())
            })?;
        self.preauth.authenticated(peer.ip());
        if self.draining.is_cancelled() {
            return Err(HandshakeRefusal::new(
                RefusalCode::Unavailable,
                "relay is shutting down",
                "draining",
            ));
        }
        let slot = self
            .per_identity
            .try_take(identity.principal().to_owned())
            .ok_or_else(|| {
                let log = format!("{} holds too many sessions", identity.name());
                HandshakeRefusal::new(
                    RefusalCode::Unavailable,
                    "too many sessions for this credential",
                    &log,
                )
            })?;
        Ok((hello, identity, slot))
    }
}

/// The metrics label of a refusal.
fn metric_reason(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::AuthFailed => "auth",
        RefusalCode::Revoked => "revoked",
        RefusalCode::UnsupportedVersion => "version",
        RefusalCode::BadRequest => "bad_request",
        _ => "busy",
    }
}

/// Sends a `Refused` frame and closes the TLS stream.
pub(super) async fn refuse(tls: &mut Tls, code: RefusalCode, message: &str) {
    let msg = Message::Refused {
        code,
        message: message.to_owned(),
    };
    let _ = protocol::write_frame(tls, &msg).await;
    let _ = tls.shutdown().await;
}

/// Decodes-and-validates path of a hello, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn validate_hello(msg: Message) -> Result<(), String> {
    let Message::Hello {
        role,
        device,
        services,
        public,
        ..
    } = msg
    else {
        return Err("not a hello".into());
    };
    Hello {
        role,
        device,
        services,
        public,
    }
    .validate()
}
