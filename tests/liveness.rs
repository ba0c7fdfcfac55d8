//! Liveness: devices come back by themselves after a relay restart, heartbeats detect silent
//! peers on both sides, and an abrupt failure always reads as an error, never a clean EOF.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;
/// Bound for noticing a silent peer with a 200 ms heartbeat (dead after 3 intervals, plus
/// the session's close): generous for a loaded machine, far below the 15 s of the default.
const DETECT: Duration = Duration::from_secs(5);
const BANNER: &[u8] = b"welcome to the service\n";

async fn relay_with_heartbeat(device: &str) -> TestRelay {
    spawn_relay_with(
        &[
            ("device", may_register(device)),
            ("user", may_access(&[&format!("{device}/*")])),
        ],
        |b| {
            b.heartbeat_interval(HEARTBEAT)
                .grace_period(Duration::from_secs(1))
        },
    )
    .await
}

/// Dials a greeting service and reads its banner; the stream stays open, with the
/// client's write half still open too.
async fn open_greeting(dialer: &Dialer, device: &str, service: &str) -> Stream {
    let mut stream = dial(dialer, device, service).await;
    let mut banner = vec![0u8; BANNER.len()];
    within("banner", WAIT, stream.read_exact(&mut banner))
        .await
        .expect("read banner");
    assert_eq!(banner, BANNER);
    stream
}

/// `Stream` documents that when the session under a stream dies, reads fail with
/// `ConnectionReset`; a reset TCP connection reads the same.
fn assert_reset(e: &std::io::Error, what: &str) {
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
}

fn is_connected(s: &ListenerState) -> bool {
    matches!(s, ListenerState::Connected { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reconnect_by_themselves_after_a_relay_restart() {
    let mut relay = relay_with_heartbeat("pi").await;
    let addr = relay.addr;
    let echo = spawn_echo_server().await;
    let device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;
    assert_eq!(
        echo_exchange(dial(&dialer, "pi", "echo").await, b"before").await,
        b"before"
    );

    relay.stop().await;
    let mut state = device.listener.watch_state();
    within(
        "the device to notice the relay is gone",
        WAIT,
        state.wait_for(|s| !is_connected(s)),
    )
    .await
    .expect("state channel open");

    // Same address, same certificate, same tokens.
    let relay = relay.restart().await;
    assert_eq!(relay.addr, addr);
    within(
        "the device to reconnect by itself",
        Duration::from_secs(40),
        device.listener.wait_connected(Duration::from_secs(40)),
    )
    .await
    .expect("device reconnects to the restarted relay");
    relay.wait_online("pi").await;

    // The old dialer reconnects on its next call; a fresh one works too.
    let back = echo_exchange(dial(&dialer, "pi", "echo").await, b"after, old dialer").await;
    assert_eq!(back, b"after, old dialer");
    let fresh = relay.dialer(USER).await;
    let back = echo_exchange(dial(&fresh, "pi", "echo").await, b"after, new dialer").await;
    assert_eq!(back, b"after, new dialer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_dropped_by_the_relay_and_notices_it_itself() {
    let relay = relay_with_heartbeat("pi").await;
    let proxy = FreezableProxy::start(relay.addr).await;
    let echo = spawn_echo_server().await;
    let device = start_device(
        relay.client_via(DEVICE, proxy.addr),
        "pi",
        &[("echo", echo)],
    )
    .await;
    relay.wait_online("pi").await;
    let dialer = relay.dialer(USER).await;
    assert_eq!(
        echo_exchange(dial(&dialer, "pi", "echo").await, b"ping").await,
        b"ping"
    );
    let list = within("list", WAIT, dialer.list()).await.expect("list");
    assert!(
        list.iter().any(|d| d.device == "pi" && d.online),
        "online before the partition: {list:?}"
    );

    let mut state = device.listener.watch_state();
    proxy.freeze();
    let frozen = std::time::Instant::now();

    relay.wait_offline("pi", DETECT).await;
    // Reported, not asserted beyond DETECT: the figure for the notes (3 × heartbeat).
    eprintln!(
        "relay dropped the silent device after {:?} (heartbeat {HEARTBEAT:?})",
        frozen.elapsed()
    );
    eventually("dialer.list() to show pi offline", DETECT, || {
        let dialer = dialer.clone();
        async move {
            let list = dialer.list().await.expect("list");
            list.iter().any(|d| d.device == "pi" && !d.online)
        }
    })
    .await;
    let e = within("dial", WAIT, dialer.dial("pi", "echo"))
        .await
        .expect_err("device is gone");
    assert!(matches!(e, DialError::DeviceOffline(_)), "{e:?}");

    within(
        "the device listener to leave Connected",
        DETECT,
        state.wait_for(|s| !is_connected(s)),
    )
    .await
    .expect("state channel open");
    eprintln!(
        "the device noticed the silent relay after {:?}",
        frozen.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_relay_fails_open_streams_on_the_access_side() {
    let relay = relay_with_heartbeat("pi").await;
    let greet = spawn_greeting_server(BANNER).await;
    let _device = relay.device(DEVICE, "pi", &[("greet", greet)]).await;
    let proxy = FreezableProxy::start(relay.addr).await;
    let dialer = connect_dialer(relay.client_via(USER, proxy.addr)).await;
    let mut stream = open_greeting(&dialer, "pi", "greet").await;

    proxy.freeze();
    let e = expect_read_error(&mut stream, DETECT).await;
    assert_reset(&e, "read error after the relay went silent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_read_fails_when_the_device_is_closed_mid_stream() {
    let relay = relay_with_heartbeat("pi").await;
    let greet = spawn_greeting_server(BANNER).await;
    let device = relay.device(DEVICE, "pi", &[("greet", greet)]).await;
    let dialer = relay.dialer(USER).await;
    let mut stream = open_greeting(&dialer, "pi", "greet").await;

    device.listener.close();
    let e = expect_read_error(&mut stream, WAIT).await;
    assert_reset(&e, "read error after the device closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_read_fails_when_the_device_goes_silent_mid_stream() {
    let relay = relay_with_heartbeat("pi").await;
    let greet = spawn_greeting_server(BANNER).await;
    let dialer = relay.dialer(USER).await;

    // A few rounds, each with a fresh device session behind a fresh proxy: the relay's
    // teardown of a silent device session races with its own bookkeeping, and every round
    // must end the same way.
    for round in 0..6 {
        let proxy = FreezableProxy::start(relay.addr).await;
        let device = start_device(
            relay.client_via(DEVICE, proxy.addr),
            "pi",
            &[("greet", greet)],
        )
        .await;
        relay.wait_online("pi").await;
        let mut stream = open_greeting(&dialer, "pi", "greet").await;

        proxy.freeze();
        let e = expect_read_error(&mut stream, DETECT).await;
        assert_reset(
            &e,
            &format!("round {round}: read error after the device went silent"),
        );
        relay.wait_offline("pi", DETECT).await;
        drop(device);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_connection_is_reset_not_closed_when_the_device_dies() {
    let relay = spawn_relay_with(
        &[("web-device", may_register("web-dev").public(true))],
        |b| allow_public_ports(b.heartbeat_interval(HEARTBEAT)),
    )
    .await;
    let greet = spawn_greeting_server(BANNER).await;
    let (device, public) = start_public_device(&relay, "web", greet).await;
    let port = public.first().expect("a public port").1;

    let mut tcp = connect_public(port).await;
    let mut banner = vec![0u8; BANNER.len()];
    within("banner", WAIT, tcp.read_exact(&mut banner))
        .await
        .expect("read banner");
    assert_eq!(banner, BANNER);

    device.listener.close();
    let e = expect_read_error(&mut tcp, WAIT).await;
    assert_reset(&e, "public client read error after the device closed");

    // The relay frees the public port once the device is gone.
    relay.wait_offline("web-dev", WAIT).await;
    eventually("the public port to stop accepting", WAIT, || async move {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_client_retries_until_a_restarting_relay_is_back() {
    let mut relay = relay_with_heartbeat("pi").await;
    let client = relay.client(USER);
    relay.stop().await;
    // The relay is down: a plain connect fails at once; a patient one keeps trying.
    assert!(Dialer::connect(client.clone()).await.is_err());
    let patient = tokio::spawn(Dialer::connect_with_retry(client, WAIT));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let relay = relay.restart().await;
    let dialer = within("the patient client connects", WAIT, patient)
        .await
        .expect("task")
        .expect("connects once the relay is back");
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let back = echo_exchange(dial(&dialer, "pi", "echo").await, b"back").await;
    assert_eq!(back, b"back");
}
