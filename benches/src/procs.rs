//! The tunnel's relay and device agent as real release processes, as users run them, and
//! readers for a process's memory and CPU time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tunnel_core::{SpkiPin, Token};

use crate::WAIT;

/// Directory of the release binaries (`target/release`).
pub fn release_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// Builds the release example binaries (relay, agent, access); call once before [`Tunnel::start`].
pub fn build_release_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "tunnel-examples",
            "--bins",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the release binaries failed");
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:")
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, all threads) a process has used, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    f.iter().sum::<u64>() as f64 / 100.0
}

/// A child process, killed (by its own PID) on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd`, and reads its stdout until a line starting with each of `keys` has
    /// been seen; returns their values (the rest of the line). Later output is drained.
    pub async fn spawn(cmd: &mut Command, keys: &[&str]) -> (Self, Vec<String>) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut found = vec![String::new(); keys.len()];
        let read = async {
            while found.iter().any(String::is_empty) {
                let line = lines
                    .next_line()
                    .await
                    .expect("stdout")
                    .expect("process ended early");
                for (i, k) in keys.iter().enumerate() {
                    if let Some(v) = line.strip_prefix(&format!("{k} ")) {
                        found[i] = v.to_owned();
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("process start timed out");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Self { child }, found)
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// Options for [`Tunnel::start`].
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// `--max-streams` for relay and agent (None: the default, 128).
    pub max_streams: Option<usize>,
    /// Public port range of the relay.
    pub public_ports: (u16, u16),
}

impl Default for TunnelOptions {
    fn default() -> Self {
        Self {
            max_streams: None,
            public_ports: (43000, 43999),
        }
    }
}

/// A release `tunnel-relay` and a `tunnel-agent` (device `bench`) exposing `sink` and `echo`
/// privately and on public relay ports.
pub struct Tunnel {
    /// The relay process.
    pub relay: Proc,
    /// The agent process.
    pub agent: Proc,
    /// Where devices and access clients connect.
    pub relay_addr: String,
    /// The relay's pin.
    pub pin: SpkiPin,
    /// A token that may open any service of any device.
    pub access_token: Token,
    /// A token that may register any device ID.
    pub device_token: Token,
    /// The sink through the relay's public port.
    pub public_sink: SocketAddr,
    /// The echo through the relay's public port.
    pub public_echo: SocketAddr,
    dir: PathBuf,
}

impl Tunnel {
    /// Starts relay and agent; `sink` and `echo` are the local servers the agent exposes.
    pub async fn start(sink: SocketAddr, echo: SocketAddr, opts: &TunnelOptions) -> Self {
        let bin = release_dir();
        let dir = std::env::temp_dir().join(format!(
            "tunnel-bench-{}-{}",
            std::process::id(),
            opts.public_ports.0
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let tokens = dir.join("tokens.toml");
        let device_token = new_token(&bin, &tokens, "dev", &["--device", "*", "--public"]);
        let access_token = new_token(&bin, &tokens, "acc", &["--access", "*/*"]);
        let streams = opts.max_streams.map(|n| n.to_string());

        let mut cmd = Command::new(bin.join("tunnel-relay"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-bind",
            "127.0.0.1",
        ])
        .arg("--public-ports")
        .arg(format!("{}-{}", opts.public_ports.0, opts.public_ports.1))
        .arg("--tokens")
        .arg(&tokens)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "error");
        if let Some(n) = &streams {
            cmd.args(["--max-streams", n]);
        }
        let (relay, v) = Proc::spawn(&mut cmd, &["listening", "pin"]).await;
        let (relay_addr, pin) = (v[0].clone(), v[1].parse().expect("pin"));

        let mut cmd = Command::new(bin.join("tunnel-agent"));
        cmd.args([
            "--relay",
            &relay_addr,
            "--pin",
            &v[1],
            "--device-id",
            "bench",
        ])
        .arg(format!("--expose=sink={sink}"))
        .arg(format!("--expose=echo={echo}"))
        .args(["--public", "sink=0", "--public", "echo=0"])
        .env("TUNNEL_TOKEN", device_token.expose())
        .env("RUST_LOG", "error");
        if let Some(n) = &streams {
            cmd.args(["--max-streams", n]);
        }
        let (agent, v) = Proc::spawn(&mut cmd, &["public sink", "public echo"]).await;
        let port =
            |s: &str| -> SocketAddr { format!("127.0.0.1:{s}").parse().expect("public port") };
        Self {
            public_sink: port(&v[0]),
            public_echo: port(&v[1]),
            relay,
            agent,
            relay_addr,
            pin,
            access_token,
            device_token,
            dir,
        }
    }

    /// Client configuration for an access client with [`Tunnel::access_token`].
    pub fn access_config(&self) -> tunnel_core::ClientConfig {
        tunnel_core::ClientConfig::new(self.relay_addr.clone(), self.pin)
            .token(self.access_token.clone())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_token(bin: &Path, file: &Path, name: &str, grants: &[&str]) -> Token {
    let out = std::process::Command::new(bin.join("tunnel-relay"))
        .args(["token", "new", "--file"])
        .arg(file)
        .args(["--name", name])
        .args(grants)
        .output()
        .expect("tunnel-relay token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Token::new(
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned(),
    )
}
