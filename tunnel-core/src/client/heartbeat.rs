//! Client side of the heartbeat: a ping every interval on the control stream; the session
//! is closed when a pong is more than two intervals late.

use std::time::Duration;

use tracing::{debug, warn};

use crate::config::HEARTBEAT_MISSES;
use crate::mux::Session;
use crate::protocol::{self, Message};

/// Client side of the heartbeat: a ping every `interval` on the control stream, and the
/// session is closed when a pong is more than two intervals late. A dead relay is thus
/// noticed within three intervals.
pub(super) async fn heartbeat(session: Session, interval: Duration) {
    let reason = heartbeat_loop(&session, interval).await;
    if !session.is_closed() {
        warn!(reason, "heartbeat failed; closing session");
        session.close();
    }
}

async fn heartbeat_loop(session: &Session, interval: Duration) -> &'static str {
    let Ok(mut control) = session.open().await else {
        return "cannot open the control stream";
    };
    let deadline = interval * (HEARTBEAT_MISSES - 1);
    if protocol::write_frame(&mut control, &Message::Control)
        .await
        .is_err()
    {
        return "control stream write failed";
    }
    let mut nonce = 0u64;
    loop {
        nonce = nonce.wrapping_add(1);
        if protocol::write_frame(&mut control, &Message::Ping(nonce))
            .await
            .is_err()
        {
            return "control stream write failed";
        }
        match tokio::time::timeout(
            deadline,
            protocol::read_frame(&mut control, protocol::MAX_HEADER_LEN),
        )
        .await
        {
            Ok(Ok(Message::Pong(n))) if n == nonce => debug!(nonce, "pong"),
            Ok(Ok(_)) => return "unexpected message on the control stream",
            Ok(Err(_)) => return "control stream closed",
            Err(_) => return "relay missed its heartbeats",
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = session.closed() => return "session closed",
        }
    }
}
