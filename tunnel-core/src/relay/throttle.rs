//! Token brute-force throttling: failed authentications per source, as a leaky bucket.
//!
//! Each failure from a source adds one [`AuthThrottle::refill`] interval of "debt"; a source
//! whose debt exceeds `burst` intervals is cut off: its connections are closed right after
//! the TCP accept, before any TLS work, until the debt has drained below the limit again. A
//! source that stops failing is forgotten once its debt is paid. Successful logins do not
//! count, so devices behind the same address are only affected while an attacker there keeps
//! failing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::lock;

/// Failed authentications a source may make in a row before it is cut off: enough for a
/// human with a typo and for a device whose token was just rotated.
pub(super) const DEFAULT_AUTH_FAILURE_BURST: u32 = 10;
/// One failure is forgiven per interval: a cut-off source gets one more try every 6 s, so a
/// 128-bit token stays out of reach (and 10 tries per minute is useless against it anyway).
pub(super) const DEFAULT_AUTH_FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Most sources tracked at once (~64 bytes each, so ~4 MiB): past this, paid-up entries are
/// forgotten, and if none is, new sources go untracked rather than growing memory.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Failed authentications per source, as a leaky bucket: the relay's login throttle, also
/// used by the control plane's admin API. Sources are keyed as the relay's caps key them
/// (an IPv4 address, an IPv6 /64).
pub struct AuthThrottle {
    /// Source → the instant its debt is paid (GCRA "theoretical arrival time").
    debt: Mutex<HashMap<IpAddr, Instant>>,
    burst: u32,
    refill: Duration,
}

impl AuthThrottle {
    /// A source may fail `burst` times in a row, then once per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            debt: Mutex::new(HashMap::new()),
            burst,
            refill,
        }
    }

    /// Whether `source` has failed too often recently; its connections are dropped.
    pub fn is_blocked(&self, source: IpAddr) -> bool {
        let source = super::preauth::source_key(source);
        let now = Instant::now();
        lock(&self.debt)
            .get(&source)
            .is_some_and(|paid| paid.saturating_duration_since(now) > self.limit())
    }

    /// Records one failed authentication from `source`.
    pub fn failed(&self, source: IpAddr) {
        let source = super::preauth::source_key(source);
        let now = Instant::now();
        let mut debt = lock(&self.debt);
        if debt.len() >= MAX_TRACKED_SOURCES && !debt.contains_key(&source) {
            debt.retain(|_, paid| *paid > now);
            if debt.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        let paid = debt.entry(source).or_insert(now);
        // Never more than one interval past the limit: a source that keeps hammering while
        // cut off (it cannot, its connections are dropped) would not dig itself deeper.
        let cap = now + self.limit() + self.refill;
        *paid = ((*paid).max(now) + self.refill).min(cap);
    }

    fn limit(&self) -> Duration {
        self.refill * self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_source_is_cut_off_after_its_burst_and_recovers_one_try_per_interval() {
        let t = AuthThrottle::new(3, Duration::from_secs(10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!t.is_blocked(a));
            t.failed(a);
        }
        // Exactly at the limit: still allowed one more failure.
        assert!(!t.is_blocked(a));
        t.failed(a);
        assert!(t.is_blocked(a), "cut off after the burst");
        assert!(!t.is_blocked(b), "other sources are unaffected");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!t.is_blocked(a), "one try back after one interval");
        t.failed(a);
        assert!(t.is_blocked(a));
        tokio::time::advance(Duration::from_secs(41)).await;
        t.failed(b);
        assert!(lock(&t.debt).get(&a).is_some_and(|p| *p <= Instant::now()));
    }
}
