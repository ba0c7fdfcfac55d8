//! The harness behind `cargo bench` and `benches/compare.sh`: local servers (a sink that
//! replies with the byte count it received, an echo, a plain-TLS sink, a one-hop TCP
//! forwarder), the workloads run against any stream, and the tunnel's relay and agent as
//! real release processes, with readers for their memory and CPU time.
//!
//! Servers run on their own runtime thread (quinn's bench layout), so the measuring side
//! and the serving side do not share one scheduler.

pub mod procs;
pub mod servers;
pub mod workload;

use std::time::Duration;

/// Size of every application write and read buffer in the workloads.
pub const CHUNK: usize = 64 * 1024;

/// Bound on every wait in the harness (process start, registration, one transfer).
pub const WAIT: Duration = Duration::from_secs(120);

/// The measuring side's runtime: two workers, like the relay and the agent.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `name` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median of a non-empty sample (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p`-th percentile (0..=100) of durations (sorts them).
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() - 1) as f64 * p / 100.0).round() as usize;
    v[i]
}
