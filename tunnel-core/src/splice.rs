//! Splicing two byte streams both ways (relay: caller ↔ device; device: stream ↔ local
//! service; access: local connection ↔ stream), carrying half-close across and saying which
//! side failed.
//!
//! The data path of one byte through a splice: one read into this direction's buffer, one
//! write out of it; no other copy or task. The buffer is small while the direction is quiet
//! and large only while data flows.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Buffer per direction while data flows through a splice: large enough that yamux frames
/// fill whole TLS records (tokio's default of 8 KiB halves throughput). Freed when the
/// direction goes quiet.
const SPLICE_BUFFER: usize = 64 * 1024;
/// Buffer per direction while a splice is quiet (an idle ssh session, a held-open
/// connection): with tokio's `copy_bidirectional` every idle tunnelled connection held
/// 2 × 64 KiB at the relay. A read that fills this switches to [`SPLICE_BUFFER`].
const QUIET_BUFFER: usize = 2 * 1024;

/// Which end of a splice an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The first argument of [`splice`].
    A,
    /// The second argument of [`splice`].
    B,
}

/// A splice failed on one of its two ends.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub(crate) struct SpliceError {
    /// The end whose read, write or shutdown failed.
    pub(crate) side: Side,
    #[source]
    pub(crate) source: io::Error,
}

/// Copies both ways until both directions have ended, carrying half-close across; returns
/// the bytes moved `(a → b, b → a)`. On an error, returns it with the side it came from; the
/// caller drops both ends, which resets them.
pub(crate) async fn splice<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(
        pump(&mut a_read, &mut b_write, Side::A, Side::B),
        pump(&mut b_read, &mut a_write, Side::B, Side::A)
    )
}

/// Copies one direction to its end, then half-closes the writer. Holds a large buffer only
/// while data keeps coming: idle, it waits with a small one.
async fn pump<R, W>(r: &mut R, w: &mut W, from: Side, to: Side) -> Result<u64, SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures::FutureExt;

    let read_err = |source| SpliceError { side: from, source };
    let write_err = |source| SpliceError { side: to, source };
    let mut quiet = [0u8; QUIET_BUFFER];
    let mut busy: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let n = if busy.is_empty() {
            let n = r.read(&mut quiet).await.map_err(read_err)?;
            w.write_all(&quiet[..n]).await.map_err(write_err)?;
            if n == QUIET_BUFFER {
                busy = vec![0; SPLICE_BUFFER];
            }
            n
        } else {
            // `read` is cancel-safe: a read that would wait is dropped, and so is the
            // large buffer, until the next burst.
            let ready = r.read(&mut busy).now_or_never();
            let Some(n) = ready else {
                busy = Vec::new();
                w.flush().await.map_err(write_err)?;
                continue;
            };
            let n = n.map_err(read_err)?;
            w.write_all(&busy[..n]).await.map_err(write_err)?;
            n
        };
        if n == 0 {
            break;
        }
        total += n as u64;
        if busy.is_empty() {
            w.flush().await.map_err(write_err)?;
        }
    }
    w.shutdown().await.map_err(write_err)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_splice_carries_both_directions_to_their_end_and_counts_bytes() {
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let (mut b, mut b_far) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { splice(&mut a, &mut b).await });
        a_far.write_all(b"hello").await.unwrap();
        a_far.shutdown().await.unwrap();
        b_far.write_all(b"hi").await.unwrap();
        b_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        got.clear();
        a_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        assert_eq!(task.await.unwrap().unwrap(), (5, 2));
    }

    #[tokio::test]
    async fn a_failed_read_names_the_side_it_came_from() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
        }
        impl AsyncWrite for Broken {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                b: &[u8],
            ) -> std::task::Poll<io::Result<usize>> {
                std::task::Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let (mut b, _b_far) = tokio::io::duplex(64);
        let err = splice(&mut Broken, &mut b).await.unwrap_err();
        assert_eq!(err.side, Side::A);
        assert_eq!(err.source.kind(), io::ErrorKind::BrokenPipe);
    }
}
