//! Credentials and an in-process relay on an ephemeral loopback port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tunnel_core::{
    ClientConfig, Dialer, Grants, Identity, Pattern, Relay, RelayBuilder, RelayError, SpkiPin,
    TlsIdentity, Token, TokenAuthenticator,
};

use crate::{TestDevice, WAIT, connect_dialer, eventually, init_tracing, start_device, within};

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// Grants to register exactly `device`.
pub fn may_register(device: &str) -> Grants {
    Grants::new().register(Pattern::new(device).expect("device pattern"))
}

/// Grants to open each `device/service` pattern pair in `grants`.
pub fn may_access(grants: &[&str]) -> Grants {
    grants
        .iter()
        .fold(Grants::new(), |g, a| g.access_str(a).expect("access grant"))
}

/// The relay port range public-port tests allow (the relay picks a free port in it).
pub const PUBLIC_PORTS: std::ops::RangeInclusive<u16> = 40000..=40999;

/// Relay settings for public-port tests: the range above, bound on loopback only.
pub fn allow_public_ports(b: RelayBuilder) -> RelayBuilder {
    b.public_ports(PUBLIC_PORTS)
        .public_bind([127, 0, 0, 1].into())
}

// ---------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------

type Configure = Arc<dyn Fn(RelayBuilder) -> RelayBuilder + Send + Sync>;

/// A relay serving on `127.0.0.1:<ephemeral>` with one token per credential.
pub struct TestRelay {
    /// The relay handle (for `online_devices()`).
    pub relay: Relay,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate pin.
    pub pin: SpkiPin,
    /// One token per credential, in the order the credentials were given.
    pub tokens: Vec<Token>,
    /// Its TLS identity (to restart a relay with the same pin).
    pub identity: TlsIdentity,
    /// Completing this (send or drop) makes `serve` shut down.
    pub shutdown: Option<oneshot::Sender<()>>,
    /// The task running `Relay::serve`.
    pub serve: Option<JoinHandle<Result<(), RelayError>>>,
    creds: Vec<(String, Grants)>,
    configure: Configure,
}

/// Spawns a relay with default settings and a `TokenAuthenticator` built from `creds`.
pub async fn spawn_relay(creds: &[(&str, Grants)]) -> TestRelay {
    spawn_relay_with(creds, |b| b).await
}

/// A relay with credential 0 (`device`) registering `device` and credential 1 (`user`)
/// opening every service of it: the setup most tests share.
pub async fn relay_for(device: &str) -> TestRelay {
    spawn_relay(&[
        ("device", may_register(device)),
        ("user", may_access(&[&format!("{device}/*")])),
    ])
    .await
}

/// Spawns a relay whose builder is adjusted by `configure` (heartbeat, public ports, …).
pub async fn spawn_relay_with(
    creds: &[(&str, Grants)],
    configure: impl Fn(RelayBuilder) -> RelayBuilder + Send + Sync + 'static,
) -> TestRelay {
    init_tracing();
    let identity =
        TlsIdentity::generate_self_signed(&["localhost"]).expect("generate relay identity");
    let creds: Vec<(String, Grants)> = creds
        .iter()
        .map(|(n, g)| ((*n).to_owned(), g.clone()))
        .collect();
    let tokens = creds
        .iter()
        .map(|_| Token::generate().expect("generate token"))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay listener");
    start_relay(identity, creds, tokens, Arc::new(configure), listener)
}

fn start_relay(
    identity: TlsIdentity,
    creds: Vec<(String, Grants)>,
    tokens: Vec<Token>,
    configure: Configure,
    listener: TcpListener,
) -> TestRelay {
    let mut auth = TokenAuthenticator::new();
    for ((name, grants), token) in creds.iter().zip(&tokens) {
        auth.insert(token.hash(), Identity::new(name.clone(), grants.clone()))
            .expect("test credentials have distinct names");
    }
    let relay = configure(Relay::builder(identity.clone(), auth))
        .build()
        .expect("build relay");
    let addr = listener.local_addr().expect("relay local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let serve = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
        }
    });
    TestRelay {
        pin: relay.pin(),
        relay,
        addr,
        tokens,
        identity,
        shutdown: Some(tx),
        serve: Some(serve),
        creds,
        configure,
    }
}

impl TestRelay {
    /// A client configuration presenting credential `i`'s token.
    pub fn client(&self, i: usize) -> ClientConfig {
        ClientConfig::new(self.addr.to_string(), self.pin).token(self.tokens[i].clone())
    }

    /// A client configuration presenting credential `i`'s token, reaching the relay at `addr`
    /// (a proxy in front of it).
    pub fn client_via(&self, i: usize, addr: SocketAddr) -> ClientConfig {
        ClientConfig::new(addr.to_string(), self.pin).token(self.tokens[i].clone())
    }

    /// Triggers shutdown and waits (bounded) for `serve` to return `Ok`.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(serve) = self.serve.take() {
            within("relay serve() to return after shutdown", WAIT, serve)
                .await
                .expect("relay serve task panicked")
                .expect("relay serve returned an error");
        }
    }

    /// Stops this relay, then serves a new one on the same address with the same TLS
    /// identity, credentials, tokens and builder settings.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener =
            listener.unwrap_or_else(|| panic!("could not rebind the relay address {}", self.addr));
        start_relay(
            self.identity.clone(),
            self.creds.clone(),
            self.tokens.clone(),
            self.configure.clone(),
            listener,
        )
    }

    /// Waits until the relay lists `device` as online.
    pub async fn wait_online(&self, device: &str) {
        let relay = self.relay.clone();
        eventually(&format!("relay lists {device} online"), WAIT, || {
            let online = relay.online_devices().iter().any(|d| d == device);
            async move { online }
        })
        .await;
    }

    /// Waits until the relay no longer lists `device` as online.
    pub async fn wait_offline(&self, device: &str, limit: Duration) {
        let relay = self.relay.clone();
        eventually(&format!("relay lists {device} offline"), limit, || {
            let online = relay.online_devices().iter().any(|d| d == device);
            async move { !online }
        })
        .await;
    }

    /// Starts device `id` with credential `i`, declaring and forwarding `services`, and
    /// waits until both the listener and the relay see it connected.
    pub async fn device(&self, i: usize, id: &str, services: &[(&str, SocketAddr)]) -> TestDevice {
        let device = start_device(self.client(i), id, services).await;
        self.wait_online(id).await;
        device
    }

    /// A dialer presenting credential `i`.
    pub async fn dialer(&self, i: usize) -> Dialer {
        connect_dialer(self.client(i)).await
    }
}
