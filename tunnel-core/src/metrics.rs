//! The relay's metrics, through the `metrics` facade: free unless the application installs
//! a recorder (the `tunnel-relay` binary exports them as Prometheus text on `/metrics`).
//! Every name and label is here, in one place. No label carries a device ID, a name or an
//! address: per-device figures belong to the admin API, not to label cardinality.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Sessions started, by role (`device`, `access`).
const SESSIONS: &str = "tunnel_sessions_total";
/// Sessions open now, by role.
const SESSIONS_ACTIVE: &str = "tunnel_sessions_active";
/// Devices registered now.
const DEVICES: &str = "tunnel_devices_connected";
/// Handshakes refused, by reason (`auth`, `throttled`, `draining`, `busy`, `bad_request`,
/// `version`, `tls`, `timeout`).
const HANDSHAKE_FAILURES: &str = "tunnel_handshake_failures_total";
/// Seconds from TCP accept to an authenticated session.
const HANDSHAKE_SECONDS: &str = "tunnel_handshake_seconds";
/// Connections closed before TLS by a pre-auth cap or the login throttle, by cap.
const THROTTLED: &str = "tunnel_throttled_connections_total";
/// Streams asked for, by result (`ok`, the status table's kind, or [`CALLER_GONE`]).
const STREAMS: &str = "tunnel_streams_total";
/// The result of a stream whose caller failed (a reset) before the device answered: not
/// the device's refusal, and nobody left to tell.
pub(crate) const CALLER_GONE: &str = "caller_gone";
/// Joined streams open now, by kind (`private`, `public`).
const STREAMS_ACTIVE: &str = "tunnel_streams_active";
/// Seconds from a stream's open to the device's answer.
const STREAM_OPEN_SECONDS: &str = "tunnel_stream_open_seconds";
/// Bytes carried by joined streams, by direction (`up`: caller to device; `down`).
const BYTES: &str = "tunnel_bytes_total";

fn kind(public: bool) -> &'static str {
    if public { "public" } else { "private" }
}

pub(crate) fn session_started(role: &'static str) {
    counter!(SESSIONS, "role" => role).increment(1);
    gauge!(SESSIONS_ACTIVE, "role" => role).increment(1.0);
}

pub(crate) fn session_ended(role: &'static str) {
    gauge!(SESSIONS_ACTIVE, "role" => role).decrement(1.0);
}

pub(crate) fn device_online(online: bool) {
    if online {
        gauge!(DEVICES).increment(1.0);
    } else {
        gauge!(DEVICES).decrement(1.0);
    }
}

pub(crate) fn handshake_failed(reason: &'static str) {
    counter!(HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn handshake_done(took: Duration) {
    histogram!(HANDSHAKE_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn throttled(cap: &'static str) {
    counter!(THROTTLED, "cap" => cap).increment(1);
}

pub(crate) fn stream_result(result: &'static str, open_took: Option<Duration>) {
    counter!(STREAMS, "result" => result).increment(1);
    if let Some(took) = open_took {
        histogram!(STREAM_OPEN_SECONDS).record(took.as_secs_f64());
    }
}

pub(crate) fn stream_opened(public: bool) {
    gauge!(STREAMS_ACTIVE, "kind" => kind(public)).increment(1.0);
}

pub(crate) fn stream_closed(public: bool, up: u64, down: u64) {
    gauge!(STREAMS_ACTIVE, "kind" => kind(public)).decrement(1.0);
    counter!(BYTES, "direction" => "up").increment(up);
    counter!(BYTES, "direction" => "down").increment(down);
}
