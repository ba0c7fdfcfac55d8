//! The relay's hook into a cluster of relays: claiming a device ID cluster-wide before it is
//! registered here, releasing it when its session ends, and reaching a device that another
//! relay holds. `tunnel-core` only defines the hook; the cluster itself (presence in etcd,
//! the relay-to-relay links) lives in `tunnel-server`, so a device build never compiles it.
//!
//! The rules the relay keeps around the hook:
//! - a device is registered only once [`Cluster::claim`] said yes, and the claim is released
//!   when its session ends (or when the registration fails after the claim);
//! - a stream for a device that is not online here is handed to [`Cluster::open`] only when
//!   it came from an access client: a stream a peer relay forwarded is served locally or
//!   refused, so a stream crosses at most one relay-to-relay hop;
//! - every call runs under a deadline ([`CLAIM_TIMEOUT`], the open deadline).

use std::time::Duration;

use crate::auth::{BoxFuture, Identity};
use crate::error::DialError;
use crate::stream::Stream;

/// Deadline for [`Cluster::claim`]: past it the device is refused as `unavailable` and
/// retries with backoff. A healthy etcd answers a transaction in milliseconds, and within
/// a few seconds while it elects a new leader; one that lost its quorum never does. Well
/// under the client's 10 s handshake deadline.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(6);

/// A device ID claimed by a session of this relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClaim {
    /// The device ID.
    pub device: String,
    /// The principal of the credential that registers it.
    pub principal: String,
    /// Unique per registration on this relay: a release only removes its own claim, never
    /// a newer session's.
    pub nonce: u64,
}

/// Why a cluster refused a device ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimRefused {
    /// Another credential holds the ID somewhere in the cluster.
    #[error("{0}")]
    Taken(String),
    /// The cluster cannot decide now (its store is unreachable); retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// A cluster of relays, as one relay sees it. See the module docs for the rules around it.
pub trait Cluster: Send + Sync + 'static {
    /// Claims a device ID cluster-wide for a session about to register here. A claim by
    /// the same principal takes the ID over from a session on another relay (which that
    /// relay then closes), as a reconnecting device does on one relay.
    fn claim<'a>(&'a self, claim: &'a DeviceClaim) -> BoxFuture<'a, Result<(), ClaimRefused>>;

    /// Releases a claim when its session ended; a claim that was taken over meanwhile is
    /// left alone. Must not block for long: the relay spawns it.
    fn release(&self, claim: DeviceClaim) -> BoxFuture<'static, ()>;

    /// Opens a stream to `service` on `device`, held by another relay, on behalf of
    /// `caller` (already authorized here). Answers as a dial would: `DeviceOffline` when
    /// no relay holds it, `Unavailable` when its relay cannot be reached.
    fn open<'a>(
        &'a self,
        device: &'a str,
        service: &'a str,
        caller: &'a Identity,
    ) -> BoxFuture<'a, Result<(Stream, String), DialError>>;
}
