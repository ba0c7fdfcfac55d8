//! Ready-made plumbing on top of [`Listener`] and [`Dialer`]: forward a device's services to
//! local addresses, serve a local port for a device service, or pipe stdin/stdout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, info_span, warn};

use super::dialer::Dialer;
use super::listener::{Incoming, Listener};
use crate::error::DialError;
use crate::protocol::TARGET_CONNECT_TIMEOUT;
use crate::protocol::status::Refusal;
use crate::splice::{Side, splice};
use crate::stream::Stream;

/// Forwards every stream `listener` accepts to the local address of its service, e.g.
/// `ssh → 127.0.0.1:22`, `web → 192.168.1.2:3000`. Runs until the listener is closed.
///
/// Only the services in `targets` are reachable: a stream for any other name is refused
/// as `unknown service`, and a target that does not answer is reported to the caller as
/// `target refused`; neither affects the tunnel.
pub async fn forward(listener: &Listener, targets: HashMap<String, String>) {
    let targets = Arc::new(targets);
    while let Some(incoming) = listener.accept().await {
        let span = info_span!(
            "stream",
            service = incoming.service(),
            caller = incoming.caller()
        );
        tokio::spawn(forward_one(incoming, targets.clone()).instrument(span));
    }
}

async fn forward_one(incoming: Incoming, targets: Arc<HashMap<String, String>>) {
    let Some(target) = targets.get(incoming.service()) else {
        let _ = incoming
            .refuse(Refusal::UnknownService, "service not forwarded")
            .await;
        return;
    };
    let tcp = match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            info!(%target, error = %e, "target refused");
            let _ = incoming
                .refuse(Refusal::TargetRefused, &e.to_string())
                .await;
            return;
        }
        Err(_) => {
            info!(%target, "target timed out");
            let _ = incoming
                .refuse(Refusal::TargetRefused, "connect timed out")
                .await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let Ok(stream) = incoming.accept().await else {
        return;
    };
    join_tcp(tcp, stream).await;
}

/// Splices a TCP connection and a tunnel stream; on an abrupt end, resets the TCP side so
/// its peer sees a failure rather than a clean close.
async fn join_tcp(mut tcp: TcpStream, mut stream: Stream) {
    match splice(&mut tcp, &mut stream).await {
        Ok((sent, received)) => info!(sent, received, "stream closed"),
        Err(e) => {
            // A stream opened with early data learns of its refusal on its first read.
            match e
                .source
                .get_ref()
                .and_then(|i| i.downcast_ref::<DialError>())
            {
                Some(refused) => warn!(error = %refused, "cannot open stream"),
                None => info!(error = %e, "stream reset"),
            }
            let _ = tcp.set_zero_linger();
        }
    }
}

/// Serves `listener` (a local port such as `127.0.0.1:3000`): each connection is joined to
/// a new stream to `service` on `device`, until `shutdown` completes. A connection whose
/// stream cannot be opened is closed with a reset and the error is logged. Streams are
/// opened with [`Dialer::dial_early`]: what the local client sends first travels with the
/// open, so its first answer comes back in one round trip.
pub async fn serve_local(
    dialer: Dialer,
    listener: TcpListener,
    device: String,
    service: String,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let (dialer, device, service) = (dialer.clone(), device.clone(), service.clone());
        let span = info_span!("local", %peer, %device, %service);
        tokio::spawn(
            async move {
                match dialer.dial_early(&device, &service).await {
                    Ok(stream) => join_tcp(tcp, stream).await,
                    Err(e) => {
                        warn!(error = %e, "cannot open stream");
                        let _ = tcp.set_zero_linger();
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Joins stdin/stdout to a stream to `service` on `device` (for
/// `ssh -o ProxyCommand='tunnel-access … --stdio'`). End of stdin half-closes the stream.
pub async fn pipe_stdio(dialer: &Dialer, device: &str, service: &str) -> Result<(), DialError> {
    let mut stream = dialer.dial(device, service).await?;
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let result = splice(&mut stdio, &mut stream).await;
    let _ = stdio.flush().await;
    match result {
        Ok(_) => Ok(()),
        // stdin/stdout is the first end of the splice: its failures are local ones.
        Err(e) if e.side == Side::A => Err(DialError::Local(e.source)),
        Err(e) => Err(DialError::ConnectionLost(e.source)),
    }
}
