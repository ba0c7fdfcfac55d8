//! tunnel-demo: relay, device and access client in one process on loopback, with a
//! generated certificate and generated tokens. Shows bytes crossing the tunnel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::{
    ClientConfig, DeviceConfig, Dialer, Grants, Identity, Listener, Pattern, Relay, TlsIdentity,
    Token, TokenAuthenticator, forward, serve_local,
};

/// Runs a relay, a device exposing a small web page and an access client in one process on
/// 127.0.0.1, fetches the page through the tunnel and prints what happened.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Keep running after the demo so you can try `curl http://<printed address>/`.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tunnel_examples::exit(run().await)
}

async fn run() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tunnel_examples::init_tracing();
    }
    let cli = Cli::parse();
    let started = Instant::now();
    let step = |what: &str| println!("[{:>7.1} ms] {what}", started.elapsed().as_secs_f64() * 1e3);

    // 1. Credentials: one for the device, one for the engineer's laptop.
    let device_token = Token::generate()?;
    let laptop_token = Token::generate()?;
    let mut auth = TokenAuthenticator::new();
    auth.insert(
        device_token.hash(),
        Identity::new("pi-42", Grants::new().register(Pattern::new("pi-42")?)),
    )?;
    auth.insert(
        laptop_token.hash(),
        Identity::new("laptop", Grants::new().access_str("pi-42/web")?),
    )?;

    // 2. The relay, with a certificate generated on the fly.
    let relay = Relay::builder(TlsIdentity::generate_self_signed(&["localhost"])?, auth).build()?;
    let relay_tcp = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = relay_tcp.local_addr()?.to_string();
    tokio::spawn({
        let relay = relay.clone();
        async move { relay.serve(relay_tcp, std::future::pending()).await }
    });
    step(&format!(
        "relay listening on {relay_addr}, pin {}",
        relay.pin()
    ));

    // 3. The device: a local web service, exposed as "web" (privately: no relay port).
    let web = TcpListener::bind("127.0.0.1:0").await?;
    let web_addr = web.local_addr()?.to_string();
    tokio::spawn(serve_web(web));
    let device_client = ClientConfig::new(relay_addr.clone(), relay.pin()).token(device_token);
    let listener = Listener::bind(DeviceConfig::new(device_client, "pi-42").service("web")).await?;
    listener.wait_connected(Duration::from_secs(5)).await?;
    step(&format!("device pi-42 online, exposing web -> {web_addr}"));
    tokio::spawn(
        async move { forward(&listener, HashMap::from([("web".to_owned(), web_addr)])).await },
    );

    // 4. The laptop: list, then fetch the page over a tunnel stream.
    let laptop =
        Dialer::connect(ClientConfig::new(relay_addr, relay.pin()).token(laptop_token)).await?;
    for d in laptop.list().await? {
        step(&format!(
            "laptop sees device {} ({}), services {:?}",
            d.device,
            if d.online { "online" } else { "offline" },
            d.services
        ));
    }
    let mut stream = laptop.dial("pi-42", "web").await?;
    let request = b"GET / HTTP/1.0\r\nHost: pi-42\r\n\r\n";
    stream.write_all(request).await?;
    stream.shutdown().await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    step(&format!(
        "fetched http://pi-42/ through the tunnel: sent {} bytes, got {} bytes",
        request.len(),
        response.len()
    ));
    let text = String::from_utf8_lossy(&response);
    println!("           {}", text.lines().next().unwrap_or_default());
    println!("           {}", text.lines().last().unwrap_or_default());

    // 5. What the laptop may not do.
    match laptop.dial("pi-42", "ssh").await {
        Err(e) => step(&format!(
            "laptop asks for pi-42/ssh: refused as expected ({e})"
        )),
        Ok(_) => anyhow::bail!("pi-42/ssh should have been denied"),
    }

    // 6. A local port that forwards to pi-42/web, like `tunnel-access --listen`.
    let local = TcpListener::bind("127.0.0.1:0").await?;
    let local_addr = local.local_addr()?;
    tokio::spawn(serve_local(
        laptop.clone(),
        local,
        "pi-42".into(),
        "web".into(),
        std::future::pending(),
    ));
    let page = http_get(&local_addr.to_string()).await?;
    step(&format!(
        "local port {local_addr} -> pi-42/web works too ({} bytes)",
        page.len()
    ));

    if cli.keep {
        println!("try: curl http://{local_addr}/   (Ctrl-C to stop)");
        tunnel_examples::shutdown_signal().await;
    }
    println!("demo OK");
    Ok(())
}

/// A tiny HTTP/1.0 server standing in for the device's web app.
async fn serve_web(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let mut n = 0;
            while n < buf.len() {
                match tcp.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let body = "hello from pi-42, through the tunnel\n";
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}

async fn http_get(addr: &str) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting {addr}"))?;
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await??;
    anyhow::ensure!(out.starts_with(b"HTTP/1.0 200"), "unexpected reply");
    Ok(out)
}
