//! End-to-end data path: Dialer → relay → device Listener → local service, over real
//! sockets and real TLS; public ports; large, concurrent and half-closed transfers; listing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_access_echoes_bytes_exactly_through_the_relay() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    // Every byte value, then pseudo-random data spanning many yamux frames.
    let mut data: Vec<u8> = (0..=255u8).collect();
    data.extend(Payload::bytes(1, 300_000));
    let back = echo_exchange(dial(&dialer, "pi", "echo").await, &data).await;
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "echoed bytes differ from what was sent");

    // A second stream on the same session works too.
    let back = echo_exchange(dial(&dialer, "pi", "echo").await, b"hello").await;
    assert_eq!(back, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_carries_plain_tcp_to_the_device_service() {
    let relay = spawn_relay_with(
        &[("web-device", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let echo = spawn_echo_server().await;
    let (device, public) = start_public_device(&relay, "web", echo).await;

    assert_eq!(public.len(), 1, "one public port: {public:?}");
    let (service, port) = public[0].clone();
    assert_eq!(service, "web");
    assert!(
        PUBLIC_PORTS.contains(&port),
        "port {port} outside the relay's range"
    );
    assert_eq!(
        device.public_ports(),
        public,
        "listener state reports the same ports"
    );

    let tcp = connect_public(port).await;
    let data = Payload::bytes(2, 200_000);
    let back = echo_exchange(tcp, &data).await;
    assert!(
        back == data,
        "public port echo differs ({} of {} bytes back)",
        back.len(),
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_small_writes_each_get_their_echo_back() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;
    let mut stream = dial(&dialer, "pi", "echo").await;

    let mut g = Payload::new(3);
    within("200 interactive round trips", WAIT, async {
        for i in 0..200usize {
            let len = 1 + (i * 37) % 100; // 1..=100 bytes, varying
            let mut keys = vec![0u8; len];
            g.fill(&mut keys);
            stream.write_all(&keys).await.expect("write keystrokes");
            let mut echoed = vec![0u8; len];
            stream.read_exact(&mut echoed).await.expect("read echo");
            assert_eq!(echoed, keys, "round trip {i}");
        }
        stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("clean end");
        assert!(rest.is_empty(), "no extra bytes after the last echo");
    })
    .await;
}

const BIG: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_upload_arrives_intact() {
    let relay = relay_for("pi").await;
    let sink = spawn_sink_server().await;
    let _device = relay.device(DEVICE, "pi", &[("sink", sink)]).await;
    let dialer = relay.dialer(USER).await;

    let stream = dial(&dialer, "pi", "sink").await;
    let (count, digest) = sink_exchange(stream, 64, BIG, Duration::from_secs(100)).await;
    assert_eq!(count, BIG, "bytes received by the service");
    assert_eq!(
        digest,
        Payload::digest(64, BIG),
        "SHA-256 of the bytes received by the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_download_arrives_intact() {
    let relay = relay_for("pi").await;
    let source = spawn_reply_after_eof_server().await;
    let _device = relay.device(DEVICE, "pi", &[("source", source)]).await;
    let dialer = relay.dialer(USER).await;

    let stream = dial(&dialer, "pi", "source").await;
    let (request_ok, count, digest) =
        request_reply(stream, 65, BIG, 0, Duration::from_secs(100)).await;
    assert!(request_ok, "the service saw the exact request");
    assert_eq!(count, BIG, "bytes received by the client");
    assert_eq!(
        digest,
        Payload::digest(65, BIG),
        "SHA-256 of the bytes received by the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_each_carry_their_own_payload_intact() {
    const STREAMS: u64 = 100;
    const LEN: usize = 256 * 1024;
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let seed = 1000 + i;
                let stream = dial(&dialer, "pi", "echo").await;
                let data = Payload::bytes(seed, LEN);
                let back = echo_exchange(stream, &data).await;
                (i, back.len(), sha256(&back) == sha256(&data))
            })
        })
        .collect();
    let results = within(
        "100 concurrent streams",
        Duration::from_secs(100),
        futures::future::join_all(tasks),
    )
    .await;
    for r in results {
        let (i, len, same) = r.expect("stream task panicked");
        assert_eq!(len, LEN, "stream {i}: echoed length");
        assert!(
            same,
            "stream {i}: echoed SHA-256 differs from its own payload"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_server_reply_in_full() {
    const REPLY: u64 = 1024 * 1024;
    let relay = relay_for("pi").await;
    let server = spawn_reply_after_eof_server().await;
    let _device = relay.device(DEVICE, "pi", &[("rpc", server)]).await;
    let dialer = relay.dialer(USER).await;

    // A 64 KiB request, then shutdown(): the service only answers after reading EOF.
    let stream = dial(&dialer, "pi", "rpc").await;
    let (request_ok, count, digest) = request_reply(stream, 7, REPLY, 64 * 1024, WAIT).await;
    assert!(request_ok, "the service read the whole request before EOF");
    assert_eq!(count, REPLY, "reply length after half-close");
    assert_eq!(
        digest,
        Payload::digest(7, REPLY),
        "reply SHA-256 after half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_on_a_public_port_lets_the_server_reply_in_full() {
    const REPLY: u64 = 1024 * 1024;
    let relay = spawn_relay_with(
        &[("web-device", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let server = spawn_reply_after_eof_server().await;
    let (_device, public) = start_public_device(&relay, "rpc", server).await;
    let port = public.first().expect("a public port").1;

    let tcp = connect_public(port).await;
    let (request_ok, count, digest) = request_reply(tcp, 8, REPLY, 64 * 1024, WAIT).await;
    assert!(request_ok, "the service read the whole request before EOF");
    assert_eq!(count, REPLY, "reply length after half-close");
    assert_eq!(
        digest,
        Payload::digest(8, REPLY),
        "reply SHA-256 after half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_reachable_devices_online_or_offline_and_hides_the_rest() {
    let relay = spawn_relay(&[
        (
            "devices",
            Grants::new().register(Pattern::new("*").unwrap()),
        ),
        ("viewer", may_access(&["pi-a/ssh", "lab-*/*", "pi-b/*"])),
    ])
    .await;
    let svc = spawn_echo_server().await;
    let _pi_a = relay.device(0, "pi-a", &[("ssh", svc), ("web", svc)]).await;
    let lab_1 = relay.device(0, "lab-1", &[("web", svc)]).await;
    let _other = relay.device(0, "other-x", &[("ssh", svc)]).await;
    let dialer = relay.dialer(1).await;

    let list = within("list", WAIT, dialer.list()).await.expect("list");
    let brief: Vec<(&str, bool, Vec<&str>)> = list
        .iter()
        .map(|d| {
            (
                d.device.as_str(),
                d.online,
                d.services.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        vec![
            ("lab-1", true, vec!["web"]),
            ("pi-a", true, vec!["ssh"]), // "web" is not granted, so not shown
            ("pi-b", false, vec![]),     // named in a grant, never seen
        ],
        "devices listed for the viewer (other-x must not appear)"
    );

    // lab-1 goes away: still listed, now offline, with the services it had declared.
    drop(lab_1);
    relay.wait_offline("lab-1", WAIT).await;
    eventually("lab-1 listed offline with its services", WAIT, || {
        let dialer = dialer.clone();
        async move {
            let list = dialer.list().await.expect("list");
            list.iter()
                .any(|d| d.device == "lab-1" && !d.online && d.services == ["web"])
        }
    })
    .await;
    let list = within("list", WAIT, dialer.list()).await.expect("list");
    assert!(
        list.iter().all(|d| d.device != "other-x"),
        "other-x must never be listed: {list:?}"
    );
    assert!(
        list.iter().any(|d| d.device == "pi-a" && d.online),
        "pi-a still online: {list:?}"
    );
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_reachable_as_soon_as_it_reports_connected() {
    let relay = spawn_relay(&[
        ("device", may_register("pi-*")),
        ("user", may_access(&["pi-*/*"])),
    ])
    .await;
    let echo = spawn_echo_server().await;
    let dialer = relay.dialer(USER).await;
    // The relay registers a device before sending its welcome: no window in which a dial
    // right after `wait_connected` finds the device offline. Repeated to catch the race.
    for i in 0..10 {
        let id = format!("pi-{i}");
        let _device = start_device(relay.client(DEVICE), &id, &[("echo", echo)]).await;
        let back = echo_exchange(dial(&dialer, &id, "echo").await, id.as_bytes()).await;
        assert_eq!(back, id.as_bytes());
    }
}

/// How a connection to [`spawn_end_reporter`]'s service ended: the bytes it read, and the
/// error if the connection failed rather than closed.
type Ended = (Vec<u8>, Option<std::io::ErrorKind>);

/// A local service that reads one connection: once `first` bytes arrived it says so and
/// answers one byte, then reads to the end and reports how the connection ended.
async fn spawn_end_reporter(
    first: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<Ended>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut got = vec![0u8; first];
        if let Err(e) = tcp.read_exact(&mut got).await {
            let _ = ended_tx.send((Vec::new(), Some(e.kind())));
            return;
        }
        let _ = arrived_tx.send(());
        let _ = tcp.write_all(b"!").await;
        let end = tcp.read_to_end(&mut got).await.err().map(|e| e.kind());
        let _ = ended_tx.send((got, end));
    });
    (addr, arrived, ended)
}

const PARTIAL: &[u8] = b"partial request";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_by_the_access_client_reaches_the_service_as_a_reset() {
    let relay = relay_for("pi").await;
    let (service, arrived, ended) = spawn_end_reporter(PARTIAL.len()).await;
    let _device = relay.device(DEVICE, "pi", &[("sink", service)]).await;
    let dialer = relay.dialer(USER).await;

    let mut stream = dial(&dialer, "pi", "sink").await;
    stream.write_all(PARTIAL).await.unwrap();
    within("the service reads the first bytes", WAIT, arrived)
        .await
        .expect("the service reports");
    let mut answer = [0u8];
    within("the service's answer", WAIT, stream.read_exact(&mut answer))
        .await
        .expect("an answer");
    drop(stream); // without shutdown: a reset

    let (got, end) = within("the service sees its connection end", WAIT, ended)
        .await
        .expect("the service reports");
    assert_eq!(got, PARTIAL);
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "an abandoned stream must not look like a completed request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_caller_that_resets_reaches_the_service_as_a_reset() {
    let relay = spawn_relay_with(
        &[("web-device", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let (service, arrived, ended) = spawn_end_reporter(PARTIAL.len()).await;
    let (_device, public) = start_public_device(&relay, "sink", service).await;
    let port = public.first().expect("a public port").1;

    let mut tcp = connect_public(port).await;
    tcp.write_all(PARTIAL).await.unwrap();
    within("the service reads the first bytes", WAIT, arrived)
        .await
        .expect("the service reports");
    // The answer comes through the splice, so the relay has finished opening: a reset
    // during the open is another path, tested in early.rs.
    let mut answer = [0u8];
    within("the service's answer", WAIT, tcp.read_exact(&mut answer))
        .await
        .expect("an answer");
    tcp.set_zero_linger().unwrap(); // close sends RST
    drop(tcp);

    let (got, end) = within("the service sees its connection end", WAIT, ended)
        .await
        .expect("the service reports");
    assert_eq!(got, PARTIAL);
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
}
