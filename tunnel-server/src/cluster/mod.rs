//! A cluster of relays on a shared store (etcd): any relay reaches any device, and no relay
//! is a single point of failure.
//!
//! - **Presence** (`presence.rs`): `presence/<device>` says which relay holds a device. It
//!   is written under one lease per relay ([`LEASE_TTL`], kept alive by the relay, not by
//!   each device: no store write per device heartbeat), so a dead relay's devices vanish
//!   together. A device ID is claimed with compare-and-set: one session cluster-wide; the
//!   same credential takes it over from another relay, as on one relay.
//! - **Relays** (`relay/<id>`, under the same lease): where peers reach each relay and the
//!   pin of its TLS identity.
//! - **Links** (`links.rs`): a stream for a device held by relay C crosses from the relay
//!   the caller reached to C over a relay-to-relay link, the project's own TLS 1.3 + yamux
//!   session: the caller's relay verifies C's pin, C verifies the caller's relay
//!   certificate from the cluster CA ([`ca`]). C checks the caller's own grants and never
//!   forwards again: one hop at most.
//!
//! What happens when the store is unreachable is in `SECURITY.md`: connected devices and
//! local streams go on; new registrations and cross-relay dials are refused (`unavailable`)
//! until it answers again, and then the relay registers its devices again by itself.

pub mod ca;
mod links;
pub use links::{LINKS_PER_PEER, PEER_CONNECT_TIMEOUT, PEER_OPEN_TIMEOUT};
mod presence;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_core::{
    BoxFuture, ClaimRefused, Cluster, DeviceClaim, DialError, Identity, Relay, SessionRole,
    SpkiPin, Stream, TlsIdentity,
};

use crate::model::{PresenceRecord, RELAY, RelayRecord};
use crate::store::{Expect, LeaseId, Store, StoreError};

/// TTL of a relay's lease: a relay that stops keeping it alive (killed, frozen, cut off
/// from the store) loses its presence and its devices within this.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the lease is kept alive: three tries within one TTL.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
/// How soon a failed keep-alive is tried again: a leader election ends within a few
/// seconds, and the lease must be kept alive before its TTL runs out.
const KEEPALIVE_RETRY: Duration = Duration::from_secs(1);
/// The store counts as down (`/readyz`) once the lease keeper has not reached it for this
/// long: one failed keep-alive (a request caught in a leader election) is not an outage.
const STORE_DOWN_AFTER: Duration = Duration::from_secs(6);
/// How often the relay record's session counts are refreshed (when they changed).
const RECORD_EVERY: Duration = Duration::from_secs(10);

/// How one relay joins the cluster.
pub struct ClusterConfig {
    /// This relay's ID, unique in the cluster.
    pub relay_id: String,
    /// Where peers reach this relay's port, `host:port`.
    pub advertise: String,
    /// The pin of this relay's public TLS identity (peers verify it).
    pub pin: SpkiPin,
    /// This relay's certificate from the cluster CA, presented to peers.
    pub peer_identity: TlsIdentity,
}

/// Whether the cluster works as seen from this relay, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// The lease keeper reached the store within the last few seconds (one failed
    /// keep-alive, as in a leader election, does not count as down).
    pub store: bool,
    /// This relay holds a live lease (its presence is visible to the others).
    pub lease: bool,
    /// While the store counts as down: the last error.
    pub store_error: Option<String>,
    /// Peers whose link failed on its last use, with why.
    pub peers_failing: HashMap<String, String>,
}

/// One relay's membership of the cluster: the [`Cluster`] hook for its
/// [`RelayBuilder`](tunnel_core::RelayBuilder), and the tasks that keep its lease, its
/// presence and its view of the other relays. Cheap to clone.
#[derive(Clone)]
pub struct RelayCluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    store: Arc<dyn Store>,
    relay: OnceLock<Relay>,
    lease: Mutex<Option<LeaseId>>,
    /// Devices this relay holds: device → (nonce, principal).
    held: Mutex<HashMap<String, presence::Held>>,
    /// When the lease keeper last reached the store, and its last error since.
    store_health: Mutex<(Option<tokio::time::Instant>, Option<String>)>,
    /// Set when claiming the held devices again under a new lease did not finish.
    reclaim_pending: std::sync::atomic::AtomicBool,
    links: links::Links,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RelayCluster {
    /// This relay's membership of the cluster whose state is in `store`.
    pub fn new(config: ClusterConfig, store: Arc<dyn Store>) -> Self {
        let links = links::Links::new(&config);
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                relay: OnceLock::new(),
                lease: Mutex::new(None),
                held: Mutex::new(HashMap::new()),
                store_health: Mutex::new((None, Some("not started".into()))),
                reclaim_pending: std::sync::atomic::AtomicBool::new(false),
                links,
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The hook to build the relay with.
    pub fn hook(&self) -> Arc<dyn Cluster> {
        Arc::new(self.clone())
    }

    /// This relay's ID.
    pub fn relay_id(&self) -> &str {
        &self.inner.config.relay_id
    }

    /// Attaches the built relay and joins: takes a lease, publishes this relay, and starts
    /// the tasks that keep both and watch the presence of its devices. Fails if the store
    /// does not answer now; later outages are ridden out (see the module docs).
    pub async fn start(&self, relay: Relay) -> Result<(), StoreError> {
        let _ = self.inner.relay.set(relay);
        self.establish().await?;
        let me = self.clone();
        tokio::spawn(async move { me.keep_lease().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_presence().await });
        info!(relay = self.relay_id(), "joined the cluster");
        Ok(())
    }

    /// Leaves the cluster: stops the tasks and revokes the lease, so this relay's record
    /// and presence vanish now rather than after the TTL. For a clean shutdown, after the
    /// relay stopped serving.
    pub async fn leave(&self) {
        self.inner.stop.cancel();
        let lease = lock(&self.inner.lease).take();
        if let Some(lease) = lease
            && let Err(e) = self.inner.store.revoke_lease(lease).await
        {
            warn!(error = %e, "could not revoke the lease; it expires by itself");
        }
        self.inner.links.close_all();
    }

    /// Marks this relay as draining in its record (for the operator's view).
    pub async fn set_draining(&self) {
        let _ = self.publish(true).await;
    }

    /// Whether the cluster works as seen from here.
    pub fn health(&self) -> Health {
        let (up, error) = self.store_up();
        Health {
            store: up,
            lease: lock(&self.inner.lease).is_some(),
            store_error: if up { None } else { error },
            peers_failing: self.inner.links.failing(),
        }
    }

    /// Every relay of the cluster, from the store.
    pub async fn relays(&self) -> Result<Vec<RelayRecord>, StoreError> {
        let page = self.inner.store.list(RELAY, None, 10_000).await?;
        Ok(page
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
            .collect())
    }

    /// Which relay holds `device`, from the store.
    pub async fn presence(&self, device: &str) -> Result<Option<PresenceRecord>, StoreError> {
        Ok(presence::read(&*self.inner.store, device)
            .await?
            .map(|(record, _)| record))
    }

    /// A page of presence records, in device order after `after`.
    pub async fn presence_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, PresenceRecord)>, StoreError> {
        presence::page(&*self.inner.store, after, limit).await
    }

    fn relay(&self) -> Option<&Relay> {
        self.inner.relay.get()
    }

    /// Records that the store just answered a request (`/readyz` reads it too): it is up,
    /// whatever the lease keeper's last attempt met (a keep-alive caught in a leader
    /// election fails, though the store answers again a moment later).
    pub fn store_answered(&self) {
        self.set_store_health(Ok(()));
    }

    /// Whether the store counts as up (see [`STORE_DOWN_AFTER`]), and its last error.
    fn store_up(&self) -> (bool, Option<String>) {
        let (last_ok, error) = lock(&self.inner.store_health).clone();
        let up = last_ok.is_some_and(|t| t.elapsed() < STORE_DOWN_AFTER);
        (up, error)
    }

    fn set_store_health(&self, result: Result<(), &StoreError>) {
        {
            let mut h = lock(&self.inner.store_health);
            match result {
                Ok(()) => *h = (Some(tokio::time::Instant::now()), None),
                Err(e) => h.1 = Some(e.to_string()),
            }
        }
        let up = self.store_up().0;
        let lease = lock(&self.inner.lease).is_some();
        metrics::gauge!("tunnel_cluster_store_up").set(f64::from(u8::from(up)));
        metrics::gauge!("tunnel_cluster_lease_held").set(f64::from(u8::from(lease)));
    }

    /// Takes a new lease, publishes this relay under it and claims again every device it
    /// holds (after an outage during which the old lease expired).
    async fn establish(&self) -> Result<(), StoreError> {
        let lease = self.inner.store.grant_lease(LEASE_TTL).await;
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                self.set_store_health(Err(&e));
                return Err(e);
            }
        };
        *lock(&self.inner.lease) = Some(lease);
        let published = self.publish(false).await;
        if let Err(e) = published {
            *lock(&self.inner.lease) = None;
            self.set_store_health(Err(&e));
            return Err(e);
        }
        self.set_store_health(Ok(()));
        let done = self.reclaim(lease).await;
        self.inner.reclaim_pending.store(!done, Ordering::SeqCst);
        Ok(())
    }

    /// Writes this relay's record under its lease.
    async fn publish(&self, draining: bool) -> Result<(), StoreError> {
        let Some(lease) = *lock(&self.inner.lease) else {
            return Ok(());
        };
        let (mut devices, mut access) = (0, 0);
        if let Some(relay) = self.relay() {
            for s in relay.sessions() {
                match s.role {
                    SessionRole::Device => devices += 1,
                    _ => access += 1,
                }
            }
        }
        let record = RelayRecord {
            id: self.relay_id().to_owned(),
            addr: self.inner.config.advertise.clone(),
            pin: self.inner.config.pin.to_string(),
            devices,
            access,
            draining,
            since: SystemTime::now(),
        };
        let key = format!("{RELAY}{}", self.relay_id());
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.inner
            .store
            .put(&key, value, Expect::Any, Some(lease))
            .await
            .map(|_| ())
    }

    /// Keeps the lease alive; takes a new one when it was lost.
    async fn keep_lease(&self) {
        let mut last_ok = tokio::time::Instant::now();
        let mut last_record = tokio::time::Instant::now();
        let mut pause = KEEPALIVE_EVERY;
        loop {
            tokio::select! {
                () = self.inner.stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = KEEPALIVE_EVERY;
            let lease = *lock(&self.inner.lease);
            let Some(lease) = lease else {
                match self.establish().await {
                    Ok(()) => {
                        info!(
                            "cluster store reachable again; lease renewed and devices claimed again"
                        );
                        last_ok = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        warn!(error = %e, "cluster store unreachable; new registrations and cross-relay dials are refused")
                    }
                }
                continue;
            };
            match self.inner.store.keep_alive(lease).await {
                Ok(()) => {
                    last_ok = tokio::time::Instant::now();
                    self.set_store_health(Ok(()));
                    if self.inner.reclaim_pending.load(Ordering::SeqCst) {
                        let done = self.reclaim(lease).await;
                        self.inner.reclaim_pending.store(!done, Ordering::SeqCst);
                    }
                    if last_record.elapsed() >= RECORD_EVERY {
                        last_record = tokio::time::Instant::now();
                        let draining = self.relay().is_some_and(Relay::is_draining);
                        let _ = self.publish(draining).await;
                    }
                }
                Err(StoreError::NoLease(_)) => {
                    warn!("the lease expired: this relay's presence was lost; taking a new one");
                    *lock(&self.inner.lease) = None;
                    let e = StoreError::NoLease(lease);
                    self.set_store_health(Err(&e));
                }
                Err(e) => {
                    warn!(error = %e, "lease keep-alive failed");
                    pause = KEEPALIVE_RETRY;
                    if last_ok.elapsed() >= LEASE_TTL {
                        // The store has surely dropped it by now.
                        *lock(&self.inner.lease) = None;
                    }
                    self.set_store_health(Err(&e));
                }
            }
        }
    }
}

impl Cluster for RelayCluster {
    fn claim<'a>(&'a self, claim: &'a DeviceClaim) -> BoxFuture<'a, Result<(), ClaimRefused>> {
        Box::pin(self.claim_device(claim))
    }

    fn release(&self, claim: DeviceClaim) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move { me.release_device(claim).await })
    }

    fn open<'a>(
        &'a self,
        device: &'a str,
        service: &'a str,
        caller: &'a Identity,
    ) -> BoxFuture<'a, Result<(Stream, String), DialError>> {
        Box::pin(self.open_remote(device, service, caller))
    }
}
