//! Issue 11's "measure first": the multiplexer alone, without TLS or the tunnel.
//!
//! One stream, `MIB` MiB (default 1024) client → server over loopback TCP, in `CHUNK`-byte
//! writes (default 64 KiB), through rust-yamux 0.14.1 (as tunnel-core configures it: frames
//! of 16 KiB − 12) and through tokio-yamux, `PAIRS` pairs (default 5) interleaved A B, B A…,
//! on one 2-worker runtime; prints MiB/s and the process's CPU seconds per GiB, min /
//! median / max. Not a workspace member, so CI does not build it:
//!
//!     cd benches/experiments/yamux-compare && cargo run --release
//!     CHUNK=16372 PAIRS=8 cargo run --release   # tokio-yamux frames no larger than ours
use futures::StreamExt;
use std::future::poll_fn;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

fn cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(a), l.accept());
    let (c, s) = (c.unwrap(), s.unwrap().0);
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

async fn sink<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            return n;
        }
        n += k as u64;
    }
}

async fn source<W: tokio::io::AsyncWrite + Unpin>(mut w: W, bytes: u64) {
    let chunk: usize = std::env::var("CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 1024);
    let buf = vec![7u8; chunk];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..k]).await.unwrap();
        left -= k as u64;
    }
    w.shutdown().await.unwrap();
    // keep the stream until the peer has read everything
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn rust_cfg() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_split_send_size(16 * 1024 - 12);
    c
}

async fn rust_yamux(bytes: u64) -> u64 {
    let (c, s) = pair().await;
    let server = tokio::spawn(async move {
        let mut conn = yamux::Connection::new(s.compat(), rust_cfg(), yamux::Mode::Server);
        let stream = poll_fn(|cx| conn.poll_next_inbound(cx))
            .await
            .unwrap()
            .unwrap();
        let driver = tokio::spawn(async move {
            while let Some(Ok(_)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {}
        });
        let n = sink(stream.compat()).await;
        driver.abort();
        n
    });
    let mut conn = yamux::Connection::new(c.compat(), rust_cfg(), yamux::Mode::Client);
    let stream = poll_fn(|cx| conn.poll_new_outbound(cx)).await.unwrap();
    let driver = tokio::spawn(async move {
        while let Some(Ok(_)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {}
    });
    let (r, w) = tokio::io::split(stream.compat());
    let reader = tokio::spawn(sink(r));
    source(w, bytes).await;
    reader.abort();
    let n = server.await.unwrap();
    driver.abort();
    n
}

async fn tokio_yamux(bytes: u64) -> u64 {
    let (c, s) = pair().await;
    let server = tokio::spawn(async move {
        let mut session = tokio_yamux::Session::new_server(s, tokio_yamux::Config::default());
        let stream = session.next().await.unwrap().unwrap();
        let driver = tokio::spawn(async move { while let Some(Ok(_)) = session.next().await {} });
        let n = sink(stream).await;
        driver.abort();
        n
    });
    let mut session = tokio_yamux::Session::new_client(c, tokio_yamux::Config::default());
    let mut control = session.control();
    let driver = tokio::spawn(async move { while let Some(Ok(_)) = session.next().await {} });
    let stream = control.open_stream().await.unwrap();
    // tokio-yamux processes window updates on the read path: a write-only stream stalls
    // after its first window unless something reads it.
    let (r, w) = tokio::io::split(stream);
    let reader = tokio::spawn(sink(r));
    source(w, bytes).await;
    reader.abort();
    let n = server.await.unwrap();
    driver.abort();
    n
}

fn main() {
    let mib: u64 = std::env::var("MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pairs: usize = std::env::var("PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes = mib << 20;
    let mut res: [Vec<(f64, f64)>; 2] = [vec![], vec![]];
    for p in 0..pairs {
        let order = if p % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (t0, c0) = (Instant::now(), cpu());
            let n = rt.block_on(async {
                if which == 0 {
                    rust_yamux(bytes).await
                } else {
                    tokio_yamux(bytes).await
                }
            });
            assert_eq!(n, bytes);
            let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu() - c0);
            let gib = bytes as f64 / (1u64 << 30) as f64;
            res[which].push((mib as f64 / dt, dc / gib));
            println!(
                "pair {p} {}: {:.0} MiB/s, {:.2} CPU s/GiB",
                ["rust-yamux", "tokio-yamux"][which],
                mib as f64 / dt,
                dc / gib
            );
        }
    }
    for (i, name) in ["rust-yamux 0.14.1", "tokio-yamux"].iter().enumerate() {
        let mut t: Vec<f64> = res[i].iter().map(|r| r.0).collect();
        let mut c: Vec<f64> = res[i].iter().map(|r| r.1).collect();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        c.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{name}: MiB/s min {:.0} median {:.0} max {:.0}; CPU s/GiB min {:.2} median {:.2} max {:.2}",
            t[0], t[t.len() / 2], t[t.len() - 1], c[0], c[c.len() / 2], c[c.len() - 1]);
    }
}
