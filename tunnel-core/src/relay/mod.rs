//! The relay: accepts TLS from devices and access clients, authenticates them, keeps the
//! registry of online devices and joins authorized access streams to device streams.
//!
//! Where each job lives:
//!
//! - [`builder`]: settings, defaults and their validation.
//! - this file: the [`Relay`] handle, the accept loop and shutdown.
//! - [`handshake`]: pre-auth caps, TLS, ALPN, hello, authentication.
//! - [`device`]: a device's registration and welcome.
//! - [`access`]: an access client's streams: authorize, find the device, join; the list.
//! - [`session`]: the loop every session runs: heartbeat watchdog and header dispatch.
//! - [`bridge`]: asking a device for a stream and splicing the two ends.
//! - [`public`]: public ports: binding and accepting.
//! - [`registry`]: which devices are online, under which identity.
//! - [`limit`], [`throttle`], [`meter`]: pre-auth caps, login throttling, per-session rates.

mod access;
mod bridge;
mod builder;
mod cluster;
mod device;
mod events;
mod handshake;
mod limit;
mod meter;
mod owners;
mod preauth;
mod public;
mod registry;
mod session;
mod throttle;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::Authenticator;
use crate::config::Limits;
use crate::error::RelayError;
use crate::protocol::Role;
use crate::tls::{SpkiPin, TlsIdentity};
pub use builder::RelayBuilder;
pub use cluster::{CLAIM_TIMEOUT, ClaimRefused, Cluster, DeviceClaim};
use events::Tables;
pub use events::{Event, EventSink, SessionInfo, SessionRole, StreamInfo};
use handshake::source_key;
#[cfg(feature = "fuzzing")]
pub(crate) use handshake::validate_hello;
use limit::KeyedLimit;
use preauth::{PreAuth, Ticket};
use registry::Registry;
pub use throttle::AuthThrottle;

/// A TLS connection accepted by the relay.
type Tls = tokio_rustls::server::TlsStream<crate::read_ahead::ReadAhead<TcpStream>>;

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
    /// Most public ports one credential may own at once.
    max_public_ports: usize,
    /// Most concurrent public connections from one source to one device.
    public_per_source: usize,
    /// A public connection without a byte either way for this long is closed.
    public_idle: Duration,
    /// Most public connections one device session carries at once.
    max_public_streams: usize,
    heartbeat: Duration,
    limits: Limits,
    grace: Duration,
    registry: Registry,
    /// Handshakes in progress, capped relay-wide, per source and per source network.
    preauth: Arc<PreAuth>,
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
    /// Live sessions and streams, and the event sink.
    tables: Arc<Tables>,
    /// The cluster this relay belongs to, if any.
    cluster: Option<Arc<dyn Cluster>>,
    /// Nonces of cluster claims.
    claims: AtomicU64,
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
        RelayBuilder::new(identity, Arc::new(authenticator))
    }

    /// The SHA-256 pin of the relay's public key, for clients' [`RelayTrust::Pin`](crate::RelayTrust::Pin).
    pub fn pin(&self) -> SpkiPin {
        self.inner.pin
    }

    /// IDs of the devices online right now, sorted.
    pub fn online_devices(&self) -> Vec<String> {
        self.inner.registry.online_ids()
    }

    /// The sessions open now (devices and access clients), oldest first.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.inner.tables.sessions()
    }

    /// Closes a session: its streams are reset; a device goes offline (and reconnects with
    /// backoff). Returns whether it existed.
    pub fn close_session(&self, id: u64) -> bool {
        self.inner.tables.close_sessions(|s| s.id == id) > 0
    }

    /// Closes every session of a credential (by its [`principal`](crate::Identity::principal)),
    /// for a revoked, expired or changed credential. Returns how many. Its next handshake
    /// meets whatever the authenticator says then.
    pub fn close_sessions_of(&self, principal: &str) -> usize {
        self.inner
            .tables
            .close_sessions(|s| s.principal == principal)
    }

    /// The joined streams open now, with the bytes they carried so far.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.inner.tables.streams()
    }

    /// Cuts a joined stream (both ends are reset). Returns whether it existed.
    pub fn cut_stream(&self, id: u64) -> bool {
        self.inner.tables.cut_streams(|s| s.id == id) > 0
    }

    /// Releases a device ID: forgets which credential owns it and its public ports, and
    /// that it was seen, so that another credential (with a grant for it) may register it.
    /// This is how an operator moves a device to a new credential; a live session of the
    /// device is not closed. Returns whether there was anything to forget.
    pub fn release_device(&self, device: &str) -> bool {
        self.inner.registry.release(device)
    }

    /// Closes the session of `device` if it is online here (for a cluster whose device ID
    /// was taken over by a session on another relay). Returns whether it was.
    pub fn disconnect_device(&self, device: &str) -> bool {
        let Some(online) = self.inner.registry.lookup(device) else {
            return false;
        };
        online.session.close();
        true
    }

    /// Whether shutdown has begun: no new sessions or streams (a cluster's readiness).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
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
        if inner.cluster.is_some() {
            // Drain: in a cluster, devices without a running stream go to another relay
            // now (this one accepts nobody); the others once their streams end.
            let busy = inner
                .tables
                .streams()
                .into_iter()
                .map(|s| s.device)
                .collect();
            let idle = inner.registry.sessions_except(&busy);
            info!(
                devices = idle.len(),
                "sending idle devices to the other relays"
            );
            for session in idle {
                session.close();
            }
        }
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
            crate::metrics::throttled("auth_failures");
            debug!(%peer, "too many failed authentications from this source; dropping");
            return;
        }
        let ticket = match self.inner.preauth.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                crate::metrics::throttled(why.as_str());
                return debug!(%peer, ?why, "over a handshake cap; dropping connection");
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = self.inner.clone();
        let span = info_span!("conn", %peer);
        self.inner
            .connections
            .spawn(connection(inner, tcp, peer, ticket).instrument(span));
    }
}

/// One connection's task: handshake, then the device's or access client's session.
///
/// The task is as large as its largest state for the session's whole life, so what only the
/// handshake needs stays boxed: the handshake future (TLS acceptor, hello) and the
/// `Accepted` it returns (1.5 KiB with its TLS stream; an async fn also keeps its
/// arguments for its whole life). heaptrack, benches/RESULTS.md.
async fn connection(inner: Arc<Inner>, tcp: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let accepted = tokio::select! {
        accepted = Box::pin(inner.handshake(tcp, peer)) => accepted,
        () = ticket.cancelled.cancelled() => {
            return info!("handshake evicted to make room for a newcomer");
        }
    };
    drop(ticket);
    let Some(accepted) = accepted else { return };
    match accepted.hello.role {
        Role::Access => access::run(inner, accepted).await,
        Role::Device => device::run(inner, accepted).await,
    }
}

/// Runs the per-session meter over bytes a peer sent, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn meter_bytes(data: &[u8]) {
    meter::fuzz(data);
}
