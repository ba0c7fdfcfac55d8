//! The store on etcd (v3 API, 3.4 and later), for a cluster of relays: every relay sees the
//! same credentials, device records and presence, and every change through a watch.
//!
//! - Keys live under a namespace (`tunnel/` by default), so one etcd can serve several
//!   clusters or other applications; the [`Store`] user never sees it.
//! - A version is etcd's per-key `version` (1 on create, +1 per write, back to 0 on
//!   delete), so [`Expect::Version`] is a compare on it, and [`Expect::Absent`] a compare
//!   of `create_revision` with 0.
//! - Every request runs under [`REQUEST_TIMEOUT`]: a member without quorum never answers,
//!   and the caller must learn that in bounded time. A request that was not delivered (a
//!   member is down, or the cluster is electing a leader) is retried, on the client's next
//!   endpoint, until [`OPERATION_DEADLINE`]: losing one member of three is not visible.
//! - A watch that breaks (etcd restarted, quorum lost, history compacted) is reopened and
//!   its watchers are told they lagged, so they re-read what they watch; they are also told
//!   once the watch is first established, since changes before that were not seen.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::{BoxFuture, Change, Expect, LeaseId, Store, StoreError, Versioned, Watch};

/// Deadline for one etcd request. A healthy cluster answers in milliseconds; a member that
/// lost its quorum holds requests until its own (longer) timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for one store operation, retries of undelivered requests included: covers a
/// leader election after the leader died (about 2 s with etcd's defaults).
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(4);
/// gRPC's `UNAVAILABLE`: the request did not reach a member that could serve it (no
/// leader, member stopping), so retrying cannot apply it twice.
const GRPC_UNAVAILABLE: i32 = 14;
/// Deadline for the first connection to the endpoints.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// gRPC keep-alive: a dead member is noticed within interval + timeout.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(2));
/// Changes buffered per watch; a watcher further behind is told it lagged.
const WATCH_BUFFER: usize = 4096;
/// Pause before reopening a broken watch.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// Largest page `list` asks etcd for.
const MAX_PAGE: usize = 10_000;

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "tunnel/";

/// A [`Store`] on an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Backend(format!("etcd did not answer {what} within {REQUEST_TIMEOUT:?}").into())
}

/// Whether a failed request surely did not reach etcd's log: a transport error (connect
/// refused, connection reset before the answer), or `UNAVAILABLE`. Retrying those cannot
/// apply a write twice; a request that timed out might have been applied, and is not
/// retried.
fn undelivered(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == GRPC_UNAVAILABLE,
        _ => false,
    }
}

/// Runs one etcd request, each attempt under [`REQUEST_TIMEOUT`], retrying undelivered
/// ones (the client's balancer picks another endpoint) until [`OPERATION_DEADLINE`].
async fn timed<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + OPERATION_DEADLINE;
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(REQUEST_TIMEOUT.min(left), attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if undelivered(&e) && tokio::time::Instant::now() + pause < deadline => {
                debug!(error = %e, what, "etcd request not delivered; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            Ok(Err(e)) => return Err(backend(e)),
            Err(_) => return Err(timed_out(what)),
        }
    }
}

/// The key just past every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`), with keys under
    /// `namespace`. Fails if no endpoint answers within a few seconds.
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoint given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE.0, KEEPALIVE.1)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT + REQUEST_TIMEOUT,
            Client::connect(endpoints, Some(options)),
        )
        .await
        .map_err(|_| timed_out("the connection"))?
        .map_err(backend)?;
        let store = Self {
            client,
            namespace: namespace.to_owned(),
        };
        // One read proves the cluster answers (and has a leader) before the relay starts.
        store.get("_ping").await?;
        Ok(store)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.namespace).into_bytes()
    }

    fn strip(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.namespace).map(str::to_owned)
    }

    fn compare(&self, key: &str, expect: Expect) -> Option<Compare> {
        let full = self.full(key);
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Compare::create_revision(full, CompareOp::Equal, 0)),
            Expect::Version(v) => Some(Compare::version(
                full,
                CompareOp::Equal,
                i64::try_from(v).unwrap_or(i64::MAX),
            )),
        }
    }

    /// Runs `ops` as one transaction if every compare holds (none: always).
    async fn txn(
        &self,
        what: &str,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        let txn = Txn::new().when(compares).and_then(ops);
        timed(what, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        Box::pin(async move {
            let resp = timed("a read", || {
                let mut kv = self.client.kv_client();
                let key = self.full(key);
                async move { kv.get(key, None).await }
            })
            .await?;
            Ok(resp.kvs().first().map(|kv| Versioned {
                value: kv.value().to_vec(),
                version: u64::try_from(kv.version()).unwrap_or(0),
            }))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut options = PutOptions::new().with_prev_key();
            if let Some(l) = lease {
                options = options.with_lease(l.0);
            }
            let put = TxnOp::put(self.full(key), value, Some(options));
            let resp = self
                .txn(
                    "a write",
                    self.compare(key, expect).into_iter().collect(),
                    vec![put],
                )
                .await?;
            if !resp.succeeded() {
                return Err(StoreError::Conflict { key: key.into() });
            }
            let previous = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Put(p) => {
                    Some(p.prev_key().map_or(0, |kv| kv.version()))
                }
                _ => None,
            });
            Ok(u64::try_from(previous.unwrap_or(0)).unwrap_or(0) + 1)
        })
    }

    fn commit(
        &self,
        puts: Vec<(String, Vec<u8>, Expect)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if puts.is_empty() {
                return Ok(());
            }
            let compares: Vec<Compare> = puts
                .iter()
                .filter_map(|(k, _, e)| self.compare(k, *e))
                .collect();
            let ops: Vec<TxnOp> = puts
                .iter()
                .map(|(k, v, _)| TxnOp::put(self.full(k), v.clone(), None))
                .collect();
            let resp = self.txn("a transaction", compares, ops).await?;
            if resp.succeeded() {
                Ok(())
            } else {
                let key = puts.first().map(|(k, _, _)| k.clone()).unwrap_or_default();
                Err(StoreError::Conflict { key })
            }
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let op = TxnOp::delete(self.full(key), Some(DeleteOptions::new().with_prev_key()));
            let resp = self
                .txn(
                    "a delete",
                    self.compare(key, expect).into_iter().collect(),
                    vec![op],
                )
                .await?;
            if !resp.succeeded() {
                return Err(StoreError::Conflict { key: key.into() });
            }
            Ok(resp.op_responses().into_iter().any(|r| match r {
                etcd_client::TxnOpResponse::Delete(d) => !d.prev_kvs().is_empty(),
                _ => false,
            }))
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>> {
        Box::pin(async move {
            let full_prefix = self.full(prefix);
            let start = match after {
                // The smallest key greater than `after`.
                Some(a) => {
                    let mut k = self.full(a);
                    k.push(0);
                    k.max(full_prefix.clone())
                }
                None => full_prefix.clone(),
            };
            let limit = limit.min(MAX_PAGE);
            if limit == 0 {
                return Ok(vec![]);
            }
            let options = GetOptions::new()
                .with_range(prefix_end(&full_prefix))
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            let resp = timed("a listing", || {
                let mut kv = self.client.kv_client();
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let key = self.strip(kv.key())?;
                    let version = u64::try_from(kv.version()).unwrap_or(0);
                    Some((
                        key,
                        Versioned {
                            value: kv.value().to_vec(),
                            version,
                        },
                    ))
                })
                .collect())
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
            let resp = timed("a lease grant", || {
                let mut lease = self.client.lease_client();
                async move { lease.grant(secs, None).await }
            })
            .await?;
            Ok(LeaseId(resp.id()))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let kept = timed("a lease keep-alive", || {
                let mut client = self.client.lease_client();
                async move {
                    // etcd-client sends one keep-alive and reads its answer; a lease etcd
                    // does not know is answered with a TTL of 0, an error here.
                    match client.keep_alive(lease.0).await {
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
            if kept {
                Ok(())
            } else {
                Err(StoreError::NoLease(lease))
            }
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            timed("a lease revocation", || {
                let mut client = self.client.lease_client();
                async move { client.revoke(lease.0).await }
            })
            .await?;
            Ok(())
        })
    }

    fn watch(&self, prefix: &str) -> Watch {
        let (tx, rx) = broadcast::channel(WATCH_BUFFER);
        let me = self.clone();
        let watched = prefix.to_owned();
        tokio::spawn(async move { me.pump(&watched, tx).await });
        Watch::new(prefix, rx)
    }
}

impl EtcdStore {
    /// Feeds one watch's changes to its receivers until none is left, reopening the etcd
    /// watch whenever it breaks (and telling the receivers they lagged, with an empty key).
    async fn pump(&self, prefix: &str, tx: broadcast::Sender<Change>) {
        let full = self.full(prefix);
        let mut first = true;
        while tx.receiver_count() > 0 {
            if !first {
                tokio::time::sleep(WATCH_RETRY).await;
            }
            first = false;
            let mut client = self.client.watch_client();
            let options = WatchOptions::new().with_range(prefix_end(&full));
            let opened =
                tokio::time::timeout(REQUEST_TIMEOUT, client.watch(full.clone(), Some(options)));
            let mut stream = match opened.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(error = %e, prefix, "cannot open the etcd watch; retrying");
                    continue;
                }
                Err(_) => continue,
            };
            // Changes made before the watch existed (or while it was broken) were missed:
            // tell the receivers to re-read, now that nothing more can be missed.
            let _ = tx.send(Change {
                key: String::new(),
                value: None,
            });
            // Receivers are checked between messages and every few seconds in between.
            let mut check = tokio::time::interval(Duration::from_secs(5));
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = check.tick() => {
                        if tx.receiver_count() == 0 { return; }
                        continue;
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            warn!(
                                reason = resp.cancel_reason(),
                                prefix, "etcd cancelled the watch; reopening"
                            );
                            break;
                        }
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let Some(key) = self.strip(kv.key()) else {
                                continue;
                            };
                            let value = match event.event_type() {
                                EventType::Put => Some(kv.value().to_vec()),
                                EventType::Delete => None,
                            };
                            let _ = tx.send(Change { key, value });
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(error = %e, prefix, "etcd watch broke; reopening");
                        break;
                    }
                }
            }
        }
    }
}
