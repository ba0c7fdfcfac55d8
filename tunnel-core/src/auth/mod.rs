//! Pluggable authentication and the grants that authorize every stream.
//!
//! The relay calls an [`Authenticator`] with what the client presented ([`AuthRequest`]:
//! token, client certificate, peer address) and gets back an [`Identity`] with [`Grants`].
//! Built-ins: [`TokenAuthenticator`] (a TOML file of hashed tokens) and [`CertAuthenticator`]
//! (mutual TLS, the certificate names the device); [`FirstOf`] tries several in order.

mod cert;
mod grants;
mod token;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

pub use cert::CertAuthenticator;
pub use grants::{Grants, Pattern};
pub use token::{Token, TokenAuthenticator, TokenEntry, TokenFile, TokenHash};

/// A boxed future, as returned by [`Authenticator::authenticate`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides who a connecting client is. Called once per connection, before any stream exists,
/// under the relay's handshake deadline.
///
/// Return one uniform [`AuthRejected`] for every failure (unknown token, wrong token, no
/// certificate): the client learns nothing, the reason goes to the relay's log.
pub trait Authenticator: Send + Sync + 'static {
    /// Maps the presented credential to an identity with grants.
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>>;

    /// The live identity of a [`principal`](Identity::principal) this authenticator
    /// issued, without its credential: how a relay in a cluster authorizes a stream that a
    /// peer relay forwards on behalf of a caller it authenticated. `None` (the default)
    /// when the principal is unknown, revoked or expired, and the stream is refused.
    fn resolve<'a>(&'a self, principal: &'a str) -> BoxFuture<'a, Option<Identity>> {
        let _ = principal;
        Box::pin(async { None })
    }
}

/// What a client presented to the relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest {
    /// The client's address as the relay sees it.
    pub peer: SocketAddr,
    /// The bearer token from the hello, if any.
    pub token: Option<Token>,
    /// The DER of the client's TLS certificate, already verified against the relay's client CA.
    pub client_cert: Option<Vec<u8>>,
    /// For a device: the device ID it asks to register as. For an access client: `None`.
    pub device: Option<String>,
}

/// The relay's verdict on a credential: a name for logs and for the device to see as the
/// caller, a principal that owns what the credential claims, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    name: String,
    principal: String,
    grants: Grants,
    relay_peer: bool,
}

impl Identity {
    /// An identity with these grants, from an application's own [`Authenticator`]: its
    /// principal is `app:<name>`, apart from the built-in authenticators' (`token:<name>`,
    /// `cert:<name>`), so names from different authenticators never collide.
    pub fn new(name: impl Into<String>, grants: Grants) -> Self {
        let name = name.into();
        Self {
            principal: format!("app:{name}"),
            name,
            grants,
            relay_peer: false,
        }
    }
    /// Another relay of the cluster, `relay:<id>`: it may forward streams on behalf of
    /// callers it authenticated (each checked against the caller's own grants, through
    /// [`Authenticator::resolve`]), and nothing else. Only a cluster authenticator that
    /// verified the peer's relay certificate may return this.
    pub fn relay_peer(relay_id: impl Into<String>) -> Self {
        let name = relay_id.into();
        Self {
            principal: format!("relay:{name}"),
            name,
            grants: Grants::new(),
            relay_peer: true,
        }
    }
    /// Whether this is a [`relay_peer`](Self::relay_peer).
    pub fn is_relay_peer(&self) -> bool {
        self.relay_peer
    }
    /// The same identity under another principal, namespaced by authenticator. Use one
    /// prefix per authenticator and keep names unique within it.
    pub fn with_principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = principal.into();
        self
    }
    /// The identity's name: what logs and devices see.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The stable key that owns device IDs and public ports and counts against
    /// per-credential caps: `<authenticator>:<name>`. Two credentials with one principal
    /// are one owner, so authenticators refuse duplicate names.
    pub fn principal(&self) -> &str {
        &self.principal
    }
    /// What the identity may do.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// Authentication failed. The text is for the relay's log only; the client always sees
/// the same `authentication failed`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authentication failed: {reason}")]
pub struct AuthRejected {
    reason: String,
    revoked: bool,
}

impl AuthRejected {
    /// A rejection with a reason for the relay's log.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            revoked: false,
        }
    }
    /// A credential that was valid and is no more (revoked, expired): the client is told
    /// so ([`RefusalCode::Revoked`](crate::RefusalCode::Revoked)), since whoever holds the
    /// token knew it once; any other failure stays one uniform answer.
    pub fn revoked(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            revoked: true,
        }
    }
    /// Whether this is [`AuthRejected::revoked`].
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }
}

/// Tries authenticators in order; the first that accepts wins.
pub struct FirstOf(Vec<Box<dyn Authenticator>>);

impl FirstOf {
    /// Chains `authenticators` (for example certificates first, then tokens).
    pub fn new(authenticators: Vec<Box<dyn Authenticator>>) -> Self {
        Self(authenticators)
    }
}

impl fmt::Debug for FirstOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FirstOf({} authenticators)", self.0.len())
    }
}

impl Authenticator for FirstOf {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let mut reasons = Vec::new();
            for a in &self.0 {
                match a.authenticate(request).await {
                    Ok(identity) => return Ok(identity),
                    Err(e) if e.revoked => return Err(e),
                    Err(e) => reasons.push(e.reason),
                }
            }
            Err(AuthRejected::new(reasons.join("; ")))
        })
    }

    fn resolve<'a>(&'a self, principal: &'a str) -> BoxFuture<'a, Option<Identity>> {
        Box::pin(async move {
            for a in &self.0 {
                if let Some(identity) = a.resolve(principal).await {
                    return Some(identity);
                }
            }
            None
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn request(token: Option<&str>) -> AuthRequest {
        AuthRequest {
            peer: "127.0.0.1:1".parse().unwrap(),
            token: token.map(Token::new),
            client_cert: None,
            device: None,
        }
    }

    #[tokio::test]
    async fn first_of_falls_through_to_the_next_authenticator() {
        let good = Token::new("tun_ok");
        let mut tokens = TokenAuthenticator::new();
        tokens
            .insert(good.hash(), Identity::new("t", Grants::new()))
            .unwrap();
        let chain = FirstOf::new(vec![Box::new(CertAuthenticator::new()), Box::new(tokens)]);
        assert_eq!(
            chain
                .authenticate(&request(Some("tun_ok")))
                .await
                .unwrap()
                .name(),
            "t"
        );
        assert!(chain.authenticate(&request(Some("tun_no"))).await.is_err());
    }
}
