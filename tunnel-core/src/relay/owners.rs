//! Who owns which device ID and which public port, remembered while the owner is offline:
//! a device that blips (reboot, NAT rebind, backoff) finds its ID and ports waiting, and
//! another credential cannot take them meanwhile. Keyed on the credential's principal
//! ([`Identity::principal`](crate::Identity::principal)), never on a display name.
//!
//! Ownership lasts for the relay process's life, until the owner gives it up (a device that
//! registers again without a port it held releases that port) or an operator releases it
//! ([`Relay::release_device`](crate::Relay::release_device)).

use std::collections::{HashMap, VecDeque};

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
    /// Device ID → principal.
    devices: HashMap<String, String>,
    /// Principal → its device IDs, oldest claim first.
    claims: HashMap<String, VecDeque<String>>,
    /// Public port → its owner.
    ports: HashMap<u16, PortOwner>,
}

impl Owners {
    /// The principal that owns `device`, if any.
    pub(super) fn device_owner(&self, device: &str) -> Option<&str> {
        self.devices.get(device).map(String::as_str)
    }

    /// Records `principal` as the owner of `device`. The caller checked that no other
    /// principal owns it.
    pub(super) fn own_device(&mut self, device: &str, principal: &str) {
        if self.devices.get(device).is_some_and(|p| p == principal) {
            return;
        }
        self.devices.insert(device.to_owned(), principal.to_owned());
        let claims = self.claims.entry(principal.to_owned()).or_default();
        claims.push_back(device.to_owned());
        if claims.len() > MAX_DEVICES_PER_PRINCIPAL
            && let Some(oldest) = claims.pop_front()
        {
            self.devices.remove(&oldest);
            self.ports.retain(|_, o| o.device != oldest);
        }
    }

    /// Forgets the owner of `device` and of its public ports.
    pub(super) fn release_device(&mut self, device: &str) -> bool {
        let Some(principal) = self.devices.remove(device) else {
            return false;
        };
        if let Some(claims) = self.claims.get_mut(&principal) {
            claims.retain(|d| d != device);
            if claims.is_empty() {
                self.claims.remove(&principal);
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
