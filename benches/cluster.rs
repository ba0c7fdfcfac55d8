//! A cluster of release relays on a real etcd (one member, loopback):
//!
//! 1. **One hop.** A device (release `tunnel-agent`) on relay 1; the same bulk transfer and
//!    the same round trips through relay 1 (same relay) and through relay 2 (one
//!    relay-to-relay hop), A/B interleaved, `BENCH_REPS` times each (default 5), with
//!    min/median/max and the ratio pair by pair.
//! 2. **A fleet over three relays.** `BENCH_CLUSTER_DEVICES` devices (default 10 000, each
//!    with its own credential, every device given all three relays): registration rate,
//!    etcd requests per second at rest and while one relay's devices fail over, relay RSS
//!    per device, and the time until every device is registered again after one relay is
//!    killed with SIGKILL.
//!
//! `cargo bench -p tunnel-benches --bench cluster` (env `BENCH_ONLY=hop|fleet`,
//! `BENCH_HOP_MIB`, default 256). Needs `etcd` (Debian's `etcd-server`). The fd limit must
//! allow two sockets per device.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunnel_benches::procs::{
    build_release_binaries, fleet_token_file, register_fleet, release_bins,
};
use tunnel_benches::servers::Servers;
use tunnel_benches::workload::{Target, round_trips, transfer};
use tunnel_benches::{WAIT, env_or, median};
use tunnel_core::{ClientConfig, Dialer, Listener, ListenerState, SpkiPin, Token};
use tunnel_testkit::{Etcd, Proc, fresh_dir, rss_kib};

/// Registrations in flight at once: under each relay's per-source handshake cap (32).
const CONCURRENT_REGISTRATIONS: usize = 24;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    build_release_binaries();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rt = tunnel_benches::client_runtime();
    if only.is_empty() || only == "hop" {
        let servers = Servers::start(1);
        rt.block_on(hop(&servers));
    }
    if only.is_empty() || only == "fleet" {
        rt.block_on(fleet(env_or("BENCH_CLUSTER_DEVICES", 10_000)));
    }
}

/// A cluster of release relays on one etcd, sharing one public identity.
struct Cluster {
    etcd: Etcd,
    dir: std::path::PathBuf,
    relays: Vec<Option<Proc>>,
    addrs: Vec<String>,
    pin: SpkiPin,
}

impl Cluster {
    async fn start(name: &str, n: usize, tokens: Option<&std::path::Path>) -> Self {
        let etcd = Etcd::start(name).await;
        let bins = release_bins();
        let dir = fresh_dir(&format!("bench-{name}"));
        let run = |args: &[&str]| {
            let out = Command::new(&bins.relay)
                .args(args)
                .output()
                .expect("tunnel-relay");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_owned()
        };
        let ca = dir.join("ca");
        let shared = dir.join("shared");
        run(&["cluster-ca", "new", "--dir", ca.to_str().expect("path")]);
        let pin: SpkiPin = run(&["pin", "--state-dir", shared.to_str().expect("path")])
            .parse()
            .expect("pin");
        let mut c = Self {
            etcd,
            dir,
            relays: Vec::new(),
            addrs: Vec::new(),
            pin,
        };
        for i in 0..n {
            // The first relay imports the fleet's credentials into etcd; the others find
            // them there.
            let (relay, addr) = c.spawn_relay(i, if i == 0 { tokens } else { None }).await;
            c.relays.push(Some(relay));
            c.addrs.push(addr);
        }
        c
    }

    async fn spawn_relay(&self, i: usize, tokens: Option<&std::path::Path>) -> (Proc, String) {
        let bins = release_bins();
        let mut cmd = Command::new(&bins.relay);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--relay-id"])
            .arg(format!("r{}", i + 1))
            .args(["--etcd", &self.etcd.url, "--cluster-ca"])
            .arg(self.dir.join("ca"))
            .arg("--state-dir")
            .arg(self.dir.join(format!("r{}", i + 1)))
            .arg("--cert")
            .arg(self.dir.join("shared/relay.crt"))
            .arg("--key")
            .arg(self.dir.join("shared/relay.key"))
            .args(["--max-streams", "1024"])
            .env("RUST_LOG", "error");
        if let Some(t) = tokens {
            cmd.arg("--tokens").arg(t);
        }
        let (relay, v) = Proc::start(&mut cmd, &["listening"], Duration::from_secs(900)).await;
        (relay, v[0].clone())
    }

    fn client(&self, i: usize, token: &Token) -> ClientConfig {
        ClientConfig::new(self.addrs[i].clone(), self.pin).token(token.clone())
    }

    /// Every relay's address, for a device that fails over.
    fn all(&self, token: &Token) -> ClientConfig {
        ClientConfig::new(self.addrs.join(","), self.pin).token(token.clone())
    }

    /// etcd's count of gRPC requests handled so far (`grpc_server_handled_total`).
    async fn etcd_requests(&self) -> f64 {
        let text = self.etcd.get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// etcd's write proposals committed so far.
    async fn etcd_writes(&self) -> f64 {
        let text = self.etcd.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with("etcd_server_proposals_committed_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.relays.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "min {:.2}  median {:.2}  max {:.2}",
        s[0],
        median(&mut s.clone()),
        s[s.len() - 1]
    )
}

/// Same-relay against cross-relay: throughput and round trips, interleaved.
async fn hop(servers: &Servers) {
    let dir = fresh_dir("bench-hop-tokens");
    let tokens = hop_tokens(&dir);
    let cluster = Cluster::start("hop", 2, Some(&dir.join("tokens.toml"))).await;
    let bins = release_bins();
    let mut agent_cmd = Command::new(&bins.agent);
    agent_cmd
        .args(["--relay", &cluster.addrs[0], "--pin"])
        .arg(cluster.pin.to_string())
        .args(["--device-id", "bench", "--expose"])
        .arg(format!("sink={}", servers.sink))
        .arg("--expose")
        .arg(format!("echo={}", servers.echo))
        .env("TUNNEL_TOKEN", tokens[0].expose())
        .env("RUST_LOG", "error");
    let _agent = Proc::spawn(&mut agent_cmd);
    let same = Arc::new(connect(cluster.client(0, &tokens[1])).await);
    let cross = Arc::new(connect(cluster.client(1, &tokens[1])).await);
    let target = |d: &Arc<Dialer>, service: &str| Target::Private {
        dialer: d.clone(),
        device: "bench".into(),
        service: service.into(),
    };
    // Wait until the device is registered (a dial through relay 1 succeeds).
    tunnel_testkit::eventually("the device registers", WAIT, || async {
        same.dial("bench", "echo").await.is_ok()
    })
    .await;
    let mib: u64 = env_or("BENCH_HOP_MIB", 256);
    let reps: usize = env_or("BENCH_REPS", 5);
    let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up: opens the relay-to-relay link.
    transfer(&target(&cross, "sink"), 1, 16 << 20)
        .await
        .expect("warm-up");
    for _ in 0..reps {
        let t_same = transfer(&target(&same, "sink"), 1, mib << 20)
            .await
            .expect("same");
        let t_cross = transfer(&target(&cross, "sink"), 1, mib << 20)
            .await
            .expect("cross");
        let (ms, mc) = (
            mib as f64 / t_same.as_secs_f64(),
            mib as f64 / t_cross.as_secs_f64(),
        );
        a.push(ms);
        b.push(mc);
        ratio.push(mc / ms);
    }
    println!("one stream, {mib} MiB, {reps} pairs interleaved (MiB/s):");
    println!("  same relay:         {}", stats(&a));
    println!("  across two relays:  {}", stats(&b));
    println!("  ratio cross/same:   {}", stats(&ratio));
    let (mut rs, mut rc) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut s = target(&same, "echo").open().await.expect("open");
        let mut c = target(&cross, "echo").open().await.expect("open");
        let mut ts = round_trips(&mut s, 200, 64).await.expect("rtt");
        let mut tc = round_trips(&mut c, 200, 64).await.expect("rtt");
        rs.push(tunnel_benches::percentile(&mut ts, 50.0).as_secs_f64() * 1e6);
        rc.push(tunnel_benches::percentile(&mut tc, 50.0).as_secs_f64() * 1e6);
    }
    let added: Vec<f64> = rc.iter().zip(&rs).map(|(c, s)| c - s).collect();
    println!("round trip of 64 bytes, median of 200 (µs):");
    println!("  same relay:         {}", stats(&rs));
    println!("  across two relays:  {}", stats(&rc));
    println!("  added by the hop:   {}", stats(&added));
    let _ = std::fs::remove_dir_all(&dir);
}

fn hop_tokens(dir: &std::path::Path) -> Vec<Token> {
    let (device, user) = (Token::generate().expect("t"), Token::generate().expect("t"));
    let file = tunnel_core::TokenFile {
        tokens: vec![
            tunnel_core::TokenEntry {
                name: "bench".into(),
                hash: device.hash().to_string(),
                devices: vec!["bench".into()],
                access: vec![],
                public: false,
            },
            tunnel_core::TokenEntry {
                name: "user".into(),
                hash: user.hash().to_string(),
                devices: vec![],
                access: vec!["bench/*".into()],
                public: false,
            },
        ],
    };
    file.save(dir.join("tokens.toml")).expect("tokens");
    vec![device, user]
}

async fn connect(config: ClientConfig) -> Dialer {
    tokio::time::timeout(WAIT, Dialer::connect(config))
        .await
        .expect("dialer in time")
        .expect("dialer")
}

/// Relay and etcd costs of a fleet over three relays, and a relay's death.
async fn fleet(n: usize) {
    let dir = fresh_dir("bench-fleet-tokens");
    let tokens = fleet_token_file(&dir.join("tokens.toml"), n);
    let started = Instant::now();
    let mut cluster = Cluster::start("fleet", 3, Some(&dir.join("tokens.toml"))).await;
    println!(
        "three relays up, {n} credentials imported into etcd in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let base: Vec<u64> = cluster
        .relays
        .iter()
        .flatten()
        .map(|p| rss_kib(p.pid()))
        .collect();
    // Registration: every device knows the three relays and starts on a random one.
    let start = Instant::now();
    let (w0, r0) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    let clients = tokens.iter().enumerate().map(|(i, t)| (i, cluster.all(t)));
    let listeners = register_fleet(clients, CONCURRENT_REGISTRATIONS).await;
    let took = start.elapsed().as_secs_f64();
    let (w1, r1) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    println!(
        "registration: {n} devices in {took:.1} s = {:.0}/s; etcd: {:.1} writes and {:.1} requests per registration",
        n as f64 / took,
        (w1 - w0) / n as f64,
        (r1 - r0) / n as f64
    );
    let per_relay = |ls: &[Listener]| {
        let mut count = vec![0usize; cluster.addrs.len()];
        for l in ls {
            if let ListenerState::Connected { relay, .. } = l.state()
                && let Some(i) = cluster.addrs.iter().position(|a| *a == relay)
            {
                count[i] += 1;
            }
        }
        count
    };
    println!("devices per relay: {:?}", per_relay(&listeners));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = per_relay(&listeners);
    for (i, p) in cluster.relays.iter().enumerate() {
        let p = p.as_ref().expect("relay");
        let rss = rss_kib(p.pid());
        println!(
            "relay r{}: {} devices, RSS {} KiB, {:.1} KiB per device",
            i + 1,
            counts[i],
            rss,
            rss.saturating_sub(base[i]) as f64 / counts[i].max(1) as f64
        );
    }
    // At rest: etcd traffic is the relays' lease keep-alives and record refreshes only.
    let (w0, r0) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    let rest = Duration::from_secs(10);
    tokio::time::sleep(rest).await;
    let (w1, r1) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    println!(
        "etcd at rest with {n} devices: {:.1} requests/s, {:.1} writes/s",
        (r1 - r0) / rest.as_secs_f64(),
        (w1 - w0) / rest.as_secs_f64()
    );
    // Failover: kill the relay with the most devices.
    let victim = (0..counts.len())
        .max_by_key(|i| counts[*i])
        .expect("a relay");
    let moving = counts[victim];
    let (w0, r0) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    let killed = Instant::now();
    if let Some(mut p) = cluster.relays[victim].take() {
        p.kill();
    }
    let dead = cluster.addrs[victim].clone();
    let limit = Duration::from_secs(300);
    let mut all_back = None;
    for _ in 0..(limit.as_millis() / 100) {
        let back = listeners
            .iter()
            .filter(
                |l| matches!(l.state(), ListenerState::Connected { relay, .. } if relay != dead),
            )
            .count();
        if back == n {
            all_back = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = killed.elapsed().as_secs_f64();
    let (w1, r1) = (cluster.etcd_writes().await, cluster.etcd_requests().await);
    match all_back {
        Some(t) => println!(
            "relay r{} killed with {moving} devices: all {n} registered again in {:.2} s",
            victim + 1,
            t.as_secs_f64()
        ),
        None => println!(
            "relay r{} killed: NOT all devices back within {limit:?}",
            victim + 1
        ),
    }
    println!(
        "etcd during the failover: {:.0} requests/s, {:.0} writes/s ({:.1} writes per moved device)",
        (r1 - r0) / failover,
        (w1 - w0) / failover,
        (w1 - w0) / moving.max(1) as f64
    );
    println!("devices per relay now: {:?}", per_relay(&listeners));
    drop(listeners);
    let _ = std::fs::remove_dir_all(&dir);
}
