//! The device side: a [`Listener`] stays connected to the relay (reconnecting with backoff)
//! and yields the streams that callers open to this device's services.

use std::io;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, warn};

use super::ClientConfig;
use super::backoff::Backoff;
use super::connect::{Connected, HelloRequest, connect};
use crate::error::{ConfigError, ConnectError};
use crate::protocol::status::Refusal;
use crate::protocol::validate::check_declaration;
use crate::protocol::{
    self, MAX_HEADER_LEN, MAX_SERVICES, Message, Role, STREAM_OPEN_TIMEOUT, StatusCode,
};
use crate::stream::Stream;

/// Incoming streams queued for [`Listener::accept`]. A burst beyond this waits (each
/// waiter holds one of the session's bounded stream slots) up to [`ACCEPT_WAIT`].
const ACCEPT_QUEUE: usize = 64;
/// How long an incoming stream waits for room in the accept queue before its caller gets
/// `unavailable`: long enough for a burst of connections, short of the relay's 15 s.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);

/// What a device declares to the relay.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    client: ClientConfig,
    device: String,
    services: Vec<String>,
    public: Vec<(String, u16)>,
}

impl DeviceConfig {
    /// A device registering as `device` through the relay described by `client`.
    pub fn new(client: ClientConfig, device: impl Into<String>) -> Self {
        Self {
            client,
            device: device.into(),
            services: vec![],
            public: vec![],
        }
    }
    /// Declares a service by name (`ssh`, `web`); only declared services can be opened.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.push(name.into());
        self
    }
    /// Asks the relay to publish a declared service on `port` (0 = any port of the relay's
    /// allowed range). Registration fails if the relay or the credential does not allow it.
    pub fn public(mut self, service: impl Into<String>, port: u16) -> Self {
        self.public.push((service.into(), port));
        self
    }
    fn validate(&self) -> Result<(), ConfigError> {
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return Err(ConfigError::Invalid(format!(
                "declare 1 to {MAX_SERVICES} services"
            )));
        }
        check_declaration(&self.device, &self.services, &self.public)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
    fn hello(&self) -> HelloRequest {
        HelloRequest {
            role: Role::Device,
            device: self.device.clone(),
            services: self.services.clone(),
            public: self.public.clone(),
        }
    }
}

/// The listener's connection to the relay, as last observed. Never reports `Connected`
/// for a session that is known to be dead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Registered with the relay; `public` lists the published `(service, port)` pairs.
    /// Match it with `Connected { public, .. }`: more fields may come.
    #[non_exhaustive]
    Connected {
        /// Public ports the relay bound for this device.
        public: Vec<(String, u16)>,
        /// Public ports asked for that the relay left out, `(service, why)`: busy, reserved
        /// for another device, or over the credential's cap. The device is registered and
        /// reachable privately either way. Always empty with relays older than 0.2.
        public_failed: Vec<(String, String)>,
        /// The relay that accepted, one of the configured addresses (several in a cluster).
        relay: String,
    },
    /// Not connected; retrying. `last_error` says why the last attempt or session failed.
    Reconnecting {
        /// Why the previous session ended or the last attempt failed.
        last_error: String,
    },
    /// Stopped by [`Listener::close`] or by dropping the listener.
    Stopped,
}

/// A device's presence on the relay, like a `TcpListener`: [`accept`](Self::accept) yields
/// each stream a caller opens to one of the declared services.
///
/// The listener reconnects by itself after any failure (exponential backoff from 0.5 s to
/// 30 s with jitter) and re-registers; [`accept`](Self::accept) keeps working across
/// reconnects. Dropping the listener disconnects.
///
/// ```no_run
/// # async fn run(pin: tunnel_core::SpkiPin) -> Result<(), Box<dyn std::error::Error>> {
/// use tunnel_core::{ClientConfig, DeviceConfig, Listener, Token};
/// let client = ClientConfig::new("relay.example.com:7835", pin).token(Token::new("tun_…"));
/// let listener = Listener::bind(DeviceConfig::new(client, "pi-42").service("ssh")).await?;
/// while let Some(incoming) = listener.accept().await {
///     println!("{} wants {}", incoming.caller(), incoming.service());
///     let stream = incoming.accept().await?; // or .refuse(..) / forward it somewhere
///     # drop(stream);
/// }
/// # Ok(()) }
/// ```
pub struct Listener {
    incoming: Mutex<mpsc::Receiver<Incoming>>,
    state: watch::Receiver<ListenerState>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    device: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("device", &self.device)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Listener {
    /// Connects to the relay and registers the device. Fails at once on errors that
    /// retrying cannot fix (bad credential or certificate, forbidden device ID or public
    /// port, invalid configuration); on other errors (relay unreachable) it returns a
    /// listener that keeps retrying in the background.
    pub async fn bind(config: DeviceConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let first = match connect(&config.client, config.hello()).await {
            Ok(c) => Ok(c),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => Err(e),
        };
        let initial = match &first {
            Ok(c) => ListenerState::Connected {
                public: c.public.clone(),
                public_failed: c.public_failed.clone(),
                relay: c.relay.clone(),
            },
            Err(e) => ListenerState::Reconnecting {
                last_error: e.to_string(),
            },
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let stop = CancellationToken::new();
        let device = config.device.clone();
        let supervisor = Supervisor {
            config,
            state: state_tx,
            incoming: tx,
            stop: stop.clone(),
        };
        let span = tracing::info_span!("device", device = %device);
        tokio::spawn(supervisor.run(first).instrument(span));
        Ok(Self {
            incoming: Mutex::new(rx),
            state: state_rx,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            device,
        })
    }

    /// Waits for the next stream a caller opened. Returns `None` once the listener is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        let mut rx = self.incoming.lock().await;
        tokio::select! {
            next = rx.recv() => next,
            () = self.stop.cancelled() => None,
        }
    }

    /// The current connection state.
    pub fn state(&self) -> ListenerState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change (for health checks and UIs).
    pub fn watch_state(&self) -> watch::Receiver<ListenerState> {
        self.state.clone()
    }

    /// Waits until the listener is connected, or until `timeout`.
    pub async fn wait_connected(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(String, u16)>, ConnectError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| !matches!(s, ListenerState::Reconnecting { .. }));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                ListenerState::Connected { public, .. } => Ok(public.clone()),
                _ => Err(ConnectError::Closed),
            },
            _ => Err(ConnectError::Timeout),
        }
    }

    /// Disconnects from the relay and stops reconnecting. Streams of the session, including
    /// those already accepted, are cut (their callers read an error).
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// A caller wants one of this device's services. Answer with [`accept`](Self::accept) or
/// [`refuse`](Self::refuse) promptly: the relay waits at most 15 s. Dropping it resets the
/// caller's stream.
pub struct Incoming {
    service: String,
    caller: String,
    peer: Option<String>,
    stream: Stream,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("service", &self.service)
            .field("caller", &self.caller)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Incoming {
    /// The service name the caller asked for.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// The caller's identity name at the relay, or `public` for a public-port connection.
    pub fn caller(&self) -> &str {
        &self.caller
    }
    /// For a public-port connection, the remote `ip:port` the relay saw.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }
    /// Accepts: the caller's open succeeds, and bytes flow.
    pub async fn accept(mut self) -> io::Result<Stream> {
        answer(&mut self.stream, StatusCode::Ok, "").await?;
        Ok(self.stream)
    }
    /// Refuses: the caller's open fails with the matching error and `message`.
    pub async fn refuse(mut self, why: Refusal, message: &str) -> io::Result<()> {
        answer(&mut self.stream, why.into(), message).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await
    }
}

/// Writes the device's answer; a stream error stays an `io::Error`.
async fn answer(stream: &mut Stream, code: StatusCode, message: &str) -> io::Result<()> {
    protocol::write_status(stream, code, message)
        .await
        .map_err(|e| match e {
            protocol::FrameError::Io(io) => io,
            other => io::Error::other(other),
        })
}

/// Owns the connection to the relay: connects, hands out incoming streams, reconnects.
struct Supervisor {
    config: DeviceConfig,
    state: watch::Sender<ListenerState>,
    incoming: mpsc::Sender<Incoming>,
    stop: CancellationToken,
}

impl Supervisor {
    /// `first` is the outcome of the attempt `bind` made: a failure counts like any other
    /// (logged, then the backoff's wait), so a refused first attempt is not retried at once.
    async fn run(self, first: Result<Connected, ConnectError>) {
        let mut backoff = Backoff::default();
        let mut first = Some(first);
        loop {
            let conn = match first.take() {
                Some(outcome) => outcome,
                None => connect(&self.config.client, self.config.hello()).await,
            };
            match conn {
                Ok(c) => {
                    info!(relay = c.relay, identity = c.identity, public = ?c.public, "registered with the relay");
                    for (service, why) in &c.public_failed {
                        warn!(service, why, "public port left out by the relay");
                    }
                    self.state.send_replace(ListenerState::Connected {
                        public: c.public.clone(),
                        public_failed: c.public_failed.clone(),
                        relay: c.relay.clone(),
                    });
                    let started = tokio::time::Instant::now();
                    let reason = self.serve(c).await;
                    if self.stop.is_cancelled() {
                        break;
                    }
                    warn!(reason, "session with the relay lost; reconnecting");
                    self.state
                        .send_replace(ListenerState::Reconnecting { last_error: reason });
                    backoff.session_ended(started.elapsed());
                }
                Err(e) => {
                    backoff.attempt_failed(&e);
                    if e.is_permanent() {
                        warn!(error = %e, "relay refused this device; retrying");
                    } else {
                        info!(error = %e, "cannot reach the relay; retrying");
                    }
                    self.state.send_replace(ListenerState::Reconnecting {
                        last_error: e.to_string(),
                    });
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "waiting before reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => break,
            }
        }
        self.state.send_replace(ListenerState::Stopped);
    }

    /// Hands out the session's incoming streams until it ends; returns why it ended.
    async fn serve(&self, c: Connected) -> String {
        let Connected {
            session,
            mut inbound,
            ..
        } = c;
        loop {
            tokio::select! {
                stream = inbound.recv() => {
                    let Some(stream) = stream else { break };
                    tokio::spawn(read_incoming(stream, self.config.services.clone(), self.incoming.clone()).in_current_span());
                }
                () = session.closed() => break,
                () = self.stop.cancelled() => {
                    session.close();
                    return "stopped".into();
                }
            }
        }
        // The session ended by itself: the relay went away, a heartbeat was missed, or a
        // newer session of this device replaced it.
        "session closed (relay gone, heartbeat lost or replaced)".into()
    }
}

/// Reads the relay's `Incoming` header, refuses undeclared services on the device's own
/// authority, and queues the rest for `accept`.
async fn read_incoming(mut stream: Stream, services: Vec<String>, queue: mpsc::Sender<Incoming>) {
    let header = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        protocol::read_frame(&mut stream, MAX_HEADER_LEN),
    )
    .await;
    let Ok(Ok(Message::Incoming {
        service,
        caller,
        peer,
    })) = header
    else {
        return debug!("bad or missing incoming header; dropping stream");
    };
    if !services.contains(&service) {
        let _ = answer(
            &mut stream,
            StatusCode::UnknownService,
            &format!("no service {service} here"),
        )
        .await;
        return;
    }
    let peer = (!peer.is_empty()).then_some(peer);
    debug!(%service, %caller, ?peer, "incoming stream");
    let incoming = Incoming {
        service,
        caller,
        peer,
        stream,
    };
    if let Err(mpsc::error::SendTimeoutError::Timeout(mut refused)) =
        queue.send_timeout(incoming, ACCEPT_WAIT).await
    {
        let _ = answer(
            &mut refused.stream,
            StatusCode::Unavailable,
            "device accept queue full",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_config_rejects_bad_names_and_undeclared_public_services() {
        let pin: crate::SpkiPin = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let client = ClientConfig::new("relay:1", pin);
        assert!(
            DeviceConfig::new(client.clone(), "pi 42")
                .service("ssh")
                .validate()
                .is_err()
        );
        assert!(DeviceConfig::new(client.clone(), "pi").validate().is_err());
        assert!(
            DeviceConfig::new(client.clone(), "pi")
                .service("ssh")
                .service("ssh")
                .validate()
                .is_err()
        );
        assert!(
            DeviceConfig::new(client.clone(), "pi")
                .service("ssh")
                .public("web", 0)
                .validate()
                .is_err()
        );
        DeviceConfig::new(client, "pi")
            .service("ssh")
            .public("ssh", 0)
            .validate()
            .unwrap();
    }
}
