//! An authenticated session at the relay: registration, heartbeat watchdog, and every
//! stream an access client opens (authorized, then joined to a device stream).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::meter::Metered;
use super::registry::{Claim, Online};
use super::{Hello, Inner, Tls, refuse};
use crate::auth::Identity;
use crate::config::HEARTBEAT_MISSES;
use crate::mux::{Inbound, Opener, Preamble, Session};
use crate::protocol::{
    self, DeviceEntry, MAX_HEADER_LEN, Message, RefusalCode, Role, STREAM_OPEN_TIMEOUT, StatusCode,
};
use crate::stream::{Stream, splice};

/// Runs one authenticated connection until it ends.
pub(super) async fn run(relay: Arc<Inner>, tls: Tls, hello: Hello, identity: Identity) {
    match hello.role {
        Role::Access => {
            let (go, welcome) = welcome(&relay, &identity, vec![]);
            let (session, inbound) = start(&relay, tls, hello.role, welcome);
            let _ = go.send(());
            info!(identity = identity.name(), "access session started");
            serve(&relay, &session, inbound, &Ctx::Access(Arc::new(identity))).await;
            info!("access session ended");
        }
        Role::Device => run_device(relay, tls, hello, identity).await,
    }
}

async fn run_device(relay: Arc<Inner>, mut tls: Tls, hello: Hello, identity: Identity) {
    let device = hello.device.clone();
    if !identity.grants().may_register(&device) {
        info!(
            identity = identity.name(),
            device, "credential may not register this device id"
        );
        let msg = format!("credential may not register as device {device}");
        return refuse(&mut tls, RefusalCode::DeviceIdDenied, &msg).await;
    }
    match relay.registry.claim(&device, identity.name()) {
        Claim::Taken => {
            warn!(
                identity = identity.name(),
                device, "device id held by another credential"
            );
            let msg = format!("device id {device} is in use by another credential");
            return refuse(&mut tls, RefusalCode::DeviceIdTaken, &msg).await;
        }
        Claim::Flapping => {
            warn!(
                identity = identity.name(),
                device,
                "device id flapping between live sessions of one credential; keeping the holder"
            );
            let msg = format!(
                "device id {device} is held by a live session of this credential that was \
                 replaced too often; use one credential per device"
            );
            return refuse(&mut tls, RefusalCode::DeviceIdTaken, &msg).await;
        }
        Claim::Granted(Some(old)) => {
            info!(device, "replacing the previous session of this device");
            old.evict().await;
        }
        Claim::Granted(None) => {}
    }
    let listeners = match bind_public(&relay, &identity, &hello.public).await {
        Ok(l) => l,
        Err((code, message)) => return refuse(&mut tls, code, &message).await,
    };
    let ports: Vec<(String, u16)> = listeners
        .iter()
        .map(|(s, l)| (s.clone(), port_of(l)))
        .collect();
    // The welcome goes out only once the device is in the registry, so a caller that
    // dials right after the device saw its welcome finds it online.
    let (go, welcome) = welcome(&relay, &identity, ports.clone());
    let (session, inbound) = start(&relay, tls, hello.role, welcome);
    let generation = relay.registry.generation();
    let public_tasks = listeners
        .into_iter()
        .map(|(service, listener)| {
            let span = info_span!("public", %service, port = port_of(&listener));
            tokio::spawn(
                public_accept(relay.clone(), session.clone(), service, listener).instrument(span),
            )
        })
        .collect();
    let entry = Online {
        generation,
        identity: identity.name().to_owned(),
        services: hello.services,
        session: session.clone(),
        public_tasks,
    };
    match relay.registry.insert(&device, entry) {
        Ok(Some(raced)) => raced.evict().await,
        Ok(None) => {}
        Err(ours) => {
            // Another credential took the ID while we set up; our welcome was never sent,
            // and the device's next attempt is refused as `device id taken`.
            warn!(
                identity = identity.name(),
                device, "device id taken during registration"
            );
            return ours.evict().await;
        }
    }
    let _ = go.send(());
    info!(identity = identity.name(), device, ?ports, "device online");
    serve(&relay, &session, inbound, &Ctx::Device).await;
    if let Some(entry) = relay.registry.remove(&device, generation) {
        entry.evict().await;
    }
    info!(device, "device offline");
}

/// The welcome frame, held back until the returned sender fires.
fn welcome(
    relay: &Inner,
    identity: &Identity,
    public: Vec<(String, u16)>,
) -> (oneshot::Sender<()>, Preamble) {
    let heartbeat_ms = u32::try_from(relay.heartbeat.as_millis()).unwrap_or(u32::MAX);
    let msg = Message::Welcome {
        heartbeat_ms,
        identity: identity.name().to_owned(),
        public,
    };
    // Names were validated and lists capped at the hello, so the frame always encodes.
    let bytes = msg.encode().unwrap_or_default();
    let (go, wait) = oneshot::channel();
    (go, Preamble { bytes, go: wait })
}

/// Starts yamux on an accepted connection. The relay opens the streams of a device session
/// and accepts those of an access session.
fn start(relay: &Inner, tls: Tls, role: Role, welcome: Preamble) -> (Session, Inbound) {
    let opener = match role {
        Role::Device => Opener::Local,
        Role::Access => Opener::Remote,
    };
    Session::spawn(
        Metered::new(tls),
        &relay.limits,
        opener,
        yamux::Mode::Server,
        tracing::Span::current(),
        Some(welcome),
    )
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Binds the requested public ports, if the relay and the credential allow them.
async fn bind_public(
    relay: &Inner,
    identity: &Identity,
    wanted: &[(String, u16)],
) -> Result<Vec<(String, TcpListener)>, (RefusalCode, String)> {
    // Not allowed: permanent. Allowed but busy: `Unavailable`, the device retries.
    let denied = |m: String| (RefusalCode::PublicPortDenied, m);
    let busy = |m: String| (RefusalCode::Unavailable, m);
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let Some(range) = relay.public_ports.clone() else {
        return Err(denied("this relay publishes no ports".into()));
    };
    if !identity.grants().may_publish() {
        return Err(denied("this credential may not publish ports".into()));
    }
    let mut bound = Vec::new();
    for (service, port) in wanted {
        let listener = if *port == 0 {
            let mut found = None;
            for p in range.clone() {
                if let Ok(l) = TcpListener::bind((relay.public_bind, p)).await {
                    found = Some(l);
                    break;
                }
            }
            found.ok_or_else(|| {
                busy(format!(
                    "no free port left in {}-{}",
                    range.start(),
                    range.end()
                ))
            })?
        } else if range.contains(port) {
            TcpListener::bind((relay.public_bind, *port))
                .await
                .map_err(|e| busy(format!("port {port}: {e}")))?
        } else {
            return Err(denied(format!(
                "port {port} is outside the allowed range {}-{}",
                range.start(),
                range.end()
            )));
        };
        bound.push((service.clone(), listener));
    }
    Ok(bound)
}

/// Who owns the session whose streams we serve.
enum Ctx {
    Device,
    Access(Arc<Identity>),
}

/// Serves the peer's streams and watches its heartbeat until the session ends.
async fn serve(relay: &Arc<Inner>, session: &Session, mut inbound: Inbound, ctx: &Ctx) {
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
    access: Option<Arc<Identity>>,
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
    match (header, access) {
        (Message::Control, _) => control(stream, beats).await,
        (Message::Open { device, service }, Some(identity)) => {
            open(&relay, stream, &identity, device, service).await
        }
        (Message::List, Some(identity)) => list(&relay, stream, &identity).await,
        (other, access) => {
            let why = if access.is_none() {
                "devices may only open the control stream"
            } else {
                "unexpected header"
            };
            debug!(header = other.name(), why, "refusing stream");
            status(&mut stream, StatusCode::BadRequest, why).await;
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

async fn status(stream: &mut Stream, code: StatusCode, message: &str) {
    let msg = Message::Status {
        code,
        message: message.to_owned(),
    };
    let _ = protocol::write_frame(stream, &msg).await;
}

/// An access client asks for `device`/`service`: authorize, find the device, ask it, and
/// join the two streams if it accepts.
async fn open(
    relay: &Arc<Inner>,
    mut stream: Stream,
    identity: &Identity,
    device: String,
    service: String,
) {
    let span = info_span!("stream", caller = identity.name(), %device, %service);
    async {
        // Grants first: a caller must not learn whether a device it may not reach is online.
        if !protocol::is_valid_name(&device) || !protocol::is_valid_name(&service) {
            return status(
                &mut stream,
                StatusCode::BadRequest,
                "invalid device or service name",
            )
            .await;
        }
        if !identity.grants().may_access(&device, &service) {
            info!("denied");
            let msg = format!("{} may not open {device}/{service}", identity.name());
            return status(&mut stream, StatusCode::Denied, &msg).await;
        }
        if relay.draining.is_cancelled() {
            return status(
                &mut stream,
                StatusCode::Unavailable,
                "relay is shutting down",
            )
            .await;
        }
        let Some((session, services)) = relay.registry.lookup(&device) else {
            info!("device offline");
            return status(
                &mut stream,
                StatusCode::DeviceOffline,
                &format!("device {device} is not connected"),
            )
            .await;
        };
        if !services.contains(&service) {
            let msg = format!("device {device} offers no service {service}");
            return status(&mut stream, StatusCode::UnknownService, &msg).await;
        }
        let incoming = Message::Incoming {
            service: service.clone(),
            caller: identity.name().to_owned(),
            peer: String::new(),
        };
        match ask_device(&session, &incoming).await {
            Ok(device_stream) => {
                status(&mut stream, StatusCode::Ok, "").await;
                spawn_splice(relay, stream, device_stream);
            }
            Err((code, message)) => {
                info!(?code, message, "device refused");
                status(&mut stream, code, &message).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Opens a stream to the device, sends the `Incoming` header and waits for its answer.
/// Opening and answering share one [`STREAM_OPEN_TIMEOUT`], the caller's own deadline.
async fn ask_device(session: &Session, incoming: &Message) -> Result<Stream, (StatusCode, String)> {
    let unavailable = |m: String| (StatusCode::Unavailable, m);
    let answer = async {
        let mut stream = session.open().await.map_err(|e| Err(e.to_string()))?;
        protocol::write_frame(&mut stream, incoming)
            .await
            .map_err(Ok)?;
        let reply = protocol::read_frame(&mut stream, MAX_HEADER_LEN)
            .await
            .map_err(Ok)?;
        Ok::<_, Result<protocol::FrameError, String>>((stream, reply))
    };
    match tokio::time::timeout(STREAM_OPEN_TIMEOUT, answer).await {
        Ok(Err(Err(open))) => Err(unavailable(format!("cannot reach the device: {open}"))),
        Ok(Ok((
            stream,
            Message::Status {
                code: StatusCode::Ok,
                ..
            },
        ))) => Ok(stream),
        Ok(Ok((_, Message::Status { code, message }))) => Err((code, message)),
        Ok(Ok((_, other))) => Err(unavailable(format!("device answered {}", other.name()))),
        Ok(Err(Ok(e))) => Err(unavailable(format!("device stream failed: {e}"))),
        Err(_) => Err(unavailable("the device did not answer in time".into())),
    }
}

/// Joins an access stream to a device stream in a tracked task, so shutdown can wait for it.
fn spawn_splice(relay: &Inner, mut access: Stream, mut device: Stream) {
    let task = async move {
        join(&mut access, &mut device).await;
    };
    relay
        .streams
        .spawn(task.instrument(tracing::Span::current()));
}

/// Joins a public TCP connection to a device stream; an abrupt end resets the TCP side.
fn spawn_splice_tcp(relay: &Inner, mut tcp: TcpStream, mut device: Stream) {
    let task = async move {
        if !join(&mut tcp, &mut device).await {
            reset(tcp);
        }
    };
    relay
        .streams
        .spawn(task.instrument(tracing::Span::current()));
}

/// Copies both ways; returns whether both directions ended cleanly. On failure the caller
/// drops both ends, which resets the yamux streams.
async fn join<A>(a: &mut A, device: &mut Stream) -> bool
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    match splice(a, device).await {
        Ok((up, down)) => {
            info!(up, down, elapsed = ?started.elapsed(), "stream closed");
            true
        }
        Err(e) => {
            info!(error = %e, "stream reset");
            false
        }
    }
}

/// The devices `identity` may reach: those seen since start and those its grants name.
async fn list(relay: &Inner, mut stream: Stream, identity: &Identity) {
    let grants = identity.grants();
    let mut entries: Vec<DeviceEntry> = relay
        .registry
        .snapshot()
        .into_iter()
        .filter(|(d, _, _)| grants.may_access_device(d))
        .map(|(device, online, services)| {
            let services = services
                .into_iter()
                .filter(|s| grants.may_access(&device, s))
                .collect();
            DeviceEntry {
                device,
                online,
                services,
            }
        })
        .collect();
    for named in grants.named_devices() {
        if !entries.iter().any(|e| e.device == named) {
            entries.push(DeviceEntry {
                device: named.to_owned(),
                online: false,
                services: vec![],
            });
        }
    }
    entries.sort_by(|a, b| a.device.cmp(&b.device));
    // Keep the frame under its 64 KiB cap: drop entries past the budget (the list is
    // sorted, so the cut is stable). An entry takes 3 bytes plus its names.
    let mut size = 3;
    let fits = entries
        .iter()
        .take_while(|e| {
            size += 3 + e.device.len() + e.services.iter().map(|s| 1 + s.len()).sum::<usize>();
            size <= protocol::MAX_FRAME_LEN
        })
        .count();
    entries.truncate(fits);
    let msg = Message::DeviceList(entries);
    let _ = protocol::write_frame(&mut stream, &msg).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
}

/// Accepts connections on a public port and forwards each to the device.
async fn public_accept(
    relay: Arc<Inner>,
    session: Session,
    service: String,
    listener: TcpListener,
) {
    info!("public port open");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "public accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = relay.draining.cancelled() => return,
            () = session.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (relay, session, service) = (relay.clone(), session.clone(), service.clone());
        let span = info_span!("stream", caller = "public", %peer);
        tokio::spawn(
            async move {
                let incoming = Message::Incoming {
                    service,
                    caller: "public".into(),
                    peer: peer.to_string(),
                };
                match ask_device(&session, &incoming).await {
                    Ok(device_stream) => spawn_splice_tcp(&relay, tcp, device_stream),
                    Err((code, message)) => {
                        info!(?code, message, "device refused public connection");
                        reset(tcp);
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Closes a TCP connection with a reset, so the client sees a failure, not an empty reply.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}
