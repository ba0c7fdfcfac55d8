//! Public ports: binding the ports a device asked for, if the relay and its credential
//! allow them, and accepting connections on them for the device.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, info_span, warn};

use super::{Inner, bridge};
use crate::auth::Identity;
use crate::mux::Session;
use crate::protocol::{Message, RefusalCode};

pub(super) fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Binds the requested public ports, if the relay and the credential allow them.
pub(super) async fn bind_public(
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

/// Accepts connections on a public port and forwards each to the device.
pub(super) async fn public_accept(
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
                match bridge::ask_device(&session, &incoming).await {
                    Ok(device_stream) => bridge::spawn_splice_tcp(&relay, tcp, device_stream),
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
pub(super) fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}
