//! Shared helpers for the integration tests: a relay on an ephemeral port with token
//! credentials, local TCP services (echo, sink, reply-after-EOF, greeting), devices that
//! forward to them, dialers, a deterministic payload generator, bounded waits, and a TCP
//! proxy that can be frozen to simulate a silent network partition.
//!
//! Every wait here is bounded: helpers panic with a message naming what did not happen.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tunnel_core::{
    ClientConfig, ConnectError, DeviceConfig, Dialer, Grants, Identity, Listener, ListenerState,
    Pattern, Relay, RelayBuilder, RelayError, SpkiPin, Stream, TlsIdentity, Token,
    TokenAuthenticator, forward,
};

/// Upper bound for any single wait that should normally take milliseconds to seconds.
/// Generous on purpose: it only bounds a failure, it never measures speed.
pub const WAIT: Duration = Duration::from_secs(30);
/// Short relay heartbeat for the liveness tests: a silent peer is dead after 3 × 200 ms.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// Poll period of [`eventually`].
const POLL: Duration = Duration::from_millis(50);
/// Buffer size used when streaming payloads.
const CHUNK: usize = 64 * 1024;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=tunnel_core=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------
// Bounded waiting
// ---------------------------------------------------------------------------------------

/// Awaits `fut` for at most `limit`; panics naming `what` if it does not complete.
pub async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `limit`.
/// Bounded both in time and in the number of polls.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let max_polls = (limit.as_millis() / POLL.as_millis()).max(1) as usize + 1;
    let deadline = tokio::time::Instant::now() + limit;
    for _ in 0..max_polls {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(true) = tokio::time::timeout(left.max(POLL), check()).await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("condition not reached within {limit:?}: {what}");
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// Grants to register exactly `device`.
pub fn may_register(device: &str) -> Grants {
    Grants::new().register(Pattern::new(device).expect("device pattern"))
}

/// Grants to open each `device/service` pattern pair in `grants`.
pub fn may_access(grants: &[&str]) -> Grants {
    grants
        .iter()
        .fold(Grants::new(), |g, a| g.access_str(a).expect("access grant"))
}

// ---------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------

type Configure = Arc<dyn Fn(RelayBuilder) -> RelayBuilder + Send + Sync>;

/// A relay serving on `127.0.0.1:<ephemeral>` with one token per credential.
pub struct TestRelay {
    /// The relay handle (for `online_devices()`).
    pub relay: Relay,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate pin.
    pub pin: SpkiPin,
    /// One token per credential, in the order the credentials were given.
    pub tokens: Vec<Token>,
    /// Its TLS identity (to restart a relay with the same pin).
    pub identity: TlsIdentity,
    /// Completing this (send or drop) makes `serve` shut down.
    pub shutdown: Option<oneshot::Sender<()>>,
    /// The task running `Relay::serve`.
    pub serve: Option<JoinHandle<Result<(), RelayError>>>,
    creds: Vec<(String, Grants)>,
    configure: Configure,
}

/// Spawns a relay with default settings and a `TokenAuthenticator` built from `creds`.
pub async fn spawn_relay(creds: &[(&str, Grants)]) -> TestRelay {
    spawn_relay_with(creds, |b| b).await
}

/// A relay with credential 0 (`device`) registering `device` and credential 1 (`user`)
/// opening every service of it: the setup most tests share.
pub async fn relay_for(device: &str) -> TestRelay {
    spawn_relay(&[
        ("device", may_register(device)),
        ("user", may_access(&[&format!("{device}/*")])),
    ])
    .await
}

/// Spawns a relay whose builder is adjusted by `configure` (heartbeat, public ports, …).
pub async fn spawn_relay_with(
    creds: &[(&str, Grants)],
    configure: impl Fn(RelayBuilder) -> RelayBuilder + Send + Sync + 'static,
) -> TestRelay {
    init_tracing();
    let identity =
        TlsIdentity::generate_self_signed(&["localhost"]).expect("generate relay identity");
    let creds: Vec<(String, Grants)> = creds
        .iter()
        .map(|(n, g)| ((*n).to_owned(), g.clone()))
        .collect();
    let tokens = creds
        .iter()
        .map(|_| Token::generate().expect("generate token"))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay listener");
    start_relay(identity, creds, tokens, Arc::new(configure), listener)
}

fn start_relay(
    identity: TlsIdentity,
    creds: Vec<(String, Grants)>,
    tokens: Vec<Token>,
    configure: Configure,
    listener: TcpListener,
) -> TestRelay {
    let mut auth = TokenAuthenticator::new();
    for ((name, grants), token) in creds.iter().zip(&tokens) {
        auth.add(token.hash(), Identity::new(name.clone(), grants.clone()));
    }
    let relay = configure(Relay::builder(identity.clone(), auth))
        .build()
        .expect("build relay");
    let addr = listener.local_addr().expect("relay local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let serve = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
        }
    });
    TestRelay {
        pin: relay.pin(),
        relay,
        addr,
        tokens,
        identity,
        shutdown: Some(tx),
        serve: Some(serve),
        creds,
        configure,
    }
}

impl TestRelay {
    /// A client configuration presenting credential `i`'s token.
    pub fn client(&self, i: usize) -> ClientConfig {
        ClientConfig::new(self.addr.to_string(), self.pin).token(self.tokens[i].clone())
    }

    /// A client configuration presenting credential `i`'s token, reaching the relay at `addr`
    /// (a proxy in front of it).
    pub fn client_via(&self, i: usize, addr: SocketAddr) -> ClientConfig {
        ClientConfig::new(addr.to_string(), self.pin).token(self.tokens[i].clone())
    }

    /// Triggers shutdown and waits (bounded) for `serve` to return `Ok`.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(serve) = self.serve.take() {
            within("relay serve() to return after shutdown", WAIT, serve)
                .await
                .expect("relay serve task panicked")
                .expect("relay serve returned an error");
        }
    }

    /// Stops this relay, then serves a new one on the same address with the same TLS
    /// identity, credentials, tokens and builder settings.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener =
            listener.unwrap_or_else(|| panic!("could not rebind the relay address {}", self.addr));
        start_relay(
            self.identity.clone(),
            self.creds.clone(),
            self.tokens.clone(),
            self.configure.clone(),
            listener,
        )
    }

    /// Waits until the relay lists `device` as online.
    pub async fn wait_online(&self, device: &str) {
        let relay = self.relay.clone();
        eventually(&format!("relay lists {device} online"), WAIT, || {
            let online = relay.online_devices().iter().any(|d| d == device);
            async move { online }
        })
        .await;
    }

    /// Waits until the relay no longer lists `device` as online.
    pub async fn wait_offline(&self, device: &str, limit: Duration) {
        let relay = self.relay.clone();
        eventually(&format!("relay lists {device} offline"), limit, || {
            let online = relay.online_devices().iter().any(|d| d == device);
            async move { !online }
        })
        .await;
    }

    /// Starts device `id` with credential `i`, declaring and forwarding `services`, and
    /// waits until both the listener and the relay see it connected.
    pub async fn device(&self, i: usize, id: &str, services: &[(&str, SocketAddr)]) -> TestDevice {
        let device = start_device(self.client(i), id, services).await;
        self.wait_online(id).await;
        device
    }

    /// A dialer presenting credential `i`.
    pub async fn dialer(&self, i: usize) -> Dialer {
        connect_dialer(self.client(i)).await
    }
}

// ---------------------------------------------------------------------------------------
// Devices and dialers
// ---------------------------------------------------------------------------------------

/// A device listener and the `forward` task serving it. Dropping it closes the listener.
pub struct TestDevice {
    pub listener: Arc<Listener>,
    pub forward: JoinHandle<()>,
}

impl TestDevice {
    /// The public ports the relay bound for this device, as last reported.
    pub fn public_ports(&self) -> Vec<(String, u16)> {
        match self.listener.state() {
            ListenerState::Connected { public } => public,
            other => panic!("device not connected: {other:?}"),
        }
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.listener.close();
    }
}

/// Binds a listener for `config` and forwards its streams to `targets`
/// (service name → local address). Returns the bind error as is.
pub async fn try_start_device(
    config: DeviceConfig,
    targets: HashMap<String, String>,
) -> Result<TestDevice, ConnectError> {
    let listener = within("Listener::bind", WAIT, Listener::bind(config)).await?;
    let listener = Arc::new(listener);
    let forward = tokio::spawn({
        let listener = listener.clone();
        async move { forward(&listener, targets).await }
    });
    Ok(TestDevice { listener, forward })
}

/// Starts device `id` declaring and forwarding `services`; waits until it is connected.
pub async fn start_device(
    client: ClientConfig,
    id: &str,
    services: &[(&str, SocketAddr)],
) -> TestDevice {
    let config = services
        .iter()
        .fold(DeviceConfig::new(client, id), |c, (s, _)| c.service(*s));
    let device = try_start_device(config, targets(services))
        .await
        .expect("device bind");
    device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    device
}

/// The relay port range public-port tests allow (the relay picks a free port in it).
pub const PUBLIC_PORTS: std::ops::RangeInclusive<u16> = 40000..=40999;

/// Relay settings for public-port tests: the range above, bound on loopback only.
pub fn allow_public_ports(b: RelayBuilder) -> RelayBuilder {
    b.public_ports(PUBLIC_PORTS)
        .public_bind([127, 0, 0, 1].into())
}

/// Starts device `web-dev` with credential 0, publishing `service` (forwarded to `target`)
/// on any free relay port; waits until it is online. Returns the device and its public
/// `(service, port)` list.
pub async fn start_public_device(
    relay: &TestRelay,
    service: &str,
    target: SocketAddr,
) -> (TestDevice, Vec<(String, u16)>) {
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service(service)
        .public(service, 0);
    let device = try_start_device(config, targets(&[(service, target)]))
        .await
        .expect("public device binds");
    let public = device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    relay.wait_online("web-dev").await;
    (device, public)
}

/// A forward map from `(service, address)` pairs.
pub fn targets(services: &[(&str, SocketAddr)]) -> HashMap<String, String> {
    services
        .iter()
        .map(|(s, a)| ((*s).to_owned(), a.to_string()))
        .collect()
}

/// Connects a dialer (bounded).
pub async fn connect_dialer(client: ClientConfig) -> Dialer {
    within("Dialer::connect", WAIT, Dialer::connect(client))
        .await
        .expect("dialer connects")
}

/// Opens a stream (bounded), panicking on error.
pub async fn dial(dialer: &Dialer, device: &str, service: &str) -> Stream {
    within(
        &format!("dial {device}/{service}"),
        WAIT,
        dialer.dial(device, service),
    )
    .await
    .unwrap_or_else(|e| panic!("dial {device}/{service}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Local services
// ---------------------------------------------------------------------------------------

/// Accepts on `127.0.0.1:0` and runs `handle` for every connection.
async fn spawn_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
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

// ---------------------------------------------------------------------------------------
// Payloads and exchanges
// ---------------------------------------------------------------------------------------

/// A deterministic pseudo-random byte stream (xorshift64), byte-exact whatever the chunking.
pub struct Payload {
    state: u64,
    cur: [u8; 8],
    used: usize,
}

impl Payload {
    pub fn new(seed: u64) -> Self {
        let state = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Self {
            state,
            cur: [0; 8],
            used: 8,
        }
    }
    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.used == 8 {
                self.cur = self.next_word().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.cur[self.used..self.used + n]);
            self.used += n;
            i += n;
        }
    }
    /// The first `len` bytes of seed `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Self::new(seed).fill(&mut v);
        v
    }
    /// SHA-256 of the first `len` bytes of seed `seed`.
    pub fn digest(seed: u64, len: u64) -> [u8; 32] {
        let mut g = Self::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            g.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        hash.finalize().into()
    }
}

/// Writes the first `len` bytes of seed `seed` in chunks.
pub async fn write_payload<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut g = Payload::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        g.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads to end of stream; returns the byte count and SHA-256.
pub async fn read_digest<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((count, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        count += n as u64;
    }
}

/// Sends `data` and half-closes while reading everything back (for an echo service).
pub async fn echo_exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut out = Vec::with_capacity(data.len());
        r.read_to_end(&mut out).await.map(|_| out)
    };
    let (written, read) = within("echo exchange", WAIT, async { tokio::join!(write, read) }).await;
    written.expect("echo exchange: write");
    read.expect("echo exchange: read")
}

/// Sends `len` bytes of seed `seed` to a sink service, half-closes and returns the sink's
/// answer (count, SHA-256); checks the stream then ends cleanly.
pub async fn sink_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seed: u64,
    len: u64,
    limit: Duration,
) -> (u64, [u8; 32]) {
    within("sink exchange", limit, async {
        write_payload(&mut stream, seed, len)
            .await
            .expect("sink: write payload");
        stream.shutdown().await.expect("sink: shutdown");
        let mut reply = [0u8; 40];
        stream
            .read_exact(&mut reply)
            .await
            .expect("sink: read reply");
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .await
            .expect("sink: clean end after reply");
        assert!(
            rest.is_empty(),
            "sink sent {} unexpected bytes after its reply",
            rest.len()
        );
        let count = u64::from_be_bytes(reply[..8].try_into().unwrap());
        (count, reply[8..].try_into().unwrap())
    })
    .await
}

/// Sends a request to a reply-after-EOF service asking for `len` bytes of seed `seed`
/// (plus `padding` extra request bytes), half-closes, and reads the reply in full.
/// Returns (whether the service saw the exact request, reply byte count, reply SHA-256).
pub async fn request_reply<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seed: u64,
    len: u64,
    padding: usize,
    limit: Duration,
) -> (bool, u64, [u8; 32]) {
    within("request/reply exchange", limit, async {
        let mut request = seed.to_be_bytes().to_vec();
        request.extend_from_slice(&len.to_be_bytes());
        request.extend(Payload::bytes(seed ^ 0x5555, padding));
        stream.write_all(&request).await.expect("request: write");
        stream.shutdown().await.expect("request: shutdown");
        let mut seen = [0u8; 32];
        stream
            .read_exact(&mut seen)
            .await
            .expect("reply: read request digest");
        let request_ok = seen[..] == Sha256::digest(&request)[..];
        let (count, digest) = read_digest(&mut stream)
            .await
            .expect("reply: read body to a clean end");
        (request_ok, count, digest)
    })
    .await
}

/// Reads until the stream fails; panics if it ends cleanly (`Ok(0)`) or if no error comes
/// within `limit`. Returns the error.
///
/// The deadline is checked *before* the read is polled again (a biased `select!`), so a read
/// that is never woken is reported as a hang: a plain `tokio::time::timeout` would poll the
/// read once more when the timer fires and could hide a missing wake-up.
pub async fn expect_read_error<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> std::io::Error {
    let mut buf = vec![0u8; CHUNK];
    let reads = async {
        // Bounded: the services used here send a few bytes at most.
        for _ in 0..10_000 {
            match r.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
        panic!("stream kept delivering data instead of failing");
    };
    let deadline = tokio::time::sleep(limit);
    let outcome = tokio::select! {
        biased;
        () = deadline => None,
        r = reads => Some(r),
    };
    match outcome {
        Some(Err(e)) => e,
        Some(Ok(())) => panic!("an abrupt failure read as a clean end of stream (Ok(0))"),
        None => {
            panic!("read neither failed nor ended within {limit:?} (the reader was never woken)")
        }
    }
}

// ---------------------------------------------------------------------------------------
// A freezable TCP proxy
// ---------------------------------------------------------------------------------------

/// A TCP proxy in front of `target`. [`freeze`](Self::freeze) stops all copying without
/// closing any socket, like a silent network partition. Dropping the proxy closes all.
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl FreezableProxy {
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
