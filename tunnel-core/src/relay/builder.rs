//! [`RelayBuilder`]: every relay setting with its default, validated in `build()`.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::Cluster;
use super::events::{EventSink, Tables};
use super::limit::KeyedLimit;
use super::preauth::PreAuth;
use super::registry::Registry;
use super::throttle::{AuthThrottle, DEFAULT_AUTH_FAILURE_BURST, DEFAULT_AUTH_FAILURE_REFILL};
use super::{Inner, Relay};
use crate::auth::Authenticator;
use crate::config::{DEFAULT_HEARTBEAT, Limits, MIN_HEARTBEAT};
use crate::error::ConfigError;
use crate::tls::TlsIdentity;

/// Default time running streams get to finish after shutdown begins.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default cap on connections still in TLS or hello, relay-wide: an attacker holding many
/// half-open handshakes must not starve real devices of file descriptors and memory.
const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Default cap on concurrent sessions of one identity: a leaked or stolen credential must
/// not hold unbounded relay memory (each session may buffer up to its receive window).
const DEFAULT_MAX_SESSIONS_PER_IDENTITY: usize = 64;
/// Default cap on the public ports one credential may own: a device publishes a handful of
/// services; a credential must not reserve a whole range for itself.
const DEFAULT_MAX_PUBLIC_PORTS: usize = 16;
/// Default cap on concurrent public connections from one source (address, IPv6 /64) to
/// one device: a browser opens 6 to 8 per host; an idle-connection flood from one address
/// stops here.
const DEFAULT_PUBLIC_PER_SOURCE: usize = 32;
/// Default idle timeout of a public connection: nothing moved either way for this long.
/// Long enough for an idle ssh session between keystrokes and for long polls; short
/// enough that abandoned connections give their slots back.
const DEFAULT_PUBLIC_IDLE: Duration = Duration::from_secs(30 * 60);
/// Default cap on connections in TLS or hello from one IP address.
const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 32;
/// Default cap on connections in TLS or hello from one network (IPv4 /24, IPv6 /56):
/// an attacker with a few neighbouring addresses holds a quarter of the relay at most.
const DEFAULT_MAX_HANDSHAKES_PER_NETWORK: usize = 128;

/// Builds a [`Relay`]. The TLS identity and the authenticator are required up front, so a
/// relay without authentication cannot be built.
pub struct RelayBuilder {
    identity: TlsIdentity,
    authenticator: Arc<dyn Authenticator>,
    client_roots: Option<Arc<RootCertStore>>,
    public_ports: Option<RangeInclusive<u16>>,
    public_bind: IpAddr,
    max_public_ports: usize,
    public_per_source: usize,
    public_idle: Duration,
    max_public_streams: Option<usize>,
    heartbeat: Duration,
    limits: Limits,
    grace: Duration,
    max_handshakes: usize,
    max_handshakes_per_ip: usize,
    max_handshakes_per_network: usize,
    max_sessions_per_identity: usize,
    auth_failure_burst: u32,
    auth_failure_refill: Duration,
    events: Option<Arc<dyn EventSink>>,
    cluster: Option<Arc<dyn Cluster>>,
}

impl RelayBuilder {
    pub(super) fn new(identity: TlsIdentity, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            identity,
            authenticator,
            client_roots: None,
            public_ports: None,
            public_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            max_public_ports: DEFAULT_MAX_PUBLIC_PORTS,
            public_per_source: DEFAULT_PUBLIC_PER_SOURCE,
            public_idle: DEFAULT_PUBLIC_IDLE,
            max_public_streams: None,
            heartbeat: DEFAULT_HEARTBEAT,
            limits: Limits::default(),
            grace: DEFAULT_GRACE,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            max_handshakes_per_network: DEFAULT_MAX_HANDSHAKES_PER_NETWORK,
            max_sessions_per_identity: DEFAULT_MAX_SESSIONS_PER_IDENTITY,
            auth_failure_burst: DEFAULT_AUTH_FAILURE_BURST,
            auth_failure_refill: DEFAULT_AUTH_FAILURE_REFILL,
            events: None,
            cluster: None,
        }
    }

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
    /// Most public ports one credential may own at once (default 16), across its devices
    /// and while they are offline (ports stay reserved for the device that bound them).
    /// Ports asked for past this are left out and reported to the device.
    pub fn max_public_ports_per_credential(mut self, n: usize) -> Self {
        self.max_public_ports = n;
        self
    }
    /// Public connections to one device: at most `per_source` at once from one source
    /// address (IPv6 /64; default 32), and each closed after `idle` without a byte either
    /// way (default 30 min).
    pub fn public_connection_limits(mut self, per_source: usize, idle: Duration) -> Self {
        self.public_per_source = per_source;
        self.public_idle = idle;
        self
    }
    /// Most public connections one device session carries at once (default: half of
    /// [`Limits::max_streams`], so private access always finds the other half). At most
    /// `max_streams - 1`.
    pub fn max_public_streams(mut self, n: usize) -> Self {
        self.max_public_streams = Some(n);
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
    /// IP (default 32; an IPv6 /64 counts as one). A connection over its source's cap is
    /// closed at once; when the relay-wide cap is full, the oldest handshake of the network
    /// holding the most is closed to make room instead (sources that authenticated in the
    /// last 10 minutes are never the ones closed).
    pub fn max_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.max_handshakes = total;
        self.max_handshakes_per_ip = per_ip;
        self
    }
    /// Caps connections still in their handshake per source network, IPv4 /24 or IPv6 /56
    /// (default 128). Sources that authenticated in the last 10 minutes are not counted.
    pub fn max_handshakes_per_network(mut self, n: usize) -> Self {
        self.max_handshakes_per_network = n;
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
    /// Sends every [`Event`](crate::Event) (authentications, devices online and offline,
    /// streams opened, refused and closed with their bytes) to `sink`, for an audit trail
    /// or per-device figures. The sink is called inline: it must return at once.
    pub fn events(mut self, sink: impl EventSink) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }
    /// Makes this relay one of a cluster: device IDs are claimed cluster-wide, streams for
    /// devices held by other relays cross to them, and sessions of
    /// [relay peers](crate::Identity::relay_peer) may forward streams here. See
    /// [`Cluster`] for the rules.
    pub fn cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
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
        if self
            .max_public_streams
            .is_some_and(|n| n == 0 || n >= self.limits.max_streams)
        {
            return Err(ConfigError::Invalid(format!(
                "max public streams must be 1..{} (private access keeps the rest)",
                self.limits.max_streams
            )));
        }
        if self.public_per_source == 0 || self.public_idle.is_zero() {
            return Err(ConfigError::Invalid(
                "public connection limits must be non-zero".into(),
            ));
        }
        if self.max_handshakes == 0
            || self.max_handshakes_per_ip == 0
            || self.max_handshakes_per_network == 0
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
                max_public_ports: self.max_public_ports,
                public_per_source: self.public_per_source,
                public_idle: self.public_idle,
                max_public_streams: self
                    .max_public_streams
                    .unwrap_or((self.limits.max_streams / 2).max(1)),
                heartbeat: self.heartbeat,
                limits: self.limits,
                grace: self.grace,
                registry: Registry::default(),
                preauth: Arc::new(PreAuth::new(
                    self.max_handshakes,
                    self.max_handshakes_per_ip,
                    self.max_handshakes_per_network,
                )),
                per_identity: KeyedLimit::new(self.max_sessions_per_identity),
                auth_failures: AuthThrottle::new(self.auth_failure_burst, self.auth_failure_refill),
                draining: CancellationToken::new(),
                closing: CancellationToken::new(),
                streams: TaskTracker::new(),
                connections: TaskTracker::new(),
                tables: Arc::new(Tables::new(self.events)),
                cluster: self.cluster,
                claims: AtomicU64::new(1),
            }),
        })
    }
}
