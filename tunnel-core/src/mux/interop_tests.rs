//! Our yamux against rust-yamux 0.14 (the multiplexer of earlier releases, which deployed
//! devices still run), both ways round, over real TCP sockets: the wire stays the spec.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::{Inbound, Opener, Session, Side};
use crate::config::Limits;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Bytes each stream carries each way: several windows' worth, so window updates matter.
const BYTES: usize = 3 * 1024 * 1024 + 7;
const STREAMS: usize = 4;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Runs a rust-yamux connection: opens `opens` streams, then accepts; every stream it
/// opened or accepted goes to the receiver.
fn rust_yamux(io: TcpStream, mode: yamux::Mode, opens: usize) -> mpsc::Receiver<yamux::Stream> {
    rust_yamux_task(io, mode, opens).0
}

/// [`rust_yamux`], with the task: aborting it drops the connection (the peer vanishes).
fn rust_yamux_task(
    io: TcpStream,
    mode: yamux::Mode,
    opens: usize,
) -> (mpsc::Receiver<yamux::Stream>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut conn = yamux::Connection::new(io.compat(), yamux::Config::default(), mode);
        let mut to_open = opens;
        poll_fn(|cx| {
            while to_open > 0 {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(s)) => {
                        let _ = tx.try_send(s);
                        to_open -= 1;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        let _ = tx.try_send(s);
                    }
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
    });
    (rx, task)
}

fn pattern(seed: usize) -> Vec<u8> {
    (0..BYTES)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

/// Echoes a stream until its end, then half-closes it.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    tokio::io::copy(&mut r, &mut w).await.expect("echo");
    w.shutdown().await.expect("echo shutdown");
}

/// Writes a pattern and half-closes, reads the echo to its end, and compares.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S, seed: usize) {
    let data = pattern(seed);
    let (mut r, mut w) = tokio::io::split(s);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read to a clean end");
    let _w = writer.await.unwrap();
    assert!(
        back == data,
        "stream {seed}: {} bytes back of {}",
        back.len(),
        data.len()
    );
}

fn ours(io: TcpStream, opener: Opener, side: Side) -> (Session, Inbound) {
    ours_with(io, opener, side, Limits::default())
}

fn ours_with(io: TcpStream, opener: Opener, side: Side, limits: Limits) -> (Session, Inbound) {
    Session::spawn(io, &limits, opener, side, tracing::Span::none())
}

/// Limits whose stream window (2 MiB) is above the spec's initial one, so that the window
/// is granted with the first frame (a window update carrying SYN or ACK).
fn large_windows() -> Limits {
    Limits::for_streams(16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_we_open_carry_bytes_both_ways_to_a_rust_yamux_peer() {
    we_open(Limits::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_we_open_with_large_windows_carry_bytes_to_a_rust_yamux_peer() {
    we_open(large_windows()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_rust_yamux_peer_opens_carry_bytes_both_ways() {
    they_open(Limits::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_rust_yamux_peer_opens_with_our_large_windows_carry_bytes() {
    they_open(large_windows()).await;
}

async fn we_open(limits: Limits) {
    let (a, b) = tcp_pair().await;
    let (session, _inbound) = ours_with(a, Opener::Local, Side::Client, limits);
    let mut theirs = rust_yamux(b, yamux::Mode::Server, 0);
    tokio::spawn(async move {
        while let Some(s) = theirs.recv().await {
            tokio::spawn(echo(s.compat()));
        }
    });
    let mut tasks = Vec::new();
    for seed in 0..STREAMS {
        let stream = session.open().await.expect("open");
        tasks.push(tokio::spawn(round_trip(stream, seed)));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("in time")
            .unwrap();
    }
}

async fn they_open(limits: Limits) {
    let (a, b) = tcp_pair().await;
    let mut theirs = rust_yamux(a, yamux::Mode::Client, STREAMS);
    let (_session, mut inbound) = ours_with(b, Opener::Remote, Side::Server, limits);
    tokio::spawn(async move {
        while let Some(s) = inbound.recv().await {
            tokio::spawn(echo(s));
        }
    });
    let mut tasks = Vec::new();
    for seed in 0..STREAMS {
        let stream = tokio::time::timeout(WAIT, theirs.recv())
            .await
            .unwrap()
            .unwrap();
        tasks.push(tokio::spawn(round_trip(stream.compat(), seed)));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("in time")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_yamux_reset_reads_as_a_reset_after_the_bytes_before_it() {
    let (a, b) = tcp_pair().await;
    let mut theirs = rust_yamux(a, yamux::Mode::Client, 1);
    let (_session, mut inbound) = ours(b, Opener::Remote, Side::Server);
    let mut stream = theirs.recv().await.unwrap().compat();
    stream.write_all(b"last words").await.unwrap();
    stream.flush().await.unwrap();
    let mut ours = tokio::time::timeout(WAIT, inbound.recv())
        .await
        .unwrap()
        .unwrap();
    let mut got = [0u8; 10];
    ours.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"last words");
    drop(stream);
    let err = tokio::time::timeout(WAIT, ours.read(&mut got))
        .await
        .expect("in time")
        .expect_err("a reset is not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_we_drop_unfinished_is_reset_at_the_rust_yamux_peer() {
    let (a, b) = tcp_pair().await;
    let (session, _inbound) = ours(a, Opener::Local, Side::Client);
    let mut theirs = rust_yamux(b, yamux::Mode::Server, 0);
    let mut stream = session.open().await.unwrap();
    stream.write_all(b"hi").await.unwrap();
    let mut peer = tokio::time::timeout(WAIT, theirs.recv())
        .await
        .unwrap()
        .unwrap()
        .compat();
    let mut got = [0u8; 2];
    peer.read_exact(&mut got).await.unwrap();
    drop(stream);
    let res = tokio::time::timeout(WAIT, peer.read(&mut got))
        .await
        .expect("in time");
    // rust-yamux reports a reset stream as closed: no more bytes either way.
    assert!(matches!(res, Ok(0) | Err(_)), "{res:?}");
    assert!(
        peer.write_all(b"more").await.is_err(),
        "a reset stream takes no writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_yamux_peer_that_vanishes_ends_our_session_and_its_open_streams() {
    let (a, b) = tcp_pair().await;
    let (session, _inbound) = ours(a, Opener::Local, Side::Client);
    let (mut theirs, task) = rust_yamux_task(b, yamux::Mode::Server, 0);
    let mut stream = session.open().await.unwrap();
    stream.write_all(b"hi").await.unwrap();
    let _peer = tokio::time::timeout(WAIT, theirs.recv())
        .await
        .unwrap()
        .unwrap();
    task.abort();
    tokio::time::timeout(WAIT, session.closed())
        .await
        .expect("the session ends");
    let mut buf = [0u8; 4];
    let res = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("in time");
    assert!(
        res.is_err(),
        "an open stream of a closed session fails: {res:?}"
    );
}
