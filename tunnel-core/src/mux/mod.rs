//! The multiplexer: yamux sessions over one TLS connection. It knows nothing of the tunnel
//! protocol; the roles write their own handshake frames before a session starts.
//!
//! - [`session`]: the handle ([`Session`]) and the one driver task per connection.
//! - [`link`]: the socket under yamux, with gathered writes and failure detection.

mod link;
mod session;

pub(crate) use session::{Inbound, OpenError, Opener, RawStream, Session, SessionState, Unstarted};
