//! Bearer tokens: the token itself (never printed), its stored hash, the token file and the
//! authenticator that checks a presented token against the hashes.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuthRejected, AuthRequest, Authenticator, BoxFuture, Grants, Identity};
use crate::error::ConfigError;

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
    pub fn ct_eq(&self, other: &Self) -> bool {
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
    /// Adds a credential without checking it.
    #[deprecated(
        since = "0.2.0",
        note = "accepts a name already in use (two credentials with one name own each other's device IDs); use `insert`"
    )]
    pub fn add(&mut self, hash: TokenHash, identity: Identity) -> &mut Self {
        let principal = format!("token:{}", identity.name());
        self.entries
            .push((hash, identity.with_principal(principal)));
        self
    }
    /// Adds a credential after checking it: a name that is non-empty, at most 255 bytes,
    /// without control characters and not already used (the name makes the principal
    /// `token:<name>`: two credentials with one name would own each other's device IDs and
    /// evict each other's sessions), and a token no other credential has.
    pub fn insert(
        &mut self,
        hash: TokenHash,
        identity: Identity,
    ) -> Result<&mut Self, ConfigError> {
        let name = identity.name();
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(format!(
                "bad credential name {name:?}"
            )));
        }
        if self.entries.iter().any(|(_, o)| o.name() == name) {
            return Err(ConfigError::Invalid(format!(
                "credential name {name:?} used twice"
            )));
        }
        if self.entries.iter().any(|(h, _)| h.ct_eq(&hash)) {
            return Err(ConfigError::Invalid(format!(
                "credential {name:?} reuses another credential's token"
            )));
        }
        let principal = format!("token:{name}");
        self.entries
            .push((hash, identity.with_principal(principal)));
        Ok(self)
    }
    /// Builds from a parsed token file, validating every name, pattern and hash.
    pub fn from_token_file(file: &TokenFile) -> Result<Self, ConfigError> {
        let mut auth = Self::new();
        for e in &file.tokens {
            let grants = Grants::from_lists(&e.devices, &e.access, e.public)?;
            auth.insert(e.hash.parse()?, Identity::new(e.name.clone(), grants))?;
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

    fn resolve<'a>(&'a self, principal: &'a str) -> BoxFuture<'a, Option<Identity>> {
        let found = self
            .entries
            .iter()
            .map(|(_, identity)| identity)
            .find(|identity| identity.principal() == principal)
            .cloned();
        Box::pin(async move { found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::request;

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
        auth.insert(good.hash(), Identity::new("pi", Grants::new()))
            .unwrap();
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

    #[test]
    fn insert_refuses_a_second_credential_with_the_same_name_or_token() {
        let mut auth = TokenAuthenticator::new();
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        auth.insert(a.hash(), Identity::new("fleet", Grants::new()))
            .unwrap();
        let twice = auth.insert(b.hash(), Identity::new("fleet", Grants::new()));
        assert!(twice.unwrap_err().to_string().contains("used twice"));
        let same_token = auth.insert(a.hash(), Identity::new("other", Grants::new()));
        assert!(same_token.unwrap_err().to_string().contains("reuses"));
        assert_eq!(auth.len(), 1);
    }
}
