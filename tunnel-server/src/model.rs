//! What the store holds, as JSON values under these keys:
//!
//! | key | value |
//! |---|---|
//! | `cred/<name>` | [`CredentialRecord`]: token hash, grants, labels, created, expires, revoked |
//! | `device/<id>` | [`DeviceRecord`]: labels, owner, first and last seen, address, services, ports |
//! | `admin/<name>` | [`AdminRecord`]: an admin API token's hash |
//! | `relay/<id>` | [`RelayRecord`]: a relay of the cluster, under its lease |
//! | `presence/<device>` | [`PresenceRecord`]: which relay holds a device, under that relay's lease |
//!
//! Tokens are never stored, only their SHA-256 (`sha256:<hex>`), and no record ever leaves
//! the relay with its hash: the API shows [`CredentialView`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Key prefix of credentials.
pub const CRED: &str = "cred/";
/// Key prefix of device records.
pub const DEVICE: &str = "device/";
/// Key prefix of admin tokens.
pub const ADMIN: &str = "admin/";
/// Key prefix of the relays of a cluster.
pub const RELAY: &str = "relay/";
/// Key prefix of device presence in a cluster.
pub const PRESENCE: &str = "presence/";

/// A relay of the cluster, written under its lease: it vanishes when the relay dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelayRecord {
    /// The relay's ID.
    pub id: String,
    /// Where peers (and clients) reach its relay port, `host:port`.
    pub addr: String,
    /// The SPKI pin of its public TLS identity, which peers verify.
    pub pin: String,
    /// Sessions it holds, by role, as of its last update.
    #[serde(default)]
    pub devices: u64,
    /// Access sessions (peer links included).
    #[serde(default)]
    pub access: u64,
    /// Whether it is shutting down.
    #[serde(default)]
    pub draining: bool,
    /// When it joined, RFC 3339.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String)]
    pub since: SystemTime,
}

/// Which relay holds a device, written under that relay's lease. One per device ID
/// cluster-wide: claimed with compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PresenceRecord {
    /// The relay that holds the device's session.
    pub relay: String,
    /// The principal of the credential it registered with.
    pub principal: String,
    /// The registration's nonce on that relay.
    pub nonce: u64,
    /// Takeovers from other relays by the same credential since `takeovers_since`.
    #[serde(default)]
    pub takeovers: u32,
    /// When the current count of takeovers started, seconds since the Unix epoch.
    #[serde(default)]
    pub takeovers_since: u64,
    /// When it registered, RFC 3339.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String)]
    pub since: SystemTime,
}

/// What a credential may do, in the token file's vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    /// Device IDs (patterns such as `pi-*`) it may register as.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `device/service` patterns it may open.
    #[serde(default)]
    pub access: Vec<String>,
    /// Whether a device with it may ask for public ports.
    #[serde(default)]
    pub public: bool,
}

/// A credential as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Its name: unique, the principal `token:<name>`.
    pub name: String,
    /// `sha256:<hex>` of its token.
    pub token_hash: String,
    /// What it may do.
    pub grants: GrantsSpec,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created: SystemTime,
    /// When it stops working, if ever.
    #[serde(default, with = "rfc3339_opt")]
    pub expires: Option<SystemTime>,
    /// When it was revoked, if it was.
    #[serde(default, with = "rfc3339_opt")]
    pub revoked: Option<SystemTime>,
}

impl CredentialRecord {
    /// Whether it works at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.revoked.is_none() && self.expires.is_none_or(|e| e > now)
    }
    /// Its principal at the relay.
    pub fn principal(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// A credential as the API shows it: never its token or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub grants: GrantsSpec,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339, if it expires.
    pub expires: Option<String>,
    /// RFC 3339, if it was revoked.
    pub revoked: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

impl From<&CredentialRecord> for CredentialView {
    fn from(r: &CredentialRecord) -> Self {
        let now = SystemTime::now();
        let status = if r.revoked.is_some() {
            "revoked"
        } else if !r.is_live(now) {
            "expired"
        } else {
            "active"
        };
        Self {
            name: r.name.clone(),
            grants: r.grants.clone(),
            labels: r.labels.clone(),
            created: fmt_time(r.created),
            expires: r.expires.map(fmt_time),
            revoked: r.revoked.map(fmt_time),
            status: status.to_owned(),
        }
    }
}

/// A device as remembered by the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device ID.
    pub id: String,
    /// Free-form labels (set through the API).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The credential that registered it last.
    #[serde(default)]
    pub credential: String,
    /// RFC 3339.
    #[serde(default)]
    pub first_seen: String,
    /// RFC 3339: when it was last online (its last session's end, or its start if online).
    #[serde(default)]
    pub last_seen: String,
    /// The address of its last session.
    #[serde(default)]
    pub last_addr: String,
    /// The services it declared last.
    #[serde(default)]
    pub services: Vec<String>,
    /// Its public ports, `service` → port.
    #[serde(default)]
    pub public_ports: BTreeMap<String, u16>,
}

/// An admin API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// The admin's name (in the audit trail).
    pub name: String,
    /// `sha256:<hex>` of the token.
    pub token_hash: String,
    /// RFC 3339.
    pub created: String,
}

/// RFC 3339 with seconds, UTC.
pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses RFC 3339 (UTC, `Z`).
pub fn parse_time(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339_weak(s)
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fmt_time(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::fmt_time(*t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse_time(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
