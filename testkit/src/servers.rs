//! Local TCP services on `127.0.0.1:0` that devices forward to and benches measure against.

use std::future::Future;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{CHUNK, write_payload};

/// Binds `127.0.0.1:0` and runs `handle` on every accepted connection (`TCP_NODELAY` set),
/// on the current runtime; returns the address.
pub async fn spawn_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind local service");
    let addr = listener.local_addr().expect("service addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// A TCP echo server: returns every byte, and closes its write side at end of input.
pub async fn spawn_echo_server() -> SocketAddr {
    spawn_server(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// A sink: reads everything to end of input, then replies with the byte count (8 bytes,
/// big-endian) and the SHA-256 of what it read (32 bytes), then closes.
pub async fn spawn_sink_server() -> SocketAddr {
    spawn_server(|mut tcp| async move {
        let mut hash = Sha256::new();
        let mut count = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    count += n as u64;
                }
                Err(_) => return,
            }
        }
        let mut reply = count.to_be_bytes().to_vec();
        reply.extend_from_slice(&hash.finalize());
        if tcp.write_all(&reply).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// Reads the whole request until end of input, then replies in full and closes.
///
/// The request starts with `seed: u64 BE` and `len: u64 BE` (anything may follow); the
/// response is the SHA-256 of the whole request (32 bytes) followed by
/// `Payload::new(seed)`'s first `len` bytes.
pub async fn spawn_reply_after_eof_server() -> SocketAddr {
    spawn_server(|mut tcp| async move {
        let mut request = Vec::new();
        if tcp.read_to_end(&mut request).await.is_err() || request.len() < 16 {
            return;
        }
        let seed = u64::from_be_bytes(request[..8].try_into().unwrap());
        let len = u64::from_be_bytes(request[8..16].try_into().unwrap());
        if tcp.write_all(&Sha256::digest(&request)).await.is_err() {
            return;
        }
        if write_payload(&mut tcp, seed, len).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// Writes `banner`, then keeps the connection open, reading until the peer ends it.
pub async fn spawn_greeting_server(banner: &'static [u8]) -> SocketAddr {
    spawn_server(move |mut tcp| async move {
        if tcp.write_all(banner).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// An address where nothing listens: a listener bound and dropped.
pub async fn closed_port_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}
