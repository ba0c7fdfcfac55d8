//! Secure reverse tunnels: a device behind NAT dials **out** over TLS to a public relay, and
//! authorized clients reach the device's local services through it.
//!
//! Three roles, each a few lines:
//!
//! - [`Relay`]: the public server. Authenticates every connection ([`Authenticator`]),
//!   keeps the registry of online devices, authorizes **every** stream against the
//!   caller's [`Grants`], and joins access streams to device streams. Optionally publishes
//!   device services on relay ports (off by default).
//! - [`Listener`] (device side): like a `TcpListener`; registers a device ID and its
//!   services, reconnects by itself, and yields an [`Incoming`] per stream a caller opens.
//!   [`forward`] maps service names to local addresses (`ssh → 127.0.0.1:22`).
//! - [`Dialer`] (access side): like `TcpStream::connect`; [`Dialer::dial`] opens a
//!   [`Stream`] to `(device, service)`. [`serve_local`] and [`pipe_stdio`] expose it as a
//!   local port or as stdin/stdout (for `ssh -o ProxyCommand`).
//!
//! # Example: all three roles in one process
//!
//! ```
//! use std::collections::HashMap;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tunnel_core::*;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A token that may register as device "pi-42" and open any of its services.
//! let token = Token::generate()?;
//! let grants = Grants::new().register(Pattern::new("pi-42")?).access_str("pi-42/*")?;
//! let mut auth = TokenAuthenticator::new();
//! auth.insert(token.hash(), Identity::new("demo", grants))?;
//!
//! // The relay, on a port the OS picks, with a generated certificate.
//! let relay = Relay::builder(TlsIdentity::generate_self_signed(&["localhost"])?, auth).build()?;
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let client = ClientConfig::new(tcp.local_addr()?.to_string(), relay.pin()).token(token);
//! tokio::spawn({ let relay = relay.clone(); async move { relay.serve(tcp, std::future::pending()).await } });
//!
//! // A local echo service, and the device exposing it as "echo".
//! let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let echo_addr = echo.local_addr()?.to_string();
//! tokio::spawn(async move {
//!     while let Ok((mut s, _)) = echo.accept().await {
//!         tokio::spawn(async move { let (mut r, mut w) = s.split(); let _ = tokio::io::copy(&mut r, &mut w).await; });
//!     }
//! });
//! let device = Listener::bind(DeviceConfig::new(client.clone(), "pi-42").service("echo")).await?;
//! tokio::spawn(async move { forward(&device, HashMap::from([("echo".into(), echo_addr)])).await });
//!
//! // An access client reaching it.
//! let dialer = Dialer::connect(client).await?;
//! let mut stream = dialer.dial("pi-42", "echo").await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?;
//! let mut reply = String::new();
//! stream.read_to_string(&mut reply).await?;
//! assert_eq!(reply, "hello");
//! # Ok(()) }
//! ```
//!
//! # Security model
//!
//! - The relay is verified by an [`SpkiPin`] or CA roots ([`RelayTrust`]); there is no
//!   "accept any certificate" mode. TLS 1.3 only, ALPN `tunnel/2` (or `tunnel/1` with
//!   older peers).
//! - Identity comes from the credential, never from a name the client picks: a token
//!   registers only as the device IDs its grants name, and a device ID held by another
//!   credential is refused. A reconnect with the same credential replaces the old session.
//! - The wire carries service *names*; only the device maps them to addresses.
//! - The relay sees the plaintext of the streams it joins (TLS ends at the relay).
//!
//! # Traps
//!
//! - Answer every [`Incoming`] promptly ([`Incoming::accept`] or [`Incoming::refuse`]):
//!   the caller waits for it, and the relay gives up after 15 s.
//! - A [`Stream`] dropped without `shutdown()` is reset, not closed: the far end sees an
//!   error. Call `shutdown()` for a clean end (it is a half-close; you can still read).
//! - Session [`Limits`] are set on the relay only: it announces them in its welcome and
//!   clients follow (with a relay older than 0.2, both ends must be configured alike).
//!
//! # Features
//!
//! - `ring` (default): the rustls crypto provider.
//! - `aws-lc-rs`: use aws-lc-rs instead (faster AES-GCM: the binaries in `examples/` and
//!   the Python wheel use it; FIPS path; a post-quantum key exchange, offered last unless
//!   rustls's `prefer-post-quantum` feature is on). Enabling it selects it even when `ring`
//!   stays on as a default feature; `default-features = false` just saves building ring.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("enable one crypto provider feature: `ring` (default) or `aws-lc-rs`");

mod auth;
mod client;
mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hex;
mod metrics;
mod mux;
mod protocol;
mod read_ahead;
mod relay;
mod splice;
mod stream;
mod tls;
mod util;

pub use auth::{
    AuthRejected, AuthRequest, Authenticator, BoxFuture, CertAuthenticator, FirstOf, Grants,
    Identity, Pattern, Token, TokenAuthenticator, TokenEntry, TokenFile, TokenHash,
};
pub use client::ClientConfig;
pub use client::dialer::{DeviceInfo, Dialer};
pub use client::forward::{forward, pipe_stdio, serve_local};
pub use client::listener::{DeviceConfig, Incoming, Listener, ListenerState};
pub use config::Limits;
pub use error::{ConfigError, ConnectError, DialError, RelayError};
pub use protocol::status::{ErrorKind, Refusal, RefusalCode};
pub use relay::{
    AuthThrottle, CLAIM_TIMEOUT, ClaimRefused, Cluster, DeviceClaim, Event, EventSink, Relay,
    RelayBuilder, SessionInfo, SessionRole, StreamInfo,
};
pub use stream::Stream;
pub use tls::{RelayTrust, SpkiPin, TlsIdentity, verify_client_cert};
