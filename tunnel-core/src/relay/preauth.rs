//! Admission of connections that have not authenticated yet: the relay-wide cap, a cap per
//! source address and per source network, and who gives way when the relay is full.
//!
//! An attacker who holds handshakes open (slowloris) from a handful of addresses must not
//! lock real devices out:
//!
//! - each source (an IPv4 address, an IPv6 /64) and each source network (IPv4 /24,
//!   IPv6 /56) holds a bounded number of handshakes;
//! - when the relay-wide cap is full, a newcomer is not refused: the oldest handshake of
//!   the network holding the most is cancelled to make room;
//! - sources that authenticated recently are never evicted and skip the per-network cap;
//! - the handshake itself has a short deadline for the first TLS byte
//!   ([`FIRST_BYTE_TIMEOUT`](super::handshake::FIRST_BYTE_TIMEOUT)).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::util::lock;

/// How long a source that authenticated counts as known: it skips the per-network cap and
/// its handshakes are never evicted. Long enough to cover a fleet's reconnect after a
/// relay restart or a network blip.
const RECENT_FOR: Duration = Duration::from_secs(600);
/// Most known sources remembered (~48 bytes each, ~3 MiB); past this, expired ones are
/// dropped, then new ones are not remembered.
const MAX_RECENT: usize = 65_536;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its source already holds its share of handshakes.
    Source,
    /// Its source network already holds its share.
    Network,
    /// The relay is full of handshakes from known sources, which are never evicted.
    Full,
}

impl Refused {
    /// The cap's name, for metrics.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Network => "network",
            Self::Full => "full",
        }
    }
}

struct Entry {
    source: IpAddr,
    network: IpAddr,
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    /// Evictable (not known) handshakes per network, oldest first.
    per_network: HashMap<IpAddr, VecDeque<u64>>,
    /// Known sources → when they last authenticated.
    recent: HashMap<IpAddr, Instant>,
}

/// The table of handshakes in progress. Cheap to share: [`Ticket`]s hold it.
pub(super) struct PreAuth {
    state: Mutex<State>,
    max_total: usize,
    max_per_source: usize,
    max_per_network: usize,
}

/// One admitted handshake; leaves the table on drop. `cancelled` fires if it is evicted.
pub(super) struct Ticket {
    table: Arc<PreAuth>,
    id: u64,
    pub(super) cancelled: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.table.state).remove(self.id);
    }
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        if let Some(ids) = self.per_network.get_mut(&entry.network) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.per_network.remove(&entry.network);
            }
        }
        Some(entry)
    }

    fn is_known(&self, source: IpAddr, now: Instant) -> bool {
        self.recent
            .get(&source)
            .is_some_and(|at| now.duration_since(*at) < RECENT_FOR)
    }

    /// Cancels the oldest evictable handshake of the network holding the most.
    fn evict_one(&mut self) -> bool {
        let heaviest = self
            .per_network
            .iter()
            .max_by_key(|(_, ids)| ids.len())
            .and_then(|(_, ids)| ids.front().copied());
        match heaviest.and_then(|id| self.remove(id)) {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }
}

impl PreAuth {
    pub(super) fn new(max_total: usize, max_per_source: usize, max_per_network: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_total,
            max_per_source,
            max_per_network,
        }
    }

    /// Admits a handshake from `ip`, evicting another if the relay is full.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let (source, network) = (source_key(ip), network_key(ip));
        let now = Instant::now();
        let mut state = lock(&self.state);
        let known = state.is_known(source, now);
        if state.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            return Err(Refused::Source);
        }
        let in_network = state.per_network.get(&network).map_or(0, VecDeque::len);
        if !known && in_network >= self.max_per_network {
            return Err(Refused::Network);
        }
        if state.entries.len() >= self.max_total && !state.evict_one() {
            return Err(Refused::Full);
        }
        let id = state.next_id;
        state.next_id += 1;
        let cancel = CancellationToken::new();
        state.entries.insert(
            id,
            Entry {
                source,
                network,
                cancel: cancel.clone(),
            },
        );
        *state.per_source.entry(source).or_default() += 1;
        if !known {
            state.per_network.entry(network).or_default().push_back(id);
        }
        Ok(Ticket {
            table: self.clone(),
            id,
            cancelled: cancel,
        })
    }

    /// Remembers that `ip` authenticated: its next handshakes are never evicted.
    pub(super) fn authenticated(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state.recent.len() >= MAX_RECENT && !state.recent.contains_key(&source_key(ip)) {
            state
                .recent
                .retain(|_, at| now.duration_since(*at) < RECENT_FOR);
            if state.recent.len() >= MAX_RECENT {
                return;
            }
        }
        state.recent.insert(source_key(ip), now);
    }

    /// Handshakes in progress, and how many of them are from known sources.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        let evictable: usize = state.per_network.values().map(VecDeque::len).sum();
        (state.entries.len(), state.entries.len() - evictable)
    }
}

/// The key of the per-source caps: the address for IPv4, the /64 prefix for IPv6 (one
/// subscriber usually holds a whole /64 and could spread over it).
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// The key of the per-network caps: IPv4 /24, IPv6 /56 (what one attacker typically holds
/// beyond a single address).
fn network_key(ip: IpAddr) -> IpAddr {
    match source_key(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_count_an_ipv6_slash_64_as_one_source_and_a_slash_24_or_56_as_one_network() {
        let (a, b, c) = (
            ip("2001:db8:1:2:aaaa::1"),
            ip("2001:db8:1:2:bbbb::9"),
            ip("2001:db8:1:3::1"),
        );
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_eq!(network_key(a), network_key(c), "same /56");
        assert_ne!(network_key(a), network_key(ip("2001:db8:1:100::1")));
        let v4 = ip("192.0.2.7");
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), v4);
        assert_eq!(network_key(v4), ip("192.0.2.0"));
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_oldest_of_the_heaviest_network_for_a_newcomer() {
        let table = Arc::new(PreAuth::new(4, 4, 4));
        let attack: Vec<Ticket> = (1..=3)
            .map(|i| table.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        let other = table.admit(ip("10.9.0.1")).unwrap();
        let newcomer = table.admit(ip("192.0.2.1")).unwrap();
        assert!(
            attack[0].cancelled.is_cancelled(),
            "oldest of the heaviest network"
        );
        assert!(!attack[1].cancelled.is_cancelled() && !other.cancelled.is_cancelled());
        assert!(!newcomer.cancelled.is_cancelled());
        assert_eq!(table.counts().0, 4);
        drop(attack);
        assert_eq!(table.counts().0, 2, "tickets leave the table on drop");
    }

    #[tokio::test]
    async fn known_sources_are_never_evicted_and_skip_the_network_cap() {
        let table = Arc::new(PreAuth::new(2, 2, 1));
        table.authenticated(ip("10.0.0.1"));
        let known = table.admit(ip("10.0.0.1")).unwrap();
        let stranger = table.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(table.admit(ip("10.0.0.3")).err(), Some(Refused::Network));
        let again = table.admit(ip("10.0.0.1")).unwrap();
        assert!(stranger.cancelled.is_cancelled(), "the stranger made room");
        assert!(!known.cancelled.is_cancelled());
        assert_eq!(table.counts(), (2, 2));
        assert_eq!(table.admit(ip("10.9.9.9")).err(), Some(Refused::Full));
        assert_eq!(table.admit(ip("10.0.0.1")).err(), Some(Refused::Source));
        drop((known, again));
    }
}
