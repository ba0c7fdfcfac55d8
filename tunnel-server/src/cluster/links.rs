//! Relay-to-relay links: a [`Dialer`] per peer relay, authenticated both ways (the peer's
//! pin from its record; our certificate from the cluster CA), opened on first use and kept
//! while the peer's record stays the same. A stream for a device on relay C goes through
//! the link to C with a `forward` header naming the caller; C checks the caller's grants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{debug, info};
use tunnel_core::{
    ClientConfig, DialError, Dialer, ErrorKind, Identity, SpkiPin, Stream, TlsIdentity,
};

use super::{ClusterConfig, RelayCluster, lock, presence};
use crate::model::{RELAY, RelayRecord};

/// Deadline for opening a link to a peer (TCP, TLS, hello): a peer that is down or cut off
/// fails the dial within this.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for a forwarded open on a live link, the peer's answer included (which covers
/// the device's own connect to its service, up to 5 s).
pub const PEER_OPEN_TIMEOUT: Duration = Duration::from_secs(8);
/// Lookups of a device's relay per dial: the second after the device moved meanwhile.
const LOOKUPS: usize = 2;
/// Links kept to each peer, opened one by one as dials need them and used in turn: each
/// is one TLS session with one driver task and the peer's per-session stream cap, so
/// several spread the encryption over cores and carry more concurrent streams.
pub const LINKS_PER_PEER: usize = 4;

/// A link to one peer, and the record it was opened for.
struct Link {
    addr: String,
    pin: String,
    dialer: Dialer,
}

/// The links of one relay.
pub(super) struct Links {
    identity: TlsIdentity,
    /// Per peer, up to [`LINKS_PER_PEER`] links, and the turn of the next dial.
    links: Mutex<HashMap<String, (Vec<Link>, usize)>>,
    /// Peers whose last link attempt or open failed, with why.
    failing: Mutex<HashMap<String, String>>,
}

impl Links {
    pub(super) fn new(config: &ClusterConfig) -> Self {
        Self {
            identity: config.peer_identity.clone(),
            links: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn failing(&self) -> HashMap<String, String> {
        lock(&self.failing).clone()
    }

    pub(super) fn close_all(&self) {
        lock(&self.links).clear();
    }

    fn forget(&self, relay: &str) {
        lock(&self.links).remove(relay);
    }

    /// A link to `peer` for the next dial: the links in turn, a new one opened while
    /// there are fewer than [`LINKS_PER_PEER`] for its current record.
    async fn link(&self, peer: &RelayRecord) -> Result<Dialer, DialError> {
        {
            let mut links = lock(&self.links);
            let (pool, turn) = links.entry(peer.id.clone()).or_default();
            // A peer that restarted elsewhere (new address or key): its old links go.
            pool.retain(|l| l.addr == peer.addr && l.pin == peer.pin);
            *turn = turn.wrapping_add(1);
            if pool.len() >= LINKS_PER_PEER {
                return Ok(pool[*turn % pool.len()].dialer.clone());
            }
        }
        let pin: SpkiPin = peer
            .pin
            .parse()
            .map_err(|e| DialError::Unavailable(format!("relay {} has a bad pin: {e}", peer.id)))?;
        let config = ClientConfig::new(peer.addr.clone(), pin).client_cert(self.identity.clone());
        let dialer = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, Dialer::connect(config)).await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(DialError::Connect(e)),
            Err(_) => {
                return Err(DialError::Unavailable(format!(
                    "no answer within {PEER_CONNECT_TIMEOUT:?}"
                )));
            }
        };
        let mut links = lock(&self.links);
        let (pool, _) = links.entry(peer.id.clone()).or_default();
        if pool.len() < LINKS_PER_PEER {
            info!(
                peer = peer.id,
                addr = peer.addr,
                n = pool.len() + 1,
                "link to peer relay opened"
            );
            pool.push(Link {
                addr: peer.addr.clone(),
                pin: peer.pin.clone(),
                dialer: dialer.clone(),
            });
        }
        Ok(dialer)
    }
}

/// Whether an error says the link to the peer relay failed (rather than what the peer
/// answered about the device).
fn link_broke(e: &DialError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connect
            | ErrorKind::ConnectionLost
            | ErrorKind::Certificate
            | ErrorKind::AuthFailed
    ) || matches!(e, DialError::Timeout)
}

impl RelayCluster {
    /// The record of relay `id`, from the store.
    async fn peer(&self, id: &str) -> Result<Option<RelayRecord>, crate::store::StoreError> {
        let v = self.inner.store.get(&format!("{RELAY}{id}")).await?;
        Ok(v.and_then(|v| serde_json::from_slice(&v.value).ok()))
    }

    pub(super) async fn open_remote(
        &self,
        device: &str,
        service: &str,
        caller: &Identity,
    ) -> Result<(Stream, String), DialError> {
        let store_down = |e: crate::store::StoreError| {
            DialError::Unavailable(format!(
                "device {device} is not on this relay, and the cluster's store is unreachable \
                 to find it ({e}); cross-relay dials are refused until it returns"
            ))
        };
        let mut last = None;
        for _ in 0..LOOKUPS {
            let Some((presence, _)) = presence::read(&*self.inner.store, device)
                .await
                .map_err(store_down)?
            else {
                return Err(DialError::DeviceOffline(format!(
                    "device {device} is not connected to any relay"
                )));
            };
            if presence.relay == self.relay_id() {
                // Registered here a moment ago, or leaving: not reachable through a hop.
                return Err(DialError::DeviceOffline(format!(
                    "device {device} is not connected"
                )));
            }
            let relay_id = presence.relay;
            let unreachable = |why: String| {
                DialError::Unavailable(format!(
                    "device {device} unreachable: its relay {relay_id} cannot be reached ({why})"
                ))
            };
            let Some(peer) = self.peer(&relay_id).await.map_err(store_down)? else {
                return Err(unreachable("it has left the cluster".into()));
            };
            let links = &self.inner.links;
            // The peer is down, cut off, or not who its record says: no link at all, or
            // one that broke or stopped answering.
            let peer_failed = |e: DialError, forget: bool| {
                metrics::counter!("tunnel_cluster_forwarded_total", "result" => "peer_unreachable")
                    .increment(1);
                if forget {
                    links.forget(&relay_id);
                }
                lock(&links.failing).insert(relay_id.clone(), e.to_string());
                unreachable(e.to_string())
            };
            let dialer = links.link(&peer).await.map_err(|e| peer_failed(e, false))?;
            let forward = dialer.forward(device, service, caller, self.relay_id());
            let opened = tokio::time::timeout(PEER_OPEN_TIMEOUT, forward)
                .await
                .unwrap_or(Err(DialError::Timeout));
            match opened {
                Ok(stream) => {
                    lock(&links.failing).remove(&relay_id);
                    metrics::counter!("tunnel_cluster_forwarded_total", "result" => "ok")
                        .increment(1);
                    return Ok((stream, relay_id));
                }
                // The device moved meanwhile: look it up once more.
                Err(DialError::DeviceOffline(why)) => {
                    debug!(
                        device,
                        relay = relay_id,
                        "device not on its relay any more; looking up again"
                    );
                    last = Some(DialError::DeviceOffline(why));
                }
                Err(e) if link_broke(&e) => return Err(peer_failed(e, true)),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            DialError::DeviceOffline(format!("device {device} is not connected"))
        }))
    }
}
