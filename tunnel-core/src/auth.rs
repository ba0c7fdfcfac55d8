//! Pluggable authentication and the grants that authorize every stream.
//!
//! The relay calls an [`Authenticator`] with what the client presented ([`AuthRequest`]:
//! token, client certificate, peer address) and gets back an [`Identity`] with [`Grants`].
//! Built-ins: [`TokenAuthenticator`] (a TOML file of hashed tokens) and [`CertAuthenticator`]
//! (mutual TLS, the certificate names the device); [`FirstOf`] tries several in order.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::protocol::is_valid_name;

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
/// caller, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    name: String,
    grants: Grants,
}

impl Identity {
    /// An identity with these grants.
    pub fn new(name: impl Into<String>, grants: Grants) -> Self {
        Self {
            name: name.into(),
            grants,
        }
    }
    /// The identity's name.
    pub fn name(&self) -> &str {
        &self.name
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
}

impl AuthRejected {
    /// A rejection with a reason for the relay's log.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A name pattern in grants: `*` (anything), `prefix*` or an exact name.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Parses a pattern; the part before an optional final `*` must be a valid name.
    pub fn new(s: &str) -> Result<Self, ConfigError> {
        let stem = s.strip_suffix('*').unwrap_or(s);
        if (stem.is_empty() && s == "*") || is_valid_name(stem) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ConfigError::Invalid(format!("bad name pattern {s:?}")))
        }
    }
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
    /// Whether the pattern names exactly one name (no `*`).
    pub fn exact(&self) -> Option<&str> {
        (!self.0.ends_with('*')).then_some(self.0.as_str())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an identity may do. Empty grants allow nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    register: Vec<Pattern>,
    access: Vec<(Pattern, Pattern)>,
    public: bool,
}

impl Grants {
    /// Grants that allow nothing; add to them with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }
    /// Allows registering as a device whose ID matches `device`.
    pub fn register(mut self, device: Pattern) -> Self {
        self.register.push(device);
        self
    }
    /// Allows opening streams to `service` on `device`.
    pub fn access(mut self, device: Pattern, service: Pattern) -> Self {
        self.access.push((device, service));
        self
    }
    /// Allows a registered device to ask for public ports (the relay must also allow them).
    pub fn public(mut self, allowed: bool) -> Self {
        self.public = allowed;
        self
    }
    /// Parses an access grant written `device/service` (`pi-42/ssh`, `lab-*/*`).
    pub fn access_str(self, grant: &str) -> Result<Self, ConfigError> {
        let (d, s) = grant.split_once('/').ok_or_else(|| {
            ConfigError::Invalid(format!("access grant {grant:?} is not device/service"))
        })?;
        Ok(self.access(Pattern::new(d)?, Pattern::new(s)?))
    }
    /// Whether the identity may register as `device`.
    pub fn may_register(&self, device: &str) -> bool {
        self.register.iter().any(|p| p.matches(device))
    }
    /// Whether the identity may open `service` on `device`.
    pub fn may_access(&self, device: &str, service: &str) -> bool {
        self.access
            .iter()
            .any(|(d, s)| d.matches(device) && s.matches(service))
    }
    /// Whether the identity may reach at least one service of `device`.
    pub fn may_access_device(&self, device: &str) -> bool {
        self.access.iter().any(|(d, _)| d.matches(device))
    }
    /// Whether a device with these grants may ask for public ports.
    pub fn may_publish(&self) -> bool {
        self.public
    }
    /// Device IDs named exactly in access grants (listed even before they first connect).
    pub fn named_devices(&self) -> impl Iterator<Item = &str> {
        self.access.iter().filter_map(|(d, _)| d.exact())
    }
}

/// A bearer token. Its text never appears in `Debug` output or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string (as read from `TUNNEL_TOKEN` or a token file).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into().trim().to_owned())
    }
    /// The token exactly as it came off the wire (no trimming).
    pub(crate) fn from_wire(s: String) -> Self {
        Self(s)
    }
    /// A new random token: `tun_` and 256 bits as hex.
    pub fn generate() -> Result<Self, ConfigError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| ConfigError::Invalid(format!("no randomness: {e}")))?;
        Ok(Self(format!("tun_{}", crate::hex::encode(&bytes))))
    }
    /// The token text: print it once, store only its [`Token::hash`].
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The SHA-256 of the token, as stored in the token file.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The SHA-256 of a token, written `sha256:<64 hex digits>`. Tokens are 256-bit random
/// values, so a plain hash is safe to store; no salt or slow hash is needed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Compares in constant time, so response timing says nothing about the stored hashes.
    fn ct_eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::str::FromStr for TokenHash {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        s.strip_prefix("sha256:")
            .and_then(crate::hex::decode_32)
            .map(Self)
            .ok_or_else(|| {
                ConfigError::Invalid(format!("bad token hash {s:?}: want sha256:<64 hex>"))
            })
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

/// One credential in the token file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Identity name (logs; the caller name devices see).
    pub name: String,
    /// `sha256:<hex>` of the token.
    pub hash: String,
    /// Device IDs this token may register as (patterns).
    #[serde(default)]
    pub devices: Vec<String>,
    /// `device/service` pairs this token may open (patterns).
    #[serde(default)]
    pub access: Vec<String>,
    /// Whether a device with this token may ask for public ports.
    #[serde(default)]
    pub public: bool,
}

/// The token file: `[[token]]` tables of [`TokenEntry`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The credentials.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

impl TokenFile {
    /// Reads a token file; a missing file is an error (a relay must not start open by mistake).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }
    /// Writes the file (creating it with mode 0600 on Unix).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        crate::util::write_private(path, text.as_bytes())
    }
}

/// Authenticates bearer tokens against a list of hashes. Tokens are compared by SHA-256 in
/// constant time against every entry.
#[derive(Debug, Clone, Default)]
pub struct TokenAuthenticator {
    entries: Vec<(TokenHash, Identity)>,
}

impl TokenAuthenticator {
    /// An authenticator that knows no token yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a credential.
    pub fn add(&mut self, hash: TokenHash, identity: Identity) -> &mut Self {
        self.entries.push((hash, identity));
        self
    }
    /// Builds from a parsed token file, validating every pattern and hash.
    pub fn from_token_file(file: &TokenFile) -> Result<Self, ConfigError> {
        let mut auth = Self::new();
        for (i, e) in file.tokens.iter().enumerate() {
            // The name is the principal: two entries with one name would own each other's
            // device IDs, and names travel in frames that hold at most 255 bytes.
            if e.name.is_empty() || e.name.len() > 255 || e.name.chars().any(char::is_control) {
                return Err(ConfigError::Invalid(format!(
                    "bad credential name {:?}",
                    e.name
                )));
            }
            if file.tokens[..i].iter().any(|o| o.name == e.name) {
                return Err(ConfigError::Invalid(format!(
                    "credential name {:?} used twice",
                    e.name
                )));
            }
            let mut grants = Grants::new().public(e.public);
            for d in &e.devices {
                grants = grants.register(Pattern::new(d)?);
            }
            for a in &e.access {
                grants = grants.access_str(a)?;
            }
            auth.add(e.hash.parse()?, Identity::new(e.name.clone(), grants));
        }
        Ok(auth)
    }
    /// Loads a token file (see [`TokenFile`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_token_file(&TokenFile::load(path)?)
    }
    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there is no credential at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let token = request
                .token
                .as_ref()
                .ok_or_else(|| AuthRejected::new("no token"))?;
            let hash = token.hash();
            // Visit every entry whatever matches, so timing does not depend on the position.
            let mut found = None;
            for (h, identity) in &self.entries {
                if h.ct_eq(&hash) && found.is_none() {
                    found = Some(identity);
                }
            }
            found
                .cloned()
                .ok_or_else(|| AuthRejected::new("unknown token"))
        })
    }
}

/// Mutual TLS: the relay verified the client certificate against its client CA; each DNS
/// name in the certificate is a device ID the client may register as.
#[derive(Debug, Clone, Default)]
pub struct CertAuthenticator {
    access: Vec<(Pattern, Pattern)>,
}

impl CertAuthenticator {
    /// Certificates grant registration as the device IDs they name, and nothing else.
    pub fn new() -> Self {
        Self::default()
    }
    /// Also grants every certificate holder access to `service` on `device`.
    pub fn access(mut self, device: Pattern, service: Pattern) -> Self {
        self.access.push((device, service));
        self
    }
}

impl Authenticator for CertAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let der = request
                .client_cert
                .as_ref()
                .ok_or_else(|| AuthRejected::new("no client certificate"))?;
            let der = rustls::pki_types::CertificateDer::from(der.as_slice());
            let cert = webpki::EndEntityCert::try_from(&der)
                .map_err(|e| AuthRejected::new(format!("client certificate: {e}")))?;
            let names: Vec<&str> = cert
                .valid_dns_names()
                .filter(|n| is_valid_name(n))
                .collect();
            let first = names
                .first()
                .ok_or_else(|| AuthRejected::new("client certificate names no device"))?;
            let mut grants = Grants::new();
            for n in &names {
                grants = grants.register(Pattern((*n).to_owned()));
            }
            for (d, s) in &self.access {
                grants = grants.access(d.clone(), s.clone());
            }
            Ok(Identity::new(*first, grants))
        })
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
                    Err(e) => reasons.push(e.reason),
                }
            }
            Err(AuthRejected::new(reasons.join("; ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> AuthRequest {
        AuthRequest {
            peer: "127.0.0.1:1".parse().unwrap(),
            token: token.map(Token::new),
            client_cert: None,
            device: None,
        }
    }

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let p = |s| Pattern::new(s).unwrap();
        assert!(p("pi-42").matches("pi-42") && !p("pi-42").matches("pi-420"));
        assert!(p("pi-*").matches("pi-42") && !p("pi-*").matches("pc-1"));
        assert!(p("*").matches("anything"));
        for bad in ["", "a/b", "**", "a*b", "pi 1*"] {
            assert!(Pattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_allow_only_what_they_name() {
        let g = Grants::new()
            .register(Pattern::new("pi-42").unwrap())
            .access_str("pi-42/ssh")
            .unwrap()
            .access_str("lab-*/*")
            .unwrap();
        assert!(g.may_register("pi-42") && !g.may_register("pi-43"));
        assert!(g.may_access("pi-42", "ssh") && !g.may_access("pi-42", "web"));
        assert!(g.may_access("lab-1", "web") && !g.may_access("pi-43", "ssh"));
        assert!(!g.may_publish());
        assert_eq!(g.named_devices().collect::<Vec<_>>(), ["pi-42"]);
        assert!(Grants::new().access_str("no-slash").is_err());
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let t = Token::generate().unwrap();
        assert!(t.expose().starts_with("tun_") && t.expose().len() == 68);
        assert!(!format!("{t:?}").contains(t.expose()));
        assert!(!format!("{:?}", request(Some(t.expose()))).contains(t.expose()));
    }

    #[tokio::test]
    async fn token_authenticator_accepts_known_tokens_and_rejects_the_rest() {
        let good = Token::generate().unwrap();
        let mut auth = TokenAuthenticator::new();
        auth.add(good.hash(), Identity::new("pi", Grants::new()));
        assert_eq!(
            auth.authenticate(&request(Some(good.expose())))
                .await
                .unwrap()
                .name(),
            "pi"
        );
        assert!(
            auth.authenticate(&request(Some("tun_wrong")))
                .await
                .is_err()
        );
        assert!(auth.authenticate(&request(None)).await.is_err());
    }

    #[test]
    fn token_file_round_trips_and_validates() {
        let t = Token::new("tun_x");
        let text = format!(
            "[[token]]\nname = \"pi\"\nhash = \"{}\"\ndevices = [\"pi\"]\naccess = [\"pi/ssh\"]\npublic = true\n",
            t.hash()
        );
        let file: TokenFile = toml::from_str(&text).unwrap();
        let auth = TokenAuthenticator::from_token_file(&file).unwrap();
        assert_eq!(auth.len(), 1);
        let back: TokenFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(back.tokens[0].hash, t.hash().to_string());

        let bad: TokenFile =
            toml::from_str("[[token]]\nname = \"x\"\nhash = \"sha256:00\"\n").unwrap();
        assert!(TokenAuthenticator::from_token_file(&bad).is_err());
        assert!(
            toml::from_str::<TokenFile>("[[token]]\nname=\"x\"\nhash=\"\"\nsecret=1\n").is_err()
        );
    }

    #[test]
    fn token_file_refuses_duplicate_or_bad_names() {
        let entry = |name: &str| {
            format!(
                "[[token]]\nname = {name:?}\nhash = \"{}\"\n",
                Token::new("t").hash()
            )
        };
        let twice: TokenFile = toml::from_str(&(entry("pi") + &entry("pi"))).unwrap();
        assert!(TokenAuthenticator::from_token_file(&twice).is_err());
        let long: TokenFile = toml::from_str(&entry(&"x".repeat(256))).unwrap();
        assert!(TokenAuthenticator::from_token_file(&long).is_err());
        let empty: TokenFile = toml::from_str(&entry("")).unwrap();
        assert!(TokenAuthenticator::from_token_file(&empty).is_err());
    }

    #[tokio::test]
    async fn cert_authenticator_needs_a_certificate() {
        assert!(
            CertAuthenticator::new()
                .authenticate(&request(None))
                .await
                .is_err()
        );
        let id = crate::TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
        let mut req = request(None);
        req.client_cert = Some(id.chain[0].to_vec());
        let got = CertAuthenticator::new().authenticate(&req).await.unwrap();
        assert_eq!(got.name(), "pi-7");
        assert!(got.grants().may_register("pi-7") && !got.grants().may_register("pi-8"));
    }

    #[tokio::test]
    async fn first_of_falls_through_to_the_next_authenticator() {
        let good = Token::new("tun_ok");
        let mut tokens = TokenAuthenticator::new();
        tokens.add(good.hash(), Identity::new("t", Grants::new()));
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
