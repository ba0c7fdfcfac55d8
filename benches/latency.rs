//! Latency, each transport against plain TCP in the same group:
//!
//! - `rtt`: 64-byte request/response round trips over one open stream;
//! - `first_byte`: open a new stream (a TCP connection, or a multiplexed stream on the
//!   access client's existing session) and get the first echoed byte back.
//!
//! Transports: `tcp` (direct), `forwarder` (one-hop TCP forwarder, no crypto), `public`
//! (the relay's public port), `private` (access client through the relay) and
//! `private-early` (the same, opened with `dial_early`: the first bytes go with the
//! open). After the criterion groups, a percentile pass prints p50 / p99 per transport.
//!
//! `cargo bench -p tunnel-benches --bench latency [-- FILTER]` (env `BENCH_SAMPLES`, default
//! 2000 round trips and a quarter as many new streams per transport in the percentile pass).

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use tunnel_benches::procs::{Tunnel, TunnelOptions, build_release_binaries};
use tunnel_benches::servers::Servers;
use tunnel_benches::workload::{Target, first_byte, round_trips};
use tunnel_benches::{env_or, percentile};
use tunnel_core::Dialer;

const MESSAGE: usize = 64;

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    build_release_binaries();
    let rt = tunnel_benches::client_runtime();
    let servers = Servers::start(1);
    let forwarder = servers.forwarder(servers.echo);
    let tunnel = rt.block_on(Tunnel::start(
        servers.sink,
        servers.echo,
        &TunnelOptions::default(),
    ));
    let dialer = Arc::new(
        rt.block_on(Dialer::connect(tunnel.access_config()))
            .expect("dialer"),
    );
    let targets = [
        ("tcp", Target::Tcp(servers.echo)),
        ("forwarder", Target::Tcp(forwarder)),
        ("public", Target::Tcp(tunnel.public_echo)),
        (
            "private",
            Target::Private {
                dialer: dialer.clone(),
                device: "bench".into(),
                service: "echo".into(),
            },
        ),
        (
            "private-early",
            Target::Early {
                dialer: dialer.clone(),
                device: "bench".into(),
                service: "echo".into(),
            },
        ),
    ];

    let mut group = c.benchmark_group("rtt/64B");
    for (name, target) in &targets {
        group.bench_with_input(BenchmarkId::from_parameter(name), target, |b, target| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut s = target.open().await.expect("open");
                let times = round_trips(&mut s, iters as usize, MESSAGE)
                    .await
                    .expect("rtt");
                times.iter().sum()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("first_byte");
    for (name, target) in &targets {
        group.bench_with_input(BenchmarkId::from_parameter(name), target, |b, target| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += first_byte(target).await.expect("first byte");
                }
                total
            });
        });
    }
    group.finish();
    c.final_summary();

    // Percentiles, which criterion does not report.
    let samples: usize = env_or("BENCH_SAMPLES", 2000);
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    println!(
        "\n{:<10} {:>12} {:>12} {:>14} {:>14}",
        "transport", "rtt p50", "rtt p99", "1st byte p50", "1st byte p99"
    );
    rt.block_on(async {
        for (name, target) in &targets {
            let mut s = target.open().await.expect("open");
            round_trips(&mut s, 100, MESSAGE).await.expect("warm up");
            let mut rtt = round_trips(&mut s, samples, MESSAGE).await.expect("rtt");
            drop(s);
            let mut first = Vec::with_capacity(samples / 4);
            for _ in 0..samples / 4 {
                first.push(first_byte(target).await.expect("first byte"));
            }
            println!(
                "{name:<10} {:>10.1}µs {:>10.1}µs {:>12.1}µs {:>12.1}µs",
                us(percentile(&mut rtt, 50.0)),
                us(percentile(&mut rtt, 99.0)),
                us(percentile(&mut first, 50.0)),
                us(percentile(&mut first, 99.0)),
            );
        }
    });
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
