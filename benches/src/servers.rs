//! The far ends of every workload, on a runtime of their own.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector, rustls};
use tunnel_testkit::spawn_server;

use crate::CHUNK;

/// Local servers on a dedicated runtime thread; they stop when this is dropped.
pub struct Servers {
    /// Reads to end of stream, then replies with the count as 8 bytes big-endian.
    pub sink: SocketAddr,
    /// Echoes everything back.
    pub echo: SocketAddr,
    /// [`Servers::sink`] behind TLS 1.3 (the plain-TLS baseline); see [`Servers::tls_client`].
    pub tls_sink: SocketAddr,
    /// TLS client config that trusts `tls_sink`'s certificate.
    pub tls_client: TlsConnector,
    rt: Option<Runtime>,
}

impl Servers {
    /// Starts the servers on `threads` worker threads.
    pub fn start(threads: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bench-servers")
            .enable_all()
            .build()
            .expect("server runtime");
        let (sink, echo, tls_sink, tls_client) = rt.block_on(async {
            let sink = spawn_server(|s| async move { count_and_reply(s).await }).await;
            let echo = spawn_server(|s| async move { echo(s).await }).await;
            let (acceptor, connector) = tls_pair();
            let tls_sink = spawn_server(move |s| {
                let acceptor = acceptor.clone();
                async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        count_and_reply(tls).await;
                    }
                }
            })
            .await;
            (sink, echo, tls_sink, connector)
        });
        Self {
            sink,
            echo,
            tls_sink,
            tls_client,
            rt: Some(rt),
        }
    }

    /// Starts a one-hop TCP forwarder to `target` on the servers' runtime (the "relay with
    /// no crypto" baseline, like socat or bore's data path) and returns its address.
    pub fn forwarder(&self, target: SocketAddr) -> SocketAddr {
        let rt = self.rt.as_ref().expect("running");
        rt.block_on(spawn_server(move |mut inbound| async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    CHUNK,
                    CHUNK,
                )
                .await;
            }
        }))
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Reads everything, then replies with the byte count: the sender measures delivered bytes.
pub async fn count_and_reply<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0; CHUNK];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(&n.to_be_bytes()).await;
    let _ = s.shutdown().await;
}

async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy_buf(
        &mut tokio::io::BufReader::with_capacity(CHUNK, &mut r),
        &mut w,
    )
    .await;
}

/// A self-signed certificate for `localhost`, as a server acceptor and a client that trusts it.
fn tls_pair() -> (TlsAcceptor, TlsConnector) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    )
}
