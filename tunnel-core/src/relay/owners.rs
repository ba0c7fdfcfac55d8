//! Who owns which device ID and which public port, remembered while the owner is offline:
//! a device that blips (reboot, NAT rebind, backoff) finds its ID and ports waiting, and
//! another credential cannot take them meanwhile. Keyed on the credential's principal
//! ([`Identity::principal`](crate::Identity::principal)), never on a display name.
//!
//! Ownership lasts for the relay process's life, until the owner gives it up (a device that
//! registers again without a port it held releases that port) or an operator releases it
//! ([`Relay::release_device`](crate::Relay::release_device)).

use std::collections::HashMap;
use std::sync::Arc;

/// Device IDs one principal may own at once. A fleet credential (`pi-*`) owns one per
/// device it registered; past this, its oldest ownership is forgotten (only that
/// principal's own IDs, so no one can push another's out). Bounds the map at about
/// 200 bytes × this per principal.
pub(super) const MAX_DEVICES_PER_PRINCIPAL: usize = 100_000;

/// Who holds a public port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PortOwner {
    pub(super) principal: String,
    pub(super) device: String,
}

#[derive(Default)]
pub(super) struct Owners {
    /// Device ID → its principal (shared by all the principal's devices) and the claim's
    /// sequence number (to find a principal's oldest claim).
    devices: HashMap<String, (Arc<str>, u64)>,
    /// Principal → how many device IDs it owns. Kept apart from `devices` so a fleet of
    /// single-device credentials costs one small entry each (this map is per device in
    /// memory terms, so it holds no list).
    counts: HashMap<Arc<str>, usize>,
    next_claim: u64,
    /// Public port → its owner.
    ports: HashMap<u16, PortOwner>,
}

impl Owners {
    /// The principal that owns `device`, if any.
    pub(super) fn device_owner(&self, device: &str) -> Option<&str> {
        self.devices.get(device).map(|(p, _)| &**p)
    }

    /// Records `principal` as the owner of `device`. The caller checked that no other
    /// principal owns it.
    pub(super) fn own_device(&mut self, device: &str, principal: &str) {
        if self.device_owner(device) == Some(principal) {
            return;
        }
        let shared: Arc<str> = match self.counts.get_key_value(principal) {
            Some((k, _)) => k.clone(),
            None => principal.into(),
        };
        self.next_claim += 1;
        self.devices
            .insert(device.to_owned(), (shared.clone(), self.next_claim));
        let count = self.counts.entry(shared).or_default();
        *count += 1;
        if *count > MAX_DEVICES_PER_PRINCIPAL {
            // Rare (a fleet past its cap): find the principal's oldest claim by a scan.
            let oldest = self
                .devices
                .iter()
                .filter(|(_, (p, _))| &**p == principal)
                .min_by_key(|(_, (_, seq))| *seq)
                .map(|(d, _)| d.clone());
            if let Some(oldest) = oldest {
                self.release_device(&oldest);
            }
        }
    }

    /// Forgets the owner of `device` and of its public ports.
    pub(super) fn release_device(&mut self, device: &str) -> bool {
        let Some((principal, _)) = self.devices.remove(device) else {
            return false;
        };
        if let Some(n) = self.counts.get_mut(&principal) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&principal);
            }
        }
        self.ports.retain(|_, o| o.device != device);
        true
    }

    /// The owner of a public port, if any.
    pub(super) fn port_owner(&self, port: u16) -> Option<&PortOwner> {
        self.ports.get(&port)
    }

    /// Ports `device` owns now.
    pub(super) fn ports_of_device(&self, device: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .ports
            .iter()
            .filter(|(_, o)| o.device == device)
            .map(|(p, _)| *p)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// How many ports `principal` owns, across all its devices.
    pub(super) fn ports_of_principal(&self, principal: &str) -> usize {
        self.ports
            .values()
            .filter(|o| o.principal == principal)
            .count()
    }

    pub(super) fn own_port(&mut self, port: u16, owner: PortOwner) {
        self.ports.insert(port, owner);
    }

    /// Gives up the ports `device` owns that are not in `keep`.
    pub(super) fn release_ports_except(&mut self, device: &str, keep: &[u16]) {
        self.ports
            .retain(|p, o| o.device != device || keep.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(p: &str, d: &str) -> PortOwner {
        PortOwner {
            principal: p.into(),
            device: d.into(),
        }
    }

    #[test]
    fn a_device_id_stays_owned_until_released_and_release_frees_its_ports() {
        let mut o = Owners::default();
        o.own_device("pi-1", "token:pi-1");
        o.own_port(41001, owner("token:pi-1", "pi-1"));
        assert_eq!(o.device_owner("pi-1"), Some("token:pi-1"));
        assert_eq!(o.ports_of_device("pi-1"), [41001]);
        assert_eq!(o.ports_of_principal("token:pi-1"), 1);
        assert!(o.release_device("pi-1"));
        assert_eq!(o.device_owner("pi-1"), None);
        assert!(o.port_owner(41001).is_none());
        assert!(!o.release_device("pi-1"));
    }

    #[test]
    fn a_principal_past_its_cap_forgets_its_own_oldest_claim_only() {
        let mut o = Owners::default();
        o.own_device("other", "token:b");
        for i in 0..=MAX_DEVICES_PER_PRINCIPAL {
            o.own_device(&format!("d{i}"), "token:a");
        }
        assert_eq!(o.device_owner("d0"), None, "the oldest claim went");
        assert_eq!(o.device_owner("d1"), Some("token:a"));
        assert_eq!(o.device_owner("other"), Some("token:b"), "nobody else's");
        assert_eq!(
            o.counts.get("token:a").copied(),
            Some(MAX_DEVICES_PER_PRINCIPAL)
        );
    }

    #[test]
    fn ports_not_asked_for_again_are_given_up() {
        let mut o = Owners::default();
        o.own_port(1, owner("a", "d"));
        o.own_port(2, owner("a", "d"));
        o.own_port(3, owner("b", "e"));
        o.release_ports_except("d", &[2]);
        assert!(o.port_owner(1).is_none());
        assert_eq!(o.port_owner(2), Some(&owner("a", "d")));
        assert_eq!(o.port_owner(3), Some(&owner("b", "e")));
    }
}
