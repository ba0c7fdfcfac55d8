//! The one test kit of the tunnel workspace, shared by the integration tests (`tests/`,
//! `examples/tests/`) and the benches (`benches/`).
//!
//! - [`spawn_relay`], [`relay_for`], [`TestRelay`]: a relay on `127.0.0.1:0` with token
//!   credentials; [`TestDevice`], [`start_device`], [`dial`]: devices and dialers against it.
//! - [`spawn_echo_server`], [`spawn_sink_server`], …: local TCP services the devices forward to.
//! - [`Payload`], [`sink_exchange`], [`request_reply`], …: deterministic payloads and exchanges
//!   that check every byte.
//! - [`within`], [`eventually`]: bounded waits.
//! - [`Etcd`]: a real one-member etcd on loopback, for the cluster's tests and benches.
//! - [`FreezableProxy`]: a TCP proxy that can be frozen to simulate a silent partition.
//! - [`Bins`], [`cargo_bins!`](crate::cargo_bins), [`Proc`]: the example binaries as child
//!   processes (tokens, `key value` output lines, a kill-on-drop guard), and [`rss_kib`] and
//!   friends to read a process's memory and CPU time.
//!
//! Every wait here is bounded: helpers panic with a message naming what did not happen.

#![warn(missing_docs)]

mod device;
mod etcd;
mod http;
mod payload;
mod process;
mod proxy;
mod relay;
mod servers;
mod wait;

use std::time::Duration;

pub use device::{
    TestDevice, connect_dialer, connect_public, dial, start_device, start_public_device, targets,
    try_start_device,
};
pub use etcd::{Etcd, which};
pub use http::{HttpReply, http};
pub use payload::{
    Payload, echo_exchange, expect_read_error, read_digest, request_reply, sink_exchange,
    write_payload,
};
pub use process::{Bins, Proc, cpu_secs, fresh_dir, peak_rss_kib, reset_peak_rss, rss_kib};
pub use proxy::FreezableProxy;
pub use relay::{
    PUBLIC_PORTS, TestRelay, allow_public_ports, may_access, may_register, relay_for, spawn_relay,
    spawn_relay_with,
};
pub use servers::{
    closed_port_addr, spawn_echo_server, spawn_greeting_server, spawn_reply_after_eof_server,
    spawn_server, spawn_sink_server,
};
pub use wait::{eventually, within};

/// Upper bound for any single wait that should normally take milliseconds to seconds.
/// Generous on purpose: it only bounds a failure, it never measures speed.
pub const WAIT: Duration = Duration::from_secs(30);
/// Short relay heartbeat for the liveness tests: a silent peer is dead after 3 × 200 ms.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// Buffer size used when streaming payloads.
const CHUNK: usize = 64 * 1024;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=tunnel_core=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
