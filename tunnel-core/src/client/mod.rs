//! The two client roles and what they share.
//!
//! - this file: [`ClientConfig`], how to reach and trust the relay.
//! - [`connect`]: the handshake with the relay (TLS, hello, welcome) and the session start.
//! - [`heartbeat`]: the pings that keep a session honest.
//! - [`backoff`]: reconnect pacing.
//! - [`dialer`]: the access side, [`Dialer`](crate::Dialer).
//! - [`listener`]: the device side, [`Listener`](crate::Listener).
//! - [`forward`]: plumbing on top of both (forward to local addresses, serve a local port,
//!   pipe stdio).

mod backoff;
pub(crate) mod connect;
pub(crate) mod dialer;
pub(crate) mod forward;
mod heartbeat;
pub(crate) mod listener;

use crate::auth::Token;
use crate::config::Limits;
use crate::error::ConfigError;
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
    /// Stream limits of the session, used only with relays that speak protocol version 1
    /// (before 0.2): newer relays announce their limits in the welcome, and the client
    /// takes those.
    #[deprecated(
        since = "0.2.0",
        note = "the relay announces its limits in the welcome; this only matters for tunnel/1 relays"
    )]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// The relay address as given.
    pub fn relay_addr(&self) -> &str {
        &self.relay
    }

    pub(crate) fn host(&self) -> Result<&str, ConfigError> {
        let (host, port) = self
            .relay
            .rsplit_once(':')
            .ok_or_else(|| ConfigError::Address(self.relay.clone()))?;
        port.parse::<u16>()
            .map_err(|_| ConfigError::Address(self.relay.clone()))?;
        Ok(host)
    }
}
