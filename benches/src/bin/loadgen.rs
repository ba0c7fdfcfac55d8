//! tunnel-loadgen: the load generator behind `benches/compare.sh`. It runs the same
//! workloads against any forwarder (ssh -R, bore, rathole, socat, the tunnel), given the
//! addresses at which that forwarder exposes a sink and an echo server.
//!
//! ```text
//! tunnel-loadgen servers                  # prints `sink ADDR` and `echo ADDR`, runs until killed
//! tunnel-loadgen run --name ssh-R --sink 127.0.0.1:20001 --echo 127.0.0.1:20002 [--pid P]
//! tunnel-loadgen run --name tunnel-dialer --device bench --relay 127.0.0.1:7000 \
//!     --pin sha256:… --token-file acc.token [--pid P]
//! ```
//! With `--device`, the workloads dial the device's `sink` and `echo` services through the
//! relay with the library's `Dialer` in this process (`dial_early`, as `tunnel-access`
//! does), instead of connecting to forwarded TCP addresses.
//! `run` prints one tab-separated line: name, single-stream MB/s, rtt p50 and p99 (µs),
//! first-byte p50 (µs), aggregate echo MB/s over 100 and over 1000 connections with the
//! slowest/median stream time ratio of each, RSS KiB per idle connection of process `P`, the
//! CPU seconds `P` spent per GiB of the single-stream transfers, and `P`'s RSS (MiB) once
//! the load has passed: every connection closed, `--settle` seconds later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_benches::servers::Servers;
use tunnel_benches::workload::{Duplex, Target, aggregate_echo, first_byte, round_trips, transfer};
use tunnel_benches::{median, percentile};
use tunnel_core::{ClientConfig, Dialer, RelayTrust, SpkiPin, Token};
use tunnel_testkit::{cpu_secs, rss_kib};

#[derive(Parser)]
#[command(about = "Load generator for benches/compare.sh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a sink (counts bytes, replies with the count) and an echo server.
    Servers,
    /// Run every workload against one forwarder.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Label of this row.
    #[arg(long)]
    name: String,
    /// Address forwarding to the sink.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    sink: Option<SocketAddr>,
    /// Address forwarding to the echo server.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    echo: Option<SocketAddr>,
    /// Dial this device's `sink` and `echo` services with the library's `Dialer` instead.
    #[arg(long, requires_all = ["relay", "pin", "token_file"])]
    device: Option<String>,
    /// With --device: the relay, HOST:PORT.
    #[arg(long)]
    relay: Option<String>,
    /// With --device: the relay's public-key pin (sha256:<hex>).
    #[arg(long)]
    pin: Option<SpkiPin>,
    /// With --device: a file holding an access token for the device.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Bytes of the single-stream transfer.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Runs of each workload (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Round trips for the latency percentiles.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Process whose RSS is read with idle connections open (the forwarder's server side).
    #[arg(long)]
    pid: Option<u32>,
    /// Idle connections for the memory reading.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Skip the 1000-connection aggregate (for forwarders that cannot take it).
    #[arg(long)]
    no_1000: bool,
    /// Seconds between the end of the load and the reading of `--pid`'s RSS: what a
    /// forwarder keeps after a load, not what it is still freeing.
    #[arg(long, default_value_t = 15)]
    settle: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Servers => {
            // The servers run on their own runtime; this thread only waits to be killed.
            let servers = Servers::start(2);
            println!("sink {}", servers.sink);
            println!("echo {}", servers.echo);
            loop {
                std::thread::park();
            }
        }
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(*args)),
    }
}

const MB: f64 = 1e6;

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let (sink, echo) = targets(&a).await?;
    // Warm up (ssh and others set up forwarding lazily).
    transfer(&sink, 1, 1 << 20)
        .await
        .context("warm-up transfer")?;
    // Memory first, while the forwarder has not yet grown (and kept) buffers for the bulk
    // and many-connection runs.
    let idle = match a.pid {
        Some(pid) => idle_rss(&echo, pid, a.idle)
            .await
            .context("idle connections")?,
        None => f64::NAN,
    };

    let mut rates = Vec::new();
    let cpu_before = a.pid.map(|pid| (pid, cpu_secs(pid)));
    for _ in 0..a.runs {
        let t = transfer(&sink, 1, a.bytes).await.context("transfer")?;
        rates.push(a.bytes as f64 / MB / t.as_secs_f64());
    }
    let throughput = median(&mut rates);
    let gib_moved = (a.bytes * a.runs as u64) as f64 / (1u64 << 30) as f64;
    let cpu_per_gib = cpu_before.map_or(f64::NAN, |(pid, before)| {
        (cpu_secs(pid) - before) / gib_moved
    });

    let mut s = echo.open().await.context("open echo")?;
    round_trips(&mut s, 200, 64)
        .await
        .context("warm-up round trips")?;
    let mut rtt = round_trips(&mut s, a.round_trips, 64)
        .await
        .context("round trips")?;
    drop(s);
    let mut first = Vec::new();
    for _ in 0..a.round_trips / 4 {
        first.push(first_byte(&echo).await.context("first byte")?);
    }

    let agg = |conns: usize, bytes: u64| {
        let echo = echo.clone();
        async move {
            let mut rates = Vec::new();
            let mut spreads = Vec::new();
            for _ in 0..a.runs {
                let r = aggregate_echo(&echo, conns, bytes)
                    .await
                    .with_context(|| format!("aggregate echo over {conns} connections"))?;
                rates.push(r.rate(bytes) / MB);
                spreads.push(r.spread());
            }
            anyhow::Ok((median(&mut rates), median(&mut spreads)))
        }
    };
    let (agg100, spread100) = agg(100, 4 << 20).await?;
    let (agg1000, spread1000) = if a.no_1000 {
        (f64::NAN, f64::NAN)
    } else {
        agg(1000, 512 << 10).await?
    };

    let after_load = match a.pid {
        Some(pid) => {
            tokio::time::sleep(Duration::from_secs(a.settle)).await;
            rss_kib(pid) as f64 / 1024.0
        }
        None => f64::NAN,
    };

    println!(
        "{}\t{throughput:.0}\t{:.0}\t{:.0}\t{:.0}\t{agg100:.0}\t{spread100:.2}\t{agg1000:.0}\t{spread1000:.2}\t{idle:.1}\t{cpu_per_gib:.2}\t{after_load:.1}",
        a.name,
        us(percentile(&mut rtt, 50.0)),
        us(percentile(&mut rtt, 99.0)),
        us(percentile(&mut first, 50.0)),
    );
    Ok(())
}

/// The sink and the echo server: forwarded TCP addresses, or a device's services through
/// a `Dialer` (one session, as an application embedding the library would hold).
async fn targets(a: &RunArgs) -> anyhow::Result<(Target, Target)> {
    let (Some(device), Some(relay), Some(pin), Some(token_file)) =
        (&a.device, &a.relay, a.pin, &a.token_file)
    else {
        let (Some(sink), Some(echo)) = (a.sink, a.echo) else {
            anyhow::bail!(
                "give --sink and --echo, or --device with --relay, --pin and --token-file"
            );
        };
        return Ok((Target::Tcp(sink), Target::Tcp(echo)));
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let config = ClientConfig::new(relay.clone(), RelayTrust::Pin(pin)).token(Token::new(token));
    let dialer = Arc::new(
        tokio::time::timeout(Duration::from_secs(30), Dialer::connect(config))
            .await
            .context("connecting to the relay: timed out")?
            .context("connecting to the relay")?,
    );
    let service = |name: &str| Target::Early {
        dialer: dialer.clone(),
        device: device.clone(),
        service: name.to_owned(),
    };
    Ok((service("sink"), service("echo")))
}

/// RSS growth of `pid` per idle connection (each proven open by one echoed byte).
async fn idle_rss(echo: &Target, pid: u32, n: usize) -> anyhow::Result<f64> {
    // The tunnel binaries give freed memory back only at a quiet look after one that saw
    // memory move (memory/src/lib.rs), so never within this count's few seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let mut open: Vec<Box<dyn Duplex>> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = echo.open().await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
