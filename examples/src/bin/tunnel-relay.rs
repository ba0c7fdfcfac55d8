//! tunnel-relay: the public relay devices and access clients dial.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tunnel_core::{
    Grants, Identity, Pattern, Relay, TlsIdentity, Token, TokenAuthenticator, TokenEntry, TokenFile,
};
use tunnel_examples::{init_tracing, shutdown_signal};

const EXAMPLES: &str = "\
Examples:
  # create a credential for a device (prints the token once)
  tunnel-relay token new --file tokens.toml --name pi-42 --device pi-42
  # and one for an engineer's laptop that may open every service of pi-42
  tunnel-relay token new --file tokens.toml --name alice --access 'pi-42/*'
  # run the relay; a certificate is generated in ./relay-state on first start
  tunnel-relay serve --listen 0.0.0.0:7835 --tokens tokens.toml
  # also allow devices whose token permits it to publish on ports 20000-20100
  tunnel-relay serve --tokens tokens.toml --public-ports 20000-20100
  # print the pin clients need (--pin) without starting
  tunnel-relay pin --state-dir relay-state";

/// The public relay of tunnel: devices behind NAT dial out to it; authorized clients reach
/// their services through it.
#[derive(Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until Ctrl-C / SIGTERM.
    Serve(ServeArgs),
    /// Manage the token file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the SHA-256 pin of the relay certificate.
    Pin(CertArgs),
}

#[derive(Args)]
struct CertArgs {
    /// Certificate chain (PEM). Without it, one is generated and kept in --state-dir.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where a generated certificate and key are kept.
    #[arg(long, default_value = "relay-state")]
    state_dir: PathBuf,
    /// DNS names or IPs put in a generated certificate.
    #[arg(long = "cert-name", default_value = "localhost")]
    cert_names: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on for devices and access clients.
    #[arg(long, default_value = "0.0.0.0:7835")]
    listen: String,
    /// Token file (TOML, tokens stored as SHA-256 hashes). Required unless --dev.
    #[arg(long, value_name = "PATH")]
    tokens: Option<PathBuf>,
    /// Development run without a token file: generates one all-powerful token and prints it.
    #[arg(long, conflicts_with = "tokens")]
    dev: bool,
    /// CA certificates (PEM) for client certificates (mutual TLS; the DNS names in a
    /// client certificate are the device IDs it may register).
    #[arg(long, value_name = "PEM")]
    client_ca: Option<PathBuf>,
    /// Allow public ports in this range, e.g. 20000-20100 (off by default).
    #[arg(long, value_name = "LOW-HIGH")]
    public_ports: Option<String>,
    /// Address public ports bind to.
    #[arg(long, default_value = "0.0.0.0")]
    public_bind: IpAddr,
    /// Heartbeat interval in milliseconds; dead peers are dropped after three.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Seconds running streams get to finish on shutdown.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Most concurrent streams per session (default 128); announced to clients, which follow.
    #[arg(long, value_name = "N")]
    max_streams: Option<usize>,
    #[command(flatten)]
    cert: CertArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token, store its hash in the file and print the token once.
    New(NewToken),
    /// List the credentials in the file (names and grants, never tokens).
    List {
        /// Token file.
        #[arg(long, default_value = "tokens.toml")]
        file: PathBuf,
    },
}

#[derive(Args)]
struct NewToken {
    /// Token file (created if missing, mode 0600).
    #[arg(long, default_value = "tokens.toml")]
    file: PathBuf,
    /// Name of the credential (shown in logs and to devices as the caller).
    #[arg(long)]
    name: String,
    /// Device ID (or pattern like `lab-*`) this token may register as; repeatable.
    #[arg(long)]
    device: Vec<String>,
    /// DEVICE/SERVICE this token may open (patterns: `pi-42/ssh`, `pi-42/*`); repeatable.
    #[arg(long)]
    access: Vec<String>,
    /// Allow this device to ask for public ports.
    #[arg(long)]
    public: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tunnel_examples::exit(run().await)
}

async fn run() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Token(TokenCommand::New(args)) => new_token(args),
        Command::Token(TokenCommand::List { file }) => list_tokens(&file),
        Command::Pin(args) => {
            println!("{}", load_identity(&args)?.pin()?);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let identity = load_identity(&args.cert)?;
    let auth = match (&args.tokens, args.dev) {
        (Some(path), _) => {
            let auth = TokenAuthenticator::from_file(path)?;
            if auth.is_empty() && args.client_ca.is_none() {
                bail!(
                    "{} holds no token; create one with `tunnel-relay token new`",
                    path.display()
                );
            }
            auth
        }
        (None, true) => dev_authenticator()?,
        (None, false) => bail!(
            "no --tokens file given; refusing to start an open relay (use --dev for a development run)"
        ),
    };
    let mut builder = match &args.client_ca {
        Some(ca) => {
            let chain: Vec<Box<dyn tunnel_core::Authenticator>> = vec![
                Box::new(tunnel_core::CertAuthenticator::new()),
                Box::new(auth),
            ];
            Relay::builder(identity, tunnel_core::FirstOf::new(chain)).client_ca_file(ca)?
        }
        None => Relay::builder(identity, auth),
    };
    if let Some(range) = &args.public_ports {
        let (lo, hi) = range
            .split_once('-')
            .context("--public-ports wants LOW-HIGH")?;
        builder = builder
            .public_ports(lo.parse()?..=hi.parse()?)
            .public_bind(args.public_bind);
    }
    if let Some(n) = args.max_streams {
        builder = builder.limits(tunnel_core::Limits::for_streams(n));
    }
    let relay = builder
        .heartbeat_interval(Duration::from_millis(args.heartbeat_ms))
        .grace_period(Duration::from_secs(args.grace_secs))
        .build()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // Machine-readable lines on stdout, for scripts and tests; logs go to stderr.
    println!("listening {}", listener.local_addr()?);
    println!("pin {}", relay.pin());
    let shutdown = async {
        shutdown_signal().await;
        // A second signal during the grace period exits at once.
        tokio::spawn(async {
            shutdown_signal().await;
            std::process::exit(130);
        });
    };
    relay.serve(listener, shutdown).await?;
    Ok(())
}

/// The relay's certificate: from files, or generated once into the state directory.
fn load_identity(args: &CertArgs) -> anyhow::Result<TlsIdentity> {
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return Ok(TlsIdentity::from_pem_files(cert, key)?);
    }
    let names: Vec<&str> = args.cert_names.iter().map(String::as_str).collect();
    let (identity, generated) = TlsIdentity::load_or_generate(&args.state_dir, &names)?;
    if generated {
        let dir = args.state_dir.display();
        tracing::info!(%dir, "generated a self-signed relay certificate");
    }
    Ok(identity)
}

fn dev_authenticator() -> anyhow::Result<TokenAuthenticator> {
    let token = Token::generate()?;
    let grants = Grants::new()
        .register(Pattern::new("*")?)
        .access(Pattern::new("*")?, Pattern::new("*")?)
        .public(true);
    let mut auth = TokenAuthenticator::new();
    auth.insert(token.hash(), Identity::new("dev", grants))?;
    eprintln!("DEVELOPMENT RUN: one token may do everything. Do not expose this relay.");
    println!("dev-token {}", token.expose());
    Ok(auth)
}

fn new_token(args: NewToken) -> anyhow::Result<()> {
    let mut file = if args.file.exists() {
        TokenFile::load(&args.file)?
    } else {
        TokenFile::default()
    };
    if file.tokens.iter().any(|t| t.name == args.name) {
        bail!(
            "a credential named {:?} already exists in {}",
            args.name,
            args.file.display()
        );
    }
    if args.device.is_empty() && args.access.is_empty() {
        bail!("grant something: --device ID and/or --access DEVICE/SERVICE");
    }
    let token = Token::generate()?;
    let entry = TokenEntry {
        name: args.name.clone(),
        hash: token.hash().to_string(),
        devices: args.device,
        access: args.access,
        public: args.public,
    };
    file.tokens.push(entry);
    // Validate the whole file (patterns, hashes) before writing it.
    TokenAuthenticator::from_token_file(&file)?;
    file.save(&args.file)?;
    eprintln!(
        "added {:?} to {}; the token is shown only once:",
        args.name,
        args.file.display()
    );
    println!("{}", token.expose());
    Ok(())
}

fn list_tokens(path: &Path) -> anyhow::Result<()> {
    for t in TokenFile::load(path)?.tokens {
        println!(
            "{}\tdevices={:?}\taccess={:?}\tpublic={}",
            t.name, t.devices, t.access, t.public
        );
    }
    Ok(())
}
