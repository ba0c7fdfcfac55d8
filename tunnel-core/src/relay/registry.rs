//! Which devices are online, under which identity, with which services.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::owners::Owners;
use crate::auth::Grants;
use crate::mux::Session;
use crate::protocol::DeviceEntry;
use crate::util::lock;

/// Offline devices remembered for `--list`; beyond this, the oldest are forgotten, so a
/// credential with a wildcard grant cannot grow the relay's memory without bound.
const MAX_REMEMBERED_OFFLINE: usize = 10_000;
/// Bytes of names the offline devices may hold in all (device IDs and service names, each
/// with its allocation overhead): 64 services of 63 bytes per device would otherwise make
/// 10 000 remembered devices cost 40 MiB.
const MAX_REMEMBERED_OFFLINE_BYTES: usize = 4 << 20;

/// Replacements of a *live* session by the same identity allowed per device ID within
/// [`FLAP_WINDOW`]: a NAT rebinding replaces a zombie now and then, but two live agents
/// sharing one credential and device ID would evict each other forever. Past this, the
/// live holder keeps the ID and newcomers are refused as `device id taken` (they retry
/// with backoff, and get in once the holder's session has ended).
const MAX_LIVE_REPLACEMENTS: u32 = 3;
/// Window over which live replacements are counted.
const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// Device IDs whose replacements are tracked at once; past this, stale entries are dropped.
const MAX_FLAP_ENTRIES: usize = 10_000;

/// A registered device session.
pub(super) struct Online {
    pub(super) generation: u64,
    /// The principal of the credential that registered it.
    pub(super) principal: String,
    /// Shared with each [`Reachable`]: a stream open copies no strings.
    pub(super) services: Arc<[String]>,
    pub(super) session: Session,
    /// Accept loops of this session's public ports; aborting them frees the ports.
    pub(super) public_tasks: Vec<JoinHandle<()>>,
}

impl Online {
    /// Closes the session and frees its public ports before returning.
    pub(super) async fn evict(self) {
        self.session.close();
        for task in self.public_tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// An online device as a stream open needs it.
pub(super) struct Reachable {
    pub(super) session: Session,
    pub(super) services: Arc<[String]>,
}

/// A device ID's current holder, or why it cannot be had.
pub(super) enum Claim {
    /// Free, or previously held by the same identity (the old session is returned to be
    /// evicted: it is often a NAT zombie).
    Granted(Option<Online>),
    /// Held right now, or owned while offline, by another principal.
    Taken,
    /// Held by a live session of the same identity that has been replaced too often
    /// lately: two agents share a credential and a device ID.
    Flapping,
}

/// Offline devices: device → services, with insertion order to forget the oldest first and
/// the bytes they hold, both bounded.
#[derive(Default)]
struct Offline {
    map: HashMap<String, Vec<String>>,
    order: VecDeque<String>,
    bytes: usize,
}

/// What one remembered device costs: its names and a fixed overhead per allocation.
fn cost(device: &str, services: &[String]) -> usize {
    const OVERHEAD: usize = 48;
    device.len() + OVERHEAD + services.iter().map(|s| s.len() + OVERHEAD).sum::<usize>()
}

impl Offline {
    fn insert(&mut self, device: &str, services: Vec<String>) {
        self.remove(device);
        self.bytes += cost(device, &services);
        self.map.insert(device.to_owned(), services);
        self.order.push_back(device.to_owned());
        while self.map.len() > MAX_REMEMBERED_OFFLINE || self.bytes > MAX_REMEMBERED_OFFLINE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(services) = self.map.remove(&old) {
                self.bytes -= cost(&old, &services);
            }
        }
    }

    fn remove(&mut self, device: &str) -> bool {
        let Some(services) = self.map.remove(device) else {
            return false;
        };
        self.bytes -= cost(device, &services);
        self.order.retain(|d| d != device);
        true
    }
}

#[derive(Default)]
pub(super) struct Registry {
    online: Mutex<HashMap<String, Online>>,
    /// Device → services, for devices seen since start that are offline now; with insertion
    /// order to forget the oldest first.
    offline: Mutex<Offline>,
    /// Device → (start of the counting window, live replacements in it).
    flaps: Mutex<HashMap<String, (Instant, u32)>>,
    /// Owners of device IDs and public ports, kept while they are offline. Locked after
    /// `online` where both are held.
    pub(super) owners: Mutex<Owners>,
    next_generation: AtomicU64,
}

impl Registry {
    pub(super) fn generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes the device ID for `principal`, removing a stale session of the same principal.
    /// An ID another principal owns is refused even while its owner is offline.
    pub(super) fn claim(&self, device: &str, principal: &str) -> Claim {
        let mut online = lock(&self.online);
        if lock(&self.owners)
            .device_owner(device)
            .is_some_and(|owner| owner != principal)
        {
            return Claim::Taken;
        }
        match online.get(device) {
            Some(held) if held.principal != principal && !held.session.is_closed() => Claim::Taken,
            Some(held) if !held.session.is_closed() && self.flapping(device) => Claim::Flapping,
            Some(_) => Claim::Granted(online.remove(device)),
            None => Claim::Granted(None),
        }
    }

    /// Counts one live replacement of `device`; true when it is one too many.
    fn flapping(&self, device: &str) -> bool {
        let now = Instant::now();
        let mut flaps = lock(&self.flaps);
        if flaps.len() >= MAX_FLAP_ENTRIES && !flaps.contains_key(device) {
            flaps.retain(|_, (start, _)| now.duration_since(*start) < FLAP_WINDOW);
        }
        let entry = flaps.entry(device.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= FLAP_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= MAX_LIVE_REPLACEMENTS {
            return true;
        }
        entry.1 += 1;
        false
    }

    /// Registers a session and records its principal as the device ID's owner. Returns
    /// `Err(entry)` if another principal took the ID while this session was being set up;
    /// otherwise a same-principal session that raced in, to evict.
    pub(super) fn insert(&self, device: &str, entry: Online) -> Result<Option<Online>, Online> {
        let mut online = lock(&self.online);
        let mut owners = lock(&self.owners);
        let live_other = online
            .get(device)
            .is_some_and(|held| held.principal != entry.principal && !held.session.is_closed());
        let owned_other = owners
            .device_owner(device)
            .is_some_and(|owner| owner != entry.principal);
        if live_other || owned_other {
            return Err(entry);
        }
        owners.own_device(device, &entry.principal);
        drop(owners);
        lock(&self.offline).remove(device);
        Ok(online.insert(device.to_owned(), entry))
    }

    /// Removes the device if `generation` still holds it (a newer session may have replaced it).
    pub(super) fn remove(&self, device: &str, generation: u64) -> Option<Online> {
        let mut online = lock(&self.online);
        if online
            .get(device)
            .is_some_and(|e| e.generation == generation)
        {
            let entry = online.remove(device)?;
            drop(online);
            lock(&self.offline).insert(device, entry.services.to_vec());
            return Some(entry);
        }
        None
    }

    /// The session and declared services of an online device.
    pub(super) fn lookup(&self, device: &str) -> Option<Reachable> {
        let online = lock(&self.online);
        let entry = online.get(device).filter(|e| !e.session.is_closed())?;
        Some(Reachable {
            session: entry.session.clone(),
            services: entry.services.clone(),
        })
    }

    /// Sessions of the online devices not in `busy`.
    pub(super) fn sessions_except(&self, busy: &std::collections::HashSet<String>) -> Vec<Session> {
        lock(&self.online)
            .iter()
            .filter(|(d, _)| !busy.contains(*d))
            .map(|(_, e)| e.session.clone())
            .collect()
    }

    /// IDs of the devices online now, sorted.
    pub(super) fn online_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.online)
            .iter()
            .filter(|(_, e)| !e.session.is_closed())
            .map(|(d, _)| d.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The devices `grants` may reach, with the services it may open: those seen since
    /// start (filtered under the lock, so only matches are copied) and those the grants
    /// name exactly. Sorted by ID and cut, stably, to at most `max_bytes` once encoded.
    pub(super) fn visible_to(&self, grants: &Grants, max_bytes: usize) -> Vec<DeviceEntry> {
        let entry = |device: &str, online: bool, services: &[String]| DeviceEntry {
            device: device.to_owned(),
            online,
            services: services
                .iter()
                .filter(|s| grants.may_access(device, s))
                .cloned()
                .collect(),
        };
        let mut entries: Vec<DeviceEntry> = lock(&self.online)
            .iter()
            .filter(|(d, e)| !e.session.is_closed() && grants.may_access_device(d))
            .map(|(d, e)| entry(d, true, &e.services))
            .collect();
        entries.extend(
            lock(&self.offline)
                .map
                .iter()
                .filter(|(d, _)| grants.may_access_device(d))
                .map(|(d, services)| entry(d, false, services)),
        );
        for named in grants.named_devices() {
            if !entries.iter().any(|e| e.device == named) {
                entries.push(entry(named, false, &[]));
            }
        }
        entries.sort_by(|a, b| a.device.cmp(&b.device));
        // An entry takes 3 bytes plus its names; the list header takes 3.
        let mut size = 3;
        let fits = entries
            .iter()
            .take_while(|e| {
                size += 3 + e.device.len() + e.services.iter().map(|s| 1 + s.len()).sum::<usize>();
                size <= max_bytes
            })
            .count();
        entries.truncate(fits);
        entries
    }

    /// Forgets who owns `device` (and its public ports) and that it was ever seen, so that
    /// another credential may register it. A live session of the device is not touched.
    pub(super) fn release(&self, device: &str) -> bool {
        let released = lock(&self.owners).release_device(device);
        let forgotten = lock(&self.offline).remove(device);
        released || forgotten
    }

    /// Removes every online session, for shutdown.
    pub(super) fn drain(&self) -> Vec<Online> {
        lock(&self.online).drain().map(|(_, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_devices_are_bounded_by_bytes_and_forgotten_oldest_first() {
        let mut offline = Offline::default();
        let services: Vec<String> = (0..64).map(|i| format!("{i:0>63}")).collect();
        let each = cost("pi-00000", &services);
        for i in 0..2000 {
            offline.insert(&format!("pi-{i:05}"), services.clone());
        }
        assert!(offline.bytes <= MAX_REMEMBERED_OFFLINE_BYTES);
        assert_eq!(offline.map.len(), MAX_REMEMBERED_OFFLINE_BYTES / each);
        assert!(
            !offline.map.contains_key("pi-00000"),
            "the oldest went first"
        );
        assert!(offline.map.contains_key("pi-01999"));
        assert!(offline.remove("pi-01999"));
        assert_eq!(offline.order.len(), offline.map.len());
    }
}
