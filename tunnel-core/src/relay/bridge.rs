//! Joining the two ends of a stream at the relay: ask the device for a stream (the
//! `Incoming` header and its answer, under one deadline), then splice it to the caller's
//! stream or public TCP connection in a tracked task that shutdown waits for.

use tokio::time::Instant;

use tokio::net::TcpStream;
use tracing::{Instrument, info};

use super::Inner;
use super::public::reset;
use crate::mux::Session;
use crate::protocol::{self, MAX_HEADER_LEN, Message, STREAM_OPEN_TIMEOUT, StatusCode};
use crate::splice::splice;
use crate::stream::Stream;

/// Opens a stream to the device, sends the `Incoming` header and waits for its answer.
/// Opening and answering share one [`STREAM_OPEN_TIMEOUT`], the caller's own deadline.
pub(super) async fn ask_device(
    session: &Session,
    incoming: &Message,
) -> Result<Stream, (StatusCode, String)> {
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
pub(super) fn spawn_splice(relay: &Inner, mut access: Stream, mut device: Stream) {
    let task = async move {
        join(&mut access, &mut device).await;
    };
    relay
        .streams
        .spawn(task.instrument(tracing::Span::current()));
}

/// Joins a public TCP connection to a device stream; an abrupt end resets the TCP side.
pub(super) fn spawn_splice_tcp(relay: &Inner, mut tcp: TcpStream, mut device: Stream) {
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
