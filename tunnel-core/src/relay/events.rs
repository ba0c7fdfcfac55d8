//! What happens at the relay, as events for an audit trail or per-device figures, and the
//! live tables of sessions and streams an operator can list and cut.
//!
//! Events go to the [`EventSink`] given to
//! [`RelayBuilder::events`](crate::RelayBuilder::events). The sink is called inline on the
//! relay's tasks: it must return at once (queue to a writer task of its own, with a bound,
//! and drop when full). No event carries a token, a hash or a key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::mux::Session;
use crate::util::lock;

/// The role of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionRole {
    /// A device: registers an ID and accepts streams.
    Device,
    /// An access client: opens streams.
    Access,
}

impl SessionRole {
    /// `device` or `access`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Access => "access",
        }
    }
}

/// Something that happened at the relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A client authenticated; its session starts.
    AuthSucceeded {
        /// The session's ID (also in [`Relay::sessions`](crate::Relay::sessions)).
        session: u64,
        /// The identity's name.
        name: String,
        /// The identity's principal.
        principal: String,
        /// Device or access.
        role: SessionRole,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A client failed to authenticate. `reason` is for the operator (never a secret).
    AuthFailed {
        /// The client's address.
        peer: SocketAddr,
        /// Why (unknown token, expired, revoked, no certificate…).
        reason: String,
    },
    /// A session ended.
    SessionEnded {
        /// The session's ID.
        session: u64,
        /// The identity's name.
        name: String,
        /// Device or access.
        role: SessionRole,
        /// How long it lasted.
        duration: Duration,
    },
    /// A device registered.
    DeviceOnline {
        /// The device ID.
        device: String,
        /// Its session.
        session: u64,
        /// The identity's name.
        name: String,
        /// The device's address.
        peer: SocketAddr,
        /// The services it declared.
        services: Vec<String>,
    },
    /// A device's session ended.
    DeviceOffline {
        /// The device ID.
        device: String,
        /// Its session.
        session: u64,
    },
    /// A public port was bound for a device.
    PublicPortBound {
        /// The device ID.
        device: String,
        /// The service it publishes.
        service: String,
        /// The relay port.
        port: u16,
    },
    /// A stream was joined: a caller reaches a device's service.
    StreamOpened {
        /// The stream's ID (also in [`Relay::streams`](crate::Relay::streams)).
        stream: u64,
        /// The caller's identity name, or `public`.
        caller: String,
        /// The device ID.
        device: String,
        /// The service.
        service: String,
        /// A public caller's address.
        peer: Option<SocketAddr>,
        /// In a cluster, the other relay of a cross-relay stream: the one it was forwarded
        /// to (on the relay the caller reached) or from (on the relay holding the device).
        relay: Option<String>,
    },
    /// A stream was refused, by the relay (grants, offline) or by the device.
    StreamRefused {
        /// The caller's identity name, or `public`.
        caller: String,
        /// The device ID.
        device: String,
        /// The service.
        service: String,
        /// Why, as the status table names it.
        kind: crate::ErrorKind,
    },
    /// A joined stream ended.
    StreamClosed {
        /// The stream's ID.
        stream: u64,
        /// The caller's identity name, or `public`.
        caller: String,
        /// The device ID.
        device: String,
        /// The service.
        service: String,
        /// Bytes from the caller to the device.
        up: u64,
        /// Bytes from the device to the caller.
        down: u64,
        /// How long it was open.
        duration: Duration,
        /// Whether both directions ended cleanly (not reset or cut).
        clean: bool,
    },
}

/// Receives the relay's [`Event`]s. Called inline: return at once.
pub trait EventSink: Send + Sync + 'static {
    /// One event.
    fn event(&self, event: &Event);
}

/// A live session, as [`Relay::sessions`](crate::Relay::sessions) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's ID, unique for the relay's life.
    pub id: u64,
    /// The identity's name.
    pub name: String,
    /// The identity's principal (`token:<name>`, `cert:<name>`…).
    pub principal: String,
    /// Device or access.
    pub role: SessionRole,
    /// The device ID, for a device session.
    pub device: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// When it authenticated.
    pub since: SystemTime,
}

/// A joined stream, as [`Relay::streams`](crate::Relay::streams) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream's ID, unique for the relay's life.
    pub id: u64,
    /// The caller's identity name, or `public`.
    pub caller: String,
    /// The device ID.
    pub device: String,
    /// The service.
    pub service: String,
    /// The other relay of a cross-relay stream (see [`Event::StreamOpened`]).
    pub relay: Option<String>,
    /// When it was joined.
    pub since: SystemTime,
    /// Bytes from the caller to the device so far.
    pub up: u64,
    /// Bytes from the device to the caller so far.
    pub down: u64,
}

/// Byte counters of one joined stream, updated as bytes cross.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) up: AtomicU64,
    pub(super) down: AtomicU64,
}

struct SessionEntry {
    info: SessionInfo,
    handle: Session,
}

struct StreamEntry {
    info: StreamInfo,
    counters: Arc<Counters>,
    cut: CancellationToken,
}

/// The relay's live sessions and streams, and where events go.
#[derive(Default)]
pub(super) struct Tables {
    next_id: AtomicU64,
    /// Boxed: the map's slack (up to half its buckets) then costs a pointer, not an entry.
    sessions: Mutex<HashMap<u64, Box<SessionEntry>>>,
    streams: Mutex<HashMap<u64, StreamEntry>>,
    sink: Option<Arc<dyn EventSink>>,
}

impl Tables {
    pub(super) fn new(sink: Option<Arc<dyn EventSink>>) -> Self {
        Self {
            sink,
            ..Self::default()
        }
    }

    pub(super) fn emit(&self, event: Event) {
        if let Some(sink) = &self.sink {
            sink.event(&event);
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn add_session(&self, info: SessionInfo, handle: Session) {
        lock(&self.sessions).insert(info.id, Box::new(SessionEntry { info, handle }));
    }

    pub(super) fn set_session_device(&self, id: u64, device: &str) {
        if let Some(e) = lock(&self.sessions).get_mut(&id) {
            e.info.device = Some(device.to_owned());
        }
    }

    pub(super) fn remove_session(&self, id: u64) -> Option<SessionInfo> {
        lock(&self.sessions).remove(&id).map(|e| e.info)
    }

    pub(super) fn sessions(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = lock(&self.sessions)
            .values()
            .map(|e| e.info.clone())
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Closes the sessions `select` picks; returns how many.
    pub(super) fn close_sessions(&self, select: impl Fn(&SessionInfo) -> bool) -> usize {
        let picked: Vec<Session> = lock(&self.sessions)
            .values()
            .filter(|e| select(&e.info))
            .map(|e| e.handle.clone())
            .collect();
        for s in &picked {
            s.close();
        }
        picked.len()
    }

    pub(super) fn add_stream(&self, info: StreamInfo) -> (Arc<Counters>, CancellationToken) {
        let counters = Arc::new(Counters::default());
        let cut = CancellationToken::new();
        lock(&self.streams).insert(
            info.id,
            StreamEntry {
                info,
                counters: counters.clone(),
                cut: cut.clone(),
            },
        );
        (counters, cut)
    }

    pub(super) fn remove_stream(&self, id: u64) {
        lock(&self.streams).remove(&id);
    }

    pub(super) fn streams(&self) -> Vec<StreamInfo> {
        let mut all: Vec<StreamInfo> = lock(&self.streams)
            .values()
            .map(|e| {
                let mut info = e.info.clone();
                info.up = e.counters.up.load(Ordering::Relaxed);
                info.down = e.counters.down.load(Ordering::Relaxed);
                info
            })
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Cuts the streams `select` picks (both ends reset); returns how many.
    pub(super) fn cut_streams(&self, select: impl Fn(&StreamInfo) -> bool) -> usize {
        let streams = lock(&self.streams);
        let mut n = 0;
        for e in streams.values().filter(|e| select(&e.info)) {
            e.cut.cancel();
            n += 1;
        }
        n
    }
}
