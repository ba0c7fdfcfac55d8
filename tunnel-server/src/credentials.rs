//! Live credentials: the store's `cred/` records, cached in memory for the relay's
//! authenticator, kept fresh by a watch, and enforced on the relay's live sessions.
//!
//! - A change through the API (or `tunnel-relay token …` on the same state directory) is
//!   in the cache at once, and a watch brings changes from elsewhere (another process
//!   writing the SQLite file, another relay through etcd).
//! - Enforcement: a credential that is revoked, deleted or whose grants change has its
//!   sessions closed (device and access alike; their streams in flight are reset), and an
//!   expired one is closed by a ticker within [`EXPIRY_TICK`]. Cutting on a grant change
//!   is the safe default: a narrowed grant must not leave a stream open that it no longer
//!   allows, and clients reconnect on their own under the new grants.
//! - The authenticator refuses a revoked or expired credential with a refusal that says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_core::{
    AuthRejected, AuthRequest, Authenticator, BoxFuture, Grants, Identity, Relay, Token, TokenFile,
};

use crate::model::{CRED, CredentialRecord, CredentialView, GrantsSpec};
use crate::store::{Expect, Store, StoreError};

/// How often expiries are checked: a credential that expires has its sessions closed
/// within this.
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// Keys read per page when loading the store.
const PAGE: usize = 1000;

/// A credential operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredError {
    /// No credential by that name.
    #[error("no credential named {0:?}")]
    NotFound(String),
    /// A credential by that name exists already.
    #[error("a credential named {0:?} exists already")]
    Exists(String),
    /// The request is not valid (a name, a pattern, a time).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new credential, as the API and the CLI ask for it.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// Its name: 1 to 63 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// What it may do.
    #[serde(default)]
    pub grants: GrantsSpec,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339; never if absent.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A change to a credential; absent fields stay.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialPatch {
    /// New grants (replaces the old ones; closes its sessions).
    pub grants: Option<GrantsSpec>,
    /// New labels (replaces the old ones).
    pub labels: Option<BTreeMap<String, String>>,
    /// New expiry, RFC 3339; `null` never expires.
    #[serde(default, deserialize_with = "double_option")]
    pub expires: Option<Option<String>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    use serde::Deserialize;
    Ok(Some(Option::<String>::deserialize(d)?))
}

#[derive(Default)]
struct Cache {
    by_name: HashMap<String, CredentialRecord>,
    /// `sha256:<hex>` → name.
    by_hash: HashMap<String, String>,
}

impl Cache {
    fn put(&mut self, r: CredentialRecord) -> Option<CredentialRecord> {
        let old = self.by_name.insert(r.name.clone(), r.clone());
        if let Some(o) = &old {
            self.by_hash.remove(&o.token_hash);
        }
        self.by_hash.insert(r.token_hash.clone(), r.name);
        old
    }
    fn remove(&mut self, name: &str) -> Option<CredentialRecord> {
        let old = self.by_name.remove(name)?;
        self.by_hash.remove(&old.token_hash);
        Some(old)
    }
}

/// The credentials of the store, cached. Cheap to share (`Arc`).
pub struct Credentials {
    store: Arc<dyn Store>,
    cache: RwLock<Cache>,
}

fn grants_of(spec: &GrantsSpec) -> Result<Grants, CredError> {
    Grants::from_lists(&spec.devices, &spec.access, spec.public)
        .map_err(|e| CredError::Invalid(e.to_string()))
}

fn valid_name(name: &str) -> Result<(), CredError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CredError::Invalid(format!(
            "invalid credential name {name:?}: want 1-63 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn parse_expiry(s: &str) -> Result<SystemTime, CredError> {
    crate::model::parse_time(s)
        .map_err(|e| CredError::Invalid(format!("expires {s:?} is not RFC 3339: {e}")))
}

fn decode(bytes: &[u8]) -> Option<CredentialRecord> {
    serde_json::from_slice(bytes)
        .inspect_err(|e| warn!(error = %e, "unreadable credential record; ignored"))
        .ok()
}

fn encode(r: &CredentialRecord) -> Vec<u8> {
    // A record of strings and maps always serializes.
    serde_json::to_vec(r).unwrap_or_default()
}

impl Credentials {
    /// Loads every credential of the store.
    pub async fn load(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let me = Arc::new(Self {
            store,
            cache: RwLock::new(Cache::default()),
        });
        me.resync().await?;
        Ok(me)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads every credential; returns the names whose grants or state changed.
    async fn resync(&self) -> Result<Vec<String>, StoreError> {
        let mut fresh = Cache::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(CRED, after.as_deref(), PAGE).await?;
            let done = page.len() < PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (_, v) in page {
                if let Some(r) = decode(&v.value) {
                    fresh.put(r);
                }
            }
            if done {
                break;
            }
        }
        let mut cache = self.write();
        let mut changed: Vec<String> = cache
            .by_name
            .iter()
            .filter(|(n, old)| fresh.by_name.get(*n).is_none_or(|new| must_cut(old, new)))
            .map(|(n, _)| n.clone())
            .collect();
        changed.sort();
        *cache = fresh;
        Ok(changed)
    }

    /// Applies one change from the store; returns the name if its sessions must close.
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Option<String> {
        let name = key.strip_prefix(CRED)?;
        let mut cache = self.write();
        match value.and_then(decode) {
            Some(new) => {
                let cut = cache
                    .by_name
                    .get(name)
                    .is_some_and(|old| must_cut(old, &new));
                cache.put(new);
                cut.then(|| name.to_owned())
            }
            None => cache.remove(name).map(|_| name.to_owned()),
        }
    }

    /// The identity of credential `name` if it is live (not revoked, not expired).
    fn live_identity(&self, name: &str) -> Option<Identity> {
        let cache = self.read();
        let record = cache.by_name.get(name)?;
        if record.revoked.is_some() || !record.is_live(SystemTime::now()) {
            return None;
        }
        let grants = grants_of(&record.grants).ok()?;
        Some(Identity::new(record.name.clone(), grants).with_principal(record.principal()))
    }

    /// A live credential's identity for `token`, or why not.
    fn authenticate_token(&self, token: &Token) -> Result<Identity, AuthRejected> {
        let hash = token.hash().to_string();
        let cache = self.read();
        let record = cache
            .by_hash
            .get(&hash)
            .and_then(|n| cache.by_name.get(n))
            .ok_or_else(|| AuthRejected::new("unknown token"))?;
        if record.revoked.is_some() {
            return Err(AuthRejected::revoked(format!(
                "credential {} is revoked",
                record.name
            )));
        }
        if !record.is_live(SystemTime::now()) {
            return Err(AuthRejected::revoked(format!(
                "credential {} has expired",
                record.name
            )));
        }
        let grants = grants_of(&record.grants)
            .map_err(|e| AuthRejected::new(format!("credential {}: {e}", record.name)))?;
        Ok(Identity::new(record.name.clone(), grants).with_principal(record.principal()))
    }

    /// Creates a credential and returns it with its token, which is shown only now.
    pub async fn create(&self, new: NewCredential) -> Result<(CredentialView, Token), CredError> {
        valid_name(&new.name)?;
        grants_of(&new.grants)?;
        let expires = new.expires.as_deref().map(parse_expiry).transpose()?;
        let token = Token::generate().map_err(|e| CredError::Invalid(e.to_string()))?;
        let record = CredentialRecord {
            name: new.name.clone(),
            token_hash: token.hash().to_string(),
            grants: new.grants,
            labels: new.labels,
            created: SystemTime::now(),
            expires,
            revoked: None,
        };
        self.insert(record.clone()).await?;
        Ok(((&record).into(), token))
    }

    /// Stores a prepared record under a new name (for imports).
    async fn insert(&self, record: CredentialRecord) -> Result<(), CredError> {
        let key = format!("{CRED}{}", record.name);
        match self
            .store
            .put(&key, encode(&record), Expect::Absent, None)
            .await
        {
            Ok(_) => {
                self.write().put(record);
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(CredError::Exists(record.name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a credential (compare-and-set on its version, retried on a race).
    pub async fn update(
        &self,
        name: &str,
        change: impl Fn(&mut CredentialRecord) -> Result<(), CredError>,
    ) -> Result<(CredentialView, bool), CredError> {
        let key = format!("{CRED}{name}");
        for _ in 0..8 {
            let Some(current) = self.store.get(&key).await? else {
                return Err(CredError::NotFound(name.to_owned()));
            };
            let old = decode(&current.value).ok_or_else(|| CredError::NotFound(name.to_owned()))?;
            let mut new = old.clone();
            change(&mut new)?;
            match self
                .store
                .put(&key, encode(&new), Expect::Version(current.version), None)
                .await
            {
                Ok(_) => {
                    let cut = must_cut(&old, &new);
                    self.write().put(new.clone());
                    return Ok(((&new).into(), cut));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CredError::Store(StoreError::Conflict { key }))
    }

    /// Applies an API patch.
    pub async fn patch(
        &self,
        name: &str,
        patch: CredentialPatch,
    ) -> Result<(CredentialView, bool), CredError> {
        if let Some(g) = &patch.grants {
            grants_of(g)?;
        }
        let expires = match &patch.expires {
            Some(Some(s)) => Some(Some(parse_expiry(s)?)),
            Some(None) => Some(None),
            None => None,
        };
        self.update(name, |r| {
            if let Some(g) = &patch.grants {
                r.grants = g.clone();
            }
            if let Some(l) = &patch.labels {
                r.labels = l.clone();
            }
            if let Some(e) = expires {
                r.expires = e;
            }
            Ok(())
        })
        .await
    }

    /// Revokes a credential: it stops working at once, and stays listed as revoked.
    pub async fn revoke(&self, name: &str) -> Result<CredentialView, CredError> {
        let now = SystemTime::now();
        self.update(name, |r| {
            r.revoked.get_or_insert(now);
            Ok(())
        })
        .await
        .map(|(v, _)| v)
    }

    /// One credential, if it exists.
    pub fn get(&self, name: &str) -> Option<CredentialView> {
        self.read().by_name.get(name).map(Into::into)
    }

    /// Credentials in name order, after `after`, at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<CredentialView> {
        let cache = self.read();
        let mut names: Vec<&String> = cache
            .by_name
            .keys()
            .filter(|n| after.is_none_or(|a| n.as_str() > a))
            .collect();
        names.sort();
        names
            .into_iter()
            .take(limit)
            .filter_map(|n| cache.by_name.get(n))
            .map(Into::into)
            .collect()
    }

    /// Imports the entries of a token file whose names are not in the store yet; returns
    /// how many. The store wins for names it has.
    pub async fn import(&self, file: &TokenFile) -> Result<usize, CredError> {
        let mut n = 0;
        for e in &file.tokens {
            if self.read().by_name.contains_key(&e.name) {
                continue;
            }
            valid_name(&e.name)?;
            let grants = GrantsSpec {
                devices: e.devices.clone(),
                access: e.access.clone(),
                public: e.public,
            };
            grants_of(&grants)?;
            let hash: tunnel_core::TokenHash = e
                .hash
                .parse()
                .map_err(|e: tunnel_core::ConfigError| CredError::Invalid(e.to_string()))?;
            let record = CredentialRecord {
                name: e.name.clone(),
                token_hash: hash.to_string(),
                grants,
                labels: BTreeMap::new(),
                created: SystemTime::now(),
                expires: None,
                revoked: None,
            };
            match self.insert(record).await {
                Ok(()) | Err(CredError::Exists(_)) => n += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether there is none (a relay with none admits nobody).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `relay`'s sessions in line with the store: watches `cred/` and closes the
    /// sessions of credentials that were revoked, deleted, re-granted or that expired.
    pub fn enforce(self: &Arc<Self>, relay: Relay, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut watch = me.store.watch(CRED);
            let mut expiry = tokio::time::interval(EXPIRY_TICK);
            let mut expired: HashSet<String> = HashSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    change = watch.next() => {
                        let cut = match change {
                            None => return,
                            Some(Ok(c)) => me.apply(&c.key, c.value.as_deref()).into_iter().collect(),
                            Some(Err(_)) => me.resync().await.unwrap_or_else(|e| {
                                warn!(error = %e, "re-reading credentials failed");
                                vec![]
                            }),
                        };
                        for name in cut {
                            close(&relay, &name, "changed");
                        }
                    }
                    _ = expiry.tick() => {
                        let now = SystemTime::now();
                        let due: Vec<String> = me
                            .read()
                            .by_name
                            .values()
                            .filter(|r| r.revoked.is_none() && !r.is_live(now))
                            .map(|r| r.name.clone())
                            .filter(|n| !expired.contains(n))
                            .collect();
                        for name in due {
                            close(&relay, &name, "expired");
                            expired.insert(name);
                        }
                        expired.retain(|n| me.read().by_name.get(n).is_some_and(|r| !r.is_live(now)));
                    }
                }
            }
        })
    }

    /// The authenticator the relay uses for these credentials.
    pub fn authenticator(self: &Arc<Self>) -> StoreAuthenticator {
        StoreAuthenticator(self.clone())
    }
}

/// Whether sessions of a credential must close when its record goes from `old` to `new`.
fn must_cut(old: &CredentialRecord, new: &CredentialRecord) -> bool {
    old.grants != new.grants
        || old.token_hash != new.token_hash
        || (old.revoked.is_none() && new.revoked.is_some())
        || !new.is_live(SystemTime::now())
}

fn close(relay: &Relay, name: &str, why: &str) {
    let n = relay.close_sessions_of(&format!("token:{name}"));
    if n > 0 {
        info!(
            credential = name,
            sessions = n,
            why,
            "closed the sessions of a credential"
        );
    }
}

/// Authenticates tokens against the store's credentials (see [`Credentials`]).
#[derive(Clone)]
pub struct StoreAuthenticator(Arc<Credentials>);

impl Authenticator for StoreAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let token = request
                .token
                .as_ref()
                .ok_or_else(|| AuthRejected::new("no token"))?;
            self.0.authenticate_token(token)
        })
    }

    /// A forwarded stream's caller, by principal (`token:<name>`): its identity while the
    /// credential is live, `None` once revoked or expired.
    fn resolve<'a>(&'a self, principal: &'a str) -> BoxFuture<'a, Option<Identity>> {
        let found = principal
            .strip_prefix("token:")
            .and_then(|name| self.0.live_identity(name));
        Box::pin(async move { found })
    }
}
