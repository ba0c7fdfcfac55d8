//! The tunnel's relay and device agent as real release processes, as users run them. The
//! process helpers (guard, tokens, output lines, memory and CPU readers) are the test kit's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tunnel_core::{SpkiPin, Token};
use tunnel_testkit::{Bins, Proc, fresh_dir};

use crate::WAIT;

/// The release example binaries, built by [`build_release_binaries`].
///
/// Found by directory (`target/release`) rather than the cargo way (`CARGO_BIN_EXE_*`, as
/// `examples/tests/` does): cargo sets those variables only for the integration tests and
/// benches of the package that defines the binaries, `tunnel-examples`, and builds them in
/// the profile of the command that runs the tests. These benches live in `tunnel-benches`
/// and must measure release builds.
pub fn release_bins() -> Bins {
    Bins::in_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

/// Builds the release example binaries (relay, agent, access); call once before
/// [`release_bins`] or [`Tunnel::start`].
pub fn build_release_binaries() {
    // The relay's etcd client compiles its protocol files with protoc.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let protoc = Command::new(root.join("scripts/ensure-protoc.sh"))
        .status()
        .expect("run scripts/ensure-protoc.sh");
    assert!(protoc.success(), "protoc is missing (see above)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
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
        let bins = release_bins();
        let dir = fresh_dir(&format!("bench-{}", opts.public_ports.0));
        let tokens = dir.join("tokens.toml");
        let device_token =
            Token::new(bins.new_token(&tokens, &["--name", "dev", "--device", "*", "--public"]));
        let access_token =
            Token::new(bins.new_token(&tokens, &["--name", "acc", "--access", "*/*"]));
        let streams = opts.max_streams.map(|n| n.to_string());

        let mut cmd = Command::new(&bins.relay);
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
        // The benches load one device's public port from one address: lift the public caps
        // that protect private access (measured separately by the hostile suite), whatever
        // the stream limit (with the default 32 per source, 64 streams were reset).
        let max = streams.as_deref().map_or(128, |n| n.parse().unwrap_or(128));
        let public = (max - 1).to_string();
        cmd.args([
            "--public-max-streams",
            &public,
            "--public-max-per-source",
            "100000",
        ]);
        let (relay, v) = Proc::start(&mut cmd, &["listening", "pin"], WAIT).await;
        let (relay_addr, pin) = (v[0].clone(), v[1].parse().expect("pin"));

        let mut cmd = Command::new(&bins.agent);
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
        let (agent, v) = Proc::start(&mut cmd, &["public sink", "public echo"], WAIT).await;
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

/// A token file at `path` with `n` device credentials `dev-<i>`, each allowed to register
/// device `dev-<i>` (a fleet with one credential per device); returns their tokens.
pub fn fleet_token_file(path: &Path, n: usize) -> Vec<Token> {
    let mut file = tunnel_core::TokenFile::default();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let token = Token::generate().expect("token");
        file.tokens.push(tunnel_core::TokenEntry {
            name: format!("dev-{i}"),
            hash: token.hash().to_string(),
            devices: vec![format!("dev-{i}")],
            access: vec![],
            public: false,
        });
        tokens.push(token);
    }
    file.save(path).expect("token file");
    tokens
}

/// Registers a fleet of devices (`ssh` each) as `dev-<i>` for every `(i, client)`, at most
/// `in_flight` handshakes at once (stay under the relay's per-source cap of 32: every
/// device here shares one address), and waits until each is connected.
pub async fn register_fleet(
    clients: impl IntoIterator<Item = (usize, tunnel_core::ClientConfig)>,
    in_flight: usize,
) -> Vec<tunnel_core::Listener> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let joins: Vec<_> = clients
        .into_iter()
        .map(|(i, client)| {
            let config = tunnel_core::DeviceConfig::new(client, format!("dev-{i}")).service("ssh");
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("gate");
                let l = tunnel_core::Listener::bind(config).await.expect("register");
                l.wait_connected(WAIT).await.expect("connected");
                l
            })
        })
        .collect();
    let mut listeners = Vec::with_capacity(joins.len());
    for j in joins {
        listeners.push(j.await.expect("join"));
    }
    listeners
}
