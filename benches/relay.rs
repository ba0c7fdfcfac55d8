//! Relay measurements for the issue notes: throughput of one large stream through the relay
//! (private access: client → relay → device → sink) as a ratio to a plain TCP copy measured
//! in the same run, and the relay process's RSS with N idle devices connected.
//!
//! `cargo bench -p tunnel-benches --bench relay` (env: `BENCH_BYTES`, default 1 GiB;
//! `BENCH_DEVICES`, default 100; `BENCH_ROUNDS`, default 3). The relay runs as a separate
//! process (the release `tunnel-relay` binary, built first) so its RSS is its own.
//! Criterion suites for issue 4 will sit beside this file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::{ClientConfig, DeviceConfig, Dialer, Listener, SpkiPin, Token, forward};

const CHUNK: usize = 64 * 1024;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads everything, then replies with the byte count (8 bytes, big-endian).
async fn sink() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0; CHUNK];
                let mut n = 0u64;
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = tcp.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// Sends `bytes` then half-closes, and waits for the sink's count: delivered bytes, not buffered.
async fn push<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    bytes: u64,
) -> Duration {
    let buf = vec![0x5a; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k]).await.unwrap();
        left -= k as u64;
    }
    s.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), bytes, "sink count");
    start.elapsed()
}

fn relay_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "tunnel-examples",
            "--bin",
            "tunnel-relay",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/release/tunnel-relay")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list
    }
    let bytes = env_or("BENCH_BYTES", 1 << 30);
    let devices = env_or("BENCH_DEVICES", 100) as usize;
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;

    let dir = std::env::temp_dir().join(format!("tunnel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let relay_bin = relay_binary();
    let token = |name: &str, grant: &[&str]| -> Token {
        let out = Command::new(&relay_bin)
            .args(["token", "new", "--file"])
            .arg(dir.join("tokens.toml"))
            .args(["--name", name])
            .args(grant)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Token::new(String::from_utf8(out.stdout).unwrap())
    };
    let device_token = token("dev", &["--device", "*"]);
    let access_token = token("acc", &["--access", "*/*"]);
    let mut relay = Command::new(&relay_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(dir.join("tokens.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(
        tokio::process::ChildStdout::from_std(relay.stdout.take().unwrap()).unwrap(),
    )
    .lines();
    let (mut addr, mut pin) = (String::new(), String::new());
    while addr.is_empty() || pin.is_empty() {
        let line = lines.next_line().await.unwrap().unwrap();
        if let Some(a) = line.strip_prefix("listening ") {
            addr = a.to_owned();
        }
        if let Some(p) = line.strip_prefix("pin ") {
            pin = p.to_owned();
        }
    }
    let pin: SpkiPin = pin.parse().unwrap();
    let sink_addr = sink().await;

    // Throughput: plain TCP copy vs one stream through the relay, alternating, same run.
    let device = Listener::bind(
        DeviceConfig::new(
            ClientConfig::new(addr.clone(), pin).token(device_token.clone()),
            "sink",
        )
        .service("sink"),
    )
    .await
    .unwrap();
    let device = std::sync::Arc::new(device);
    let d = device.clone();
    let targets = HashMap::from([("sink".to_owned(), sink_addr.clone())]);
    tokio::spawn(async move { forward(&d, targets).await });
    let dialer = Dialer::connect(ClientConfig::new(addr.clone(), pin).token(access_token))
        .await
        .unwrap();
    let (mut tcp_rates, mut tunnel_rates) = (vec![], vec![]);
    let mib = bytes as f64 / (1 << 20) as f64;
    for round in 0..rounds {
        let tcp = TcpStream::connect(&sink_addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let t = push(tcp, bytes).await;
        tcp_rates.push(mib / t.as_secs_f64());
        let stream = dialer.dial("sink", "sink").await.unwrap();
        let t = push(stream, bytes).await;
        tunnel_rates.push(mib / t.as_secs_f64());
        println!(
            "round {round}: tcp {:.0} MiB/s, tunnel {:.0} MiB/s",
            tcp_rates[round], tunnel_rates[round]
        );
    }
    let (tcp, tunnel) = (median(tcp_rates), median(tunnel_rates));
    println!(
        "throughput, {mib:.0} MiB per stream, median of {rounds}: plain TCP {tcp:.0} MiB/s, tunnel (private, 2 TLS hops) {tunnel:.0} MiB/s, ratio {:.2}",
        tunnel / tcp
    );

    // Memory: relay RSS before and after N idle devices connect.
    drop(dialer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(relay.id());
    let mut idle = Vec::with_capacity(devices);
    for i in 0..devices {
        let cfg = DeviceConfig::new(
            ClientConfig::new(addr.clone(), pin).token(device_token.clone()),
            format!("idle-{i}"),
        )
        .service("ssh");
        idle.push(Listener::bind(cfg).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(relay.id());
    println!(
        "relay RSS: {before} KiB with 1 device, {after} KiB with {} devices: {:.1} KiB per idle device",
        devices + 1,
        (after.saturating_sub(before)) as f64 / devices as f64
    );
    drop(idle);
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
