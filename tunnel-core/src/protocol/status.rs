//! The one status table: every code the wire carries, the Rust error it becomes and the
//! Python exception it raises. Each row is written once, in the two macro calls below; the
//! enums, their wire conversions, [`ErrorKind`] and the Python names are generated from
//! them, and the tests at the bottom walk every code through every layer.
//!
//! | layer | stream answers ([`StatusCode`]) | session refusals ([`RefusalCode`]) |
//! |---|---|---|
//! | wire | `Status` frame, one byte | `Refused` frame, one byte |
//! | Rust | [`DialError`](crate::DialError) variant | [`ConnectError::Refused`](crate::ConnectError::Refused) |
//! | device | [`Refusal`] (what a device may answer) | — |
//! | both | [`ErrorKind`], from `DialError::kind` / `ConnectError::kind` | same |
//! | Python | [`ErrorKind::python_exception`] | same |

/// What went wrong, in the one vocabulary every layer shares: each wire code, each error
/// variant and each Python exception maps to exactly one kind. Get it from
/// [`DialError::kind`](crate::DialError::kind) or [`ConnectError::kind`](crate::ConnectError::kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration that cannot work (bad pin, address, name, certificate file).
    Config,
    /// The relay's certificate did not verify, or the relay rejected ours.
    Certificate,
    /// The relay rejected the credential.
    AuthFailed,
    /// The credential may not do this (open this service, register this ID or port).
    Denied,
    /// The device is not connected to the relay.
    DeviceOffline,
    /// The device does not offer this service.
    UnknownService,
    /// The device could not reach the service's local address.
    TargetRefused,
    /// A limit was hit, the peer did not answer in time, or it is shutting down; retry.
    Unavailable,
    /// No session with the relay (unreachable, TLS failed, timed out, refused otherwise).
    Connect,
    /// The session with the relay was lost while the request was in flight.
    ConnectionLost,
    /// The peer broke the protocol.
    Protocol,
    /// A local I/O error (stdin/stdout, a local socket), not the tunnel's.
    Io,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [Self; 12] = [
        Self::Config,
        Self::Certificate,
        Self::AuthFailed,
        Self::Denied,
        Self::DeviceOffline,
        Self::UnknownService,
        Self::TargetRefused,
        Self::Unavailable,
        Self::Connect,
        Self::ConnectionLost,
        Self::Protocol,
        Self::Io,
    ];

    /// A short lowercase name, for logs, metrics labels and JSON (`denied`,
    /// `device_offline`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Certificate => "certificate",
            Self::AuthFailed => "auth_failed",
            Self::Denied => "denied",
            Self::DeviceOffline => "device_offline",
            Self::UnknownService => "unknown_service",
            Self::TargetRefused => "target_refused",
            Self::Unavailable => "unavailable",
            Self::Connect => "connect",
            Self::ConnectionLost => "connection_lost",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }

    /// The exception the Python bindings raise for this kind: a class in the `tunnel`
    /// module (`OSError` for local I/O, as a socket would).
    pub fn python_exception(self) -> &'static str {
        match self {
            Self::Config => "ConfigError",
            Self::Certificate => "CertificateError",
            Self::AuthFailed => "AuthError",
            Self::Denied => "DeniedError",
            Self::DeviceOffline => "DeviceOfflineError",
            Self::UnknownService => "UnknownServiceError",
            Self::TargetRefused => "TargetRefusedError",
            Self::Unavailable => "UnavailableError",
            Self::Connect => "ConnectError",
            Self::ConnectionLost => "ConnectionLostError",
            Self::Protocol => "ProtocolError",
            Self::Io => "OSError",
        }
    }
}

macro_rules! stream_statuses {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $kind:expr, )*) => {
        /// The answer to a stream header ([`Message::Status`](super::Message::Status)).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum StatusCode {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl StatusCode {
            /// Every code, for tests.
            #[cfg(test)]
            const ALL: &[Self] = &[$( Self::$variant, )*];
            pub(crate) fn from_u8(c: u8) -> Option<Self> {
                match c {
                    $( $code => Some(Self::$variant), )*
                    _ => None,
                }
            }
            pub(crate) fn to_u8(self) -> u8 {
                self as u8
            }
            /// What a caller sees for this answer; `None` for `ok`.
            pub(crate) fn kind(self) -> Option<ErrorKind> {
                match self {
                    $( Self::$variant => $kind, )*
                }
            }
        }
    };
}

stream_statuses! {
    /// Accepted: raw bytes follow.
    Ok = 0 => None,
    /// The caller's grants (or the device's own policy) do not allow this (device, service).
    Denied = 1 => Some(ErrorKind::Denied),
    /// No session is registered for this device ID.
    DeviceOffline = 2 => Some(ErrorKind::DeviceOffline),
    /// The device did not declare this service.
    UnknownService = 3 => Some(ErrorKind::UnknownService),
    /// The device could not connect to the service's local address.
    TargetRefused = 4 => Some(ErrorKind::TargetRefused),
    /// The header was malformed or not allowed on this kind of session.
    BadRequest = 5 => Some(ErrorKind::Protocol),
    /// A limit was hit, the device did not answer in time, or the relay is shutting down.
    Unavailable = 6 => Some(ErrorKind::Unavailable),
}

macro_rules! refusal_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $kind:expr, permanent = $perm:literal, )*) => {
        /// Why the relay refused a session (the `refused` frame of the handshake).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum RefusalCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know (from a newer relay).
            Other(u8),
        }

        impl RefusalCode {
            /// Every known code, for tests.
            #[cfg(test)]
            const ALL: &[Self] = &[$( Self::$variant, )*];
            pub(crate) fn to_u8(self) -> u8 {
                match self {
                    $( Self::$variant => $code, )*
                    Self::Other(c) => c,
                }
            }
            pub(crate) fn from_u8(c: u8) -> Self {
                match c {
                    $( $code => Self::$variant, )*
                    c => Self::Other(c),
                }
            }
            /// Whether retrying with the same credential and request cannot succeed
            /// until an operator changes something.
            pub fn is_permanent(self) -> bool {
                match self {
                    $( Self::$variant => $perm, )*
                    Self::Other(_) => false,
                }
            }
            /// What a client sees for this refusal.
            pub fn kind(self) -> ErrorKind {
                match self {
                    $( Self::$variant => $kind, )*
                    Self::Other(_) => ErrorKind::Connect,
                }
            }
        }
    };
}

refusal_codes! {
    /// The credential is unknown or wrong (one uniform answer for every auth failure).
    AuthFailed = 1 => ErrorKind::AuthFailed, permanent = true,
    /// The relay does not speak this protocol version.
    UnsupportedVersion = 2 => ErrorKind::Connect, permanent = true,
    /// The credential may not register this device ID.
    DeviceIdDenied = 3 => ErrorKind::Denied, permanent = true,
    /// Another credential holds this device ID right now.
    DeviceIdTaken = 4 => ErrorKind::Denied, permanent = false,
    /// A public port was asked for and is not allowed (no range, not granted, outside the
    /// range). A port that is allowed but busy is refused as [`RefusalCode::Unavailable`].
    PublicPortDenied = 5 => ErrorKind::Denied, permanent = true,
    /// The hello was malformed.
    BadRequest = 6 => ErrorKind::Connect, permanent = true,
    /// The relay is shutting down or over a limit; try again later.
    Unavailable = 7 => ErrorKind::Unavailable, permanent = false,
    /// The credential was known but has been revoked or has expired.
    Revoked = 8 => ErrorKind::AuthFailed, permanent = true,
}

/// Why a device refuses an incoming stream ([`Incoming::refuse`](crate::Incoming::refuse)):
/// the subset of the stream answers a device may send (see `PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The local service could not be reached (port closed, host down).
    TargetRefused,
    /// The device does not offer this service.
    UnknownService,
    /// The device's own policy refuses this caller.
    Denied,
    /// The device is busy; the caller may retry.
    Unavailable,
}

impl From<Refusal> for StatusCode {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TargetRefused => Self::TargetRefused,
            Refusal::UnknownService => Self::UnknownService,
            Refusal::Denied => Self::Denied,
            Refusal::Unavailable => Self::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ConnectError, DialError};

    #[test]
    fn every_stream_status_round_trips_and_becomes_the_error_of_its_kind() {
        for c in 0..=u8::MAX {
            let Some(code) = StatusCode::from_u8(c) else {
                continue;
            };
            assert_eq!(code.to_u8(), c);
            match code.kind() {
                None => assert_eq!(code, StatusCode::Ok),
                Some(kind) => {
                    let err = DialError::from_status(code, "m".into());
                    assert_eq!(err.kind(), kind, "{code:?}");
                    // A relay passing the answer on sends the same code and text, except
                    // a protocol failure, which its caller sees as `unavailable`.
                    let passed_on = err.to_status();
                    if kind == ErrorKind::Protocol {
                        assert_eq!(passed_on.0, StatusCode::Unavailable);
                    } else {
                        assert_eq!(passed_on, (code, "m".to_owned()), "{code:?}");
                    }
                }
            }
        }
        assert_eq!(StatusCode::ALL.len(), 7);
        assert!(StatusCode::from_u8(7).is_none());
    }

    #[test]
    fn every_device_refusal_reaches_the_caller_as_its_own_kind() {
        for (refusal, kind) in [
            (Refusal::TargetRefused, ErrorKind::TargetRefused),
            (Refusal::UnknownService, ErrorKind::UnknownService),
            (Refusal::Denied, ErrorKind::Denied),
            (Refusal::Unavailable, ErrorKind::Unavailable),
        ] {
            let err = DialError::from_status(refusal.into(), String::new());
            assert_eq!(err.kind(), kind);
        }
    }

    #[test]
    fn every_refusal_code_round_trips_and_keeps_its_kind_through_connect_error() {
        for &code in RefusalCode::ALL {
            assert_eq!(RefusalCode::from_u8(code.to_u8()), code);
            let err = ConnectError::Refused {
                code,
                message: String::new(),
            };
            assert_eq!(err.kind(), code.kind());
            assert_eq!(err.is_permanent(), code.is_permanent());
        }
        assert_eq!(RefusalCode::from_u8(200), RefusalCode::Other(200));
        assert_eq!(RefusalCode::Other(200).kind(), ErrorKind::Connect);
    }

    #[test]
    fn every_kind_names_a_distinct_python_exception() {
        let names: std::collections::HashSet<_> = ErrorKind::ALL
            .iter()
            .map(|k| k.python_exception())
            .collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
