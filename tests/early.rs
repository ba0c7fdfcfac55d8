//! Early data: a stream opened with `Dialer::dial_early` (and every public connection)
//! sends its first bytes with the open. What arrives is intact and in order; a refused
//! stream says why on its first read, counts the bytes that were not delivered, and
//! leaves the session working.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;

/// The typed refusal inside an early stream's read error.
fn refusal(e: &io::Error) -> &DialError {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DialError>())
        .unwrap_or_else(|| panic!("no DialError inside {e:?}"))
}

/// Writes early data, then reads: the refusal is the first error met. The write is
/// buffered, or fails with the refusal itself when the answer (and the close) came first;
/// either way nothing was delivered. Returns the refusal and whether the write got through.
async fn refused_after_writing(stream: &mut Stream, data: &[u8]) -> (io::Error, bool) {
    if let Err(e) = stream.write_all(data).await {
        refusal(&e); // typed, not a bare "connection closed"
        return (e, false);
    }
    let mut buf = [0u8; 16];
    let e = within("first read", WAIT, stream.read(&mut buf))
        .await
        .expect_err("the first read carries the refusal");
    (e, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_stream_carries_its_first_request_and_reads_the_reply() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    for round in 0..3 {
        let stream = within("dial_early", WAIT, dialer.dial_early("pi", "echo"))
            .await
            .expect("dial_early sends the open");
        let msg = format!("request {round}");
        let back = echo_exchange(stream, msg.as_bytes()).await;
        assert_eq!(back, msg.as_bytes(), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_stream_delivers_more_than_the_early_window_intact_and_in_order() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    // Far more than the relay passes on before the device answers (64 KiB), written
    // before the first read, so early data, the splice and their seam are all crossed.
    let len = 3 * 1024 * 1024 + 17;
    let stream = within("dial_early", WAIT, dialer.dial_early("pi", "echo"))
        .await
        .expect("dial_early sends the open");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        write_payload(&mut wr, 7, len as u64).await.expect("write");
        wr.shutdown().await.expect("half-close");
    });
    let (count, digest) = within("read the echo", WAIT, read_digest(&mut rd))
        .await
        .expect("read the echo");
    writer.await.expect("writer task");
    assert_eq!(count, len as u64, "every byte came back");
    assert_eq!(
        digest,
        Payload::digest(7, len as u64),
        "in order, unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_early_stream_fails_its_first_read_with_the_reason_and_the_undelivered_count() {
    let relay = spawn_relay(&[
        ("device", may_register("pi")),
        ("user", may_access(&["pi/echo"])),
    ])
    .await;
    let echo = spawn_echo_server().await;
    let _device = relay
        .device(DEVICE, "pi", &[("echo", echo), ("admin", echo)])
        .await;
    let dialer = relay.dialer(USER).await;

    let mut stream = within("dial_early", WAIT, dialer.dial_early("pi", "admin"))
        .await
        .expect("an early dial returns before the answer");
    let (e, written) = refused_after_writing(&mut stream, b"12345").await;
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(matches!(refusal(&e), DialError::Denied(_)), "{e:?}");
    if written {
        assert!(
            e.to_string()
                .contains("5 bytes written before this answer were not delivered"),
            "the error counts what was lost: {e}"
        );
    }
    let mut buf = [0u8; 16];
    let again = stream
        .write_all(b"more")
        .await
        .expect_err("writes fail after a refusal");
    assert_eq!(again.kind(), io::ErrorKind::ConnectionRefused, "{again}");
    let again = stream
        .read(&mut buf)
        .await
        .expect_err("reads fail after a refusal");
    assert!(again.to_string().contains("access denied"), "{again}");

    // The session is unharmed, for early and plain dials alike.
    let back = echo_exchange(dial(&dialer, "pi", "echo").await, b"plain").await;
    assert_eq!(back, b"plain");
    let early = dialer.dial_early("pi", "echo").await.expect("early dial");
    assert_eq!(echo_exchange(early, b"early").await, b"early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_to_a_closed_local_port_is_refused_as_target_refused_and_never_delivered() {
    let relay = relay_for("pi").await;
    let closed = closed_port_addr().await;
    let echo = spawn_echo_server().await;
    let device = relay
        .device(DEVICE, "pi", &[("echo", echo), ("dead", closed)])
        .await;
    let dialer = relay.dialer(USER).await;

    let mut stream = within("dial_early", WAIT, dialer.dial_early("pi", "dead"))
        .await
        .expect("an early dial returns before the answer");
    let (e, written) = refused_after_writing(&mut stream, &[7u8; 1000]).await;
    assert!(matches!(refusal(&e), DialError::TargetRefused(_)), "{e:?}");
    if written {
        assert!(e.to_string().contains("1000 bytes"), "{e}");
    }
    // An offline device is refused by the relay itself, the same way.
    drop(device);
    relay.wait_offline("pi", WAIT).await;
    let mut stream = dialer.dial_early("pi", "echo").await.expect("early dial");
    let (e, _) = refused_after_writing(&mut stream, b"x").await;
    assert!(matches!(refusal(&e), DialError::DeviceOffline(_)), "{e:?}");
    // A write made after the refusal (and the close) arrived fails with the refusal too,
    // not with a bare "connection closed".
    let mut stream = dialer.dial_early("pi", "echo").await.expect("early dial");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (e, _) = refused_after_writing(&mut stream, b"late").await;
    assert!(matches!(refusal(&e), DialError::DeviceOffline(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_that_speaks_first_gets_its_reply_through_the_early_path() {
    let relay = spawn_relay_with(
        &[("device", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let echo = spawn_echo_server().await;
    let (_device, public) = start_public_device(&relay, "web", echo).await;
    let port = public[0].1;
    for round in 0..3 {
        let mut tcp = connect_public(port).await;
        // Written at once, before the relay has heard from the device.
        let msg = format!("hello {round}");
        tcp.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        within("echo", WAIT, tcp.read_exact(&mut back))
            .await
            .expect("the reply comes back");
        assert_eq!(back, msg.as_bytes(), "round {round}");
    }
}

/// What the device's stream shows when its caller reset while the relay waited for the
/// device's answer: the answer fails, or the stream does, with a reset. A clean end here
/// would make a half-sent request look complete to the device's service.
async fn reset_seen_by_the_device(incoming: Incoming) -> io::Error {
    // The relay reads the caller's reset before the answer arrives; answering first is
    // another path (the splice meets the reset), which must end the same way.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    match within("the device answers", WAIT, incoming.accept()).await {
        Err(e) => e,
        Ok(mut stream) => expect_read_error(&mut stream, WAIT).await,
    }
}

/// A device that answers only when the test says so: the caller's open stays pending.
async fn holding_device(config: DeviceConfig) -> (Listener, Vec<(String, u16)>) {
    let listener = within("Listener::bind", WAIT, Listener::bind(config))
        .await
        .expect("device binds");
    let public = listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    (listener, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_caller_that_resets_before_the_device_answers_resets_the_device_stream() {
    let relay = spawn_relay_with(
        &[("web-device", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service("web")
        .public("web", 0);
    let (listener, public) = holding_device(config).await;
    relay.wait_online("web-dev").await;
    let port = public.first().expect("a public port").1;

    let mut tcp = connect_public(port).await;
    tcp.write_all(b"POST /half").await.unwrap();
    let incoming = within("the device hears of the caller", WAIT, listener.accept())
        .await
        .expect("an incoming stream");
    tcp.set_zero_linger().unwrap(); // close sends RST
    drop(tcp);

    let e = reset_seen_by_the_device(incoming).await;
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    listener.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_stream_dropped_before_the_device_answers_resets_the_device_stream() {
    let relay = relay_for("pi").await;
    let (listener, _) =
        holding_device(DeviceConfig::new(relay.client(DEVICE), "pi").service("web")).await;
    let dialer = relay.dialer(USER).await;

    let mut stream = within("dial_early", WAIT, dialer.dial_early("pi", "web"))
        .await
        .expect("dial_early sends the open");
    stream.write_all(b"POST /half").await.unwrap();
    stream.flush().await.unwrap();
    let incoming = within("the device hears of the caller", WAIT, listener.accept())
        .await
        .expect("an incoming stream");
    drop(stream); // dropped without shutdown: a reset

    let e = reset_seen_by_the_device(incoming).await;
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    listener.close();
}
