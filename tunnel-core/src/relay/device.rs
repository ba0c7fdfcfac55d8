//! The device side of the relay: a device's registration (its ID checked against the
//! credential and the registry, its public ports bound), its welcome, and its session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{Instrument, info, info_span, warn};

use super::cluster::{CLAIM_TIMEOUT, ClaimRefused, Cluster, DeviceClaim};
use super::events::{Event, SessionRole};
use super::handshake::{Accepted, refuse};
use super::limit::Slot;
use super::registry::{Claim, Online};
use super::session::{Ctx, Registered, prepare, send_welcome, serve, start, welcome};
use super::{Inner, public};
use crate::mux::{Inbound, Session};
use crate::protocol::RefusalCode;

/// Releases a cluster claim when the registration ends, however it ends.
struct ClaimGuard {
    cluster: Arc<dyn Cluster>,
    claim: Option<DeviceClaim>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            tokio::spawn(self.cluster.release(claim));
        }
    }
}

/// What a registered device's task holds while its session runs. Its guards (the
/// identity's session slot, the cluster claim) are released when it is dropped.
struct Registration {
    _slot: Slot<String>,
    _claim: Option<ClaimGuard>,
    device: String,
    generation: u64,
    session: Session,
    inbound: Inbound,
    registered: Registered,
}

/// Runs a device session until it ends: check the device ID, bind its public ports,
/// register it, welcome it, then serve its session.
pub(super) async fn run(relay: Arc<Inner>, accepted: Box<Accepted>) {
    // Boxed: registration (the claims, the public ports, the welcome, the TLS stream until
    // the driver takes it) is large and over once the session runs, while a task's size is
    // fixed by its largest state for the task's whole life. Inline, every idle device's
    // task carried 4.5 KiB of it.
    let Some(online) = Box::pin(register(&relay, accepted)).await else {
        return;
    };
    // In this order, so that they drop as before: the claim, then the slot, go last.
    let Registration {
        _slot,
        _claim,
        device,
        generation,
        session,
        inbound,
        registered,
    } = online;
    serve(&relay, &session, inbound, &Ctx::Device).await;
    if let Some(entry) = relay.registry.remove(&device, generation) {
        entry.evict().await;
    }
    crate::metrics::device_online(false);
    relay.tables.emit(Event::DeviceOffline {
        device: device.clone(),
        session: registered.id,
    });
    drop(registered);
    info!(device, "device offline");
}

/// Checks the device ID, claims it (cluster-wide, then in this relay), binds its public
/// ports, registers it and sends its welcome; `None` when the device was refused (it was
/// told why) or went away meanwhile.
async fn register(relay: &Arc<Inner>, accepted: Box<Accepted>) -> Option<Registration> {
    let Accepted {
        mut tls,
        hello,
        identity,
        version,
        peer,
        slot,
    } = *accepted;
    let device = hello.device.clone();
    if !identity.grants().may_register(&device) {
        info!(
            identity = identity.name(),
            device, "credential may not register this device id"
        );
        let msg = format!("credential may not register as device {device}");
        refuse(&mut tls, RefusalCode::DeviceIdDenied, &msg).await;
        return None;
    }
    // The cluster first: a device ID is held by one session cluster-wide. The guard
    // releases the claim however this function ends.
    let claim = match &relay.cluster {
        None => None,
        Some(cluster) => {
            let claim = DeviceClaim {
                device: device.clone(),
                principal: identity.principal().to_owned(),
                nonce: relay.claims.fetch_add(1, Ordering::Relaxed),
            };
            let refused = match tokio::time::timeout(CLAIM_TIMEOUT, cluster.claim(&claim)).await {
                Ok(Ok(())) => None,
                Ok(Err(ClaimRefused::Taken(why))) => Some((RefusalCode::DeviceIdTaken, why)),
                Ok(Err(ClaimRefused::Unavailable(why))) => Some((RefusalCode::Unavailable, why)),
                Err(_) => Some((
                    RefusalCode::Unavailable,
                    "the cluster's store did not answer in time; retry later".to_owned(),
                )),
            };
            if let Some((code, why)) = refused {
                warn!(
                    identity = identity.name(),
                    device, why, "cluster refused the device id"
                );
                refuse(&mut tls, code, &why).await;
                return None;
            }
            Some(ClaimGuard {
                cluster: cluster.clone(),
                claim: Some(claim),
            })
        }
    };
    match relay.registry.claim(&device, identity.principal()) {
        Claim::Taken => {
            warn!(
                identity = identity.name(),
                device, "device id held by another credential"
            );
            let msg = format!("device id {device} is in use by another credential");
            refuse(&mut tls, RefusalCode::DeviceIdTaken, &msg).await;
            return None;
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
            refuse(&mut tls, RefusalCode::DeviceIdTaken, &msg).await;
            return None;
        }
        Claim::Granted(Some(old)) => {
            info!(device, "replacing the previous session of this device");
            old.evict().await;
        }
        Claim::Granted(None) => {}
    }
    let published = match public::bind_public(relay, &identity, &device, &hello.public).await {
        Ok(p) => p,
        Err((code, message)) => {
            refuse(&mut tls, code, &message).await;
            return None;
        }
    };
    for (service, why) in &published.failed {
        warn!(device, service, why, "public port left out");
    }
    let listeners = published.bound;
    let ports: Vec<(String, u16)> = listeners
        .iter()
        .map(|(s, l)| (s.clone(), public::port_of(l)))
        .collect();
    // The welcome goes out only once the device is in the registry, so a caller that
    // dials right after the device saw its welcome finds it online. Opens issued before
    // the driver starts wait in its queue.
    let (session, inbound, unstarted) = prepare(relay, hello.role);
    let generation = relay.registry.generation();
    // Only devices with public ports pay for the public caps.
    let public_tasks = if listeners.is_empty() {
        Vec::new()
    } else {
        let gate = public::PublicGate::new(relay);
        listeners
            .into_iter()
            .map(|(service, listener)| {
                let span = info_span!("public", %service, port = public::port_of(&listener));
                let (relay, session, gate) = (relay.clone(), session.clone(), gate.clone());
                let accept =
                    public::public_accept(relay, session, gate, device.clone(), service, listener);
                tokio::spawn(accept.instrument(span))
            })
            .collect()
    };
    let entry = Online {
        generation,
        principal: identity.principal().to_owned(),
        services: hello.services.into(),
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
            unstarted.abandon();
            ours.evict().await;
            return None;
        }
    }
    let welcome = welcome(relay, &identity, ports.clone(), published.failed, version);
    if let Err(reason) = send_welcome(&mut tls, &welcome).await {
        info!(reason, "device not registered");
        unstarted.abandon();
        if let Some(entry) = relay.registry.remove(&device, generation) {
            entry.evict().await;
        }
        return None;
    }
    start(unstarted, tls);
    let registered = Registered::new(relay, &identity, SessionRole::Device, peer, &session);
    relay.tables.set_session_device(registered.id, &device);
    relay.tables.emit(Event::DeviceOnline {
        device: device.clone(),
        session: registered.id,
        name: identity.name().to_owned(),
        peer,
        services: relay
            .registry
            .lookup(&device)
            .map(|r| r.services.to_vec())
            .unwrap_or_default(),
    });
    for (service, port) in &ports {
        relay.tables.emit(Event::PublicPortBound {
            device: device.clone(),
            service: service.clone(),
            port: *port,
        });
    }
    crate::metrics::device_online(true);
    info!(identity = identity.name(), device, ?ports, "device online");
    Some(Registration {
        _slot: slot,
        _claim: claim,
        device,
        generation,
        session,
        inbound,
        registered,
    })
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        size_of::<F>()
    }
    fn connection_future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    /// A session's task is sized by its largest state for the session's whole life, so
    /// registration, welcome and the handshake's result must stay out of it (boxed): inline,
    /// they made every idle device's task 4.5 KiB, and every access session's 3.7 KiB; an
    /// unboxed `Accepted` kept in the connection task cost every idle device 1.6 KiB more.
    #[test]
    fn a_session_task_keeps_only_what_serving_needs() {
        const SMALL: usize = 2048;
        let device = future_size(super::run);
        let access = future_size(super::super::access::run);
        assert!(device < SMALL, "device session task: {device} bytes");
        assert!(access < SMALL, "access session task: {access} bytes");
        let connection = connection_future_size(super::super::connection);
        assert!(
            connection < device.max(access) + 256,
            "connection task: {connection} bytes, around a session of {device}"
        );
    }
}
