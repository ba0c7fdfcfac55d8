//! The access side: a [`Dialer`] holds one session with the relay and opens streams to
//! device services over it, like `TcpStream::connect`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::debug;

use super::ClientConfig;
use super::backoff::Backoff;
use super::connect::{Connected, HelloRequest, connect};
use crate::error::{ConnectError, DialError};
use crate::mux::{OpenError, Session};
use crate::protocol::{
    self, Forward, MAX_FRAME_LEN, MAX_HEADER_LEN, Message, Role, STREAM_OPEN_TIMEOUT, StatusCode,
};
use crate::stream::Stream;

/// One device as listed by [`Dialer::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The device ID.
    pub device: String,
    /// Whether it is connected to the relay right now.
    pub online: bool,
    /// The services it declared that this credential may open (empty when offline and
    /// never seen since the relay started).
    pub services: Vec<String>,
}

/// An access client: opens streams to `(device, service)` through the relay.
///
/// All streams share one multiplexed TLS session; opening a stream costs one round trip,
/// with no new TCP or TLS handshake. If the session is lost, the next call reconnects.
/// Cheap to clone.
///
/// ```no_run
/// # async fn run(pin: tunnel_core::SpkiPin) -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tunnel_core::{ClientConfig, Dialer, Token};
/// let dialer = Dialer::connect(ClientConfig::new("relay.example.com:7835", pin).token(Token::new("tun_…"))).await?;
/// let mut stream = dialer.dial("pi-42", "web").await?;
/// stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
/// stream.shutdown().await?; // half-close: the device still answers
/// let mut page = Vec::new();
/// stream.read_to_end(&mut page).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Dialer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    session: Mutex<Option<Session>>,
}

impl Dialer {
    /// Connects and authenticates to the relay.
    pub async fn connect(config: ClientConfig) -> Result<Self, ConnectError> {
        let session = open_session(&config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                session: Mutex::new(Some(session)),
            }),
        })
    }

    /// Like [`connect`](Self::connect), but retries failures that may pass (the relay is
    /// unreachable, busy or restarting) with the device's backoff, for at most `patience`.
    /// A permanent failure (bad credential or certificate) is returned at once.
    pub async fn connect_with_retry(
        config: ClientConfig,
        patience: Duration,
    ) -> Result<Self, ConnectError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Backoff::default();
        loop {
            match Self::connect(config.clone()).await {
                Ok(dialer) => return Ok(dialer),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    let delay = backoff.next_delay();
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(e);
                    }
                    debug!(error = %e, ?delay, "cannot connect yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Opens a stream to `service` on `device`. Fails with a typed error when the
    /// credential may not, the device is offline, the service is unknown, or the device
    /// could not reach its local target; the session stays usable either way.
    pub async fn dial(&self, device: &str, service: &str) -> Result<Stream, DialError> {
        check_names(device, service)?;
        let header = Message::Open {
            device: device.to_owned(),
            service: service.to_owned(),
        };
        self.open_with(&header).await
    }

    /// Like [`dial`](Self::dial), but returns as soon as the request is sent, so what you
    /// write next travels with it: the reply to a first request (an HTTP `GET`, an MQTT
    /// `CONNECT`) comes back in one round trip through relay and device instead of two.
    ///
    /// The relay's answer is read by the stream's **first read**:
    /// - If the stream was refused (denied, device offline, unknown service, target
    ///   refused…), that read fails with an [`io::Error`] whose inner error is the
    ///   [`DialError`] (`e.get_ref()` and `downcast_ref::<DialError>()`); its message counts
    ///   the bytes written before the answer, which were **not delivered**. Later reads and
    ///   writes fail too, and so does a write made after the refusal arrived.
    /// - Writes before that read succeed once buffered, not once delivered: count nothing
    ///   as delivered before a read has returned.
    /// - A name error or a lost session still fails here, before anything is sent.
    ///
    /// For a protocol where the server speaks first (SSH), there is nothing to gain: use
    /// [`dial`](Self::dial), whose errors come at once.
    ///
    /// ```no_run
    /// # async fn run(dialer: tunnel_core::Dialer) -> std::io::Result<()> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// let mut stream = dialer.dial_early("pi-42", "web").await.map_err(std::io::Error::other)?;
    /// stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?; // goes out with the open
    /// let mut page = Vec::new();
    /// stream.read_to_end(&mut page).await?; // a refusal is this read's error
    /// # Ok(()) }
    /// ```
    pub async fn dial_early(&self, device: &str, service: &str) -> Result<Stream, DialError> {
        check_names(device, service)?;
        let header = Message::Open {
            device: device.to_owned(),
            service: service.to_owned(),
        };
        let mut stream = self.open_stream().await?;
        within_open_deadline(protocol::write_frame(&mut stream, &header)).await?;
        stream.expect_answer();
        Ok(stream)
    }

    /// For a relay of a cluster, on its link to a peer relay: opens a stream to `service`
    /// on `device`, held by the peer, on behalf of `caller`, whom this relay authenticated.
    /// The peer checks the caller's own grants and answers as [`dial`](Self::dial) would.
    /// Any other credential is refused (`protocol` error): only a session the peer
    /// authenticated as a [relay peer](crate::Identity::relay_peer) may forward.
    #[doc(hidden)]
    pub async fn forward(
        &self,
        device: &str,
        service: &str,
        caller: &crate::Identity,
        origin: &str,
    ) -> Result<Stream, DialError> {
        check_names(device, service)?;
        let header = Message::Forward(Forward {
            device: device.to_owned(),
            service: service.to_owned(),
            principal: caller.principal().to_owned(),
            caller: caller.name().to_owned(),
            origin: origin.to_owned(),
        });
        self.open_with(&header).await
    }

    /// Opens a stream with an `Open` or `Forward` header and reads the answer.
    async fn open_with(&self, header: &Message) -> Result<Stream, DialError> {
        let (mut stream, reply) = self.request(header, MAX_HEADER_LEN).await?;
        match reply {
            Message::Status {
                code: StatusCode::Ok,
                ..
            } => Ok(stream),
            Message::Status { code, message } => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                Err(DialError::from_status(code, message))
            }
            other => Err(DialError::Protocol(format!(
                "expected status, got {}",
                other.name()
            ))),
        }
    }

    /// Lists the devices this credential may reach, online or not.
    pub async fn list(&self) -> Result<Vec<DeviceInfo>, DialError> {
        match self.request(&Message::List, MAX_FRAME_LEN).await?.1 {
            Message::DeviceList(entries) => Ok(entries
                .into_iter()
                .map(|e| DeviceInfo {
                    device: e.device,
                    online: e.online,
                    services: e.services,
                })
                .collect()),
            Message::Status { code, message } => Err(DialError::from_status(code, message)),
            other => Err(DialError::Protocol(format!(
                "expected device list, got {}",
                other.name()
            ))),
        }
    }

    /// Closes the session with the relay. Open streams are cut.
    pub async fn close(&self) {
        if let Some(s) = self.inner.session.lock().await.take() {
            s.close();
            s.closed().await;
        }
    }

    /// Opens a stream, writes `header` and reads the relay's answer.
    async fn request(
        &self,
        header: &Message,
        max_reply: usize,
    ) -> Result<(Stream, Message), DialError> {
        let mut stream = self.open_stream().await?;
        let exchange = async {
            protocol::write_frame(&mut stream, header).await?;
            protocol::read_frame(&mut stream, max_reply).await
        };
        let reply = within_open_deadline(exchange).await?;
        Ok((stream, reply))
    }

    /// Opens a new stream on the session, replacing a session that just ended.
    async fn open_stream(&self) -> Result<Stream, DialError> {
        let mut session = self.session().await?;
        // A session that ends between the check and the open (revoked, relay restarted)
        // has carried nothing of this request yet: one retry on a fresh session is safe.
        let stream = match session.open().await {
            Err(OpenError::Closed) => {
                session = self.session().await?;
                session.open().await
            }
            other => other,
        }
        .map_err(|e| match e {
            OpenError::Closed => {
                DialError::ConnectionLost(io::Error::new(io::ErrorKind::ConnectionReset, e))
            }
            OpenError::TooManyStreams | OpenError::Timeout => DialError::Unavailable(e.to_string()),
        })?;
        Ok(stream)
    }

    /// The live session, reconnecting if the previous one died.
    async fn session(&self) -> Result<Session, ConnectError> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        debug!("session lost; reconnecting");
        let fresh = open_session(&self.inner.config).await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }
}

/// Runs a stream's header exchange under [`STREAM_OPEN_TIMEOUT`], with its failures as
/// dial errors.
async fn within_open_deadline<T>(
    exchange: impl Future<Output = Result<T, protocol::FrameError>>,
) -> Result<T, DialError> {
    match tokio::time::timeout(STREAM_OPEN_TIMEOUT, exchange).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(protocol::FrameError::Io(e))) => Err(DialError::ConnectionLost(e)),
        Ok(Err(e)) => Err(DialError::Protocol(e.to_string())),
        Err(_) => Err(DialError::Timeout),
    }
}

/// Refuses an invalid device or service name before anything goes on the wire.
fn check_names(device: &str, service: &str) -> Result<(), DialError> {
    match [device, service]
        .into_iter()
        .find(|n| !protocol::is_valid_name(n))
    {
        Some(bad) => Err(DialError::InvalidName(bad.to_owned())),
        None => Ok(()),
    }
}

async fn open_session(config: &ClientConfig) -> Result<Session, ConnectError> {
    let hello = HelloRequest {
        role: Role::Access,
        device: String::new(),
        services: vec![],
        public: vec![],
    };
    // The relay never opens streams towards an access client: dropping the inbound side
    // makes the driver reset any it tries.
    let Connected { session, .. } = connect(config, hello).await?;
    Ok(session)
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The heartbeat task holds a handle too; close explicitly so the session ends.
        if let Some(s) = self.session.get_mut() {
            s.close();
        }
    }
}
