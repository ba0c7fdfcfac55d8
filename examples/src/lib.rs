//! Shared plumbing of the example binaries: logging, signals, and the client flags that
//! `tunnel-agent` and `tunnel-access` have in common. Built on the public API only.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tunnel_core::{ClientConfig, Limits, RelayTrust, SpkiPin, TlsIdentity, Token};

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`). Colours only
/// when stderr is a terminal and `NO_COLOR` is unset (<https://no-color.org>): a log
/// redirected to a file gets plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// The runtime of `tunnel-agent`, which drives one session with the relay: one worker
/// thread, unless `TOKIO_WORKER_THREADS` asks for more. All of a device's streams pass
/// through its one TLS connection and driver task, so more workers add wakeups across
/// threads rather than parallelism (benches/RESULTS.md, A/B: over 1000 connections +3 %
/// public and +19 % private, at equal single-stream speed). `tunnel-access` keeps a worker
/// per core: with one, its single-stream speed fell by a fifth (it splices a local socket
/// and the TLS session at once). The relay, which serves many sessions, keeps one per core.
pub fn one_session_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The end of a binary's `main`: an error is an answer (a refusal, a bad flag), not a
/// crash, so it is printed as one line with its causes (`error: a: b`), never with a
/// backtrace, and the exit code is 1.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// How to reach the relay and which credential to present.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Relay address, HOST:PORT; for a cluster, several comma-separated (tried in turn,
    /// starting with the one that worked last; a name with several addresses counts as
    /// several).
    #[arg(long, value_name = "HOST:PORT[,…]")]
    pub relay: String,
    /// The relay's public-key pin, as printed by tunnel-relay (sha256:<hex>).
    #[arg(
        long,
        value_name = "PIN",
        conflicts_with = "ca_file",
        required_unless_present = "ca_file"
    )]
    pub pin: Option<SpkiPin>,
    /// Verify the relay against the CA certificates in this PEM file instead of a pin.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Name to expect in the relay certificate with --ca-file (default: the relay host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Read the token from this file. Otherwise from the TUNNEL_TOKEN environment variable
    /// (there is deliberately no --token flag: `ps` would show it).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --key.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Most concurrent streams on the session, for relays older than 0.2 only: newer relays
    /// announce their limits and the client follows them.
    #[arg(long, value_name = "N", hide = true)]
    pub max_streams: Option<usize>,
}

impl ClientArgs {
    /// Builds the library's client configuration from the flags and the environment.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let trust = match (&self.pin, &self.ca_file) {
            (Some(pin), _) => RelayTrust::Pin(*pin),
            (None, Some(path)) => RelayTrust::ca_file(path)?,
            (None, None) => bail!("give --pin or --ca-file"),
        };
        let mut config = ClientConfig::new(self.relay.clone(), trust);
        if let Some(n) = self.max_streams {
            #[allow(deprecated)] // reason: still honoured with tunnel/1 relays, as documented
            {
                config = config.limits(Limits::for_streams(n));
            }
        }
        if let Some(name) = &self.server_name {
            config = config.server_name(name.clone());
        }
        let token = match &self.token_file {
            Some(path) => Some(Token::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            None => std::env::var("TUNNEL_TOKEN").ok().map(Token::new),
        };
        if let Some(token) = token.filter(|t| !t.expose().is_empty()) {
            config = config.token(token);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.client_cert(TlsIdentity::from_pem_files(cert, key)?);
        }
        if self.token_file.is_none()
            && std::env::var_os("TUNNEL_TOKEN").is_none()
            && self.cert.is_none()
        {
            bail!("no credential: set TUNNEL_TOKEN, or pass --token-file or --cert/--key");
        }
        Ok(config)
    }
}

/// Parses `name=value` pairs of repeated flags such as `--expose ssh=127.0.0.1:22`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if k.is_empty() || v.is_empty() {
        return Err(format!("{s:?} is not NAME=VALUE"));
    }
    Ok((k.to_owned(), v.to_owned()))
}
