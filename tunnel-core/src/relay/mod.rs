//! The relay: accepts TLS from devices and access clients, authenticates them, keeps the
//! registry of online devices and joins authorized access streams to device streams.

mod limit;
mod meter;
mod registry;
mod session;
mod throttle;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::RootCertStore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{AuthRequest, Authenticator, Identity};
use crate::config::{DEFAULT_HEARTBEAT, Limits, MIN_HEARTBEAT};
use crate::error::{ConfigError, RelayError};
use crate::protocol::{
    self, ALPN, HANDSHAKE_TIMEOUT, MAX_HELLO_LEN, Message, RefusalCode, Role, VERSION,
};
use crate::tls::{SpkiPin, TlsIdentity};
use limit::{KeyedLimit, Slot};
use registry::Registry;
use throttle::{AuthThrottle, DEFAULT_AUTH_FAILURE_BURST, DEFAULT_AUTH_FAILURE_REFILL};

/// Default time running streams get to finish after shutdown begins.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default cap on connections still in TLS or hello, relay-wide: an attacker holding many
/// half-open handshakes must not starve real devices of file descriptors and memory.
const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Default cap on concurrent sessions of one identity: a leaked or stolen credential must
/// not hold unbounded relay memory (each session may buffer up to its receive window).
const DEFAULT_MAX_SESSIONS_PER_IDENTITY: usize = 64;
/// Default cap on connections in TLS or hello from one IP address.
const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 32;

/// Builds a [`Relay`]. The TLS identity and the authenticator are required up front, so a
/// relay without authentication cannot be built.
pub struct RelayBuilder {
    identity: TlsIdentity,
    authenticator: Arc<dyn Authenticator>,
    client_roots: Option<Arc<RootCertStore>>,
    public_ports: Option<RangeInclusive<u16>>,
    public_bind: IpAddr,
    heartbeat: Duration,
    limits: Limits,
    grace: Duration,
    max_handshakes: usize,
    max_handshakes_per_ip: usize,
    max_sessions_per_identity: usize,
    auth_failure_burst: u32,
    auth_failure_refill: Duration,
}

impl RelayBuilder {
    /// Verifies client certificates against these CA roots (PEM file), for mutual TLS.
    /// Clients without a certificate may still authenticate with a token.
    pub fn client_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        self.client_roots = Some(Arc::new(crate::tls::load_roots(path.as_ref())?));
        Ok(self)
    }
    /// Verifies client certificates against these roots (see [`client_ca_file`](Self::client_ca_file)).
    pub fn client_roots(mut self, roots: RootCertStore) -> Self {
        self.client_roots = Some(Arc::new(roots));
        self
    }
    /// Allows devices whose grants permit it to publish services on these relay ports.
    /// Off by default: without a range, no public port is ever opened.
    pub fn public_ports(mut self, range: RangeInclusive<u16>) -> Self {
        self.public_ports = Some(range);
        self
    }
    /// Address public ports bind to (default `0.0.0.0`).
    pub fn public_bind(mut self, addr: IpAddr) -> Self {
        self.public_bind = addr;
        self
    }
    /// How often clients must ping (default 5 s). A silent peer is dropped after three
    /// intervals; clients notice a dead relay within the same bound.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }
    /// Per-session stream and memory limits (see [`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Time running streams get to finish after shutdown begins (default 10 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Caps connections still in their handshake: relay-wide (default 512) and per source
    /// IP (default 32). Connections over a cap are closed at once.
    pub fn max_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.max_handshakes = total;
        self.max_handshakes_per_ip = per_ip;
        self
    }
    /// Caps the concurrent sessions of one identity (default 64); more are refused as
    /// `unavailable`. A device reconnecting replaces its old session, which frees its slot.
    pub fn max_sessions_per_identity(mut self, n: usize) -> Self {
        self.max_sessions_per_identity = n;
        self
    }
    /// Throttles token guessing: a source (IP address, /64 for IPv6) may fail
    /// authentication `burst` times in a row (default 10); after that its connections are
    /// closed right after the TCP accept, and it gets one more try per `refill`
    /// (default 6 s). Successful logins do not count.
    pub fn auth_failure_limit(mut self, burst: u32, refill: Duration) -> Self {
        self.auth_failure_burst = burst;
        self.auth_failure_refill = refill;
        self
    }
    /// Validates the configuration and builds the relay.
    pub fn build(self) -> Result<Relay, ConfigError> {
        self.limits.validate()?;
        if self.heartbeat < MIN_HEARTBEAT || self.heartbeat > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(format!(
                "heartbeat interval {:?} out of range {MIN_HEARTBEAT:?}..=1h",
                self.heartbeat
            )));
        }
        if self
            .public_ports
            .as_ref()
            .is_some_and(|r| r.is_empty() || *r.start() == 0)
        {
            return Err(ConfigError::Invalid(
                "public port range is empty or starts at 0".into(),
            ));
        }
        if self.max_handshakes == 0
            || self.max_handshakes_per_ip == 0
            || self.max_sessions_per_identity == 0
        {
            return Err(ConfigError::Invalid(
                "handshake and session caps must be at least 1".into(),
            ));
        }
        if self.auth_failure_burst == 0 || self.auth_failure_refill.is_zero() {
            return Err(ConfigError::Invalid(
                "auth failure burst and refill must be non-zero".into(),
            ));
        }
        let pin = self.identity.pin()?;
        let tls = TlsAcceptor::from(crate::tls::server_config(
            &self.identity,
            self.client_roots,
        )?);
        Ok(Relay {
            inner: Arc::new(Inner {
                tls,
                pin,
                authenticator: self.authenticator,
                public_ports: self.public_ports,
                public_bind: self.public_bind,
                heartbeat: self.heartbeat,
                limits: self.limits,
                grace: self.grace,
                registry: Registry::default(),
                handshakes: Arc::new(Semaphore::new(self.max_handshakes)),
                per_source: KeyedLimit::new(self.max_handshakes_per_ip),
                per_identity: KeyedLimit::new(self.max_sessions_per_identity),
                auth_failures: AuthThrottle::new(self.auth_failure_burst, self.auth_failure_refill),
                draining: CancellationToken::new(),
                closing: CancellationToken::new(),
                streams: TaskTracker::new(),
                connections: TaskTracker::new(),
            }),
        })
    }
}

/// The public server. Cheap to clone; [`Relay::serve`] runs it on a listener you bound.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tunnel_core::{Relay, TlsIdentity, TokenAuthenticator};
/// let identity = TlsIdentity::from_pem_files("relay.crt", "relay.key")?;
/// let auth = TokenAuthenticator::from_file("tokens.toml")?;
/// let relay = Relay::builder(identity, auth).build()?;
/// println!("clients pin {}", relay.pin());
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:7835").await?;
/// relay.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    tls: TlsAcceptor,
    pin: SpkiPin,
    authenticator: Arc<dyn Authenticator>,
    public_ports: Option<RangeInclusive<u16>>,
    public_bind: IpAddr,
    heartbeat: Duration,
    limits: Limits,
    grace: Duration,
    registry: Registry,
    handshakes: Arc<Semaphore>,
    /// Handshakes in progress per source (address, or /64 for IPv6).
    per_source: KeyedLimit<IpAddr>,
    /// Live sessions per identity name.
    per_identity: KeyedLimit<String>,
    /// Failed authentications per source, to slow down token guessing.
    auth_failures: AuthThrottle,
    /// Cancelled when shutdown begins: no new streams, no new sessions.
    draining: CancellationToken,
    /// Cancelled when the grace period is over: every session closes.
    closing: CancellationToken,
    /// Running spliced streams, awaited during the grace period.
    streams: TaskTracker,
    /// Connection tasks, awaited at the very end.
    connections: TaskTracker,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("pin", &self.inner.pin)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts configuring a relay with its TLS identity and the authenticator every client
    /// must pass.
    pub fn builder(identity: TlsIdentity, authenticator: impl Authenticator) -> RelayBuilder {
        RelayBuilder {
            identity,
            authenticator: Arc::new(authenticator),
            client_roots: None,
            public_ports: None,
            public_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            heartbeat: DEFAULT_HEARTBEAT,
            limits: Limits::default(),
            grace: DEFAULT_GRACE,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            max_sessions_per_identity: DEFAULT_MAX_SESSIONS_PER_IDENTITY,
            auth_failure_burst: DEFAULT_AUTH_FAILURE_BURST,
            auth_failure_refill: DEFAULT_AUTH_FAILURE_REFILL,
        }
    }

    /// The SHA-256 pin of the relay's public key, for clients' [`RelayTrust::Pin`](crate::RelayTrust::Pin).
    pub fn pin(&self) -> SpkiPin {
        self.inner.pin
    }

    /// IDs of the devices online right now, sorted.
    pub fn online_devices(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .registry
            .snapshot()
            .into_iter()
            .filter(|d| d.1)
            .map(|d| d.0)
            .collect();
        ids.sort();
        ids
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// refuses new streams, lets running streams finish for the grace period and closes
    /// every session. The caller owns the listener (bind `127.0.0.1:0` in tests).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        let local = listener.local_addr()?;
        info!(%local, pin = %self.inner.pin, "relay listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.spawn_connection(tcp, peer),
                    // Out of file descriptors and similar: back off instead of spinning.
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        self.shutdown().await;
        Ok(())
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        info!(grace = ?inner.grace, streams = inner.streams.len(), "relay shutting down");
        inner.draining.cancel();
        inner.streams.close();
        if tokio::time::timeout(inner.grace, inner.streams.wait())
            .await
            .is_err()
        {
            warn!(
                streams = inner.streams.len(),
                "grace period over; cutting running streams"
            );
        }
        inner.closing.cancel();
        for online in inner.registry.drain() {
            online.evict().await;
        }
        inner.connections.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.connections.wait()).await;
        info!("relay stopped");
    }

    fn spawn_connection(&self, tcp: TcpStream, peer: SocketAddr) {
        if self.inner.auth_failures.is_blocked(source_key(peer.ip())) {
            debug!(%peer, "too many failed authentications from this source; dropping");
            return;
        }
        let Some(permit) = self.handshake_permit(peer.ip()) else {
            debug!(%peer, "too many handshakes in progress; dropping connection");
            return;
        };
        let _ = tcp.set_nodelay(true);
        let relay = self.clone();
        let span = info_span!("conn", %peer);
        self.inner.connections.spawn(
            async move {
                let Some((tls, hello, identity, _slot)) = relay.handshake(tcp, peer).await else {
                    return;
                };
                drop(permit);
                session::run(relay.inner.clone(), tls, hello, identity).await;
            }
            .instrument(span),
        );
    }

    fn handshake_permit(&self, ip: IpAddr) -> Option<HandshakePermit> {
        let global = self.inner.handshakes.clone().try_acquire_owned().ok()?;
        let source = self.inner.per_source.try_take(source_key(ip))?;
        Some(HandshakePermit {
            _global: global,
            _source: source,
        })
    }

    /// TLS, ALPN, hello and authentication, under one deadline. Failures are answered with
    /// a `Refused` frame where the peer speaks our protocol, and logged without secrets.
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Tls, Hello, Identity, Slot<String>)> {
        let inner = &self.inner;
        let attempt = async {
            let mut tls = inner
                .tls
                .accept(tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
                return Err("client did not negotiate ALPN tunnel/1".to_owned());
            }
            let msg = match protocol::read_frame(&mut tls, MAX_HELLO_LEN).await {
                Ok(m) => m,
                Err(e) => {
                    refuse(&mut tls, RefusalCode::BadRequest, "malformed hello").await;
                    return Err(format!("hello: {e}"));
                }
            };
            match self.check_hello(msg, &tls, peer).await {
                Ok((hello, identity, slot)) => Ok((tls, hello, identity, slot)),
                Err((code, message, log)) => {
                    refuse(&mut tls, code, &message).await;
                    Err(log)
                }
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
            Ok(Ok(done)) => Some(done),
            Ok(Err(reason)) => {
                info!(reason, "handshake refused");
                None
            }
            Err(_) => {
                info!("handshake timed out");
                None
            }
        }
    }

    async fn check_hello(
        &self,
        msg: Message,
        tls: &Tls,
        peer: SocketAddr,
    ) -> Result<(Hello, Identity, Slot<String>), Refusal> {
        let Message::Hello {
            version,
            role,
            token,
            device,
            services,
            public,
        } = msg
        else {
            return Err(refusal(
                RefusalCode::BadRequest,
                "expected hello",
                "first frame not a hello",
            ));
        };
        if version != VERSION {
            let text =
                format!("protocol version {version} not supported; this relay speaks {VERSION}");
            return Err(refusal(RefusalCode::UnsupportedVersion, &text, &text));
        }
        let hello = Hello {
            role,
            device,
            services,
            public,
        };
        hello
            .validate()
            .map_err(|m| refusal(RefusalCode::BadRequest, &m, &m))?;
        let request = AuthRequest {
            peer,
            token: (!token.expose().is_empty()).then_some(token),
            client_cert: tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            device: (role == Role::Device).then(|| hello.device.clone()),
        };
        // Handshakes already in flight when the source was cut off are not authenticated
        // either: a correct guess must not succeed while the source is blocked.
        if self.inner.auth_failures.is_blocked(source_key(peer.ip())) {
            return Err(refusal(
                RefusalCode::AuthFailed,
                "authentication failed",
                "source throttled after failed authentications",
            ));
        }
        let identity = self
            .inner
            .authenticator
            .authenticate(&request)
            .await
            .map_err(|e| {
                self.inner.auth_failures.failed(source_key(peer.ip()));
                refusal(
                    RefusalCode::AuthFailed,
                    "authentication failed",
                    &e.to_string(),
                )
            })?;
        if self.inner.draining.is_cancelled() {
            return Err(refusal(
                RefusalCode::Unavailable,
                "relay is shutting down",
                "draining",
            ));
        }
        let slot = self
            .inner
            .per_identity
            .try_take(identity.name().to_owned())
            .ok_or_else(|| {
                let log = format!("{} holds too many sessions", identity.name());
                refusal(
                    RefusalCode::Unavailable,
                    "too many sessions for this credential",
                    &log,
                )
            })?;
        Ok((hello, identity, slot))
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
/// (code sent to the client, message sent to the client, reason for the log)
type Refusal = (RefusalCode, String, String);

fn refusal(code: RefusalCode, message: &str, log: &str) -> Refusal {
    (code, message.to_owned(), log.to_owned())
}

async fn refuse(tls: &mut Tls, code: RefusalCode, message: &str) {
    let msg = Message::Refused {
        code,
        message: message.to_owned(),
    };
    let _ = protocol::write_frame(tls, &msg).await;
    let _ = tls.shutdown().await;
}

/// A validated hello.
pub(crate) struct Hello {
    role: Role,
    device: String,
    services: Vec<String>,
    public: Vec<(String, u16)>,
}

impl Hello {
    fn validate(&self) -> Result<(), String> {
        match self.role {
            Role::Access => {
                if !self.device.is_empty() || !self.services.is_empty() || !self.public.is_empty() {
                    return Err("an access client declares no device, services or ports".into());
                }
            }
            Role::Device => {
                if !protocol::is_valid_name(&self.device) {
                    return Err(format!("invalid device id {:?}", self.device));
                }
                for (i, s) in self.services.iter().enumerate() {
                    if !protocol::is_valid_name(s) || self.services[..i].contains(s) {
                        return Err(format!("invalid or duplicate service name {s:?}"));
                    }
                }
                for (i, (s, _)) in self.public.iter().enumerate() {
                    if self.public[..i].iter().any(|(o, _)| o == s) {
                        return Err(format!("public port asked twice for service {s:?}"));
                    }
                    if !self.services.contains(s) {
                        return Err(format!("public port for undeclared service {s:?}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes-and-validates path of a hello, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn validate_hello(msg: Message) -> Result<(), String> {
    let Message::Hello {
        role,
        device,
        services,
        public,
        ..
    } = msg
    else {
        return Err("not a hello".into());
    };
    Hello {
        role,
        device,
        services,
        public,
    }
    .validate()
}

/// Runs the per-session meter over bytes a peer sent, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn meter_bytes(data: &[u8]) {
    meter::fuzz(data);
}

/// The key of the per-source handshake cap: the address for IPv4, the /64 prefix for
/// IPv6 (one subscriber usually holds a whole /64 and could spread over it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Locks a mutex even if a panicking thread poisoned it: each critical section is a
/// single counter update, so the map stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A slot in the handshake caps, released when the handshake ends either way.
struct HandshakePermit {
    _global: OwnedSemaphorePermit,
    _source: Slot<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_caps_count_an_ipv6_slash_64_as_one_source() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key("::ffff:192.0.2.7".parse().unwrap()), v4);
    }
}
