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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::auth::Token;
use crate::config::Limits;
use crate::error::ConfigError;
use crate::tls::{RelayTrust, TlsIdentity};

/// How to reach and trust the relay, and which credential to present. Shared by
/// [`Listener`](crate::Listener) and [`Dialer`](crate::Dialer).
///
/// **Several relays** (a cluster): give them comma-separated (`"r1:7835,r2:7835"`) or
/// add them with [`relay`](Self::relay); a host name that resolves to several addresses
/// counts as several. Each connection tries them in turn until one accepts, starting with
/// the one that worked last; the very first start is random, so a fleet spreads across
/// relays and a restarted relay does not take a thundering herd (devices stay where they
/// moved). Every relay must pass the same [`RelayTrust`] (one certificate for the
/// cluster, or CA roots).
#[derive(Clone)]
pub struct ClientConfig {
    relay: String,
    relays: Vec<String>,
    /// Index into `relays` of the relay to try first: random at first, then the last one
    /// that accepted. Shared by clones.
    preferred: Arc<AtomicUsize>,
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
        let relay: String = relay.into();
        let relays: Vec<String> = relay
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let start =
            usize::try_from(u64::from_le_bytes(seed) % relays.len().max(1) as u64).unwrap_or(0);
        Self {
            relay,
            relays,
            preferred: Arc::new(AtomicUsize::new(start)),
            trust: trust.into(),
            server_name: None,
            token: None,
            client_cert: None,
            limits: Limits::default(),
        }
    }
    /// Adds another relay of the cluster to try (`host:port`).
    pub fn relay(mut self, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        self.relay = format!("{},{addr}", self.relay);
        self.relays.push(addr);
        self
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
    /// The relay address as given (comma-separated when there are several).
    pub fn relay_addr(&self) -> &str {
        &self.relay
    }
    /// The relay addresses, in the order given.
    pub fn relay_addrs(&self) -> &[String] {
        &self.relays
    }

    /// The relays in the order to try them now: the preferred one first, then the others
    /// in the order given, wrapping around.
    pub(crate) fn attempt_order(&self) -> Vec<(usize, &str)> {
        let n = self.relays.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        (0..n)
            .map(|k| (start + k) % n)
            .map(|i| (i, self.relays[i].as_str()))
            .collect()
    }

    /// Remembers that relay `index` accepted: the next connection tries it first.
    pub(crate) fn prefer(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// Checks that there is at least one address and that each is `host:port`.
    pub(crate) fn validate_addrs(&self) -> Result<(), ConfigError> {
        if self.relays.is_empty() {
            return Err(ConfigError::Address(self.relay.clone()));
        }
        for r in &self.relays {
            host_of(r)?;
        }
        Ok(())
    }
}

/// The host part of `host:port` (brackets kept off an IPv6 literal's host by the caller).
pub(crate) fn host_of(addr: &str) -> Result<&str, ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::Address(addr.to_owned()))?;
    port.parse::<u16>()
        .map_err(|_| ConfigError::Address(addr.to_owned()))?;
    Ok(host)
}
