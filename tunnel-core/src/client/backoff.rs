//! Reconnect pacing shared by the device and the access client: exponential backoff with
//! jitter, and the policy that decides where a retry starts after each kind of failure.
//!
//! - A session that lived [`STABLE_SESSION`] starts over: the next attempt comes within
//!   [`BACKOFF_BASE`].
//! - A session that ended sooner does not start over, but starts low: at most the third
//!   step (1 to 2 s), and grows again if the next one is short too. A relay that accepts
//!   and drops at once thus meets a slowing fleet, never a hot loop.
//! - A permanent refusal (bad credential or certificate, forbidden ID or port) is usually an
//!   operator's mistake being fixed: retries start at the fourth step (4 to 8 s) and grow
//!   to the cap, instead of waiting at the cap from the first failure.

use std::time::Duration;

use crate::error::ConnectError;

/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay: a relay back from a restart sees its devices within this time.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lived this long resets the backoff, so the next loss retries at once.
pub(crate) const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Where retries start after a short session (1 to 2 s).
const AFTER_SHORT_SESSION: u32 = 2;
/// Where retries start after a permanent refusal (4 to 8 s).
const AFTER_PERMANENT: u32 = 3;

/// Consecutive failures, and the delay they earn.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A session that had registered ended after `lived`.
    pub(crate) fn session_ended(&mut self, lived: Duration) {
        self.failures = if lived >= STABLE_SESSION {
            0
        } else {
            self.failures.min(AFTER_SHORT_SESSION)
        };
    }

    /// An attempt failed with `error`.
    pub(crate) fn attempt_failed(&mut self, error: &ConnectError) {
        if error.is_permanent() {
            self.failures = self.failures.max(AFTER_PERMANENT);
        }
    }

    /// The delay before the next attempt; counts it.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// Exponential backoff with jitter: half the delay fixed, half random, so that a fleet
/// reconnecting after a relay restart spreads out.
fn jittered(failures: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(10))
        .min(BACKOFF_MAX);
    let half = exp / 2;
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    half + half.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RefusalCode;

    fn step(f: u32) -> Duration {
        BACKOFF_BASE
            .saturating_mul(1u32 << f.min(10))
            .min(BACKOFF_MAX)
    }

    #[test]
    fn backoff_grows_to_its_cap_and_stays_jittered() {
        for f in 0..40 {
            let d = jittered(f);
            assert!(d >= step(f) / 2 && d <= step(f), "{f}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| jittered(5)).collect();
        assert!(samples.len() > 1, "jitter must vary the delay");
    }

    #[test]
    fn a_permanent_refusal_retries_within_seconds_not_at_the_cap() {
        let mut b = Backoff::default();
        let refused = ConnectError::Refused {
            code: RefusalCode::AuthFailed,
            message: String::new(),
        };
        b.attempt_failed(&refused);
        assert!(b.next_delay() <= step(AFTER_PERMANENT));
        for _ in 0..20 {
            b.attempt_failed(&refused);
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
    }

    #[test]
    fn a_short_session_restarts_low_and_a_stable_one_from_zero() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay();
        }
        b.session_ended(Duration::from_secs(2));
        assert!(b.next_delay() <= step(AFTER_SHORT_SESSION));
        for _ in 0..10 {
            b.next_delay();
        }
        b.session_ended(STABLE_SESSION);
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
