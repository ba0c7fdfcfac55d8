//! Scale and cost, measured on the release relay and agent processes:
//!
//! 1. relay memory per connected idle device at 1, 1 000 and 10 000 devices (each with its
//!    own token, as in a real fleet), and the time to register each step;
//! 2. relay and agent memory per idle tunnelled connection (public port and private);
//! 3. relay and agent CPU seconds per GiB relayed (private and public).
//!
//! `cargo bench -p tunnel-benches --bench scale` (env: `BENCH_DEVICES`, default
//! `1,1000,10000`; `BENCH_IDLE`, idle connections, default 1000; `BENCH_GIB`, default 1;
//! `BENCH_ONLY=devices` runs only the first part; `BENCH_RELAY_BIN`, another relay binary
//! for the devices part, to A/B it against this build's in one run; `BENCH_SETTLE`, seconds
//! between a step's last registration and its RSS reading, default 1: at 12 or more the
//! relay has given back what the registrations freed, see `tunnel-memory`).
//! The fd limit must allow the devices (this machine's is 20 000, two sockets per device in
//! all: one here, one in the relay).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_benches::procs::{
    Tunnel, TunnelOptions, build_release_binaries, fleet_token_file, register_fleet, release_bins,
};
use tunnel_benches::servers::Servers;
use tunnel_benches::workload::{Duplex, Target, transfer};
use tunnel_benches::{WAIT, env_or};
use tunnel_core::{ClientConfig, Dialer, Listener, SpkiPin};
use tunnel_testkit::{Proc, cpu_secs, fresh_dir, rss_kib};

/// Registrations in flight at once: under the relay's per-source handshake cap (32).
const CONCURRENT_REGISTRATIONS: usize = 16;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo bench -- --list`: nothing to list
    }
    build_release_binaries();
    let steps: Vec<usize> = env_or("BENCH_DEVICES", "1,1000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tunnel_benches::client_runtime();
    rt.block_on(devices(&steps));
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "devices") {
        return;
    }
    // The servers run on a runtime of their own, started outside this one.
    let servers = Servers::start(1);
    rt.block_on(idle_connections(&servers, env_or("BENCH_IDLE", 1000)));
    rt.block_on(cpu_per_gib(&servers, env_or("BENCH_GIB", 1)));
}

/// Relay RSS as idle devices join, in steps.
async fn devices(steps: &[usize]) {
    let max = steps.iter().copied().max().unwrap_or(0);
    let dir = fresh_dir("scale");
    let tokens = fleet_token_file(&dir.join("tokens.toml"), max);
    let relay_bin = std::env::var_os("BENCH_RELAY_BIN")
        .filter(|path| !path.is_empty())
        .map_or_else(|| release_bins().relay, std::path::PathBuf::from);
    println!("relay binary: {}", relay_bin.display());
    let mut cmd = Command::new(relay_bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(dir.join("tokens.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "error");
    let (relay, v) = Proc::start(&mut cmd, &["listening", "pin"], WAIT).await;
    let (addr, pin): (String, SpkiPin) = (v[0].clone(), v[1].parse().expect("pin"));
    // The same wait as before each step's reading, so that base and steps are alike: at
    // BENCH_SETTLE=12 both are read after the relay gave back what start-up freed.
    let settle = Duration::from_secs(env_or("BENCH_SETTLE", 1));
    tokio::time::sleep(settle.max(Duration::from_millis(300))).await;
    let base = rss_kib(relay.pid());
    println!("relay RSS with no device: {base} KiB");
    println!(
        "{:>8} {:>12} {:>16} {:>14}",
        "devices", "relay RSS", "per device", "register time"
    );
    let mut listeners: Vec<Listener> = Vec::with_capacity(max);
    for &n in steps {
        let start = Instant::now();
        let clients = tokens
            .iter()
            .enumerate()
            .take(n)
            .skip(listeners.len())
            .map(|(i, t)| (i, ClientConfig::new(addr.clone(), pin).token(t.clone())));
        listeners.extend(register_fleet(clients, CONCURRENT_REGISTRATIONS).await);
        let took = start.elapsed();
        tokio::time::sleep(settle).await;
        let rss = rss_kib(relay.pid());
        println!(
            "{n:>8} {rss:>9} KiB {:>11.1} KiB {:>12.2} s",
            rss.saturating_sub(base) as f64 / n as f64,
            took.as_secs_f64()
        );
    }
    drop(listeners);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Relay and agent RSS per idle tunnelled connection: public-port TCP connections and
/// private streams, each proven open by one echoed byte, then left idle.
async fn idle_connections(servers: &Servers, n: usize) {
    let opts = TunnelOptions {
        max_streams: Some(n.max(128) * 5 / 4 + 64),
        public_ports: (43000, 43999),
    };
    let tunnel = Tunnel::start(servers.sink, servers.echo, &opts).await;
    // The relay announces its limits (`--max-streams` above); the dialer follows them.
    let dialer = Arc::new(
        Dialer::connect(tunnel.access_config())
            .await
            .expect("dialer"),
    );
    let cases = [
        ("public port", Target::Tcp(tunnel.public_echo)),
        (
            "private",
            Target::Private {
                dialer: dialer.clone(),
                device: "bench".into(),
                service: "echo".into(),
            },
        ),
    ];
    for (name, target) in &cases {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (relay0, agent0) = (rss_kib(tunnel.relay.pid()), rss_kib(tunnel.agent.pid()));
        let mut open: Vec<Box<dyn Duplex>> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = target.open().await.expect("open");
            s.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("echo");
            open.push(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (relay1, agent1) = (rss_kib(tunnel.relay.pid()), rss_kib(tunnel.agent.pid()));
        println!(
            "{n} idle {name} connections: relay +{:.1} KiB each, agent +{:.1} KiB each",
            relay1.saturating_sub(relay0) as f64 / n as f64,
            agent1.saturating_sub(agent0) as f64 / n as f64,
        );
        drop(open);
    }
}

/// CPU seconds the relay and the agent spend per GiB pushed through them.
async fn cpu_per_gib(servers: &Servers, gib: u64) {
    let tunnel = Tunnel::start(
        servers.sink,
        servers.echo,
        &TunnelOptions {
            max_streams: None,
            public_ports: (43000, 43999),
        },
    )
    .await;
    let dialer = Arc::new(
        Dialer::connect(tunnel.access_config())
            .await
            .expect("dialer"),
    );
    let cases = [
        ("public port", Target::Tcp(tunnel.public_sink)),
        (
            "private",
            Target::Private {
                dialer: dialer.clone(),
                device: "bench".into(),
                service: "sink".into(),
            },
        ),
    ];
    for (name, target) in &cases {
        let (r0, a0) = (cpu_secs(tunnel.relay.pid()), cpu_secs(tunnel.agent.pid()));
        let t = transfer(target, 1, gib << 30).await.expect("transfer");
        let (r1, a1) = (cpu_secs(tunnel.relay.pid()), cpu_secs(tunnel.agent.pid()));
        println!(
            "{gib} GiB {name}: {:.0} MiB/s; CPU per GiB: relay {:.2} s, agent {:.2} s",
            (gib << 10) as f64 / t.as_secs_f64(),
            (r1 - r0) / gib as f64,
            (a1 - a0) / gib as f64,
        );
    }
}
