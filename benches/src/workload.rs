//! Workloads, each against any [`Target`]: bulk transfer counted at the far end, round trips
//! on one open stream, new stream to first echoed byte, and many concurrent echo streams.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnel_core::Dialer;

use crate::{CHUNK, WAIT};

/// A bidirectional byte stream of any kind.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Where a workload opens its streams.
#[derive(Clone)]
pub enum Target {
    /// A TCP address: the server itself, a forwarder, or a relay's public port.
    Tcp(SocketAddr),
    /// A TLS server on a TCP address.
    Tls(SocketAddr, TlsConnector),
    /// A device service through the relay, on a dialer's one multiplexed session.
    Private {
        /// The access side's session.
        dialer: Arc<Dialer>,
        /// Device ID.
        device: String,
        /// Service name.
        service: String,
    },
    /// As `Private`, opened with `Dialer::dial_early`: the first bytes go with the open.
    Early {
        /// The access side's session.
        dialer: Arc<Dialer>,
        /// Device ID.
        device: String,
        /// Service name.
        service: String,
    },
}

impl Target {
    /// Opens one stream.
    pub async fn open(&self) -> io::Result<Box<dyn Duplex>> {
        match self {
            Self::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Self::Tls(addr, connector) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let name = ServerName::try_from("localhost").expect("name");
                Ok(Box::new(connector.connect(name, s).await?))
            }
            Self::Private {
                dialer,
                device,
                service,
            } => Ok(Box::new(dialer.dial(device, service).await?)),
            Self::Early {
                dialer,
                device,
                service,
            } => Ok(Box::new(dialer.dial_early(device, service).await?)),
        }
    }
}

/// Writes `bytes`, half-closes, and waits for the sink's count: delivered, not buffered.
pub async fn push(mut s: Box<dyn Duplex>, bytes: u64) -> io::Result<()> {
    let buf = vec![0x5a; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let got = u64::from_be_bytes(count);
    if got != bytes {
        return Err(io::Error::other(format!("sink counted {got} of {bytes}")));
    }
    Ok(())
}

/// `streams` concurrent streams to a sink, `bytes` each; returns the wall time of all.
pub async fn transfer(target: &Target, streams: usize, bytes: u64) -> io::Result<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            push(target.open().await?, bytes).await
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
            .map_err(io::Error::other)??;
    }
    Ok(start.elapsed())
}

/// `n` round trips of `size` bytes on one open echo stream; returns each one's time.
pub async fn round_trips(
    s: &mut Box<dyn Duplex>,
    n: usize,
    size: usize,
) -> io::Result<Vec<Duration>> {
    let out = vec![0x42; size];
    let mut back = vec![0; size];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        s.write_all(&out).await?;
        s.read_exact(&mut back).await?;
        times.push(start.elapsed());
    }
    Ok(times)
}

/// Opens a new stream to an echo service, sends one byte and waits for it to come back.
pub async fn first_byte(target: &Target) -> io::Result<Duration> {
    let start = Instant::now();
    let mut s = target.open().await?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    let t = start.elapsed();
    let _ = s.shutdown().await;
    Ok(t)
}

/// Result of [`aggregate_echo`].
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Wall time until every stream had all its bytes echoed back.
    pub elapsed: Duration,
    /// Each stream's own completion time.
    pub per_stream: Vec<Duration>,
}

impl Aggregate {
    /// Bytes echoed per second over all streams (counting one direction).
    pub fn rate(&self, bytes_each: u64) -> f64 {
        (bytes_each * self.per_stream.len() as u64) as f64 / self.elapsed.as_secs_f64()
    }
    /// Slowest stream's time over the median stream's: 1.0 is perfectly fair.
    pub fn spread(&self) -> f64 {
        let mut v = self.per_stream.clone();
        v.sort();
        v[v.len() - 1].as_secs_f64() / v[v.len() / 2].as_secs_f64()
    }
}

/// `conns` concurrent echo streams, each writing `bytes_each` while reading it back.
pub async fn aggregate_echo(
    target: &Target,
    conns: usize,
    bytes_each: u64,
) -> io::Result<Aggregate> {
    // Open everything first: the measurement is the data phase, all streams at once.
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let open = tokio::time::timeout(WAIT, target.open()).await;
        streams.push(open.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for s in streams {
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(s);
            let writer = async move {
                let buf = vec![0x33; CHUNK.min(bytes_each as usize).max(1)];
                let mut left = bytes_each;
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    w.write_all(&buf[..k]).await?;
                    left -= k as u64;
                }
                Ok::<_, io::Error>(w)
            };
            let reader = async move {
                let mut buf = vec![0; CHUNK];
                let mut got = 0u64;
                while got < bytes_each {
                    let k = r.read(&mut buf).await?;
                    if k == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    got += k as u64;
                }
                Ok(())
            };
            let (w, ()) = tokio::try_join!(writer, reader)?;
            drop(w);
            Ok::<_, io::Error>(start.elapsed())
        }));
    }
    // One deadline for all: a forwarder that stalls fails the run instead of hanging it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut per_stream = Vec::with_capacity(conns);
    for t in tasks {
        let d = tokio::time::timeout_at(deadline, t)
            .await
            .map_err(|_| io::Error::other(format!("not all {conns} streams done in {WAIT:?}")))?
            .map_err(io::Error::other)??;
        per_stream.push(d);
    }
    Ok(Aggregate {
        elapsed: start.elapsed(),
        per_stream,
    })
}
