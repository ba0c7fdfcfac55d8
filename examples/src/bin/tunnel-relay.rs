//! tunnel-relay: the public relay devices and access clients dial.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tunnel_core::{
    Grants, Identity, Pattern, Relay, TlsIdentity, Token, TokenAuthenticator, TokenEntry, TokenFile,
};
use tunnel_examples::{init_tracing, shutdown_signal};
use tunnel_server::store::Store;

const EXAMPLES: &str = "\
Examples:
  # create a credential for a device (prints the token once)
  tunnel-relay token new --file tokens.toml --name pi-42 --device pi-42
  # and one for an engineer's laptop that may open every service of pi-42
  tunnel-relay token new --file tokens.toml --name alice --access 'pi-42/*'
  # run the relay; a certificate and the state store are kept in ./relay-state
  tunnel-relay serve --listen 0.0.0.0:7835 --tokens tokens.toml
  # with the admin API (create an admin token first; it is printed once)
  tunnel-relay admin-token new --state-dir relay-state --name ops
  tunnel-relay serve --state-dir relay-state --admin-listen 127.0.0.1:7836
  # credentials in the store, live (no restart): create, list, revoke
  tunnel-relay token new --state-dir relay-state --name pi-43 --device pi-43
  tunnel-relay token revoke --state-dir relay-state --name pi-43
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
    Serve(Box<ServeArgs>),
    /// Manage credentials: in the state store (`--state-dir`, live), or in a token file
    /// (`--file`, imported by `serve --tokens`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage admin API tokens (in the state store).
    #[command(subcommand, name = "admin-token")]
    AdminToken(AdminTokenCommand),
    /// Devices the relay has seen (from the state store).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Print the SHA-256 pin of the relay certificate.
    Pin(CertArgs),
    /// The cluster CA, for a cluster of relays.
    #[command(subcommand, name = "cluster-ca")]
    ClusterCa(ClusterCaCommand),
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
    /// Token file (TOML, tokens stored as SHA-256 hashes) to import into the state store:
    /// its credentials whose names the store does not have yet are added at each start
    /// (the store wins for the others). Without it, the relay serves the store's
    /// credentials; an empty store admits nobody.
    #[arg(long, value_name = "PATH")]
    tokens: Option<PathBuf>,
    /// Serve the admin HTTP API on this address (off by default; keep it on a private
    /// address: it is a separate listener, never the tunnel port).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Serve the admin API over HTTPS with the relay's own certificate (clients check it
    /// with the relay's pin or CA, as devices do).
    #[arg(long, requires = "admin_listen")]
    admin_tls: bool,
    /// Also print the audit trail (JSON lines) on stdout; it is always written to
    /// `audit.log` in the state directory.
    #[arg(long)]
    audit_stdout: bool,
    /// This relay's name in the audit trail.
    #[arg(long, default_value = "relay")]
    relay_id: String,
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
    /// Most concurrent public connections per source address to one device (default 32).
    #[arg(long, value_name = "N")]
    public_max_per_source: Option<usize>,
    /// Most concurrent public connections per device (default: half of --max-streams).
    #[arg(long, value_name = "N")]
    public_max_streams: Option<usize>,
    /// Seconds after which an idle public connection is closed (default 1800).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    public_idle_secs: u64,
    /// Most concurrent streams per session (default 128); announced to clients, which follow.
    #[arg(long, value_name = "N")]
    max_streams: Option<usize>,
    #[command(flatten)]
    cert: CertArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// A cluster of relays sharing their state in etcd (off by default: one relay, SQLite).
#[derive(Args)]
struct ClusterArgs {
    /// etcd endpoints, comma-separated (`http://10.0.0.1:2379,http://10.0.0.2:2379`):
    /// credentials, device records and presence are shared by every relay using them, and
    /// this relay joins the cluster as --relay-id (unique per relay).
    #[arg(long, value_name = "URLS", requires = "cluster_ca")]
    etcd: Option<String>,
    /// Key namespace in etcd (one etcd may serve several clusters).
    #[arg(long, default_value = tunnel_server::store::DEFAULT_NAMESPACE)]
    etcd_prefix: String,
    /// The cluster CA directory (`tunnel-relay cluster-ca new`): ca.crt, and this relay's
    /// certificate `<relay-id>.crt`/`.key` (issued there at start when ca.key is present).
    #[arg(long, value_name = "DIR")]
    cluster_ca: Option<PathBuf>,
    /// Where the other relays reach this one, `HOST[:PORT]` (default: the address the relay
    /// listens on, when it is a specific one; the port defaults to the listening port).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
}

/// Where the credentials are: a state directory (SQLite), or the cluster's etcd.
#[derive(Args, Clone)]
struct StoreArgs {
    /// The relay's state directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The cluster's etcd endpoints, comma-separated (instead of --state-dir).
    #[arg(long, value_name = "URLS", conflicts_with = "state_dir")]
    etcd: Option<String>,
    /// Key namespace in etcd.
    #[arg(long, default_value = tunnel_server::store::DEFAULT_NAMESPACE)]
    etcd_prefix: String,
}

impl StoreArgs {
    fn given(&self) -> bool {
        self.state_dir.is_some() || self.etcd.is_some()
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token, store its hash and print the token once.
    New(NewToken),
    /// List the credentials (names and grants, never tokens).
    List {
        /// Token file.
        #[arg(long, conflicts_with_all = ["state_dir", "etcd"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a credential in the state store: its sessions close within a second, on
    /// every relay of a cluster.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The credential's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Create an admin API token and print it once.
    New {
        #[command(flatten)]
        store: StoreArgs,
        /// The admin's name (shown in the audit trail).
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ClusterCaCommand {
    /// Create a cluster CA in DIR (ca.crt, ca.key): relays prove to each other with
    /// certificates it issues.
    New {
        /// Where to write it.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue the certificate of one relay into DIR (`<relay-id>.crt`, `.key`), for relays
    /// that should not hold ca.key: copy ca.crt and these two files to that relay.
    Issue {
        /// The CA directory (with ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// The relay's ID.
        #[arg(long)]
        relay_id: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// List the devices the relay has seen.
    List {
        /// The relay's state directory.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(Args)]
struct NewToken {
    /// Token file (created if missing, mode 0600); imported by `serve --tokens`.
    #[arg(long, conflicts_with_all = ["state_dir", "etcd"])]
    file: Option<PathBuf>,
    /// The store (--state-dir or --etcd): the credential works at once, also on running
    /// relays.
    #[command(flatten)]
    store: StoreArgs,
    /// Expiry, RFC 3339 (`2026-12-31T00:00:00Z`); store only.
    #[arg(long)]
    expires: Option<String>,
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
        Command::Serve(args) => serve(*args).await,
        Command::Token(TokenCommand::New(args)) => {
            if args.store.given() {
                new_store_token(args).await
            } else if args.expires.is_some() {
                bail!("--expires needs the store (--state-dir or --etcd)")
            } else {
                new_token(args)
            }
        }
        Command::Token(TokenCommand::List { file, store }) => {
            if store.given() {
                list_store_tokens(&store).await
            } else {
                list_tokens(&file.unwrap_or_else(|| "tokens.toml".into()))
            }
        }
        Command::Token(TokenCommand::Revoke { store, name }) => {
            let credentials = open_credentials(&store).await?;
            let view = credentials.revoke(&name).await?;
            eprintln!(
                "revoked {:?}; its sessions close within a second",
                view.name
            );
            Ok(())
        }
        Command::AdminToken(AdminTokenCommand::New { store, name }) => {
            let store = open_store(&store).await?;
            let token = tunnel_server::api::new_admin_token(store.as_ref(), &name).await?;
            eprintln!("admin token {name:?} created; it is shown only once:");
            println!("{}", token.expose());
            Ok(())
        }
        Command::ClusterCa(ClusterCaCommand::New { dir }) => {
            if dir.join(tunnel_server::cluster::ca::CA_CERT).exists() {
                bail!("{} already holds a cluster CA", dir.display());
            }
            tunnel_server::cluster::ca::ClusterCa::generate()?.save(&dir)?;
            eprintln!(
                "cluster CA written to {}; keep ca.key secret (it makes relays)",
                dir.display()
            );
            Ok(())
        }
        Command::ClusterCa(ClusterCaCommand::Issue { dir, relay_id }) => {
            let ca = tunnel_server::cluster::ca::ClusterCa::load(&dir)?;
            let (cert, key) = tunnel_server::cluster::ca::relay_files(&dir, &relay_id);
            ca.issue(&relay_id)?.save_pem_files(&cert, &key)?;
            eprintln!("issued {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Device(DeviceCommand::List { state_dir }) => list_devices(&state_dir).await,
        Command::Pin(args) => {
            println!("{}", load_identity(&args)?.pin()?);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tunnel_memory::give_back_memory();
    let identity = load_identity(&args.cert)?;
    let identity_for_api = identity.clone();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let dir = &args.cert.state_dir;
    let mut plane = match &args.cluster.etcd {
        Some(urls) => {
            let store = tunnel_server::store::EtcdStore::connect(
                &etcd_endpoints(urls),
                &args.cluster.etcd_prefix,
            )
            .await
            .with_context(|| format!("connecting to etcd at {urls}"))?;
            tunnel_server::ControlPlane::open_with_store(
                dir,
                Arc::new(store),
                args.audit_stdout,
                &args.relay_id,
            )
            .await?
        }
        None => tunnel_server::ControlPlane::open(dir, args.audit_stdout, &args.relay_id)
            .await
            .with_context(|| format!("opening the state store in {}", dir.display()))?,
    };
    let cluster = match &args.cluster.etcd {
        Some(_) => Some(join_cluster(
            &args,
            listener.local_addr()?,
            &identity,
            plane.store().clone(),
        )?),
        None => None,
    };
    if let Some(path) = &args.tokens {
        let file = TokenFile::load(path)?;
        let n = plane.credentials().import(&file).await?;
        if n > 0 {
            tracing::info!(imported = n, file = %path.display(), "token file imported into the state store");
        }
    }
    let mut chain: Vec<Box<dyn tunnel_core::Authenticator>> = Vec::new();
    if let Some((_, peers, _)) = &cluster {
        chain.push(Box::new(
            tunnel_server::cluster::ca::PeerAuthenticator::new(peers)?,
        ));
    }
    if args.client_ca.is_some() {
        chain.push(Box::new(tunnel_core::CertAuthenticator::new()));
    }
    chain.push(Box::new(plane.authenticator()));
    if args.dev {
        chain.push(Box::new(dev_authenticator()?));
    } else if plane.credentials().is_empty() && args.client_ca.is_none() {
        tracing::warn!(
            "the state store holds no credential: the relay admits nobody until one is added \
             (tunnel-relay token new --state-dir …, or the admin API)"
        );
    }
    let mut builder =
        Relay::builder(identity, tunnel_core::FirstOf::new(chain)).events(plane.auditor());
    match &cluster {
        Some((membership, ca, _)) => {
            // Peers' certificates come from the cluster CA; devices' (if any) from --client-ca.
            builder = builder
                .client_roots(ca.roots_with(args.client_ca.as_deref())?)
                .cluster(membership.hook());
        }
        None => {
            if let Some(ca) = &args.client_ca {
                builder = builder.client_ca_file(ca)?;
            }
        }
    }
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
    if let Some(n) = args.public_max_streams {
        builder = builder.max_public_streams(n);
    }
    builder = builder.public_connection_limits(
        args.public_max_per_source.unwrap_or(32),
        Duration::from_secs(args.public_idle_secs),
    );
    let relay = builder
        .heartbeat_interval(Duration::from_millis(args.heartbeat_ms))
        .grace_period(Duration::from_secs(args.grace_secs))
        .build()?;
    plane.start(&relay);
    let membership = match cluster {
        Some((membership, _, advertise)) => {
            membership
                .start(relay.clone())
                .await
                .context("joining the cluster (etcd)")?;
            plane.join(membership.clone());
            println!(
                "cluster {} advertised at {advertise}",
                membership.relay_id()
            );
            Some(membership)
        }
        None => None,
    };
    // Machine-readable lines on stdout, for scripts and tests; logs go to stderr.
    println!("listening {}", listener.local_addr()?);
    println!("pin {}", relay.pin());
    if let Some(addr) = &args.admin_listen {
        let admin = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin API on {addr}"))?;
        println!("admin {}", admin.local_addr()?);
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        let relay = relay.clone();
        let plane = Arc::new(plane);
        let tls = if args.admin_tls {
            Some(identity_for_api.server_config_for(&[b"h2", b"http/1.1"])?)
        } else {
            None
        };
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => {
                    plane
                        .serve_api_tls(relay, admin, tls, Some(metrics), std::future::pending())
                        .await
                }
                None => {
                    plane
                        .serve_api(relay, admin, Some(metrics), std::future::pending())
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    let draining = membership.clone();
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(m) = draining {
            tokio::spawn(async move { m.set_draining().await });
        }
        // A second signal during the grace period exits at once.
        tokio::spawn(async {
            shutdown_signal().await;
            std::process::exit(130);
        });
    };
    relay.serve(listener, shutdown).await?;
    if let Some(m) = membership {
        m.leave().await;
    }
    Ok(())
}

/// This relay's membership of the cluster: its certificate from the cluster CA, the CA,
/// and the address it advertises to its peers.
fn join_cluster(
    args: &ServeArgs,
    listening: std::net::SocketAddr,
    identity: &TlsIdentity,
    store: Arc<dyn Store>,
) -> anyhow::Result<(
    tunnel_server::cluster::RelayCluster,
    tunnel_server::cluster::ca::ClusterCa,
    String,
)> {
    let ca_dir = args
        .cluster
        .cluster_ca
        .as_ref()
        .context("--etcd needs --cluster-ca DIR")?;
    let ca = tunnel_server::cluster::ca::ClusterCa::load(ca_dir)?;
    let peer_identity = ca.relay_identity(ca_dir, &args.relay_id).with_context(|| {
        format!(
            "the certificate of relay {:?} in {}",
            args.relay_id,
            ca_dir.display()
        )
    })?;
    let advertise = match &args.cluster.advertise {
        // HOST alone: the port is the one the relay listens on.
        Some(a)
            if a.parse::<std::net::SocketAddr>().is_ok()
                || a.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            a.clone()
        }
        Some(host) => format!("{host}:{}", listening.port()),
        None if listening.ip().is_unspecified() => {
            bail!(
                "--listen {listening} is not an address peers can dial; give --advertise HOST[:PORT]"
            );
        }
        None => listening.to_string(),
    };
    let config = tunnel_server::cluster::ClusterConfig {
        relay_id: args.relay_id.clone(),
        advertise: advertise.clone(),
        pin: identity.pin()?,
        peer_identity,
    };
    Ok((
        tunnel_server::cluster::RelayCluster::new(config, store),
        ca,
        advertise,
    ))
}

/// The store the arguments name: SQLite in a state directory (created if needed), or etcd.
async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(urls) = &args.etcd {
        let endpoints = etcd_endpoints(urls);
        let store = tunnel_server::store::EtcdStore::connect(&endpoints, &args.etcd_prefix)
            .await
            .with_context(|| format!("connecting to etcd at {urls}"))?;
        return Ok(Arc::new(store));
    }
    let dir = args
        .state_dir
        .as_ref()
        .context("name the store: --state-dir DIR or --etcd URLS")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = tunnel_server::store::SqliteStore::open(dir.join(tunnel_server::DB_FILE))
        .with_context(|| format!("opening the state store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

async fn open_credentials(
    args: &StoreArgs,
) -> anyhow::Result<Arc<tunnel_server::credentials::Credentials>> {
    let store = open_store(args).await?;
    Ok(tunnel_server::credentials::Credentials::load(store).await?)
}

fn etcd_endpoints(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            if u.contains("://") {
                u.to_owned()
            } else {
                format!("http://{u}")
            }
        })
        .collect()
}

async fn new_store_token(args: NewToken) -> anyhow::Result<()> {
    if args.device.is_empty() && args.access.is_empty() {
        bail!("grant something: --device ID and/or --access DEVICE/SERVICE");
    }
    let credentials = open_credentials(&args.store).await?;
    let new = tunnel_server::credentials::NewCredential {
        name: args.name.clone(),
        grants: tunnel_server::model::GrantsSpec {
            devices: args.device,
            access: args.access,
            public: args.public,
        },
        labels: Default::default(),
        expires: args.expires,
    };
    let (_, token) = credentials.create(new).await?;
    eprintln!(
        "added {:?} to the store; the token is shown only once:",
        args.name,
    );
    println!("{}", token.expose());
    Ok(())
}

async fn list_store_tokens(store: &StoreArgs) -> anyhow::Result<()> {
    let credentials = open_credentials(store).await?;
    let mut after: Option<String> = None;
    loop {
        let page = credentials.list(after.as_deref(), 1000);
        for c in &page {
            println!(
                "{}\t{}\tdevices={:?}\taccess={:?}\tpublic={}",
                c.name, c.status, c.grants.devices, c.grants.access, c.grants.public
            );
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.name.clone()),
            _ => return Ok(()),
        }
    }
}

async fn list_devices(dir: &Path) -> anyhow::Result<()> {
    let store = open_store(&StoreArgs {
        state_dir: Some(dir.to_owned()),
        etcd: None,
        etcd_prefix: String::new(),
    })
    .await?;
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(tunnel_server::model::DEVICE, after.as_deref(), 1000)
            .await?;
        for (_, v) in &page {
            let d: tunnel_server::model::DeviceRecord = serde_json::from_slice(&v.value)?;
            println!(
                "{}\tcredential={}\tlast_seen={}\tservices={}",
                d.id,
                d.credential,
                d.last_seen,
                d.services.join(",")
            );
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => after = Some(k.clone()),
            _ => return Ok(()),
        }
    }
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
    let path = args.file.clone().unwrap_or_else(|| "tokens.toml".into());
    let mut file = if path.exists() {
        TokenFile::load(&path)?
    } else {
        TokenFile::default()
    };
    if file.tokens.iter().any(|t| t.name == args.name) {
        bail!(
            "a credential named {:?} already exists in {}",
            args.name,
            path.display()
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
    file.save(&path)?;
    eprintln!(
        "added {:?} to {}; the token is shown only once:",
        args.name,
        path.display()
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
