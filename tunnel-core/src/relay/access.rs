//! The access side of the relay: an access client's session, and each stream it opens,
//! authorized against its grants on every open, then joined to a device stream. Also the
//! device list.

use std::sync::Arc;

use tracing::{Instrument, info, info_span};

use tokio::time::Instant;

use super::bridge::{Joined, NotJoined};
use super::events::{Event, SessionRole};
use super::handshake::Accepted;
use super::limit::Slot;
use super::session::{AccessCtx, Ctx, Registered, prepare, send_welcome, serve, start, welcome};
use super::{Inner, bridge};
use crate::auth::Identity;
use crate::mux::{Inbound, Session};
use crate::protocol::{self, ErrorKind, Forward, Message, STREAM_OPEN_TIMEOUT, StatusCode};
use crate::stream::Stream;

/// Runs an access session until it ends: welcome, then serve its streams.
pub(super) async fn run(relay: Arc<Inner>, accepted: Box<Accepted>) {
    // Boxed, as for devices (`device::run`): the welcome's state and the TLS stream are
    // over once the session runs, and the task keeps the size of its largest state.
    let Some((_slot, session, inbound, _registered, ctx)) =
        Box::pin(welcome_access(&relay, accepted)).await
    else {
        return;
    };
    serve(&relay, &session, inbound, &ctx).await;
    info!("access session ended");
}

/// Welcomes an access client and starts its session; `None` if the welcome failed.
async fn welcome_access(
    relay: &Arc<Inner>,
    accepted: Box<Accepted>,
) -> Option<(Slot<String>, Session, Inbound, Registered, Ctx)> {
    let Accepted {
        mut tls,
        hello,
        identity,
        version,
        peer,
        slot,
    } = *accepted;
    if let Err(e) = send_welcome(
        &mut tls,
        &welcome(relay, &identity, vec![], vec![], version),
    )
    .await
    {
        info!(reason = e, "access session not started");
        return None;
    }
    let (session, inbound, unstarted) = prepare(relay, hello.role);
    start(unstarted, tls);
    let registered = Registered::new(relay, &identity, SessionRole::Access, peer, &session);
    info!(identity = identity.name(), "access session started");
    let ctx = Ctx::Access(Arc::new(AccessCtx::new(identity)));
    Some((slot, session, inbound, registered, ctx))
}

/// An access client asks for `device`/`service`: authorize, find the device (here, or on
/// another relay of the cluster), ask it, and join the two streams if it accepts. Every
/// outcome is counted and, when refused, emitted.
pub(super) async fn open(
    relay: &Arc<Inner>,
    mut stream: Stream,
    identity: &Identity,
    device: String,
    service: String,
) {
    let span = info_span!("stream", caller = identity.name(), %device, %service);
    async {
        let started = Instant::now();
        let reached = reach(relay, &mut stream, identity, &device, &service, true).await;
        answer(
            relay,
            stream,
            identity.name(),
            device,
            service,
            reached,
            started,
        )
        .await;
    }
    .instrument(span)
    .await;
}

/// A peer relay forwards a stream on behalf of a caller it authenticated: the caller's
/// live identity is resolved here (a revoked or unknown principal is denied), its own
/// grants checked, and only a device held by this relay is reached.
pub(super) async fn forwarded(relay: &Arc<Inner>, mut stream: Stream, header: Forward) {
    let Forward {
        device,
        service,
        principal,
        caller,
        origin,
    } = header;
    let span = info_span!("forwarded", %origin, %caller, %device, %service);
    async {
        let started = Instant::now();
        let reached = match relay.authenticator.resolve(&principal).await {
            Some(identity) => reach(relay, &mut stream, &identity, &device, &service, false)
                .await
                .map(|(s, _)| (s, Some(origin.clone()))),
            None => Err(NotJoined::refused(
                StatusCode::Denied,
                format!("{caller} may not open {device}/{service}: unknown or revoked credential"),
            )),
        };
        answer(relay, stream, &caller, device, service, reached, started).await;
    }
    .instrument(span)
    .await;
}

/// A device stream (and the other relay of a cross-relay stream), or why not.
type Reached = Result<(Stream, Option<String>), NotJoined>;

/// Answers the opener and joins the streams, or reports the refusal.
async fn answer(
    relay: &Arc<Inner>,
    mut stream: Stream,
    caller: &str,
    device: String,
    service: String,
    reached: Reached,
    started: Instant,
) {
    match reached {
        Ok((device_stream, other_relay)) => {
            reply(&mut stream, StatusCode::Ok, "").await;
            crate::metrics::stream_result("ok", Some(started.elapsed()));
            let who = Joined {
                caller: caller.to_owned(),
                device,
                service,
                peer: None,
                relay: other_relay,
            };
            bridge::spawn_join(relay, stream, device_stream, who, None, ());
        }
        Err(NotJoined::CallerGone(e)) => {
            info!(error = %e, "caller gone before the device answered");
            crate::metrics::stream_result(crate::metrics::CALLER_GONE, None);
        }
        Err(NotJoined::Refused(code, message)) => {
            info!(?code, reason = ?message, "stream refused");
            reply(&mut stream, code, &message).await;
            let kind = code.kind().unwrap_or(ErrorKind::Protocol);
            crate::metrics::stream_result(kind.as_str(), None);
            relay.tables.emit(Event::StreamRefused {
                caller: caller.to_owned(),
                device,
                service,
                kind,
            });
        }
    }
}

/// The checks of an open, in order, and the device's own answer. Grants come first: a
/// caller must not learn whether a device it may not reach is online. A device that is
/// not here is looked for in the cluster when `may_forward` (a stream from an access
/// client; never one a peer relay forwarded, so a stream crosses at most one hop). What
/// the caller sent after its header (early data) goes to a local device with the open.
async fn reach(
    relay: &Inner,
    caller: &mut Stream,
    identity: &Identity,
    device: &str,
    service: &str,
    may_forward: bool,
) -> Reached {
    if !protocol::is_valid_name(device) || !protocol::is_valid_name(service) {
        let why = "invalid device or service name";
        return Err(NotJoined::refused(StatusCode::BadRequest, why));
    }
    if !identity.grants().may_access(device, service) {
        let why = format!("{} may not open {device}/{service}", identity.name());
        return Err(NotJoined::refused(StatusCode::Denied, why));
    }
    if relay.draining.is_cancelled() {
        let why = "relay is shutting down";
        return Err(NotJoined::refused(StatusCode::Unavailable, why));
    }
    let Some(online) = relay.registry.lookup(device) else {
        if let (Some(cluster), true) = (relay.cluster.as_ref(), may_forward) {
            return match cluster.open(device, service, identity).await {
                Ok((stream, other)) => Ok((stream, Some(other))),
                Err(e) => {
                    let (code, why) = e.to_status();
                    Err(NotJoined::Refused(code, why))
                }
            };
        }
        let why = format!("device {device} is not connected");
        return Err(NotJoined::refused(StatusCode::DeviceOffline, why));
    };
    if !online.services.iter().any(|s| s == service) {
        let why = format!("device {device} offers no service {service}");
        return Err(NotJoined::refused(StatusCode::UnknownService, why));
    }
    let incoming = Message::Incoming {
        service: service.to_owned(),
        caller: identity.name().to_owned(),
        peer: String::new(),
    };
    bridge::ask_device(&online.session, &incoming, caller)
        .await
        .map(|s| (s, None))
}

/// The devices the session's identity may reach: those seen since start and those its
/// grants name, sorted, cut to fit one frame. One list at a time per session; a list that
/// waits longer than the open deadline for its turn is answered `unavailable`.
pub(super) async fn list(relay: &Inner, mut stream: Stream, ctx: &AccessCtx) {
    let Ok(Ok(_turn)) = tokio::time::timeout(STREAM_OPEN_TIMEOUT, ctx.lists.acquire()).await else {
        let why = "too many device lists in flight on this session";
        let _ = protocol::write_status(&mut stream, StatusCode::Unavailable, why).await;
        return;
    };
    let entries = relay
        .registry
        .visible_to(ctx.identity.grants(), protocol::MAX_FRAME_LEN);
    let msg = Message::DeviceList(entries);
    let _ = protocol::write_frame(&mut stream, &msg).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
}

/// Answers a stream's header; a failure to write means the caller is gone already.
async fn reply(stream: &mut Stream, code: StatusCode, message: &str) {
    let _ = protocol::write_status(stream, code, message).await;
}
