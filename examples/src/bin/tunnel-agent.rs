//! tunnel-agent: runs on the device; keeps a session with the relay and forwards the
//! streams callers open to local services.

use std::collections::HashMap;

use clap::Parser;
use tokio::sync::watch;
use tunnel_core::{DeviceConfig, Listener, ListenerState, forward};
use tunnel_examples::{ClientArgs, init_tracing, parse_pair, shutdown_signal};

const EXAMPLES: &str = "\
Examples:
  # expose sshd and a web app on a LAN neighbour, privately (the default)
  TUNNEL_TOKEN=tun_… tunnel-agent --relay relay.example.com:7835 --pin sha256:… \\
      --device-id pi-42 --expose ssh=127.0.0.1:22 --expose web=192.168.1.2:3000
  # also publish web on relay port 20080 (the relay and the token must allow it)
  tunnel-agent … --token-file /etc/tunnel/token --expose web=127.0.0.1:8080 --public web=20080";

/// Device agent of tunnel: dials out to the relay, stays connected (heartbeats, reconnects
/// with backoff) and forwards incoming streams to the exposed local services.
#[derive(Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    /// Device ID to register as (the token must grant it).
    #[arg(long)]
    device_id: String,
    /// NAME=HOST:PORT: a service callers may open, and the local address it maps to;
    /// repeatable. Only these services are reachable.
    #[arg(long, value_parser = parse_pair, required = true)]
    expose: Vec<(String, String)>,
    /// NAME=PORT: publish an exposed service on this relay port (0 = any allowed); repeatable.
    #[arg(long, value_parser = parse_pair)]
    public: Vec<(String, String)>,
}

fn main() -> std::process::ExitCode {
    tunnel_examples::exit(tunnel_examples::one_session_runtime().and_then(|rt| rt.block_on(run())))
}

async fn run() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let mut config = DeviceConfig::new(cli.client.client_config()?, cli.device_id.clone());
    for (name, _) in &cli.expose {
        config = config.service(name.clone());
    }
    for (name, port) in &cli.public {
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("--public {name}={port}: not a port"))?;
        config = config.public(name.clone(), port);
    }
    let listener = Listener::bind(config).await?;
    tunnel_memory::give_back_memory();
    let targets: HashMap<String, String> = cli.expose.into_iter().collect();
    tokio::select! {
        () = forward(&listener, targets) => {}
        () = print_public_ports(listener.watch_state()) => {}
        () = shutdown_signal() => tracing::info!("stopping"),
    }
    listener.close();
    Ok(())
}

/// Prints `public SERVICE PORT` on stdout (for scripts) each time the relay binds a port.
async fn print_public_ports(mut state: watch::Receiver<ListenerState>) {
    loop {
        if let ListenerState::Connected { public, .. } = &*state.borrow_and_update() {
            for (service, port) in public {
                println!("public {service} {port}");
            }
        }
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
