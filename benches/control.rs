//! The control plane at fleet scale, on the release relay process: with N credentials and
//! N connected idle devices (default 10 000 each), the latency of `GET /api/v1/devices`
//! (one page, and a label filter that must scan the store), the time from a revocation to
//! the device's session being closed, and the relay's RSS per idle device.
//!
//! `cargo bench -p tunnel-benches --bench control` (env `BENCH_CONTROL_DEVICES`, default
//! 10000; `BENCH_CONTROL_REQUESTS`, requests per figure, default 50).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tunnel_benches::procs::{
    build_release_binaries, fleet_token_file, register_fleet, release_bins,
};
use tunnel_benches::{WAIT, env_or};
use tunnel_core::{ClientConfig, ListenerState, SpkiPin};
use tunnel_testkit::{Proc, fresh_dir, http, rss_kib};

/// Registrations in flight at once: under the relay's per-source handshake cap (32).
const CONCURRENT_REGISTRATIONS: usize = 16;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    build_release_binaries();
    let n: usize = env_or("BENCH_CONTROL_DEVICES", 10_000);
    let requests: usize = env_or("BENCH_CONTROL_REQUESTS", 50);
    tunnel_benches::client_runtime().block_on(run(n, requests));
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:?}  p50 {:?}  p99 {:?}  max {:?}",
        v[0],
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

async fn run(n: usize, requests: usize) {
    let bins = release_bins();
    let dir = fresh_dir("bench-control");
    let tokens = fleet_token_file(&dir.join("tokens.toml"), n);
    let out = Command::new(&bins.relay)
        .args(["admin-token", "new", "--name", "bench", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .expect("admin-token");
    let admin_token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let started = Instant::now();
    let mut cmd = Command::new(&bins.relay);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tokens",
    ])
    .arg(dir.join("tokens.toml"))
    .arg("--state-dir")
    .arg(dir.join("state"))
    .env("RUST_LOG", "error");
    let (relay, v) = Proc::start(
        &mut cmd,
        &["listening", "pin", "admin"],
        Duration::from_secs(600),
    )
    .await;
    println!(
        "relay up with {n} credentials imported in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (addr, pin): (String, SpkiPin) = (v[0].clone(), v[1].parse().expect("pin"));
    let admin: SocketAddr = v[2].parse().expect("admin");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(relay.pid());

    let started = Instant::now();
    let clients = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (i, ClientConfig::new(addr.clone(), pin).token(t.clone())));
    let listeners = register_fleet(clients, CONCURRENT_REGISTRATIONS).await;
    println!(
        "{n} devices registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The audit writer records every device (one fsynced store write each) behind the
    // registrations: RSS right after the burst still holds its queue. Sample until it
    // settles.
    for wait in [5u64, 30] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let rss = rss_kib(relay.pid());
        println!(
            "relay RSS after +{wait} s: {base} KiB with no device, {rss} KiB with {n}: {:.1} KiB per idle device",
            rss.saturating_sub(base) as f64 / n as f64
        );
    }
    let api = |method: &'static str, path: String, body: Option<String>| {
        let token = admin_token.clone();
        async move { http(admin, method, &path, Some(&token), body.as_deref()).await }
    };
    // Label 1% of the devices, for the filter.
    for i in (0..n).step_by(100) {
        let r = api(
            "PATCH",
            format!("/api/v1/devices/dev-{i}"),
            Some(r#"{"labels": {"team": "blue"}}"#.into()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut page = Vec::new();
    for i in 0..requests {
        let t = Instant::now();
        let r = api(
            "GET",
            format!("/api/v1/devices?limit=100&after=dev-{}", i * 100),
            None,
        )
        .await;
        page.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    println!(
        "GET /api/v1/devices (one page of 100):  {}",
        percentiles(page)
    );
    let mut filtered = Vec::new();
    for _ in 0..requests {
        let t = Instant::now();
        let r = api(
            "GET",
            "/api/v1/devices?label=team=blue&limit=1000".into(),
            None,
        )
        .await;
        filtered.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(n.div_ceil(100)));
    }
    println!(
        "GET /api/v1/devices?label=team=blue:     {}",
        percentiles(filtered)
    );
    let mut revoke = Vec::new();
    for (i, listener) in listeners.iter().enumerate().take(requests) {
        let mut state = listener.watch_state();
        let t = Instant::now();
        let r = api("DELETE", format!("/api/v1/credentials/dev-{i}"), None).await;
        assert_eq!(r.status, 200);
        tokio::time::timeout(
            WAIT,
            state.wait_for(|s| !matches!(s, ListenerState::Connected { .. })),
        )
        .await
        .expect("session closed")
        .expect("state");
        revoke.push(t.elapsed());
    }
    println!(
        "revocation -> device session closed:     {}",
        percentiles(revoke)
    );
    drop(listeners);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
