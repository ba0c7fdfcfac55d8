//! Hostile input against a real relay process (`tunnel-relay`, which cargo builds for this
//! test): garbage and truncated TLS, wrong ALPN, malformed and oversized hellos and stream
//! headers, slowloris, token brute force, stream and frame floods, a peer that stops reading,
//! and a device that tries to open streams. After each attack the relay must still serve a
//! legitimate device and access client; the relay's memory (VmHWM from /proc) is printed as
//! `MEASURE` lines (run with `--nocapture` to see them) and bounded with generous slack.
//!
//! The attackers speak raw bytes (TLS via rustls, then hand-made hello and yamux frames), so
//! they can do what no well-behaved client would. Attack sources other than the legitimate
//! clients use other loopback addresses (127.0.0.2 and up) to exercise per-source limits.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tunnel_core::{ClientConfig, DeviceConfig, Dialer, Listener, ListenerState, SpkiPin, Token};
use tunnel_testkit::{
    Proc, TestDevice, WAIT, cargo_bins, connect_public, echo_exchange, eventually, fresh_dir,
    peak_rss_kib, reset_peak_rss, rss_kib, spawn_echo_server, spawn_greeting_server, spawn_server,
    start_device, try_start_device, within,
};

/// The relay's heartbeat in these tests: a silent session is closed after 3 × 1 s.
const HEARTBEAT_MS: u64 = 1000;

// ---------------------------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------------------------

/// A relay process (killed by its PID on drop) with a device credential `dev` (registers
/// `dev`), a second device credential `dev2` and an access credential `user` (`dev/*`),
/// plus whatever a test's [`Setup`] adds.
struct RelayProc {
    child: Proc,
    addr: SocketAddr,
    pin: SpkiPin,
    device_token: String,
    device2_token: String,
    user_token: String,
    /// Tokens of the [`Setup::creds`], by credential name.
    tokens: std::collections::HashMap<String, String>,
    dir: PathBuf,
}

/// What a test adds to the standard relay.
#[derive(Default)]
struct Setup<'a> {
    /// More `tunnel-relay serve` flags.
    args: &'a [&'a str],
    /// More credentials: name and `token new` grant flags.
    creds: &'a [(&'a str, &'a [&'a str])],
    /// `RUST_LOG` of the relay (default `warn`).
    log: Option<&'a str>,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        // Killed first: the directory holds the relay's log and state.
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RelayProc {
    async fn start(name: &str) -> Self {
        Self::start_with(name, Setup::default()).await
    }

    async fn start_with(name: &str, setup: Setup<'_>) -> Self {
        let bins = cargo_bins!();
        let dir = fresh_dir(&format!("hostile-{name}"));
        let tokens = dir.join("tokens.toml");
        let device_token = bins.new_token(&tokens, &["--name", "dev", "--device", "dev"]);
        let device2_token = bins.new_token(&tokens, &["--name", "dev2", "--device", "dev2"]);
        let user_token = bins.new_token(&tokens, &["--name", "user", "--access", "dev/*"]);
        let extra = setup
            .creds
            .iter()
            .map(|(name, grants)| {
                let mut args = vec!["--name", name];
                args.extend_from_slice(grants);
                ((*name).to_owned(), bins.new_token(&tokens, &args))
            })
            .collect();
        let mut child = Proc::spawn(
            Command::new(&bins.relay)
                .args(["serve", "--listen", "127.0.0.1:0", "--grace-secs", "1"])
                .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string(), "--tokens"])
                .arg(&tokens)
                .arg("--state-dir")
                .arg(dir.join("state"))
                .args(setup.args)
                .env("RUST_LOG", setup.log.unwrap_or("warn"))
                .stderr(std::fs::File::create(dir.join("relay.log")).expect("relay log")),
        );
        let [addr, pin]: [String; 2] = child
            .read_keys(&["listening", "pin"], WAIT)
            .await
            .try_into()
            .unwrap();
        Self {
            child,
            addr: addr.parse().expect("address"),
            pin: pin.parse().expect("pin"),
            device_token,
            device2_token,
            user_token,
            tokens: extra,
            dir,
        }
    }

    /// A client with the token of a [`Setup::creds`] credential.
    fn client_as(&self, name: &str) -> ClientConfig {
        self.client(&self.tokens[name])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    fn client(&self, token: &str) -> ClientConfig {
        ClientConfig::new(self.addr.to_string(), self.pin).token(Token::new(token))
    }

    /// (VmRSS, VmHWM) of the relay process, in KiB.
    fn memory(&self) -> (u64, u64) {
        (rss_kib(self.child.pid()), peak_rss_kib(self.child.pid()))
    }

    /// Resets the peak (VmHWM) to the current RSS, so the next reading is this attack's peak.
    fn reset_peak(&self) {
        reset_peak_rss(self.child.pid());
    }

    /// Waits until the relay's log (warnings and errors) contains `text`.
    async fn expect_log(&self, text: &str) {
        let path = self.dir.join("relay.log");
        let found = async {
            loop {
                if std::fs::read_to_string(&path).is_ok_and(|l| l.contains(text)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        within(&format!("relay logs {text:?}"), WAIT, found).await;
    }

    fn assert_alive(&mut self) {
        assert!(self.child.is_running(), "the relay process died");
    }

    /// Prints and bounds the relay's memory peak since `reset_peak`.
    fn report_memory(&self, attack: &str, baseline_kib: u64, bound_mib: u64) {
        let (rss, hwm) = self.memory();
        println!(
            "MEASURE {attack}: relay RSS before {} MiB, peak {} MiB, after {} MiB",
            baseline_kib / 1024,
            hwm / 1024,
            rss / 1024
        );
        assert!(
            hwm.saturating_sub(baseline_kib) < bound_mib * 1024,
            "{attack}: relay memory grew by {} KiB (bound {bound_mib} MiB)",
            hwm.saturating_sub(baseline_kib)
        );
    }
}

/// A legitimate device `dev` forwarding service `echo` to a local echo server.
async fn legit_device(relay: &RelayProc) -> TestDevice {
    let echo = spawn_echo_server().await;
    start_device(relay.client(&relay.device_token), "dev", &[("echo", echo)]).await
}

/// The relay still serves: a fresh access client reaches the device's echo service.
/// Returns how long connecting took.
async fn assert_serves(relay: &RelayProc) -> Duration {
    let started = Instant::now();
    let dialer = within(
        "access client connects",
        WAIT,
        Dialer::connect(relay.client(&relay.user_token)),
    )
    .await
    .expect("access client connects");
    let took = started.elapsed();
    let stream = within("dial dev/echo", WAIT, dialer.dial("dev", "echo"))
        .await
        .expect("dial dev/echo");
    assert_eq!(echo_exchange(stream, b"still here").await, b"still here");
    took
}

// ---------------------------------------------------------------------------------------
// Raw attackers
// ---------------------------------------------------------------------------------------

/// Accepts any relay certificate: the attacker does not care who it talks to.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector(alpn: Option<&[u8]>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    TlsConnector::from(Arc::new(config))
}

/// A TCP connection to the relay from `source` (any 127.0.0.0/8 address on loopback).
async fn tcp_from(source: IpAddr, relay: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    tokio::time::timeout(WAIT, socket.connect(relay))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

fn local(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

type Tls = TlsStream<TcpStream>;

async fn tls_from(source: IpAddr, relay: SocketAddr, alpn: Option<&[u8]>) -> io::Result<Tls> {
    let tcp = tcp_from(source, relay).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector(alpn).connect(name, tcp))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

fn str8(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// A protocol frame: u16 length, then `body` (type byte first).
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A hello body: version, role (1 device, 2 access), token, device, services, no ports.
fn hello(version: u8, role: u8, token: &str, device: &str, services: &[&str]) -> Vec<u8> {
    let mut b = vec![0x01, version, role];
    b.extend_from_slice(&(token.len() as u16).to_be_bytes());
    b.extend_from_slice(token.as_bytes());
    str8(&mut b, device.as_bytes());
    b.push(services.len() as u8);
    for s in services {
        str8(&mut b, s.as_bytes());
    }
    b.push(0);
    frame(&b)
}

/// What the relay answered to a hello.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Welcome,
    Refused(u8),
    /// The connection ended without a frame.
    Dropped,
}

async fn answer(tls: &mut Tls) -> Answer {
    let read = async {
        let len = usize::from(tls.read_u16().await?);
        let mut body = vec![0; len];
        tls.read_exact(&mut body).await?;
        io::Result::Ok(body)
    };
    match tokio::time::timeout(WAIT, read)
        .await
        .expect("relay answers in time")
    {
        Ok(b) if b.first() == Some(&0x02) => Answer::Welcome,
        Ok(b) if b.first() == Some(&0x03) => Answer::Refused(b.get(1).copied().unwrap_or(0)),
        Ok(b) => panic!("unexpected answer {b:?}"),
        Err(_) => Answer::Dropped,
    }
}

/// Sends `bytes` as the first thing on a fresh TLS connection and returns the answer.
async fn try_hello(relay: &RelayProc, source: IpAddr, bytes: &[u8]) -> Answer {
    let Ok(mut tls) = tls_from(source, relay.addr, Some(b"tunnel/1")).await else {
        return Answer::Dropped;
    };
    if tls.write_all(bytes).await.is_err() || tls.flush().await.is_err() {
        return Answer::Dropped;
    }
    answer(&mut tls).await
}

const REFUSED_AUTH: u8 = 1;
const REFUSED_VERSION: u8 = 2;
const REFUSED_BAD_REQUEST: u8 = 6;

// yamux framing, by hand.
const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const SYN: u16 = 1;
const RST: u16 = 8;

fn yamux(kind: u8, flags: u16, id: u32, body: &[u8], length: Option<u32>) -> Vec<u8> {
    let mut f = vec![0, kind];
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&length.unwrap_or(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Control + first ping, the body that opens a client's control stream.
fn control_open() -> Vec<u8> {
    let mut b = frame(&[0x15]);
    b.extend(ping(1));
    b
}

fn ping(n: u64) -> Vec<u8> {
    let mut b = vec![0x16];
    b.extend_from_slice(&n.to_be_bytes());
    frame(&b)
}

/// An authenticated raw session: hello accepted, control stream 1 open.
async fn raw_session(
    relay: &RelayProc,
    source: IpAddr,
    role: u8,
    token: &str,
    device: &str,
) -> Tls {
    let mut tls = tls_from(source, relay.addr, Some(b"tunnel/1"))
        .await
        .expect("tls");
    let services: &[&str] = if role == 1 { &["echo"] } else { &[] };
    tls.write_all(&hello(1, role, token, device, services))
        .await
        .expect("hello");
    assert_eq!(answer(&mut tls).await, Answer::Welcome);
    tls.write_all(&yamux(DATA, SYN, 1, &control_open(), None))
        .await
        .expect("control stream");
    tls
}

/// Reads yamux frames until stream `id` carries one complete protocol frame; returns it.
async fn read_reply(tls: &mut Tls, id: u32) -> Vec<u8> {
    let mut data = Vec::new();
    let read = async {
        loop {
            let mut h = [0u8; 12];
            tls.read_exact(&mut h).await?;
            let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            let sid = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let mut body = vec![0; if h[1] == DATA { len } else { 0 }];
            tls.read_exact(&mut body).await?;
            if sid == id {
                data.extend_from_slice(&body);
                if data.len() >= 2
                    && data.len() >= 2 + usize::from(u16::from_be_bytes([data[0], data[1]]))
                {
                    return io::Result::Ok(data[2..].to_vec());
                }
                if u16::from_be_bytes([h[2], h[3]]) & RST != 0 {
                    return Ok(vec![]);
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("reply in time")
        .expect("read reply")
}

/// Writes `frames` until the relay closes the connection; returns how many frames were
/// written and how long it took. Panics if the relay keeps the session past `limit`.
async fn flood_until_closed(
    tls: &mut Tls,
    mut next: impl FnMut(u32) -> Vec<u8>,
    limit: usize,
) -> (usize, Duration) {
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..limit {
        batch.extend(next(i as u32));
        if batch.len() >= 16 * 1024 || i + 1 == limit {
            let write = tokio::time::timeout(Duration::from_secs(5), tls.write_all(&batch)).await;
            batch.clear();
            match write {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return (i, started.elapsed()),
            }
        }
    }
    let _ = tls.flush().await;
    // Everything was written; the relay must still end the session.
    let mut sink = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the relay closes the abusive session");
    (limit, started.elapsed())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_tls_and_wrong_alpn_are_dropped_and_the_relay_serves_on() {
    let mut relay = RelayProc::start("garbage").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    let hello_bytes = hello(1, 2, &relay.user_token, "", &[]);
    for round in 0..20u8 {
        // Garbage instead of TLS (including an HTTP request and an all-zero "record").
        let mut tcp = tcp_from(local(2), relay.addr).await.expect("connect");
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ round)
            .collect();
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await;
        let _ = tcp.write_all(&garbage).await;
        let mut buf = [0u8; 1024];
        let n = within("garbage connection closed", WAIT, async {
            let mut total = 0;
            while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                total += n;
            }
            total
        })
        .await;
        assert!(
            n < 64,
            "the relay answered garbage with {n} bytes (at most a TLS alert)"
        );

        // A truncated TLS handshake: a record header promising 512 bytes, then 40 of them.
        let mut tcp = tcp_from(local(2), relay.addr).await.expect("connect");
        let mut partial = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        partial.extend_from_slice(&[round; 29]);
        let _ = tcp.write_all(&partial).await;
        drop(tcp);

        // TLS with the wrong ALPN, and with none: no protocol frame, ever.
        for alpn in [Some(&b"h2"[..]), None] {
            if let Ok(mut tls) = tls_from(local(2), relay.addr, alpn).await {
                let _ = tls.write_all(&hello_bytes).await;
                assert_eq!(answer(&mut tls).await, Answer::Dropped, "alpn {alpn:?}");
            }
        }
    }
    relay.assert_alive();
    let took = assert_serves(&relay).await;
    println!(
        "MEASURE garbage/truncated/alpn: 80 hostile connections, then an access client connected in {took:?}"
    );
    relay.report_memory("garbage/truncated/alpn", baseline, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_hellos_are_refused_before_allocating() {
    let mut relay = RelayProc::start("hello").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    let src = local(3);
    let token = relay.user_token.clone();
    // A length prefix far over the 4 KiB hello cap, with no body: refused without waiting
    // for (or allocating) the 64 KiB it announces.
    let started = Instant::now();
    assert_eq!(
        try_hello(&relay, src, &[0xff, 0xff]).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the deadline"
    );
    // A token length of 60000 inside a small frame, a 255-byte device name, 255 services.
    let mut long_token = vec![0x01, 1, 2, 0xea, 0x60];
    long_token.extend_from_slice(&[b'a'; 100]);
    assert_eq!(
        try_hello(&relay, src, &frame(&long_token)).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    let long_name = "d".repeat(255);
    assert_eq!(
        try_hello(&relay, src, &hello(1, 1, &token, &long_name, &[])).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    let many = vec!["s"; 255];
    assert_eq!(
        try_hello(&relay, src, &hello(1, 1, &token, "dev", &many)).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    // Unknown version and role, a first frame that is not a hello, trailing bytes.
    assert_eq!(
        try_hello(&relay, src, &hello(9, 2, &token, "", &[])).await,
        Answer::Refused(REFUSED_VERSION)
    );
    assert_eq!(
        try_hello(&relay, src, &hello(1, 7, &token, "", &[])).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    assert_eq!(
        try_hello(&relay, src, &ping(1)).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    let mut trailing = hello(1, 2, &token, "", &[]);
    trailing[1] += 3;
    trailing.extend_from_slice(b"xyz");
    assert_eq!(
        try_hello(&relay, src, &trailing).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );
    // An access hello that declares a device.
    assert_eq!(
        try_hello(&relay, src, &hello(1, 2, &token, "dev", &[])).await,
        Answer::Refused(REFUSED_BAD_REQUEST)
    );

    // After authentication: an oversized stream header (length 0xffff) gets the stream
    // reset, a yamux frame announcing 2^31 bytes ends the session; the relay serves on.
    let mut tls = raw_session(&relay, src, 2, &token, "").await;
    tls.write_all(&yamux(DATA, SYN, 3, &[0xff, 0xff, 0x10], None))
        .await
        .expect("write");
    assert_eq!(
        read_reply(&mut tls, 3).await,
        b"",
        "an oversized header gets a reset, no answer"
    );
    let mut open = vec![0x10];
    str8(&mut open, &[b'x'; 200]);
    str8(&mut open, b"echo");
    tls.write_all(&yamux(DATA, SYN, 5, &frame(&open), None))
        .await
        .expect("write");
    let reply = read_reply(&mut tls, 5).await;
    assert_eq!(
        &reply[..2],
        &[0x12, 5],
        "a 200-byte device name is a bad request"
    );
    let _ = tls.write_all(&yamux(DATA, 0, 1, &[], Some(1 << 31))).await;
    let _ = tls.write_all(&[0u8; 1024]).await;
    let mut buf = [0u8; 4096];
    within("session with a 2^31 frame ends", WAIT, async {
        while let Ok(1..) = tls.read(&mut buf).await {}
    })
    .await;
    relay.assert_alive();
    assert_serves(&relay).await;
    relay.report_memory("malformed hellos and headers", baseline, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_capped_per_source_and_cut_at_the_deadline_while_devices_register() {
    let relay = RelayProc::start("slowloris").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    // 8 sources × 48 connections, each sending a TLS record header and then one byte per
    // 500 ms: 32 per source are held (the per-IP cap), the rest are closed at once.
    let closed_fast = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    let started = Instant::now();
    for source in 10..18u8 {
        for _ in 0..48 {
            let closed_fast = closed_fast.clone();
            let addr = relay.addr;
            held.push(tokio::spawn(async move {
                let mut tcp = tcp_from(local(source), addr).await.ok()?;
                let t0 = Instant::now();
                let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                let mut buf = [0u8; 64];
                for _ in 0..60 {
                    tokio::select! {
                        r = tcp.read(&mut buf) => if !matches!(r, Ok(1..)) { break },
                        () = tokio::time::sleep(Duration::from_millis(500)) => {
                            if tcp.write_all(&[0x01]).await.is_err() { break }
                        }
                    }
                }
                let lived = t0.elapsed();
                if lived < Duration::from_secs(2) {
                    closed_fast.fetch_add(1, Ordering::Relaxed);
                }
                Some(lived)
            }));
        }
    }
    // Throughout the attack, fresh sessions (an access client and a device) register.
    let mut worst = Duration::ZERO;
    let (mut registrations, mut slow) = (0, 0);
    while started.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        assert_serves(&relay).await;
        let config = DeviceConfig::new(relay.client(&relay.device2_token), "dev2").service("x");
        let device = within(
            "device registers during slowloris",
            WAIT,
            Listener::bind(config),
        )
        .await
        .expect("bind");
        let took = t.elapsed();
        device.close();
        worst = worst.max(took);
        registrations += 1;
        if took > Duration::from_secs(2) {
            slow += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut lifetimes = Vec::new();
    for h in held {
        if let Some(lived) = within("slowloris connection ends", WAIT, h)
            .await
            .expect("task")
        {
            lifetimes.push(lived);
        }
    }
    let fast = closed_fast.load(Ordering::Relaxed);
    let longest = lifetimes.iter().max().copied().unwrap_or_default();
    println!(
        "MEASURE slowloris: {} connections from 8 sources, {fast} closed at once (per-IP cap 32), longest held {longest:?} (deadline 10 s); {registrations} registrations during the attack, slowest {worst:?}, {slow} over 2 s",
        lifetimes.len()
    );
    assert!(
        fast >= 8 * 16,
        "over-cap connections closed at once: {fast}"
    );
    assert!(
        longest < Duration::from_secs(20),
        "a slowloris connection outlived the deadline: {longest:?}"
    );
    assert!(
        worst < Duration::from_secs(5),
        "registration took {worst:?} during slowloris (target 2 s)"
    );
    relay.report_memory("slowloris", baseline, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_brute_force_from_one_address_is_cut_off_and_others_are_unaffected() {
    let relay = RelayProc::start("bruteforce").await;
    let _device = legit_device(&relay).await;
    let attacker = local(4);
    let started = Instant::now();
    let (mut refused, mut dropped) = (0, 0);
    for i in 0..40 {
        let guess = format!("tun_{i:064x}");
        match try_hello(&relay, attacker, &hello(1, 2, &guess, "", &[])).await {
            Answer::Refused(REFUSED_AUTH) => refused += 1,
            Answer::Dropped => dropped += 1,
            other => panic!("guess {i}: {other:?}"),
        }
    }
    let took = started.elapsed();
    // The right token from the same address is refused too while it is cut off.
    let right = try_hello(&relay, attacker, &hello(1, 2, &relay.user_token, "", &[])).await;
    // Another address still gets an answer, and the legitimate clients work.
    let other = try_hello(&relay, local(5), &hello(1, 2, "tun_wrong", "", &[])).await;
    let connect = assert_serves(&relay).await;
    println!(
        "MEASURE brute force: 40 guesses in {took:?}: {refused} answered, {dropped} cut before TLS; right token from the attacker's address: {right:?}; another address: {other:?}; legit access client connected in {connect:?}"
    );
    assert!(refused <= 11, "{refused} guesses were checked (burst 10)");
    assert!(dropped >= 29);
    assert_ne!(
        right,
        Answer::Welcome,
        "a blocked source cannot log in even with the right token"
    );
    assert_eq!(other, Answer::Refused(REFUSED_AUTH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_open_flood_closes_only_the_abusive_session() {
    let relay = RelayProc::start("openflood").await;
    let _device = legit_device(&relay).await;
    let bystander = within(
        "bystander",
        WAIT,
        Dialer::connect(relay.client(&relay.user_token)),
    )
    .await
    .expect("bystander");
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    let mut tls = raw_session(&relay, local(6), 2, &relay.user_token, "").await;
    // Open streams (window update + SYN, no header) as fast as the socket takes them.
    let (sent, took) = flood_until_closed(
        &mut tls,
        |i| yamux(WINDOW_UPDATE, SYN, 2 * i + 3, &[], Some(0)),
        1_000_000,
    )
    .await;
    relay.expect_log("opens streams too fast").await;
    let stream = within("bystander dials", WAIT, bystander.dial("dev", "echo"))
        .await
        .expect("dial");
    assert_eq!(echo_exchange(stream, b"fine").await, b"fine");
    println!(
        "MEASURE open flood: session closed after {sent} opens in {took:?}; bystander unaffected"
    );
    assert!(
        sent < 1_000_000,
        "the relay never closed the flooding session"
    );
    relay.report_memory("open flood", baseline, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_reset_loop_closes_only_the_abusive_session() {
    let relay = RelayProc::start("openreset").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    let mut tls = raw_session(&relay, local(7), 2, &relay.user_token, "").await;
    let list = frame(&[0x13]);
    let (sent, took) = flood_until_closed(
        &mut tls,
        |i| {
            let mut f = yamux(DATA, SYN, 2 * i + 3, &list, None);
            f.extend(yamux(WINDOW_UPDATE, RST, 2 * i + 3, &[], Some(0)));
            f
        },
        200_000,
    )
    .await;
    relay.expect_log("opens streams too fast").await;
    assert_serves(&relay).await;
    println!(
        "MEASURE open/reset loop: session closed after {sent} open+reset pairs in {took:?}; others unaffected"
    );
    assert!(sent < 200_000);
    relay.report_memory("open/reset loop", baseline, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_flood_closes_only_the_abusive_session() {
    let relay = RelayProc::start("emptyflood").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    for (what, kind) in [("empty data", DATA), ("zero window update", WINDOW_UPDATE)] {
        let mut tls = raw_session(&relay, local(8), 2, &relay.user_token, "").await;
        let (sent, took) =
            flood_until_closed(&mut tls, |_| yamux(kind, 0, 1, &[], Some(0)), 2_000_000).await;
        println!("MEASURE {what} flood: session closed after {sent} frames in {took:?}");
        relay.expect_log("floods empty frames").await;
        assert!(sent < 2_000_000);
    }
    assert_serves(&relay).await;
    relay.report_memory("empty frame flood", baseline, 64);
}

/// A service that writes endlessly to whoever connects; counts connections that ended.
async fn spawn_source_server(ended: Arc<AtomicUsize>) -> SocketAddr {
    spawn_server(move |mut tcp| {
        let ended = ended.clone();
        async move {
            let chunk = vec![0x5a; 64 * 1024];
            // Bounded: 1 GiB per connection at most.
            for _ in 0..16 * 1024 {
                if tcp.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            ended.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_and_relay_memory_stays_bounded() {
    let relay = RelayProc::start("noread").await;
    let ended = Arc::new(AtomicUsize::new(0));
    let source = spawn_source_server(ended.clone()).await;
    let echo = spawn_echo_server().await;
    let _device = start_device(
        relay.client(&relay.device_token),
        "dev",
        &[("echo", echo), ("source", source)],
    )
    .await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    // 100 streams to the endless source, then keep pinging but never read a byte.
    let mut tls = raw_session(&relay, local(9), 2, &relay.user_token, "").await;
    const STREAMS: u32 = 100;
    for i in 0..STREAMS {
        let mut open = vec![0x10];
        str8(&mut open, b"dev");
        str8(&mut open, b"source");
        tls.write_all(&yamux(DATA, SYN, 2 * i + 3, &frame(&open), None))
            .await
            .expect("open");
    }
    let started = Instant::now();
    let mut closed_after = None;
    for n in 2..200u64 {
        let write = tokio::time::timeout(
            Duration::from_secs(1),
            tls.write_all(&yamux(DATA, 0, 1, &ping(n), None)),
        )
        .await;
        if matches!(write, Ok(Err(_))) {
            closed_after = Some(started.elapsed());
            break;
        }
        if ended.load(Ordering::Relaxed) >= STREAMS as usize {
            closed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed_after = closed_after.expect("the relay never gave up on a peer that does not read");
    within("every source stream is released", WAIT, async {
        while ended.load(Ordering::Relaxed) < STREAMS as usize {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_serves(&relay).await;
    println!(
        "MEASURE stops reading: 100 streams from an endless source, session closed {closed_after:?} after the last open (heartbeat {HEARTBEAT_MS} ms × 3)"
    );
    relay.report_memory("peer stops reading (64 MiB session window)", baseline, 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_open_streams_to_the_relay_or_another_device() {
    let relay = RelayProc::start("devopen").await;
    let _device = legit_device(&relay).await;
    let mut tls = raw_session(&relay, local(11), 1, &relay.device2_token, "dev2").await;
    let mut open = vec![0x10];
    str8(&mut open, b"dev");
    str8(&mut open, b"echo");
    let mut incoming = vec![0x11];
    str8(&mut incoming, b"echo");
    str8(&mut incoming, b"dev2");
    str8(&mut incoming, b"");
    for (id, header) in [
        (3, frame(&open)),
        (5, frame(&[0x13])),
        (7, frame(&incoming)),
    ] {
        tls.write_all(&yamux(DATA, SYN, id, &header, None))
            .await
            .expect("write");
        let reply = read_reply(&mut tls, id).await;
        assert_eq!(&reply[..2], &[0x12, 5], "stream {id}: bad request");
    }
    assert_serves(&relay).await;
    println!(
        "MEASURE device opens: open, list and incoming from a device session all answered bad request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_agents_sharing_a_credential_settle_instead_of_flapping() {
    let relay = RelayProc::start("flap").await;
    let echo = spawn_echo_server().await;
    let a = start_device(relay.client(&relay.device_token), "dev", &[("echo", echo)]).await;
    let b = start_device(relay.client(&relay.device_token), "dev", &[("echo", echo)]).await;
    let started = Instant::now();
    relay.expect_log("device id flapping").await;
    let settled = started.elapsed();
    // From now on the holder keeps the ID: sample both for 5 s.
    let connected = |d: &TestDevice| matches!(d.listener.state(), ListenerState::Connected { .. });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holder_is_a = connected(&a);
    let (holder, other) = if holder_is_a { (&a, &b) } else { (&b, &a) };
    for _ in 0..50 {
        assert!(
            connected(holder),
            "the holder lost the device id after settling"
        );
        assert!(
            !connected(other),
            "the second agent took the device id after settling"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match other.listener.state() {
        ListenerState::Reconnecting { last_error } => {
            assert!(last_error.contains("replaced too often"), "{last_error}")
        }
        s => panic!("second agent: {s:?}"),
    }
    assert_serves(&relay).await;
    println!(
        "MEASURE flapping: two live agents with one credential settled after {settled:?}; the holder kept the id for the next 5 s"
    );
}

// ---------------------------------------------------------------------------------------
// Security review findings (port squatting, pre-auth exhaustion, registry stalls, slots,
// identity, meter bypass, injection, secret files)
// ---------------------------------------------------------------------------------------

/// `n` consecutive ports on 127.0.0.1 that are free right now, for a relay's public range.
fn free_port_range(n: u16) -> (u16, u16) {
    let start = 42_000 + (std::process::id() % 500) as u16 * 8;
    for base in (start..60_000).step_by(usize::from(n)).take(2000) {
        let free = (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return (base, base + n - 1);
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A device with `services` (all forwarded to `target`) asking for `public` ports; waits
/// until connected. Returns the device and its (bound, left out) public ports.
async fn public_device(
    client: ClientConfig,
    id: &str,
    services: &[&str],
    public: &[(&str, u16)],
    target: SocketAddr,
) -> (TestDevice, Vec<(String, u16)>, Vec<(String, String)>) {
    let mut config = DeviceConfig::new(client, id);
    for s in services {
        config = config.service(*s);
    }
    for (s, p) in public {
        config = config.public(*s, *p);
    }
    let map = services
        .iter()
        .map(|s| ((*s).to_owned(), target.to_string()))
        .collect();
    let device = try_start_device(config, map).await.expect("device binds");
    device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device registers");
    match device.listener.state() {
        ListenerState::Connected {
            public,
            public_failed,
            ..
        } => (device, public, public_failed),
        other => panic!("{id}: {other:?}"),
    }
}

/// Reads the greeting a public port's service sends first.
async fn greeting_at(port: u16) -> Vec<u8> {
    let mut tcp = connect_public(port).await;
    let mut buf = [0u8; 64];
    let n = within("greeting", WAIT, tcp.read(&mut buf))
        .await
        .expect("read");
    buf[..n].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_stays_with_its_device_while_offline_and_a_busy_port_never_refuses_the_session()
 {
    let (lo, hi) = free_port_range(5);
    let range = format!("{lo}-{hi}");
    let relay = RelayProc::start_with(
        "squat",
        Setup {
            args: &["--public-ports", &range, "--public-bind", "127.0.0.1"],
            creds: &[
                ("a", &["--device", "dev-a", "--public"]),
                ("b", &["--device", "dev-b", "--public"]),
            ],
            log: None,
        },
    )
    .await;
    let (svc_a, svc_b) = (
        spawn_greeting_server(b"device a").await,
        spawn_greeting_server(b"device b").await,
    );
    // Someone outside the relay holds the last port of the range.
    let _outsider = std::net::TcpListener::bind(("127.0.0.1", hi)).expect("outsider port");
    let port = lo + 1;

    // A publishes `web` on `port`, then goes away (reboot, NAT rebind, relay blip).
    let (a, public, _) = public_device(
        relay.client_as("a"),
        "dev-a",
        &["web"],
        &[("web", port)],
        svc_a,
    )
    .await;
    assert_eq!(public, [("web".to_owned(), port)]);
    drop(a);
    eventually("A's public port is closed", WAIT, || async move {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;

    // B, another credential with `public`, asks for A's port and for every other one.
    let (b, b_public, b_failed) = public_device(
        relay.client_as("b"),
        "dev-b",
        &["web", "w1", "w2", "w3"],
        &[("web", port), ("w1", 0), ("w2", 0), ("w3", 0)],
        svc_b,
    )
    .await;
    assert!(
        !b_public.iter().any(|(_, p)| *p == port),
        "B took A's port while A was offline: {b_public:?}"
    );
    assert!(
        b_failed
            .iter()
            .any(|(s, why)| s == "web" && why.contains("reserved")),
        "B is told why it did not get the port: {b_failed:?}"
    );

    // A comes back: registered at once, with its port, which reaches A again. A port it
    // also asks for that someone else holds is left out, with why; the session stands.
    let started = Instant::now();
    let (a, a_public, a_failed) = public_device(
        relay.client_as("a"),
        "dev-a",
        &["web", "extra"],
        &[("web", port), ("extra", hi)],
        svc_a,
    )
    .await;
    let back = started.elapsed();
    assert_eq!(a_public, [("web".to_owned(), port)]);
    assert!(
        a_failed
            .iter()
            .any(|(s, why)| s == "extra" && why.contains(&hi.to_string())),
        "{a_failed:?}"
    );
    assert_eq!(greeting_at(port).await, b"device a");
    println!(
        "MEASURE port squatting: B got {b_public:?} and was refused {b_failed:?}; A re-registered in {back:?} with {a_public:?}, busy port left out: {a_failed:?}"
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_many_networks_cannot_keep_a_new_device_out() {
    let relay = Arc::new(RelayProc::start("preauth").await);
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    // 8 networks × 4 addresses × 24 connections (768, over the relay-wide cap of 512) that
    // never send a byte and reconnect as soon as they are cut, for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for net in 10..18u8 {
        for host in 1..=4u8 {
            for _ in 0..24 {
                let (stop, attempts, addr) = (stop.clone(), attempts.clone(), relay.addr);
                attackers.push(tokio::spawn(async move {
                    for _ in 0..200 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        attempts.fetch_add(1, Ordering::Relaxed);
                        match tcp_from(IpAddr::from([127, net, 0, host]), addr).await {
                            Ok(mut tcp) => {
                                let mut b = [0u8; 1];
                                let _ = tokio::time::timeout(WAIT, tcp.read(&mut b)).await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A device whose address never authenticated before registers during the attack...
    let started = Instant::now();
    let _device = legit_device(&relay).await;
    let first = started.elapsed();
    // ...and access clients keep connecting.
    let mut connects = Vec::new();
    for _ in 0..10 {
        connects.push(assert_serves(&relay).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = within("attacker task ends", WAIT * 2, a).await;
    }
    connects.sort();
    let (p50, p99) = (connects[connects.len() / 2], connects[connects.len() - 1]);
    println!(
        "MEASURE pre-auth flood: {} attacker connections from 32 addresses in 8 networks; a new device registered in {first:?}; access connects p50 {p50:?}, max {p99:?}",
        attempts.load(Ordering::Relaxed)
    );
    assert!(
        first < Duration::from_secs(2),
        "a new device took {first:?} to register during the flood (bound 2 s)"
    );
    relay.report_memory("pre-auth flood", baseline, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_public_connections_cannot_lock_private_access_out() {
    let (lo, hi) = free_port_range(2);
    let range = format!("{lo}-{hi}");
    let relay = RelayProc::start_with(
        "slots",
        Setup {
            args: &["--public-ports", &range, "--public-bind", "127.0.0.1"],
            creds: &[
                ("pub", &["--device", "dev-p", "--public"]),
                ("ops", &["--access", "dev-p/*"]),
            ],
            log: None,
        },
    )
    .await;
    let echo = spawn_echo_server().await;
    let (_device, public, _) = public_device(
        relay.client_as("pub"),
        "dev-p",
        &["web"],
        &[("web", 0)],
        echo,
    )
    .await;
    let port = public[0].1;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    // 160 idle public connections from 10 addresses: more than the device session's 112
    // stream slots.
    let mut idle = Vec::new();
    let mut admitted = 0;
    for source in 40..50u8 {
        for _ in 0..16 {
            let Ok(mut tcp) =
                tcp_from(local(source), SocketAddr::from(([127, 0, 0, 1], port))).await
            else {
                continue;
            };
            // An admitted connection echoes; one over a cap is reset.
            let ok = tcp.write_all(b"x").await.is_ok() && {
                let mut b = [0u8; 1];
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut b)).await,
                    Ok(Ok(1))
                )
            };
            if ok {
                admitted += 1;
                idle.push(tcp);
            }
        }
    }
    // Private access still gets a stream.
    let started = Instant::now();
    let dialer = within(
        "ops connects",
        WAIT,
        Dialer::connect(relay.client_as("ops")),
    )
    .await
    .expect("ops connects");
    let stream = within("private dial", WAIT, dialer.dial("dev-p", "web"))
        .await
        .expect("private access is never locked out by public connections");
    assert_eq!(echo_exchange(stream, b"private").await, b"private");
    let took = started.elapsed();
    println!(
        "MEASURE public slot exhaustion: {admitted} of 160 idle public connections admitted (cap: half of the session's slots, 16 per source); private dial succeeded in {took:?}"
    );
    assert!(admitted <= 64, "public connections took {admitted} slots");
    relay.report_memory("public slot exhaustion", baseline, 64);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_stays_with_its_credential_while_offline_and_a_wildcard_cannot_take_it() {
    let relay = RelayProc::start_with(
        "identity",
        Setup {
            creds: &[
                ("pi-1", &["--device", "pi-1"]),
                ("fleet", &["--device", "pi-*"]),
                ("ops", &["--access", "pi-*/*"]),
            ],
            ..Setup::default()
        },
    )
    .await;
    let (real, impostor) = (
        spawn_greeting_server(b"real").await,
        spawn_greeting_server(b"impostor").await,
    );
    let dialer = within(
        "ops connects",
        WAIT,
        Dialer::connect(relay.client_as("ops")),
    )
    .await
    .expect("ops");
    let pi1 = start_device(relay.client_as("pi-1"), "pi-1", &[("who", real)]).await;
    // One blip of the real device...
    drop(pi1);
    eventually("pi-1 offline", WAIT, || {
        let dialer = dialer.clone();
        async move {
            matches!(
                dialer.dial("pi-1", "who").await,
                Err(tunnel_core::DialError::DeviceOffline(_))
            )
        }
    })
    .await;
    // ...and the wildcard credential tries to take its ID.
    let config = DeviceConfig::new(relay.client_as("fleet"), "pi-1").service("who");
    let fleet = try_start_device(config, [("who".to_owned(), impostor.to_string())].into()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fleet_state = fleet.as_ref().map(|d| d.listener.state());
    assert!(
        !matches!(fleet_state, Ok(ListenerState::Connected { .. })),
        "the wildcard credential took pi-1 while its owner was offline"
    );
    // The real device comes back and callers reach it, not the impostor.
    let _pi1 = start_device(relay.client_as("pi-1"), "pi-1", &[("who", real)]).await;
    let mut stream = within("dial pi-1", WAIT, dialer.dial("pi-1", "who"))
        .await
        .expect("dial");
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).await.expect("banner");
    assert_eq!(&banner, b"real");
    println!(
        "MEASURE identity: the wildcard credential was refused pi-1 while offline ({fleet_state:?}); the real device re-registered and serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_and_unknown_stream_floods_close_only_the_abusive_session() {
    let relay = RelayProc::start("meterbypass").await;
    let _device = legit_device(&relay).await;
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    const ACK: u16 = 2;
    type Flood = Box<dyn Fn(u32) -> Vec<u8>>;
    let floods: [(&str, Flood); 2] = [
        (
            "zero window updates with ACK|RST",
            Box::new(|_| yamux(WINDOW_UPDATE, ACK | RST, 1, &[], Some(0))),
        ),
        (
            "one-byte data for unknown streams",
            Box::new(|i| yamux(DATA, 0, 1001 + 2 * (i % 1000), b"x", None)),
        ),
    ];
    for (what, next) in floods {
        let mut tls = raw_session(&relay, local(9), 2, &relay.user_token, "").await;
        let (sent, took) = flood_until_closed(&mut tls, next, 2_000_000).await;
        println!("MEASURE {what} flood: session closed after {sent} frames in {took:?}");
        assert!(
            sent < 2_000_000,
            "{what}: the relay never closed the session"
        );
    }
    relay.expect_log("floods").await;
    let connect = assert_serves(&relay).await;
    println!("MEASURE meter bypass: legit access client connected in {connect:?} afterwards");
    relay.report_memory("control/unknown-stream floods", baseline, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_forge_relay_log_lines_or_drive_the_callers_terminal() {
    let relay = RelayProc::start_with(
        "inject",
        Setup {
            log: Some("info"),
            ..Setup::default()
        },
    )
    .await;
    // A device that refuses every stream with a message full of control characters.
    let evil = "nope\n2099-01-01T00:00:00.000000Z  WARN forged: relay compromised\u{1b}]0;pwned\u{7}\u{1b}[31mred";
    let listener = within(
        "evil device",
        WAIT,
        Listener::bind(DeviceConfig::new(relay.client(&relay.device_token), "dev").service("echo")),
    )
    .await
    .expect("bind");
    listener.wait_connected(WAIT).await.expect("connected");
    let refuser = tokio::spawn(async move {
        while let Some(incoming) = listener.accept().await {
            let _ = incoming.refuse(tunnel_core::Refusal::Denied, evil).await;
        }
    });
    let bins = cargo_bins!();
    let out = within(
        "tunnel-access runs",
        WAIT,
        tokio::process::Command::new(&bins.access)
            .args([
                "--relay",
                &relay.addr.to_string(),
                "--pin",
                &relay.pin.to_string(),
            ])
            .args(["--device", "dev", "--service", "echo", "--stdio"])
            .env("TUNNEL_TOKEN", &relay.user_token)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("tunnel-access");
    refuser.abort();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "terminal escapes reached the caller: {stderr:?}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("2099-01-01")),
        "a forged line reached the caller: {stderr:?}"
    );
    assert!(
        stderr.lines().count() <= 2 && !stderr.contains("stack backtrace"),
        "a refusal is one line, not a crash report: {stderr:?}"
    );
    let log = relay.log();
    assert!(
        log.contains("stream refused") && log.contains("nope\\n2099"),
        "the refusal is logged, its text quoted: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2099-01-01")),
        "the device forged a relay log line"
    );
    assert!(
        !log.contains('\u{1b}'),
        "the relay log, redirected to a file, holds escape codes"
    );
    println!("MEASURE injection: caller saw {stderr:?}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_are_never_written_through_a_link_or_left_readable() {
    use std::os::unix::fs::PermissionsExt;
    let bins = cargo_bins!();
    let dir = fresh_dir("secrets");
    // An existing token file readable by everyone becomes owner-only when a token is added.
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, "").expect("write");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    bins.new_token(&tokens, &["--name", "a", "--device", "a"]);
    let mode = std::fs::metadata(&tokens)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the token file stayed {mode:o}");
    // A token file that is a link to somewhere else is refused, and the target untouched.
    let target = dir.join("elsewhere");
    std::fs::write(&target, "precious").expect("write");
    let link = dir.join("link.toml");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = Command::new(&bins.relay)
        .args(["token", "new", "--name", "b", "--device", "b", "--file"])
        .arg(&link)
        .output()
        .expect("tunnel-relay");
    assert!(!out.status.success(), "a token was written through a link");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "precious");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_device_lists_from_one_session_do_not_stall_other_clients() {
    let relay = RelayProc::start_with(
        "lists",
        Setup {
            creds: &[
                ("fleet", &["--device", "lab-*"]),
                ("viewer", &["--access", "nomatch-*/*"]),
            ],
            ..Setup::default()
        },
    )
    .await;
    let _device = legit_device(&relay).await;
    // 60 devices (under the 64 sessions a credential may hold) with 60 service names of
    // 60 bytes each: the largest hello allows.
    let services: Vec<String> = (0..60).map(|i| format!("{i:0>60}")).collect();
    let mut fleet = Vec::new();
    for n in 0..60 {
        let config = services.iter().fold(
            DeviceConfig::new(relay.client_as("fleet"), format!("lab-{n:03}")),
            |c, s| c.service(s.clone()),
        );
        let device = within("fleet device", WAIT, Listener::bind(config))
            .await
            .expect("fleet device binds");
        device
            .wait_connected(WAIT)
            .await
            .expect("fleet device registers");
        fleet.push(device);
    }
    let (baseline, _) = relay.memory();
    relay.reset_peak();
    // One session asks for 100 lists at once; its grants match none of the devices.
    let viewer = within("viewer", WAIT, Dialer::connect(relay.client_as("viewer")))
        .await
        .expect("viewer");
    let started = Instant::now();
    let lists: Vec<_> = (0..100)
        .map(|_| {
            let viewer = viewer.clone();
            tokio::spawn(async move { viewer.list().await })
        })
        .collect();
    let mut connects = Vec::new();
    for _ in 0..5 {
        connects.push(assert_serves(&relay).await);
    }
    let (mut answered, mut busy) = (0, 0);
    for l in lists {
        match within("list answered", WAIT, l).await.expect("task") {
            Ok(entries) => {
                assert!(entries.is_empty(), "the viewer sees nothing: {entries:?}");
                answered += 1;
            }
            Err(tunnel_core::DialError::Unavailable(_)) => busy += 1,
            Err(e) => panic!("list: {e}"),
        }
    }
    let lists_took = started.elapsed();
    connects.sort();
    println!(
        "MEASURE device lists: 100 concurrent lists on one session over 61 devices × 60 services: {answered} answered, {busy} unavailable, in {lists_took:?}; others' connects during them: median {:?}, max {:?}",
        connects[connects.len() / 2],
        connects[connects.len() - 1]
    );
    assert!(
        connects[connects.len() - 1] < Duration::from_secs(2),
        "other clients stalled behind the lists"
    );
    relay.report_memory("concurrent device lists", baseline, 64);
}
