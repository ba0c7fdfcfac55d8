//! Every failure has its typed error, and none of them breaks the tunnel: authorization,
//! offline devices, unknown services, refused local targets, unreachable or impostor
//! relays, bad tokens, device-ID ownership and public-port policy.

use std::time::Duration;

use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;

/// Checks that the dialer's session still carries data after an error.
async fn assert_still_works(dialer: &Dialer, device: &str, service: &str) {
    let back = echo_exchange(dial(dialer, device, service).await, b"still alive").await;
    assert_eq!(
        back, b"still alive",
        "the same dialer still reaches {device}/{service}"
    );
}

async fn dial_err(dialer: &Dialer, device: &str, service: &str) -> DialError {
    match within(
        &format!("dial {device}/{service}"),
        WAIT,
        dialer.dial(device, service),
    )
    .await
    {
        Ok(_) => panic!("dial {device}/{service} unexpectedly succeeded"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_without_a_grant_for_the_pair_is_denied() {
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

    // Declared and online, but not granted.
    let e = dial_err(&dialer, "pi", "admin").await;
    assert!(
        matches!(e, DialError::Denied(_)),
        "declared but ungranted service: {e:?}"
    );
    // Grants are checked before presence: an ungranted device is denied, not "offline".
    let e = dial_err(&dialer, "elsewhere", "echo").await;
    assert!(
        matches!(e, DialError::Denied(_)),
        "ungranted, unknown device: {e:?}"
    );
    // A credential with no access grants at all.
    let e = dial_err(&relay.dialer(DEVICE).await, "pi", "echo").await;
    assert!(
        matches!(e, DialError::Denied(_)),
        "device credential has no access grants: {e:?}"
    );

    assert_still_works(&dialer, "pi", "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_to_a_device_that_is_not_connected_reports_device_offline() {
    let relay = spawn_relay(&[
        ("device", may_register("pi")),
        ("user", may_access(&["pi/*", "ghost/*"])),
    ])
    .await;
    let echo = spawn_echo_server().await;
    let dialer = relay.dialer(USER).await;

    let e = dial_err(&dialer, "ghost", "echo").await;
    assert!(
        matches!(e, DialError::DeviceOffline(_)),
        "never connected: {e:?}"
    );

    // A device that was online and went away is offline too.
    let device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    assert_still_works(&dialer, "pi", "echo").await;
    drop(device);
    relay.wait_offline("pi", WAIT).await;
    let e = dial_err(&dialer, "pi", "echo").await;
    assert!(
        matches!(e, DialError::DeviceOffline(_)),
        "gone offline: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_to_a_service_the_device_did_not_declare_reports_unknown_service() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    let e = dial_err(&dialer, "pi", "telnet").await;
    assert!(
        matches!(e, DialError::UnknownService(_)),
        "undeclared service: {e:?}"
    );
    assert_still_works(&dialer, "pi", "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_to_a_declared_but_unforwarded_service_reports_unknown_service() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    // Declares "echo" and "extra", but the forward map only knows "echo".
    let config = DeviceConfig::new(relay.client(DEVICE), "pi")
        .service("echo")
        .service("extra");
    let device = try_start_device(config, targets(&[("echo", echo)]))
        .await
        .expect("device binds");
    device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    relay.wait_online("pi").await;
    let dialer = relay.dialer(USER).await;

    let e = dial_err(&dialer, "pi", "extra").await;
    assert!(
        matches!(e, DialError::UnknownService(_)),
        "declared but not forwarded: {e:?}"
    );
    assert_still_works(&dialer, "pi", "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_to_a_closed_local_port_reports_target_refused_and_the_tunnel_keeps_working() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let closed = closed_port_addr().await;
    let device = relay
        .device(DEVICE, "pi", &[("echo", echo), ("dead", closed)])
        .await;
    let dialer = relay.dialer(USER).await;

    for round in 0..3 {
        let e = dial_err(&dialer, "pi", "dead").await;
        assert!(
            matches!(e, DialError::TargetRefused(_)),
            "round {round}: closed local port: {e:?}"
        );
        assert_still_works(&dialer, "pi", "echo").await;
    }
    assert!(
        matches!(device.listener.state(), ListenerState::Connected { .. }),
        "a refused local connection must not disturb the device session: {:?}",
        device.listener.state()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_with_an_invalid_name_is_rejected_without_harm() {
    let relay = relay_for("pi").await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    for (d, s) in [
        ("pi", "no spaces"),
        ("", "echo"),
        ("pi/../x", "echo"),
        ("pi", &"x".repeat(64)),
    ] {
        let e = dial_err(&dialer, d, s).await;
        assert!(matches!(e, DialError::InvalidName(_)), "{d:?}/{s:?}: {e:?}");
    }
    assert_still_works(&dialer, "pi", "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_address_where_no_relay_listens_reports_unreachable() {
    let relay = spawn_relay(&[("device", may_register("pi"))]).await;
    let nowhere = closed_port_addr().await;
    let client =
        ClientConfig::new(nowhere.to_string(), relay.pin).token(relay.tokens[DEVICE].clone());

    let e = within("Dialer::connect", WAIT, Dialer::connect(client.clone()))
        .await
        .expect_err("no relay there");
    assert!(
        matches!(e, ConnectError::Unreachable { .. }),
        "dialer: {e:?}"
    );
    assert!(!e.is_permanent(), "an unreachable relay is worth retrying");

    // A device keeps retrying in the background instead of failing.
    let config = DeviceConfig::new(client, "pi").service("echo");
    let listener = within("Listener::bind", WAIT, Listener::bind(config))
        .await
        .expect("bind to an unreachable relay returns a retrying listener");
    match listener.state() {
        ListenerState::Reconnecting { last_error } => {
            assert!(
                last_error.contains("unreachable"),
                "last error names the cause: {last_error}"
            )
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    listener.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_key_does_not_match_the_pin_is_a_bad_certificate() {
    let relay = relay_for("pi").await;
    let impostor_pin = TlsIdentity::generate_self_signed(&["localhost"])
        .unwrap()
        .pin()
        .unwrap();
    assert_ne!(impostor_pin, relay.pin);
    let client = |i: usize| {
        ClientConfig::new(relay.addr.to_string(), impostor_pin).token(relay.tokens[i].clone())
    };

    let e = within("Dialer::connect", WAIT, Dialer::connect(client(USER)))
        .await
        .expect_err("pin mismatch");
    assert!(
        matches!(e, ConnectError::BadCertificate(_)),
        "dialer: {e:?}"
    );
    assert!(e.is_permanent());

    let config = DeviceConfig::new(client(DEVICE), "pi").service("echo");
    let e = within("Listener::bind", WAIT, Listener::bind(config))
        .await
        .expect_err("pin mismatch");
    assert!(
        matches!(e, ConnectError::BadCertificate(_)),
        "listener: {e:?}"
    );
    assert!(relay.relay.online_devices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_missing_token_is_refused_as_auth_failed() {
    let relay = relay_for("pi").await;
    let wrong =
        ClientConfig::new(relay.addr.to_string(), relay.pin).token(Token::generate().unwrap());
    let none = ClientConfig::new(relay.addr.to_string(), relay.pin);

    for (what, client) in [("unknown token", wrong.clone()), ("no token", none)] {
        let e = within("Dialer::connect", WAIT, Dialer::connect(client))
            .await
            .expect_err(what);
        assert!(
            matches!(
                e,
                ConnectError::Refused {
                    code: RefusalCode::AuthFailed,
                    ..
                }
            ),
            "dialer with {what}: {e:?}"
        );
    }
    let config = DeviceConfig::new(wrong, "pi").service("echo");
    let e = within("Listener::bind", WAIT, Listener::bind(config))
        .await
        .expect_err("unknown token");
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                code: RefusalCode::AuthFailed,
                ..
            }
        ),
        "listener: {e:?}"
    );
    assert!(e.is_permanent());
    assert!(relay.relay.online_devices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_register_another_devices_id() {
    let relay = spawn_relay(&[
        ("pi-1", may_register("pi-1")),
        ("pi-2", may_register("pi-2")),
    ])
    .await;
    let echo = spawn_echo_server().await;
    let _pi_2 = relay.device(1, "pi-2", &[("echo", echo)]).await;

    // pi-1's token tries pi-2's ID (online) and an ID nobody holds.
    for id in ["pi-2", "pi-3"] {
        let config = DeviceConfig::new(relay.client(0), id).service("echo");
        let e = within("Listener::bind", WAIT, Listener::bind(config))
            .await
            .expect_err("foreign device id");
        assert!(
            matches!(
                e,
                ConnectError::Refused {
                    code: RefusalCode::DeviceIdDenied,
                    ..
                }
            ),
            "{id}: {e:?}"
        );
        assert!(e.is_permanent());
    }
    assert_eq!(
        relay.relay.online_devices(),
        ["pi-2"],
        "the real pi-2 is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_held_by_another_credential_is_refused_as_taken() {
    let shared = || may_register("shared");
    let relay = spawn_relay(&[
        ("alice", shared()),
        ("bob", shared()),
        ("user", may_access(&["shared/*"])),
    ])
    .await;
    let alice_svc = spawn_greeting_server(b"alice").await;
    let bob_svc = spawn_greeting_server(b"bob").await;
    let alice = relay.device(0, "shared", &[("who", alice_svc)]).await;
    let dialer = relay.dialer(2).await;
    assert_eq!(greeting(&dialer, "shared", "who").await, b"alice");

    let config = DeviceConfig::new(relay.client(1), "shared").service("who");
    match within(
        "Listener::bind",
        WAIT,
        try_start_device(config, targets(&[("who", bob_svc)])),
    )
    .await
    {
        Err(ConnectError::Refused {
            code: RefusalCode::DeviceIdTaken,
            ..
        }) => {}
        Err(e) => panic!("expected DeviceIdTaken, got {e:?}"),
        // Taken is not permanent (the holder may leave), so a listener that keeps retrying
        // is also acceptable, as long as it reports why and does not take the ID.
        Ok(bob) => {
            match bob.listener.state() {
                ListenerState::Reconnecting { last_error } => {
                    assert!(
                        last_error.contains("DeviceIdTaken"),
                        "last error names the refusal: {last_error}"
                    )
                }
                other => panic!("bob must not be connected while alice holds the ID: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !matches!(bob.listener.state(), ListenerState::Connected { .. }),
                "bob got in"
            );
            assert_eq!(
                greeting(&dialer, "shared", "who").await,
                b"alice",
                "alice still serves the ID"
            );
            assert!(
                matches!(alice.listener.state(), ListenerState::Connected { .. }),
                "alice undisturbed"
            );

            // Once alice leaves, the ID stays hers (a blip must not hand it to another
            // credential); only an operator's release lets bob's retries take it.
            drop(alice);
            relay.wait_offline("shared", WAIT).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                !matches!(bob.listener.state(), ListenerState::Connected { .. }),
                "bob took the ID while its owner was offline"
            );
            assert!(relay.relay.release_device("shared"), "the ID had an owner");
            within(
                "bob connects once alice left",
                WAIT,
                bob.listener.wait_connected(WAIT),
            )
            .await
            .expect("bob connects");
            relay.wait_online("shared").await;
            eventually("the ID now reaches bob's service", WAIT, || {
                let dialer = dialer.clone();
                async move {
                    match dialer.dial("shared", "who").await {
                        Ok(mut s) => read_banner(&mut s).await == b"bob",
                        Err(_) => false,
                    }
                }
            })
            .await;
            return;
        }
    }
    assert_eq!(
        greeting(&dialer, "shared", "who").await,
        b"alice",
        "alice still serves the ID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_credential_reconnecting_replaces_its_old_session() {
    let relay = spawn_relay(&[("pi", may_register("pi")), ("user", may_access(&["pi/*"]))]).await;
    let first_svc = spawn_greeting_server(b"first").await;
    let second_svc = spawn_greeting_server(b"second").await;
    let first = relay.device(0, "pi", &[("who", first_svc)]).await;
    let dialer = relay.dialer(1).await;
    assert_eq!(greeting(&dialer, "pi", "who").await, b"first");

    let mut first_state = first.listener.watch_state();
    let second = start_device(relay.client(0), "pi", &[("who", second_svc)]).await;
    within(
        "the first listener to leave Connected",
        WAIT,
        first_state.wait_for(|s| !matches!(s, ListenerState::Connected { .. })),
    )
    .await
    .expect("state channel open");

    // The first one would reconnect and replace the second in turn; stop it.
    first.listener.close();
    drop(first);
    within(
        "the second listener to be connected",
        WAIT,
        second.listener.wait_connected(WAIT),
    )
    .await
    .expect("second connects");
    relay.wait_online("pi").await;
    eventually(
        "the device ID reaches the second listener's service",
        WAIT,
        || {
            let dialer = dialer.clone();
            async move {
                match dialer.dial("pi", "who").await {
                    Ok(mut s) => read_banner(&mut s).await == b"second",
                    Err(_) => false,
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_is_refused_when_the_relay_has_no_port_range() {
    // The credential may publish, but the relay publishes nothing.
    let relay = spawn_relay(&[("web", may_register("web-dev").public(true))]).await;
    let echo = spawn_echo_server().await;
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service("web")
        .public("web", 0);
    expect_public_port_denied(try_start_device(config, targets(&[("web", echo)])).await);
    assert!(
        relay.relay.online_devices().is_empty(),
        "the device must not be registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_is_refused_when_the_credential_may_not_publish() {
    let relay = spawn_relay_with(&[("web", may_register("web-dev"))], allow_public_ports).await;
    let echo = spawn_echo_server().await;
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service("web")
        .public("web", 0);
    expect_public_port_denied(try_start_device(config, targets(&[("web", echo)])).await);
    assert!(
        relay.relay.online_devices().is_empty(),
        "the device must not be registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_outside_the_relay_range_is_refused() {
    let relay = spawn_relay_with(
        &[("web", may_register("web-dev").public(true))],
        allow_public_ports,
    )
    .await;
    let echo = spawn_echo_server().await;
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service("web")
        .public("web", 39999);
    expect_public_port_denied(try_start_device(config, targets(&[("web", echo)])).await);
}

/// `Listener::bind` must fail at once with `PublicPortDenied` (its documentation: "Fails at
/// once on errors that retrying cannot fix (… forbidden device ID or public port …)").
fn expect_public_port_denied(result: Result<TestDevice, ConnectError>) {
    match result {
        Err(ConnectError::Refused {
            code: RefusalCode::PublicPortDenied,
            ..
        }) => {}
        Err(e) => panic!("expected Refused {{ code: PublicPortDenied }}, got {e:?}"),
        Ok(device) => panic!(
            "Listener::bind returned Ok for a forbidden public port; listener state: {:?}",
            device.listener.state()
        ),
    }
}

/// Opens `device/service` on a greeting service and returns its banner.
async fn greeting(dialer: &Dialer, device: &str, service: &str) -> Vec<u8> {
    let mut s = dial(dialer, device, service).await;
    read_banner(&mut s).await
}

/// Reads a short banner (whatever arrives first, up to 64 bytes), bounded.
async fn read_banner(s: &mut Stream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}
