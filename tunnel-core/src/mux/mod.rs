//! The multiplexer: yamux sessions over one TLS connection, implemented here on the yamux
//! spec's wire format (so peers running rust-yamux interoperate). It knows nothing of the
//! tunnel protocol; the roles write their own handshake frames before a session starts.
//!
//! - [`frame`]: the wire vocabulary (header, types, flags).
//! - [`conn`]: the session's state without I/O: streams, windows, queued frames.
//! - [`stream`]: one stream's handle ([`RawStream`]).
//! - [`session`]: the handle ([`Session`]) and the one driver task per connection.

mod conn;
mod frame;
mod session;
mod stream;

#[cfg(feature = "fuzzing")]
pub(crate) use conn::Conn;
pub(crate) use conn::Side;
pub(crate) use frame::HEADER_LEN;
pub(crate) use session::{Inbound, OpenError, Opener, Session, SessionState, Unstarted};
#[cfg(test)]
pub(crate) use session::{StreamPair, driver_future_size};
pub(crate) use stream::RawStream;
#[cfg(test)]
mod interop_tests;
