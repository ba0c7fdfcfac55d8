//! The loop every authenticated session runs at the relay, device or access: it reads each
//! stream's header and dispatches it, answers heartbeats, and closes the session when the
//! peer falls silent or the relay shuts down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info};

use super::events::{Event, SessionInfo, SessionRole};
use super::meter::Metered;
use super::{Inner, Tls, access};
use crate::auth::Identity;
use crate::config::HEARTBEAT_MISSES;
use crate::mux::{Inbound, Opener, Session, Side, Unstarted};
use crate::protocol::{
    self, HANDSHAKE_TIMEOUT, MAX_HEADER_LEN, Message, Role, STREAM_OPEN_TIMEOUT, StatusCode,
};
use crate::stream::Stream;

/// Who owns the session whose streams we serve.
pub(super) enum Ctx {
    Device,
    Access(Arc<AccessCtx>),
}

/// An access session's identity, and its gate for device lists.
pub(super) struct AccessCtx {
    pub(super) identity: Identity,
    /// One device list at a time per session: building one walks the registry, so a
    /// session that asks for many at once waits for its own turn instead of taking the
    /// relay's workers from everyone else.
    pub(super) lists: Semaphore,
}

impl AccessCtx {
    pub(super) fn new(identity: Identity) -> Self {
        Self {
            identity,
            lists: Semaphore::new(1),
        }
    }
}

/// Serves the peer's streams and watches its heartbeat until the session ends.
pub(super) async fn serve(relay: &Arc<Inner>, session: &Session, mut inbound: Inbound, ctx: &Ctx) {
    let (beat_tx, beat_rx) = watch::channel(Instant::now());
    let beat_tx = Arc::new(beat_tx);
    let dead_after = relay.heartbeat * HEARTBEAT_MISSES;
    let watchdog = watchdog(beat_rx, dead_after);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            stream = inbound.recv() => {
                let Some(stream) = stream else { break };
                let access = match ctx { Ctx::Access(id) => Some(id.clone()), Ctx::Device => None };
                let task = handle_stream(relay.clone(), stream, access, beat_tx.clone());
                tokio::spawn(task.instrument(tracing::Span::current()));
            }
            () = &mut watchdog => {
                info!(?dead_after, "peer missed its heartbeats; closing session");
                break;
            }
            () = relay.closing.cancelled() => break,
        }
    }
    session.close();
}

/// Completes when no ping has arrived for `dead_after`.
async fn watchdog(mut beats: watch::Receiver<Instant>, dead_after: Duration) {
    loop {
        let last = *beats.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(last + dead_after) => return,
            changed = beats.changed() => if changed.is_err() { return },
        }
    }
}

/// Reads a stream's header and serves it. Devices may only open the control stream.
async fn handle_stream(
    relay: Arc<Inner>,
    mut stream: Stream,
    access: Option<Arc<AccessCtx>>,
    beats: Arc<watch::Sender<Instant>>,
) {
    let header = match tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        protocol::read_frame(&mut stream, MAX_HEADER_LEN),
    )
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return debug!(error = %e, "bad stream header"),
        Err(_) => return debug!("stream header timed out"),
    };
    // The task's size is its largest state, for its whole life: the control stream lives
    // as long as the session, so the open, list and forward states (kilobytes) are boxed
    // and paid only while they run (heaptrack, benches/RESULTS.md).
    match (header, access) {
        (Message::Control, _) => control(stream, beats).await,
        (Message::Open { device, service }, Some(ctx)) => {
            Box::pin(access::open(&relay, stream, &ctx.identity, device, service)).await
        }
        (Message::List, Some(ctx)) => Box::pin(access::list(&relay, stream, &ctx)).await,
        (Message::Forward(header), Some(ctx)) if ctx.identity.is_relay_peer() => {
            Box::pin(access::forwarded(&relay, stream, header)).await
        }
        (other, access) => {
            let why = if access.is_none() {
                "devices may only open the control stream"
            } else if matches!(other, Message::Forward(_)) {
                "only a relay of the cluster may forward streams"
            } else {
                "unexpected header"
            };
            debug!(header = other.name(), why, "refusing stream");
            let _ = protocol::write_status(&mut stream, StatusCode::BadRequest, why).await;
        }
    }
}

/// The relay's side of the heartbeat: answer every ping, and note when it came.
async fn control(mut stream: Stream, beats: Arc<watch::Sender<Instant>>) {
    while let Ok(Message::Ping(n)) = protocol::read_frame(&mut stream, MAX_HEADER_LEN).await {
        beats.send_replace(Instant::now());
        if protocol::write_frame(&mut stream, &Message::Pong(n))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// The welcome for an accepted connection: the heartbeat interval, the identity, the public
/// ports bound and, from protocol version 2, the limits the client must use and the public
/// ports left out with why.
pub(super) fn welcome(
    relay: &Inner,
    identity: &Identity,
    public: Vec<(String, u16)>,
    public_failed: Vec<(String, String)>,
    version: u8,
) -> Message {
    let v2 = version >= 2;
    Message::Welcome {
        heartbeat_ms: u32::try_from(relay.heartbeat.as_millis()).unwrap_or(u32::MAX),
        identity: identity.name().to_owned(),
        public,
        limits: v2.then(|| relay.limits.to_wire()),
        public_failed: if v2 { public_failed } else { vec![] },
    }
}

/// Writes the welcome on the raw TLS stream, before yamux starts, under the handshake
/// deadline (a peer that stops reading here must not hold the task).
pub(super) async fn send_welcome(tls: &mut Tls, welcome: &Message) -> Result<(), String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, protocol::write_frame(tls, welcome)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("welcome not sent: {e}")),
        Err(_) => Err("welcome not sent: timed out".into()),
    }
}

/// The yamux side of an accepted connection. The relay opens the streams of a device
/// session and accepts those of an access session. Start it once the welcome is out.
pub(super) fn prepare(relay: &Inner, role: Role) -> (Session, Inbound, Unstarted) {
    let opener = match role {
        Role::Device => Opener::Local,
        Role::Access => Opener::Remote,
    };
    Session::prepare(&relay.limits, opener, Side::Server)
}

/// Starts the driver of a prepared session on the connection, under the per-session meter.
pub(super) fn start(unstarted: Unstarted, tls: Tls) {
    unstarted.start(Metered::new(tls), tracing::Span::current());
}

/// A session's entry in the relay's table of sessions, with its events and metrics; it
/// leaves the table (and `SessionEnded` is emitted) when dropped.
pub(super) struct Registered {
    relay: Arc<Inner>,
    pub(super) id: u64,
    name: String,
    role: SessionRole,
    started: Instant,
}

impl Registered {
    pub(super) fn new(
        relay: &Arc<Inner>,
        identity: &Identity,
        role: SessionRole,
        peer: std::net::SocketAddr,
        session: &Session,
    ) -> Self {
        let id = relay.tables.next_id();
        relay.tables.add_session(
            SessionInfo {
                id,
                name: identity.name().to_owned(),
                principal: identity.principal().to_owned(),
                role,
                device: None,
                peer,
                since: std::time::SystemTime::now(),
            },
            session.clone(),
        );
        relay.tables.emit(Event::AuthSucceeded {
            session: id,
            name: identity.name().to_owned(),
            principal: identity.principal().to_owned(),
            role,
            peer,
        });
        crate::metrics::session_started(role.as_str());
        Self {
            relay: relay.clone(),
            id,
            name: identity.name().to_owned(),
            role,
            started: Instant::now(),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.relay.tables.remove_session(self.id);
        crate::metrics::session_ended(self.role.as_str());
        self.relay.tables.emit(Event::SessionEnded {
            session: self.id,
            name: std::mem::take(&mut self.name),
            role: self.role,
            duration: self.started.elapsed(),
        });
    }
}
#[cfg(test)]
mod tests {
    use super::super::Tls;
    use super::super::meter::Metered;

    /// Every idle device holds its session driver's task: the TLS stream (1.5 KB) must be
    /// in it once (boxed), not once per copy an async fn and its spawn make.
    #[test]
    fn a_session_driver_task_does_not_hold_its_connection_inline() {
        let io = size_of::<Metered<Tls>>();
        let task = crate::mux::driver_future_size::<Metered<Tls>>();
        assert!(
            task < io / 2,
            "driver future: {task} bytes, connection {io}"
        );
    }
}
