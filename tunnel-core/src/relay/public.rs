//! Public ports: binding the ports a device asked for, if the relay and its credential
//! allow them, and accepting connections on them for the device.

use std::sync::Arc;
use std::time::Duration;

use std::net::IpAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use super::bridge::{Joined, NotJoined};
use super::events::Event;
use super::limit::KeyedLimit;
use super::owners::PortOwner;
use super::preauth::source_key;
use super::{Inner, bridge};
use crate::auth::Identity;
use crate::mux::Session;
use crate::protocol::{Message, RefusalCode};
use crate::util::lock;

pub(super) fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// A device's public ports after registration: those bound, and those it asked for but
/// cannot have now, with why. A port that cannot be had never refuses the session.
pub(super) struct Published {
    pub(super) bound: Vec<(String, TcpListener)>,
    pub(super) failed: Vec<(String, String)>,
}

/// Binds the public ports a device asked for. Refuses the session only when the request is
/// not allowed at all (no range on this relay, no grant, a port outside the range), which
/// is the operator's decision. A port that is busy, reserved for another device, or over
/// the credential's cap is left out and reported in [`Published::failed`].
///
/// Ports are owned: a port a device bound stays reserved for it (principal and device ID)
/// while it is offline, and a device that asks for "any port" gets its own back first.
pub(super) async fn bind_public(
    relay: &Inner,
    identity: &Identity,
    device: &str,
    wanted: &[(String, u16)],
) -> Result<Published, (RefusalCode, String)> {
    let mut published = Published {
        bound: Vec::new(),
        failed: Vec::new(),
    };
    if wanted.is_empty() {
        lock(&relay.registry.owners).release_ports_except(device, &[]);
        return Ok(published);
    }
    let denied = |m: String| (RefusalCode::PublicPortDenied, m);
    let Some(range) = relay.public_ports.clone() else {
        return Err(denied("this relay publishes no ports".into()));
    };
    if !identity.grants().may_publish() {
        return Err(denied("this credential may not publish ports".into()));
    }
    if let Some((_, port)) = wanted.iter().find(|(_, p)| *p != 0 && !range.contains(p)) {
        return Err(denied(format!(
            "port {port} is outside the allowed range {}-{}",
            range.start(),
            range.end()
        )));
    }
    let me = PortOwner {
        principal: identity.principal().to_owned(),
        device: device.to_owned(),
    };
    let mine = lock(&relay.registry.owners).ports_of_device(device);
    for (service, port) in wanted {
        let taken: Vec<u16> = published.bound.iter().map(|(_, l)| port_of(l)).collect();
        let result = if *port == 0 {
            // This device's own ports first (sticky), then any port nobody owns.
            let candidates = mine
                .iter()
                .copied()
                .chain(range.clone())
                .filter(|p| !taken.contains(p));
            bind_any(relay, &me, candidates).await
        } else {
            bind_one(relay, &me, *port, mine.contains(port)).await
        };
        match result {
            Ok(listener) => {
                lock(&relay.registry.owners).own_port(port_of(&listener), me.clone());
                published.bound.push((service.clone(), listener));
            }
            Err(why) => published.failed.push((service.clone(), why.to_string())),
        }
    }
    let kept: Vec<u16> = published.bound.iter().map(|(_, l)| port_of(l)).collect();
    lock(&relay.registry.owners).release_ports_except(device, &kept);
    Ok(published)
}

/// Why one public port cannot be had; reported to the device, never a refusal.
#[derive(Debug, thiserror::Error)]
enum PortError {
    #[error("port {0} is reserved for another device")]
    Reserved(u16),
    #[error("this credential holds its limit of {0} public ports")]
    Cap(usize),
    #[error("port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port left in the allowed range")]
    NoneFree,
}

/// Binds one asked-for port, unless another device owns it or the credential is at its cap.
async fn bind_one(
    relay: &Inner,
    me: &PortOwner,
    port: u16,
    already_mine: bool,
) -> Result<TcpListener, PortError> {
    {
        let owners = lock(&relay.registry.owners);
        if owners.port_owner(port).is_some_and(|o| o != me) {
            return Err(PortError::Reserved(port));
        }
        if !already_mine && owners.ports_of_principal(&me.principal) >= relay.max_public_ports {
            return Err(PortError::Cap(relay.max_public_ports));
        }
    }
    TcpListener::bind((relay.public_bind, port))
        .await
        .map_err(|source| PortError::Bind { port, source })
}

/// Binds the first port of `candidates` that nobody else owns and that is free.
async fn bind_any(
    relay: &Inner,
    me: &PortOwner,
    candidates: impl Iterator<Item = u16>,
) -> Result<TcpListener, PortError> {
    let mine = lock(&relay.registry.owners).ports_of_device(&me.device);
    for port in candidates {
        let free = lock(&relay.registry.owners)
            .port_owner(port)
            .is_none_or(|o| o == me);
        if !free {
            continue;
        }
        match bind_one(relay, me, port, mine.contains(&port)).await {
            Ok(listener) => return Ok(listener),
            Err(cap @ PortError::Cap(_)) => return Err(cap),
            Err(_) => {}
        }
    }
    Err(PortError::NoneFree)
}

/// Caps on one device session's public connections, shared by its public ports: anonymous
/// callers must never take the slots that private access needs.
pub(super) struct PublicGate {
    /// The share of the session's stream slots public connections may hold.
    slots: Arc<Semaphore>,
    /// Public connections per source (address, or /64 for IPv6).
    per_source: KeyedLimit<IpAddr>,
}

impl PublicGate {
    pub(super) fn new(relay: &Inner) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(relay.max_public_streams)),
            per_source: KeyedLimit::new(relay.public_per_source),
        })
    }
}

/// Accepts connections on a public port and forwards each to the device, within the
/// device's [`PublicGate`]; a connection over a cap is reset at once.
pub(super) async fn public_accept(
    relay: Arc<Inner>,
    session: Session,
    gate: Arc<PublicGate>,
    device: String,
    service: String,
    listener: TcpListener,
) {
    info!("public port open");
    loop {
        let (mut tcp, peer) = tokio::select! {
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
        let Some(source_slot) = gate.per_source.try_take(source_key(peer.ip())) else {
            debug!(%peer, "too many public connections from this source; resetting");
            reset(tcp);
            continue;
        };
        let Ok(slot) = gate.slots.clone().try_acquire_owned() else {
            debug!(%peer, "public share of the device's streams is full; resetting");
            reset(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (relay, session, service) = (relay.clone(), session.clone(), service.clone());
        let (device, service_name) = (device.clone(), service.clone());
        let span = info_span!("stream", caller = "public", %peer);
        tokio::spawn(
            async move {
                let incoming = Message::Incoming {
                    service,
                    caller: "public".into(),
                    peer: peer.to_string(),
                };
                let started = tokio::time::Instant::now();
                match bridge::ask_device(&session, &incoming, &mut tcp).await {
                    Ok(device_stream) => {
                        crate::metrics::stream_result("ok", Some(started.elapsed()));
                        let who = Joined {
                            caller: "public".into(),
                            device,
                            service: service_name,
                            peer: Some(peer),
                            relay: None,
                        };
                        let (idle, hold) = (Some(relay.public_idle), (source_slot, slot));
                        bridge::spawn_join(&relay, tcp, device_stream, who, idle, hold);
                    }
                    Err(NotJoined::CallerGone(e)) => {
                        info!(error = %e, "public caller gone before the device answered");
                        crate::metrics::stream_result(crate::metrics::CALLER_GONE, None);
                    }
                    Err(NotJoined::Refused(code, message)) => {
                        info!(?code, reason = ?message, "device refused public connection");
                        reset(tcp);
                        let kind = code.kind().unwrap_or(crate::ErrorKind::Protocol);
                        crate::metrics::stream_result(kind.as_str(), None);
                        relay.tables.emit(Event::StreamRefused {
                            caller: "public".into(),
                            device,
                            service: service_name,
                            kind,
                        });
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Closes a TCP connection with a reset, so the client sees a failure, not an empty reply.
pub(super) fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}
