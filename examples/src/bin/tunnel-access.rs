//! tunnel-access: reaches a device service through the relay, on a local port or on
//! stdin/stdout, or lists the devices a credential may reach.

use std::time::Duration;

use clap::Parser;
use tunnel_core::{Dialer, pipe_stdio, serve_local};
use tunnel_examples::{ClientArgs, init_tracing, shutdown_signal};

const EXAMPLES: &str = "\
Examples:
  # serve pi-42's ssh on a local port, then: ssh -p 3000 user@127.0.0.1
  TUNNEL_TOKEN=tun_… tunnel-access --relay relay.example.com:7835 --pin sha256:… \\
      --device pi-42 --service ssh --listen 127.0.0.1:3000
  # as an ssh ProxyCommand, without a local port
  ssh -o ProxyCommand='tunnel-access --relay relay.example.com:7835 --pin sha256:… --device pi-42 --service ssh --stdio' user@pi-42
  # which devices may this credential reach?
  tunnel-access --relay relay.example.com:7835 --pin sha256:… --list";

/// How long to keep retrying a relay that is unreachable or busy before giving up: a
/// relay restarting or shedding a handshake flood is back within this.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Access client of tunnel: opens streams to a device's services through the relay.
#[derive(Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    /// Device ID to reach.
    #[arg(long, required_unless_present = "list")]
    device: Option<String>,
    /// Service name on the device.
    #[arg(long, required_unless_present = "list")]
    service: Option<String>,
    /// Serve the device service on this local address.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["stdio", "list"])]
    listen: Option<String>,
    /// Join stdin/stdout to the device service (for ssh ProxyCommand).
    #[arg(long, conflicts_with = "list")]
    stdio: bool,
    /// List the devices this credential may reach, online or not.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tunnel_examples::exit(run().await)
}

async fn run() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let dialer = Dialer::connect_with_retry(cli.client.client_config()?, CONNECT_PATIENCE).await?;
    if cli.list {
        for d in dialer.list().await? {
            let state = if d.online { "online" } else { "offline" };
            println!("{}\t{state}\t{}", d.device, d.services.join(","));
        }
        return Ok(());
    }
    let (device, service) = (
        cli.device.unwrap_or_default(),
        cli.service.unwrap_or_default(),
    );
    if cli.stdio {
        pipe_stdio(&dialer, &device, &service).await?;
        return Ok(());
    }
    let Some(addr) = cli.listen else {
        anyhow::bail!("give --listen HOST:PORT, --stdio or --list");
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // Machine-readable on stdout (tests bind port 0); logs go to stderr.
    println!("listening {}", listener.local_addr()?);
    tunnel_memory::give_back_memory();
    serve_local(dialer, listener, device, service, shutdown_signal()).await?;
    Ok(())
}
