//! Typed errors, one enum per failure domain. Each maps to one [`ErrorKind`] through the
//! status table in `protocol/status.rs`.

use std::io;
use std::path::PathBuf;

use crate::protocol::{ErrorKind, RefusalCode, StatusCode};

/// A configuration that cannot work: bad certificate, pin, address, pattern or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A certificate or key could not be loaded, parsed or generated.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A relay pin is not `sha256:<64 hex digits>`.
    #[error("bad pin {0:?}: want sha256:<64 hex digits>")]
    Pin(String),
    /// An address is not `host:port`.
    #[error("bad address {0:?}: want host:port")]
    Address(String),
    /// Any other invalid value, with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Establishing a session with the relay failed (device or access client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The relay's address did not resolve or its port did not answer.
    #[error("relay unreachable at {addr}: {source}")]
    Unreachable {
        /// The relay address as given.
        addr: String,
        /// The resolver or socket error.
        #[source]
        source: io::Error,
    },
    /// The relay's certificate did not match the pin or the CA roots.
    #[error("bad relay certificate: {0}")]
    BadCertificate(#[source] rustls::Error),
    /// The relay rejected our client certificate (unknown issuer, expired, revoked).
    #[error("the relay rejected the client certificate: {0}")]
    CertificateRejected(#[source] rustls::Error),
    /// The TLS handshake failed for another reason.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The peer does not speak `tunnel/1`.
    #[error("the relay does not speak protocol tunnel/1")]
    Alpn,
    /// The relay refused the hello.
    #[error("relay refused the session ({code:?}): {message}")]
    Refused {
        /// Why, as a code.
        code: RefusalCode,
        /// The relay's explanation.
        message: String,
    },
    /// The handshake did not finish within its deadline.
    #[error("handshake with the relay timed out")]
    Timeout,
    /// The relay broke the protocol or closed the connection mid-handshake.
    #[error("protocol error during handshake: {0}")]
    Protocol(String),
    /// The client configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener was closed while waiting for it to connect.
    #[error("the listener was closed")]
    Closed,
}

impl ConnectError {
    /// Whether retrying the same request cannot help (bad credential, bad certificate,
    /// forbidden device ID): a reconnect loop reports these loudly.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Refused { code, .. } => code.is_permanent(),
            Self::BadCertificate(_)
            | Self::CertificateRejected(_)
            | Self::Alpn
            | Self::Config(_) => true,
            _ => false,
        }
    }

    /// The kind of failure, as the status table names it (and Python raises it).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused { code, .. } => code.kind(),
            Self::BadCertificate(_) | Self::CertificateRejected(_) => ErrorKind::Certificate,
            Self::Config(_) => ErrorKind::Config,
            Self::Unreachable { .. }
            | Self::Tls(_)
            | Self::Alpn
            | Self::Timeout
            | Self::Protocol(_)
            | Self::Closed => ErrorKind::Connect,
        }
    }
}

/// Opening a stream to a device service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// No session with the relay could be established.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The credential's grants do not allow this device and service.
    #[error("access denied: {0}")]
    Denied(String),
    /// The device is not connected to the relay.
    #[error("device offline: {0}")]
    DeviceOffline(String),
    /// The device did not declare this service.
    #[error("unknown service: {0}")]
    UnknownService(String),
    /// The device could not connect to the service's local address.
    #[error("target refused: {0}")]
    TargetRefused(String),
    /// A limit was hit or the device did not answer in time; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The device or service name is not valid.
    #[error("invalid name {0:?}: want 1-63 characters of A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// The answer did not come within the open deadline.
    #[error("timed out opening the stream")]
    Timeout,
    /// The session with the relay was lost while opening, or the stream broke.
    #[error("connection to the relay lost: {0}")]
    ConnectionLost(#[source] io::Error),
    /// The relay broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O error, not the tunnel's (stdin or stdout in [`pipe_stdio`](crate::pipe_stdio)).
    #[error("local i/o: {0}")]
    Local(#[source] io::Error),
}

impl DialError {
    /// The error a caller gets for a stream answer, through the status table's kind.
    /// The message is the peer's text, printed with control characters escaped.
    pub(crate) fn from_status(code: StatusCode, message: String) -> Self {
        let message = crate::protocol::validate::printable(&message);
        match code.kind() {
            Some(ErrorKind::Denied) => Self::Denied(message),
            Some(ErrorKind::DeviceOffline) => Self::DeviceOffline(message),
            Some(ErrorKind::UnknownService) => Self::UnknownService(message),
            Some(ErrorKind::TargetRefused) => Self::TargetRefused(message),
            Some(ErrorKind::Unavailable) => Self::Unavailable(message),
            // `ok` is not an error; a caller that turns it into one met a protocol bug.
            _ => Self::Protocol(message),
        }
    }

    /// The inverse of [`from_status`](Self::from_status), for a relay that passes on what
    /// a peer relay answered: the stream answer and its text without the kind's prefix
    /// (the caller's client adds it again). A failure to reach the peer at all is
    /// `unavailable`.
    pub(crate) fn to_status(&self) -> (StatusCode, String) {
        match self {
            Self::Denied(m) => (StatusCode::Denied, m.clone()),
            Self::DeviceOffline(m) => (StatusCode::DeviceOffline, m.clone()),
            Self::UnknownService(m) => (StatusCode::UnknownService, m.clone()),
            Self::TargetRefused(m) => (StatusCode::TargetRefused, m.clone()),
            Self::Unavailable(m) => (StatusCode::Unavailable, m.clone()),
            other => (StatusCode::Unavailable, other.to_string()),
        }
    }

    /// The kind of failure, as the status table names it (and Python raises it).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect(c) => c.kind(),
            Self::Denied(_) => ErrorKind::Denied,
            Self::DeviceOffline(_) => ErrorKind::DeviceOffline,
            Self::UnknownService(_) => ErrorKind::UnknownService,
            Self::TargetRefused(_) => ErrorKind::TargetRefused,
            Self::Unavailable(_) | Self::Timeout => ErrorKind::Unavailable,
            Self::InvalidName(_) => ErrorKind::Config,
            Self::ConnectionLost(_) => ErrorKind::ConnectionLost,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::Local(_) => ErrorKind::Io,
        }
    }
}

impl From<DialError> for io::Error {
    fn from(e: DialError) -> Self {
        let kind = match &e {
            DialError::Denied(_) => io::ErrorKind::PermissionDenied,
            DialError::DeviceOffline(_) | DialError::Unavailable(_) => io::ErrorKind::NotConnected,
            DialError::UnknownService(_) => io::ErrorKind::NotFound,
            DialError::TargetRefused(_) => io::ErrorKind::ConnectionRefused,
            DialError::InvalidName(_) => io::ErrorKind::InvalidInput,
            DialError::Timeout => io::ErrorKind::TimedOut,
            DialError::ConnectionLost(e) | DialError::Local(e) => e.kind(),
            _ => io::ErrorKind::Other,
        };
        Self::new(kind, e)
    }
}

/// The relay could not start or its accept loop failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Accepting connections failed.
    #[error("relay listener: {0}")]
    Io(#[from] io::Error),
}
