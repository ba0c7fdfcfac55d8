//! Presence: which relay holds each device, one holder cluster-wide.
//!
//! A claim reads `presence/<device>` and writes it back with compare-and-set: created only
//! if absent, or replaced only at the version it read, and only by the same principal. Two
//! relays racing for one device ID: one write wins, the other sees a conflict, reads again
//! and finds the winner (a different principal: refused; the same: it takes over, and the
//! loser's relay, watching `presence/`, closes its session).

use std::time::SystemTime;

use tracing::{debug, info, warn};
use tunnel_core::{ClaimRefused, DeviceClaim};

use super::{RelayCluster, lock};
use crate::model::{PRESENCE, PresenceRecord};
use crate::store::{Expect, LeaseId, Store, StoreError};

/// Rounds of read + compare-and-set before a claim gives up as `unavailable`: each lost
/// round means another relay wrote meanwhile, which a flapping pair can do forever.
const CLAIM_ROUNDS: usize = 4;
/// Takeovers of a device ID from another relay by the same credential allowed within
/// [`FLAP_WINDOW`]: a device whose relay died moves once; two live agents sharing a
/// credential and an ID on two relays would take it from each other forever. Past this,
/// the holder keeps it and newcomers are refused `device id taken` (as on one relay).
const MAX_TAKEOVERS: u32 = 3;
/// Window over which takeovers are counted.
const FLAP_WINDOW: u64 = 60;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A device this relay holds.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) nonce: u64,
    pub(super) principal: String,
}

fn key(device: &str) -> String {
    format!("{PRESENCE}{device}")
}

/// The presence record of `device` and its version.
pub(super) async fn read(
    store: &dyn Store,
    device: &str,
) -> Result<Option<(PresenceRecord, u64)>, StoreError> {
    Ok(store.get(&key(device)).await?.and_then(|v| {
        serde_json::from_slice(&v.value)
            .ok()
            .map(|r| (r, v.version))
    }))
}

/// A page of presence records after `after`.
pub(super) async fn page(
    store: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, PresenceRecord)>, StoreError> {
    let after = after.map(key);
    let page = store.list(PRESENCE, after.as_deref(), limit).await?;
    Ok(page
        .into_iter()
        .filter_map(|(k, v)| {
            let device = k.strip_prefix(PRESENCE)?.to_owned();
            let record = serde_json::from_slice(&v.value).ok()?;
            Some((device, record))
        })
        .collect())
}

fn unavailable(e: &StoreError) -> ClaimRefused {
    ClaimRefused::Unavailable(format!(
        "the cluster's store is unreachable ({e}); new registrations are refused until it returns"
    ))
}

impl RelayCluster {
    pub(super) async fn claim_device(&self, claim: &DeviceClaim) -> Result<(), ClaimRefused> {
        let Some(lease) = *lock(&self.inner.lease) else {
            return Err(ClaimRefused::Unavailable(
                "this relay has lost its lease with the cluster's store; retry later".into(),
            ));
        };
        let store = &*self.inner.store;
        for _ in 0..CLAIM_ROUNDS {
            let current = read(store, &claim.device)
                .await
                .map_err(|e| unavailable(&e))?;
            let mut record = PresenceRecord {
                relay: self.relay_id().to_owned(),
                principal: claim.principal.clone(),
                nonce: claim.nonce,
                since: SystemTime::now(),
                takeovers: 0,
                takeovers_since: unix_now(),
            };
            let expect = match &current {
                None => Expect::Absent,
                Some((held, _)) if held.principal != claim.principal => {
                    return Err(ClaimRefused::Taken(format!(
                        "device id {} is in use by another credential (on relay {})",
                        claim.device, held.relay
                    )));
                }
                Some((held, version)) => {
                    // Same credential: a takeover. Counted when it comes from another
                    // relay; the same relay's replacements are its registry's business.
                    let fresh = unix_now().saturating_sub(held.takeovers_since) < FLAP_WINDOW;
                    (record.takeovers, record.takeovers_since) =
                        match (fresh, held.relay == self.relay_id()) {
                            (true, true) => (held.takeovers, held.takeovers_since),
                            (true, false) => (held.takeovers + 1, held.takeovers_since),
                            (false, true) => (0, unix_now()),
                            (false, false) => (1, unix_now()),
                        };
                    if record.takeovers > MAX_TAKEOVERS {
                        return Err(ClaimRefused::Taken(format!(
                            "device id {} is held by a live session of this credential on relay \
                             {} that was taken over too often; use one credential per device",
                            claim.device, held.relay
                        )));
                    }
                    Expect::Version(*version)
                }
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            match store
                .put(&key(&claim.device), value, expect, Some(lease))
                .await
            {
                Ok(_) => {
                    if let Some((held, _)) = current
                        && held.relay != self.relay_id()
                    {
                        info!(
                            device = claim.device,
                            from = held.relay,
                            "device taken over from another relay"
                        );
                    }
                    lock(&self.inner.held).insert(
                        claim.device.clone(),
                        Held {
                            nonce: claim.nonce,
                            principal: claim.principal.clone(),
                        },
                    );
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => {
                    debug!(
                        device = claim.device,
                        "presence changed meanwhile; reading again"
                    );
                }
                Err(StoreError::NoLease(_)) => {
                    *lock(&self.inner.lease) = None;
                    return Err(ClaimRefused::Unavailable(
                        "this relay's lease expired; retry later".into(),
                    ));
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(ClaimRefused::Unavailable(format!(
            "device id {} is being claimed by several sessions at once; retry later",
            claim.device
        )))
    }

    pub(super) async fn release_device(&self, claim: DeviceClaim) {
        {
            let mut held = lock(&self.inner.held);
            match held.get(&claim.device) {
                Some(h) if h.nonce == claim.nonce => {
                    held.remove(&claim.device);
                }
                _ => return, // replaced by a newer session, here or elsewhere
            }
        }
        let store = &*self.inner.store;
        let Ok(Some((record, version))) = read(store, &claim.device).await else {
            return; // gone already, or the store is away: the lease cleans up
        };
        if record.relay == self.relay_id() && record.nonce == claim.nonce {
            let _ = store
                .delete(&key(&claim.device), Expect::Version(version))
                .await;
        }
    }

    /// Claims again, under a new lease, every device this relay still holds; a device
    /// another relay took meanwhile is disconnected here. Returns whether every device was
    /// done: on a store error it stops, and the lease keeper calls it again.
    pub(super) async fn reclaim(&self, lease: LeaseId) -> bool {
        let held: Vec<(String, Held)> = lock(&self.inner.held)
            .iter()
            .map(|(d, h)| (d.clone(), h.clone()))
            .collect();
        let store = &*self.inner.store;
        for (device, h) in held {
            let record = PresenceRecord {
                relay: self.relay_id().to_owned(),
                principal: h.principal.clone(),
                nonce: h.nonce,
                since: SystemTime::now(),
                takeovers: 0,
                takeovers_since: unix_now(),
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            let expect = match read(store, &device).await {
                Ok(None) => Expect::Absent,
                Ok(Some((r, v))) if r.relay == self.relay_id() => Expect::Version(v),
                Ok(Some(_)) => {
                    self.lost(&device, "another relay holds it now");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "re-claiming devices failed; will retry");
                    return false;
                }
            };
            if let Err(e) = store.put(&key(&device), value, expect, Some(lease)).await {
                match e {
                    StoreError::Conflict { .. } => self.lost(&device, "taken meanwhile"),
                    e => {
                        warn!(error = %e, "re-claiming devices failed; will retry");
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Forgets a device this relay no longer holds and closes its session here.
    fn lost(&self, device: &str, why: &str) {
        lock(&self.inner.held).remove(device);
        if let Some(relay) = self.relay()
            && relay.disconnect_device(device)
        {
            info!(
                device,
                why, "device session closed: its ID is held elsewhere now"
            );
        }
    }

    /// Watches presence: a device this relay holds that another relay claims (the same
    /// credential reconnected there) is disconnected here.
    pub(super) async fn watch_presence(&self) {
        let mut watch = self.inner.store.watch(PRESENCE);
        loop {
            let change = tokio::select! {
                () = self.inner.stop.cancelled() => return,
                c = watch.next() => c,
            };
            match change {
                None => return,
                Some(Ok(c)) => {
                    let Some(device) = c.key.strip_prefix(PRESENCE) else {
                        continue;
                    };
                    let Some(record) = c
                        .value
                        .and_then(|v| serde_json::from_slice::<PresenceRecord>(&v).ok())
                    else {
                        continue;
                    };
                    let ours = lock(&self.inner.held).contains_key(device);
                    if ours && record.relay != self.relay_id() {
                        self.lost(device, "claimed on another relay");
                    }
                }
                Some(Err(_)) => self.reconcile().await,
            }
        }
    }

    /// After missed changes: every held device whose presence names another relay.
    async fn reconcile(&self) {
        let devices: Vec<String> = lock(&self.inner.held).keys().cloned().collect();
        for device in devices {
            if let Ok(Some((r, _))) = read(&*self.inner.store, &device).await
                && r.relay != self.relay_id()
            {
                self.lost(&device, "claimed on another relay");
            }
        }
    }
}
