//! The relay's state store: one narrow interface that an embedded database and a networked
//! engine (etcd) both do well.
//!
//! - **Keys with values and versions.** Every write returns the key's new version; values
//!   are opaque bytes (the model layer stores JSON).
//! - **Compare-and-set.** A write or delete states what it expects ([`Expect`]): any value,
//!   no value, or a given version. That is etcd's transaction on `mod_revision` and an
//!   `UPDATE … WHERE version = ?` in SQL: one credential edited by two operators at once
//!   cannot lose an update, and a device ID can be claimed by exactly one relay.
//! - **Leases.** A key may be tied to a lease with a TTL; when the lease is not kept alive,
//!   its keys disappear together (etcd leases; the cluster puts presence under one lease
//!   per relay).
//! - **Watch.** Every change under a prefix is delivered to watchers, in order (etcd watch;
//!   in-process notifications for SQLite). This is how a revocation reaches the relay's
//!   sessions without a restart.
//! - **Ordered listing with a cursor.** `list(prefix, after, limit)` pages through keys in
//!   order (etcd range with a start key; an indexed `key > ?` in SQL), so listing 100 000
//!   devices never loads them all.
//!
//! [`SqliteStore`] is the embedded default; [`EtcdStore`] is the cluster's.

mod etcd;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::broadcast;

pub use etcd::{DEFAULT_NAMESPACE, EtcdStore, OPERATION_DEADLINE, REQUEST_TIMEOUT};
pub use sqlite::SqliteStore;

/// A boxed future, as the store's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value and its version (1 for the first write of a key, then +1 per write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The key's version.
    pub version: u64,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything, or nothing: an unconditional write.
    Any,
    /// No value: create only.
    Absent,
    /// Exactly this version: update only what was read.
    Version(u64),
}

/// A lease's ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// The new value, or `None` when the key was deleted (or its lease expired).
    pub value: Option<Vec<u8>>,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key was not in the state the write expected.
    #[error("conflict on {key}: it changed meanwhile")]
    Conflict {
        /// The key.
        key: String,
    },
    /// The lease is unknown or expired.
    #[error("lease {0:?} is unknown or expired")]
    NoLease(LeaseId),
    /// The backend failed (disk, database file, network).
    #[error("store backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The relay's state store. See the module docs for why these operations.
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>>;

    /// Writes `value` at `key` if the key is as `expect` says, optionally tied to a lease.
    /// Returns the new version. The write is durable when this returns.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Writes several keys atomically, each if it is as its `Expect` says: all or none (an
    /// etcd transaction; one SQLite transaction, so one fsync for the lot). A conflict on
    /// any key fails the whole commit.
    fn commit(&self, puts: Vec<(String, Vec<u8>, Expect)>)
    -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes `key` if it is as `expect` says; returns whether there was a value.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Up to `limit` keys under `prefix`, in key order, starting after `after`.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>>;

    /// A new lease that expires `ttl` after its last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;

    /// Extends a lease by its TTL.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Ends a lease now: its keys disappear at once instead of when the TTL runs out (a
    /// relay that leaves the cluster cleanly). The default lets the TTL run out.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }

    /// Every change under `prefix` from now on.
    fn watch(&self, prefix: &str) -> Watch;
}

/// The changes under one prefix, in order.
pub struct Watch {
    prefix: String,
    changes: broadcast::Receiver<Change>,
}

/// A watcher fell behind and missed changes: re-read what it watches, then go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the watcher missed {0} changes")]
pub struct Lagged(pub u64);

impl Watch {
    /// Watches `changes` for keys under `prefix` (for store implementations).
    pub fn new(prefix: impl Into<String>, changes: broadcast::Receiver<Change>) -> Self {
        Self {
            prefix: prefix.into(),
            changes,
        }
    }

    /// The next change under the prefix; `None` once the store is gone. `Lagged` means
    /// changes were missed (the watcher fell behind, or another process changed the
    /// store): re-read what is watched.
    pub async fn next(&mut self) -> Option<Result<Change, Lagged>> {
        loop {
            match self.changes.recv().await {
                Ok(c) if c.key.is_empty() => return Some(Err(Lagged(0))),
                Ok(c) if c.key.starts_with(&self.prefix) => return Some(Ok(c)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Err(Lagged(n))),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
