//! Stream throughput through the relay, against baselines in the same group, so the
//! overhead reads as a ratio:
//!
//! - `tcp`: plain TCP loopback copy to the sink;
//! - `tls`: plain TLS 1.3 (rustls, ring) to a TLS sink;
//! - `forwarder`: a one-hop TCP forwarder with no crypto (what socat or bore do);
//! - `public`: a TCP client through the relay's public port (relay → TLS → agent → sink);
//! - `private`: an access client through the relay (TLS → relay → TLS → agent → sink).
//!
//! Payloads of 64 KiB, 1 MiB and 64 MiB per stream, with 1, 8 and 64 concurrent streams;
//! every stream's bytes are counted by the sink and checked. Relay and agent are the release
//! binaries, in their own processes. Combinations moving more than `BENCH_MAX_BYTES` per
//! iteration (default 512 MiB, so 64 MiB × 64 is skipped) are left out unless it is raised.
//!
//! `cargo bench -p tunnel-benches --bench throughput [-- FILTER]`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tunnel_benches::env_or;
use tunnel_benches::procs::{Tunnel, TunnelOptions, build_release_binaries};
use tunnel_benches::servers::Servers;
use tunnel_benches::workload::{Target, transfer};
use tunnel_core::Dialer;

const PAYLOADS: [(u64, &str); 3] = [(64 << 10, "64KiB"), (1 << 20, "1MiB"), (64 << 20, "64MiB")];
const STREAMS: [usize; 3] = [1, 8, 64];

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    build_release_binaries();
    let rt = tunnel_benches::client_runtime();
    let servers = Servers::start(1);
    let forwarder = servers.forwarder(servers.sink);
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
        ("tcp", Target::Tcp(servers.sink)),
        (
            "tls",
            Target::Tls(servers.tls_sink, servers.tls_client.clone()),
        ),
        ("forwarder", Target::Tcp(forwarder)),
        ("public", Target::Tcp(tunnel.public_sink)),
        (
            "private",
            Target::Private {
                dialer: dialer.clone(),
                device: "bench".into(),
                service: "sink".into(),
            },
        ),
    ];
    let max_bytes: u64 = env_or("BENCH_MAX_BYTES", 512 << 20);

    for (bytes, label) in PAYLOADS {
        for streams in STREAMS {
            let total = bytes * streams as u64;
            if total > max_bytes {
                eprintln!("skipping {label} x {streams} streams (over BENCH_MAX_BYTES)");
                continue;
            }
            let mut group = c.benchmark_group(format!("throughput/{label}x{streams}"));
            group.throughput(Throughput::Bytes(total));
            for (name, target) in &targets {
                group.bench_with_input(BenchmarkId::from_parameter(name), target, |b, target| {
                    b.to_async(&rt).iter_custom(|iters| async move {
                        let mut elapsed = Duration::ZERO;
                        for _ in 0..iters {
                            elapsed += transfer(target, streams, bytes).await.expect("transfer");
                        }
                        elapsed
                    });
                });
            }
            group.finish();
        }
    }
    c.final_summary();
    drop(targets);
    drop(dialer);
    drop(tunnel);
}
