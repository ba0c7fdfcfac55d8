//! Tunables shared by the roles, with their defaults, units and memory cost.

use std::time::Duration;

use crate::error::ConfigError;
use crate::protocol::WireLimits;

/// yamux gives every stream an initial receive window of this size (the spec's); the
/// session window must cover one per stream, so [`Limits`] checks it up front.
const YAMUX_STREAM_WINDOW: usize = 256 * 1024;

/// Per-session multiplexing limits, set on the relay ([`RelayBuilder::limits`](crate::RelayBuilder::limits)).
/// Both ends of a session must use the same values (yamux ends a whole session whose peer
/// opens more streams than its own limit), so the relay announces them in its welcome and
/// clients take them from there: they are configured in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub(crate) max_streams: usize,
    pub(crate) receive_window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 128,
            receive_window: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Most concurrent streams on one session (default 128). Opening more fails that one
    /// stream with `unavailable`. Each idle stream costs a few hundred bytes.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }
    /// Most bytes buffered for reading across all streams of one session (default 64 MiB).
    /// This is the per-session memory a peer can make us hold; it must be at least
    /// `2 × max_streams × 256 KiB` (yamux's initial per-stream window, with the headroom
    /// of [`Limits::max_streams`]'s accounting).
    pub fn receive_window(mut self, bytes: usize) -> Self {
        self.receive_window = bytes;
        self
    }
    /// Limits for `n` concurrent streams per session, with the smallest receive window that
    /// allows them (at least the default 64 MiB): the one constructor that derives the
    /// window from the stream count.
    pub fn for_streams(n: usize) -> Self {
        let window = n
            .saturating_mul(2 * YAMUX_STREAM_WINDOW)
            .max(Self::default().receive_window);
        Self::default().max_streams(n).receive_window(window)
    }
    /// The yamux-level limit: twice ours, since a peer (rust-yamux in earlier releases)
    /// still counts streams whose handles were just dropped, and ends the whole session
    /// when its own limit is passed.
    pub(crate) fn yamux_streams(&self) -> usize {
        self.max_streams * 2
    }
    /// The limits as the welcome announces them.
    pub(crate) fn to_wire(self) -> WireLimits {
        // `validate` capped both: at most 4096 streams, and a window a u32 can hold.
        WireLimits {
            max_streams: u16::try_from(self.max_streams).unwrap_or(u16::MAX),
            receive_window: u32::try_from(self.receive_window).unwrap_or(u32::MAX),
        }
    }
    /// The limits a relay announced, checked like local ones: a relay must not make a
    /// client build a yamux session that holds unbounded memory.
    pub(crate) fn from_wire(wire: WireLimits) -> Result<Self, ConfigError> {
        let limits = Self {
            max_streams: usize::from(wire.max_streams),
            receive_window: wire.receive_window as usize,
        };
        limits.validate()?;
        Ok(limits)
    }
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_streams == 0 || self.max_streams > 4096 {
            return Err(ConfigError::Invalid(format!(
                "max_streams {} out of range 1..=4096",
                self.max_streams
            )));
        }
        if u32::try_from(self.receive_window).is_err() {
            return Err(ConfigError::Invalid(format!(
                "receive_window {} is above 4 GiB",
                self.receive_window
            )));
        }
        let min = self.yamux_streams() * YAMUX_STREAM_WINDOW;
        if self.receive_window < min {
            return Err(ConfigError::Invalid(format!(
                "receive_window {} is below 2 × max_streams × 256 KiB = {min}",
                self.receive_window
            )));
        }
        Ok(())
    }
}

/// How often clients ping the relay by default. A dead peer is noticed within three
/// intervals (15 s), well under ssh's 45 s and under common NAT idle timeouts (30 s+).
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Lowest accepted heartbeat interval: below this the pings cost more than they tell.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Missed intervals after which a peer counts as dead.
pub(crate) const HEARTBEAT_MISSES: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn a_window_too_small_for_the_stream_count_is_refused_not_a_panic() {
        let err = Limits::default().max_streams(512).validate().unwrap_err();
        assert!(err.to_string().contains("below"), "{err}");
        Limits::default()
            .max_streams(512)
            .receive_window(256 << 20)
            .validate()
            .unwrap();
        assert!(Limits::default().max_streams(0).validate().is_err());
    }

    #[test]
    fn limits_for_a_stream_count_derive_a_window_that_validates() {
        for n in [1, 128, 129, 1200, 4096] {
            Limits::for_streams(n).validate().unwrap();
        }
        assert_eq!(Limits::for_streams(8), Limits::default().max_streams(8));
    }

    #[test]
    fn limits_survive_the_welcome_and_unusable_announced_limits_are_refused() {
        let l = Limits::default().max_streams(512).receive_window(256 << 20);
        assert_eq!(Limits::from_wire(l.to_wire()).unwrap(), l);
        let bad = WireLimits {
            max_streams: 4096,
            receive_window: 1 << 20,
        };
        assert!(Limits::from_wire(bad).is_err());
        assert!(
            Limits::from_wire(WireLimits {
                max_streams: 0,
                receive_window: u32::MAX
            })
            .is_err()
        );
    }
}
