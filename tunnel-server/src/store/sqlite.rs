//! The embedded store: one SQLite file in the relay's state directory (`state.db`), which a
//! user can open with `sqlite3`.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL`, so every commit is
//! fsynced to the write-ahead log before [`Store::put`] returns: an acknowledged write
//! survives `kill -9` of the relay and a power cut. One connection, used by one operation
//! at a time on tokio's blocking pool (writes are small; SQLite serialises writers anyway).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::{BoxFuture, Change, Expect, LeaseId, Store, StoreError, Versioned, Watch};

/// Changes buffered for watchers; a watcher further behind is told it lagged.
const WATCH_BUFFER: usize = 4096;
/// How often expired leases are reaped (their keys deleted and announced).
const LEASE_REAP_INTERVAL: Duration = Duration::from_millis(500);
/// How often the store checks whether another process (`tunnel-relay token new
/// --state-dir` while the relay runs) changed the database; watchers then resync.
const EXTERNAL_POLL: Duration = Duration::from_millis(500);
/// SQLite's page cache, in KiB: the default (2000 pages) grows with the device records to
/// 8 MiB, which is relay memory every fleet pays; reads of the few hot keys stay cached.
const CACHE_KIB: i64 = 1024;
/// How long an operation waits for SQLite's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    changes: broadcast::Sender<Change>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, and starts reaping expired
    /// leases. Call from within a tokio runtime.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Connection::open(path.as_ref()).map_err(backend)?;
        db.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        db.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(backend)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL,
                 version INTEGER NOT NULL,
                 lease INTEGER
             );
             CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease);
             CREATE TABLE IF NOT EXISTS leases (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 ttl_ms INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL
             );",
        )
        .map_err(backend)?;
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let store = Self {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                changes,
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_REAP_INTERVAL.min(EXTERNAL_POLL));
            let mut seen: Option<i64> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Self { inner };
                if let Err(e) = store.reap().await {
                    tracing::warn!(error = %e, "reaping expired leases failed");
                }
                // `data_version` changes only when *another* connection committed.
                let version = store
                    .run(|db| {
                        let v: i64 = db
                            .query_row("PRAGMA data_version", [], |r| r.get(0))
                            .map_err(backend)?;
                        Ok((v, vec![]))
                    })
                    .await;
                if let Ok(v) = version {
                    if seen.is_some_and(|s| s != v) {
                        let _ = store.inner.changes.send(Change {
                            key: String::new(),
                            value: None,
                        });
                    }
                    seen = Some(v);
                }
            }
        });
        Ok(store)
    }

    /// Runs `op` on the connection on the blocking pool, then announces its changes.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<(T, Vec<Change>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let started = std::time::Instant::now();
        let (value, changes) = tokio::task::spawn_blocking(move || {
            let mut db = inner
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            op(&mut db)
        })
        .await
        .map_err(backend)??;
        metrics::histogram!("tunnel_store_seconds").record(started.elapsed().as_secs_f64());
        for c in changes {
            let _ = self.inner.changes.send(c);
        }
        Ok(value)
    }

    async fn reap(&self) -> Result<(), StoreError> {
        self.run(|db| {
            let tx = db.transaction().map_err(backend)?;
            let now = now_ms();
            let keys: Vec<String> = {
                let mut q = tx
                    .prepare(
                        "SELECT key FROM kv WHERE lease IN (SELECT id FROM leases WHERE expires_ms < ?1)",
                    )
                    .map_err(backend)?;
                q.query_map([now], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(backend)?
            };
            tx.execute(
                "DELETE FROM kv WHERE lease IN (SELECT id FROM leases WHERE expires_ms < ?1)",
                [now],
            )
            .map_err(backend)?;
            tx.execute("DELETE FROM leases WHERE expires_ms < ?1", [now])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            let changes = keys
                .into_iter()
                .map(|key| Change { key, value: None })
                .collect();
            Ok(((), changes))
        })
        .await
    }
}

fn current(db: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    db.query_row("SELECT version FROM kv WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.map(|v| v as u64))
    .map_err(backend)
}

fn check(key: &str, found: Option<u64>, expect: Expect) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_owned(),
        })
    }
}

impl Store for SqliteStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.run(move |db| {
            let row = db
                .query_row(
                    "SELECT value, version FROM kv WHERE key = ?1",
                    [&key],
                    |r| {
                        Ok(Versioned {
                            value: r.get(0)?,
                            version: r.get::<_, i64>(1)? as u64,
                        })
                    },
                )
                .optional()
                .map_err(backend)?;
            Ok((row, vec![]))
        }))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.run(move |db| {
            let tx = db.transaction().map_err(backend)?;
            let found = current(&tx, &key)?;
            check(&key, found, expect)?;
            if let Some(l) = lease {
                let live: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM leases WHERE id = ?1 AND expires_ms >= ?2",
                        params![l.0, now_ms()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if live.is_none() {
                    return Err(StoreError::NoLease(l));
                }
            }
            let version = found.unwrap_or(0) + 1;
            tx.execute(
                "INSERT INTO kv (key, value, version, lease) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET value = ?2, version = ?3, lease = ?4",
                params![key, value, version as i64, lease.map(|l| l.0)],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            let change = Change {
                key,
                value: Some(value),
            };
            Ok((version, vec![change]))
        }))
    }

    fn commit(
        &self,
        puts: Vec<(String, Vec<u8>, Expect)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run(move |db| {
            let tx = db.transaction().map_err(backend)?;
            let mut changes = Vec::with_capacity(puts.len());
            for (key, value, expect) in puts {
                let found = current(&tx, &key)?;
                check(&key, found, expect)?;
                let version = found.unwrap_or(0) + 1;
                tx.execute(
                    "INSERT INTO kv (key, value, version, lease) VALUES (?1, ?2, ?3, NULL)
                     ON CONFLICT(key) DO UPDATE SET value = ?2, version = ?3, lease = NULL",
                    params![key, value, version as i64],
                )
                .map_err(backend)?;
                changes.push(Change {
                    key,
                    value: Some(value),
                });
            }
            tx.commit().map_err(backend)?;
            Ok(((), changes))
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.run(move |db| {
            let tx = db.transaction().map_err(backend)?;
            let found = current(&tx, &key)?;
            check(&key, found, expect)?;
            let n = tx
                .execute("DELETE FROM kv WHERE key = ?1", [&key])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            let changes = if n > 0 {
                vec![Change { key, value: None }]
            } else {
                vec![]
            };
            Ok((n > 0, changes))
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        Box::pin(self.run(move |db| {
            // Keys under `prefix` are those in [prefix, prefix + U+10FFFF): an index range,
            // never a scan of the whole table.
            let end = format!("{prefix}\u{10ffff}");
            let start = after.unwrap_or_default();
            let mut q = db
                .prepare(
                    "SELECT key, value, version FROM kv
                     WHERE key >= ?1 AND key < ?2 AND key > ?3
                     ORDER BY key LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = q
                .query_map(params![prefix, end, start, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Versioned {
                            value: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                        },
                    ))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok((rows, vec![]))
        }))
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        let ttl_ms = ttl.as_millis() as i64;
        Box::pin(self.run(move |db| {
            db.execute(
                "INSERT INTO leases (ttl_ms, expires_ms) VALUES (?1, ?2)",
                params![ttl_ms, now_ms() + ttl_ms],
            )
            .map_err(backend)?;
            Ok((LeaseId(db.last_insert_rowid()), vec![]))
        }))
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run(move |db| {
            let n = db
                .execute(
                    "UPDATE leases SET expires_ms = ?2 + ttl_ms WHERE id = ?1 AND expires_ms >= ?2",
                    params![lease.0, now_ms()],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NoLease(lease));
            }
            Ok(((), vec![]))
        }))
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Expire it now; the reaper's query then takes its keys, announced as deletes.
            self.run(move |db| {
                db.execute("UPDATE leases SET expires_ms = -1 WHERE id = ?1", [lease.0])
                    .map_err(backend)?;
                Ok(((), vec![]))
            })
            .await?;
            self.reap().await
        })
    }

    fn watch(&self, prefix: &str) -> Watch {
        Watch::new(prefix, self.inner.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!("tunnel-store-{name}-{tag}.db"))
    }

    // The store's contract (versions, pages, commits, watches, leases) is tested against
    // this backend and etcd alike in `tests/store.rs`; what is SQLite's own is here.

    #[tokio::test]
    async fn data_survives_reopening_the_file() {
        let path = temp_db("reopen");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .put("k", b"v".to_vec(), Expect::Any, None)
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
    }
}
