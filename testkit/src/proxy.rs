//! A TCP proxy that can be frozen, to simulate a silent network partition.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::CHUNK;

/// A TCP proxy in front of `target`. [`freeze`](Self::freeze) stops all copying without
/// closing any socket, like a silent network partition. Dropping the proxy closes all.
pub struct FreezableProxy {
    /// Where the proxy listens (connect here instead of to the target).
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl FreezableProxy {
    /// Starts the proxy on `127.0.0.1:0`, forwarding every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (frozen, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut closed = rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = closed.wait_for(|_| false) => return, // the proxy was dropped
                };
                let Ok((inbound, _)) = accepted else { return };
                let state = rx.clone();
                tokio::spawn(async move {
                    if *state.borrow() {
                        return hold(state, (inbound, ())).await;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pipe(ir, ow, state.clone()), pipe(or, iw, state));
                });
            }
        });
        Self { addr, frozen }
    }

    /// Stops forwarding in both directions on every connection, present and future,
    /// while keeping every socket open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Keeps `what` alive until the proxy is dropped.
async fn hold<T>(mut state: watch::Receiver<bool>, what: T) {
    let _ = state.wait_for(|_| false).await;
    drop(what);
}

/// Copies one direction until end of input, an error, or a freeze (then holds the sockets).
async fn pipe(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, mut state: watch::Receiver<bool>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            frozen = async { state.wait_for(|f| *f).await.is_ok() } => {
                if frozen {
                    hold(state, (rd, wr)).await;
                }
                return;
            }
            n = rd.read(&mut buf) => n,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                let _ = wr.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        tokio::select! {
            frozen = async { state.wait_for(|f| *f).await.is_ok() } => {
                if frozen {
                    hold(state, (rd, wr)).await;
                }
                return;
            }
            written = wr.write_all(&buf[..n]) => if written.is_err() { return },
        }
    }
}
