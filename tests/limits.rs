//! Limits and shutdown: a session at its stream limit fails one open, not the session; a
//! relay shutting down refuses new streams and lets running ones finish.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_past_the_stream_limit_fails_that_stream_and_the_session_goes_on() {
    let limits = Limits::default()
        .max_streams(8)
        .receive_window(2 * 8 * 256 * 1024);
    let relay = spawn_relay_with(
        &[
            ("device", may_register("pi")),
            ("user", may_access(&["pi/*"])),
        ],
        move |b| b.limits(limits),
    )
    .await;
    let echo = spawn_echo_server().await;
    // Only the relay is configured: it announces its limits and both clients follow.
    let _device = start_device(relay.client(DEVICE), "pi", &[("echo", echo)]).await;
    relay.wait_online("pi").await;
    let dialer = connect_dialer(relay.client(USER)).await;

    // Hold streams open until an open fails; the bound keeps the loop finite.
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 32, "the limit of 8 streams was never enforced");
        match within("dial", WAIT, dialer.dial("pi", "echo")).await {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, DialError::Unavailable(_)), "{refused:?}");
    assert!(
        held.len() >= 4,
        "only {} streams before the limit",
        held.len()
    );

    // Every held stream still works, and freeing one lets a new one open.
    for (i, s) in held.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0; msg.len()];
        within("echo on a held stream", WAIT, s.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let mut one = held.pop().unwrap();
    one.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("drain", WAIT, one.read_to_end(&mut rest))
        .await
        .unwrap();
    drop(one);
    eventually("a stream slot to free up", WAIT, || {
        let dialer = dialer.clone();
        async move { dialer.dial("pi", "echo").await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_streams_and_lets_running_ones_finish() {
    let mut relay = spawn_relay_with(
        &[
            ("device", may_register("pi")),
            ("user", may_access(&["pi/*"])),
        ],
        |b| b.grace_period(Duration::from_secs(10)),
    )
    .await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;
    let mut running = dial(&dialer, "pi", "echo").await;
    running.write_all(b"before").await.unwrap();

    // Begin shutdown without waiting for it.
    let _ = relay.shutdown.take().unwrap().send(());
    let serve = relay.serve.take().unwrap();
    eventually("new streams to be refused", WAIT, || {
        let dialer = dialer.clone();
        async move {
            matches!(
                dialer.dial("pi", "echo").await,
                Err(DialError::Unavailable(_))
            )
        }
    })
    .await;

    // The running stream still carries data both ways, then ends cleanly.
    running.write_all(b" and after").await.unwrap();
    running.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(
        "the running stream to finish",
        WAIT,
        running.read_to_end(&mut back),
    )
    .await
    .unwrap();
    assert_eq!(back, b"before and after");

    // With no stream left, the relay stops well before its 10 s grace period.
    within("serve() to return", Duration::from_secs(8), serve)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_over_its_session_cap_is_refused_until_one_ends() {
    let relay = spawn_relay_with(
        &[
            ("device", may_register("pi")),
            ("user", may_access(&["pi/*"])),
        ],
        |b| b.max_sessions_per_identity(1),
    )
    .await;
    let first = relay.dialer(USER).await;
    let second = within("connect", WAIT, Dialer::connect(relay.client(USER))).await;
    assert!(
        matches!(
            second,
            Err(ConnectError::Refused {
                code: RefusalCode::Unavailable,
                ..
            })
        ),
        "{second:?}"
    );
    first.close().await;
    eventually("the slot to free up", WAIT, || {
        let client = relay.client(USER);
        async move { Dialer::connect(client).await.is_ok() }
    })
    .await;
}
