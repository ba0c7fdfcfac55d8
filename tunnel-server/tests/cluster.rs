//! The cluster against a real etcd (one member on loopback, started here): claims race
//! with one winner, a stream crosses exactly one
//! relay-to-relay hop, a device ID moves between relays with its credential, and only a
//! relay peer may forward. The fault scenarios (killed relays, lost quorum, partitions,
//! NAT) run with real processes in `tests/cluster/run.sh`.
//!
//! Needs `etcd` on the PATH (Debian's `etcd-server`; `scripts/test.sh` installs it): the
//! tests fail, loudly, without it rather than pass without running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tunnel_core::{
    ClaimRefused, ClientConfig, Cluster, DeviceClaim, DeviceConfig, DialError, Dialer, FirstOf,
    Grants, Identity, ListenerState, Pattern, Relay, TlsIdentity, Token, TokenAuthenticator,
};
use tunnel_server::cluster::ca::{ClusterCa, PeerAuthenticator};
use tunnel_server::cluster::{ClusterConfig, RelayCluster};
use tunnel_server::store::{EtcdStore, Store};
use tunnel_testkit::{
    Etcd, WAIT, echo_exchange, eventually, spawn_echo_server, start_device, within,
};

async fn etcd_store(etcd: &Etcd, namespace: &str) -> Arc<dyn Store> {
    let url = std::slice::from_ref(&etcd.url);
    Arc::new(EtcdStore::connect(url, namespace).await.unwrap())
}

/// One relay of a test cluster, serving on loopback.
struct Member {
    relay: Relay,
    cluster: RelayCluster,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Credentials every member knows: `dev` registers `pi`, `other` also registers `pi`
/// (another principal), `alice` opens `pi/*`.
struct Creds {
    dev: Token,
    other: Token,
    alice: Token,
    auth: Arc<TokenAuthenticator>,
}

fn creds() -> Creds {
    let (dev, other, alice) = (
        Token::generate().unwrap(),
        Token::generate().unwrap(),
        Token::generate().unwrap(),
    );
    let register = Grants::new().register(Pattern::new("pi").unwrap());
    let mut auth = TokenAuthenticator::new();
    auth.insert(
        dev.hash(),
        Identity::new("dev", register.clone()).with_principal("token:dev"),
    )
    .unwrap();
    auth.insert(
        other.hash(),
        Identity::new("other", register).with_principal("token:other"),
    )
    .unwrap();
    let access = Grants::new().access_str("pi/*").unwrap();
    auth.insert(
        alice.hash(),
        Identity::new("alice", access).with_principal("token:alice"),
    )
    .unwrap();
    Creds {
        dev,
        other,
        alice,
        auth: Arc::new(auth),
    }
}

/// Shares one authenticator between relays.
struct Shared(Arc<TokenAuthenticator>);

impl tunnel_core::Authenticator for Shared {
    fn authenticate<'a>(
        &'a self,
        request: &'a tunnel_core::AuthRequest,
    ) -> tunnel_core::BoxFuture<'a, Result<Identity, tunnel_core::AuthRejected>> {
        self.0.authenticate(request)
    }
    fn resolve<'a>(&'a self, principal: &'a str) -> tunnel_core::BoxFuture<'a, Option<Identity>> {
        self.0.resolve(principal)
    }
}

async fn member(
    id: &str,
    etcd: &Etcd,
    namespace: &str,
    ca: &ClusterCa,
    public: &TlsIdentity,
    creds: &Creds,
) -> Member {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ClusterConfig {
        relay_id: id.into(),
        advertise: addr.to_string(),
        pin: public.pin().unwrap(),
        peer_identity: ca.issue(id).unwrap(),
    };
    let cluster = RelayCluster::new(config, etcd_store(etcd, namespace).await);
    let auth = FirstOf::new(vec![
        Box::new(PeerAuthenticator::new(ca).unwrap()),
        Box::new(Shared(creds.auth.clone())),
    ]);
    let relay = Relay::builder(public.clone(), auth)
        .client_roots(ca.roots_with(None).unwrap())
        .cluster(cluster.hook())
        .heartbeat_interval(Duration::from_millis(500))
        .grace_period(Duration::from_millis(200))
        .build()
        .unwrap();
    cluster.start(relay.clone()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = relay.clone();
    tokio::spawn(async move {
        let _ = serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Member {
        relay,
        cluster,
        addr,
        _stop: stop,
    }
}

async fn two_relays(name: &str) -> (Etcd, Member, Member, Creds, TlsIdentity, ClusterCa) {
    let etcd = Etcd::start(name).await;
    let ca = ClusterCa::generate().unwrap();
    let public = TlsIdentity::generate_self_signed(&["localhost"]).unwrap();
    let creds = creds();
    let ns = format!("{name}/");
    let r1 = member("r1", &etcd, &ns, &ca, &public, &creds).await;
    let r2 = member("r2", &etcd, &ns, &ca, &public, &creds).await;
    (etcd, r1, r2, creds, public, ca)
}

fn client(m: &Member, public: &TlsIdentity, token: &Token) -> ClientConfig {
    ClientConfig::new(m.addr.to_string(), public.pin().unwrap()).token(token.clone())
}

#[tokio::test]
async fn a_stream_to_a_device_on_another_relay_crosses_one_hop() {
    let (_etcd, r1, r2, creds, public, _ca) = two_relays("hop").await;
    let echo = spawn_echo_server().await;
    let _device = start_device(client(&r1, &public, &creds.dev), "pi", &[("echo", echo)]).await;
    let dialer = Dialer::connect(client(&r2, &public, &creds.alice))
        .await
        .unwrap();
    let stream = within("cross-relay dial", WAIT, dialer.dial("pi", "echo"))
        .await
        .expect("the device on r1 is reached through r2");
    // Both relays list the stream, each naming the other relay.
    let on_r2 = r2.relay.streams();
    let on_r1 = r1.relay.streams();
    assert_eq!(on_r2.len(), 1);
    assert_eq!(on_r2[0].relay.as_deref(), Some("r1"));
    assert_eq!(on_r1[0].relay.as_deref(), Some("r2"));
    assert_eq!(
        on_r1[0].caller, "alice",
        "the device sees the caller, not the relay"
    );
    let data = vec![7u8; 256 * 1024];
    assert_eq!(echo_exchange(stream, &data).await, data);
    // Grants are the caller's own, checked by the relay that holds the device too.
    let err = dialer.dial("pi", "nope").await.unwrap_err();
    assert!(matches!(err, DialError::UnknownService(_)), "{err}");
    let err = dialer.dial("other-device", "echo").await.unwrap_err();
    assert!(matches!(err, DialError::Denied(_)), "{err}");
    // An offline device is offline everywhere.
    drop(_device);
    eventually("the device is gone from the cluster", WAIT, || async {
        r2.cluster.presence("pi").await.unwrap().is_none()
    })
    .await;
    let err = dialer.dial("pi", "echo").await.unwrap_err();
    assert!(matches!(err, DialError::DeviceOffline(_)), "{err}");
}

#[tokio::test]
async fn only_a_relay_peer_may_forward_and_a_forwarded_stream_never_hops_again() {
    let (_etcd, r1, r2, creds, public, ca) = two_relays("forward").await;
    let echo = spawn_echo_server().await;
    let _device = start_device(client(&r1, &public, &creds.dev), "pi", &[("echo", echo)]).await;
    let alice = Identity::new("alice", Grants::new()).with_principal("token:alice");
    // An access client that writes a relay's forward header is refused.
    let dialer = Dialer::connect(client(&r1, &public, &creds.alice))
        .await
        .unwrap();
    let err = dialer
        .forward("pi", "echo", &alice, "r9")
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Protocol(_)), "{err}");
    // A peer (r1's cluster certificate) forwarding to r2, which does not hold `pi`, gets
    // `offline`: r2 does not send it on to r1.
    let peer = ClientConfig::new(r2.addr.to_string(), public.pin().unwrap())
        .client_cert(ca.issue("r1").unwrap());
    let link = Dialer::connect(peer).await.unwrap();
    let err = link.forward("pi", "echo", &alice, "r1").await.unwrap_err();
    assert!(matches!(err, DialError::DeviceOffline(_)), "{err}");
    // On r1, which holds it, the same forward works, with alice's own grants...
    let peer = ClientConfig::new(r1.addr.to_string(), public.pin().unwrap())
        .client_cert(ca.issue("r2").unwrap());
    let link = Dialer::connect(peer).await.unwrap();
    let stream = link.forward("pi", "echo", &alice, "r2").await.unwrap();
    assert_eq!(echo_exchange(stream, b"hop").await, b"hop");
    // ...and a principal nobody knows is denied.
    let ghost = Identity::new("ghost", Grants::new()).with_principal("token:ghost");
    let err = link.forward("pi", "echo", &ghost, "r2").await.unwrap_err();
    assert!(matches!(err, DialError::Denied(_)), "{err}");
    // A certificate from another CA is no peer: it authenticates as nobody.
    let stranger = ClusterCa::generate().unwrap().issue("r2").unwrap();
    let peer = ClientConfig::new(r1.addr.to_string(), public.pin().unwrap()).client_cert(stranger);
    assert!(Dialer::connect(peer).await.is_err());
}

#[tokio::test]
async fn claims_for_one_device_id_race_to_exactly_one_winner() {
    let (_etcd, r1, r2, _creds, _public, _ca) = two_relays("race").await;
    for round in 0..20u64 {
        let device = format!("race-{round}");
        let a = DeviceClaim {
            device: device.clone(),
            principal: "token:a".into(),
            nonce: round,
        };
        let b = DeviceClaim {
            device: device.clone(),
            principal: "token:b".into(),
            nonce: round,
        };
        let (ra, rb) = tokio::join!(r1.cluster.claim(&a), r2.cluster.claim(&b));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(winners, 1, "round {round}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { &rb } else { &ra };
        assert!(matches!(loser, Err(ClaimRefused::Taken(_))), "{loser:?}");
        let holder = r1.cluster.presence(&device).await.unwrap().unwrap();
        let (relay, principal) = if ra.is_ok() {
            ("r1", "token:a")
        } else {
            ("r2", "token:b")
        };
        assert_eq!(
            (holder.relay.as_str(), holder.principal.as_str()),
            (relay, principal)
        );
    }
}

#[tokio::test]
async fn a_device_that_reconnects_to_another_relay_takes_its_id_along() {
    let (_etcd, r1, r2, creds, public, _ca) = two_relays("takeover").await;
    let echo = spawn_echo_server().await;
    let _first = start_device(client(&r1, &public, &creds.dev), "pi", &[("echo", echo)]).await;
    assert_eq!(r1.relay.online_devices(), ["pi"]);
    // The same credential on r2 (a device whose relay seems gone): r2 takes the ID, and
    // r1 closes its session on seeing the presence change.
    let config = DeviceConfig::new(client(&r2, &public, &creds.dev), "pi").service("echo");
    let second = tunnel_core::Listener::bind(config)
        .await
        .expect("same credential takes over");
    drop(_first); // the first agent would reconnect and flap; stop it
    eventually("r1 lets go of pi", WAIT, || async {
        r1.relay.online_devices().is_empty()
    })
    .await;
    assert_eq!(r2.relay.online_devices(), ["pi"]);
    assert_eq!(
        r1.cluster.presence("pi").await.unwrap().unwrap().relay,
        "r2"
    );
    // Another credential is refused while r2 holds it (and keeps retrying).
    let config = DeviceConfig::new(client(&r1, &public, &creds.other), "pi").service("echo");
    let third = tunnel_core::Listener::bind(config).await.unwrap();
    match third.state() {
        ListenerState::Reconnecting { last_error } => {
            assert!(
                last_error.contains("in use by another credential"),
                "{last_error}"
            )
        }
        other => panic!("another credential registered pi: {other:?}"),
    }
    assert_eq!(r2.relay.online_devices(), ["pi"]);
    drop((second, third));
}

#[tokio::test]
async fn two_live_agents_sharing_an_id_across_relays_stop_taking_it_from_each_other() {
    let (_etcd, r1, r2, creds, public, _ca) = two_relays("flap").await;
    let bind = |m: &Member| {
        let config = DeviceConfig::new(client(m, &public, &creds.dev), "pi").service("echo");
        tunnel_core::Listener::bind(config)
    };
    let a = bind(&r1).await.unwrap();
    let b = bind(&r2).await.unwrap();
    // They take the ID from each other a few times (each reconnects after its backoff),
    // then the holder keeps it: the presence stops changing.
    let holder = || async { r1.cluster.presence("pi").await.unwrap().map(|p| p.relay) };
    let mut stable_since = tokio::time::Instant::now();
    let mut last = holder().await;
    let mut changes = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = holder().await;
        if now != last {
            changes += 1;
            stable_since = tokio::time::Instant::now();
            last = now;
        }
        if stable_since.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(
        stable_since.elapsed() > Duration::from_secs(5),
        "still flapping after {changes} changes"
    );
    assert!(changes <= 4, "{changes} takeovers");
    let refused = [&a, &b]
        .iter()
        .filter(|l| matches!(l.state(), ListenerState::Reconnecting { last_error } if last_error.contains("taken over too often")))
        .count();
    assert_eq!(refused, 1, "one agent is told why it is refused");
}

#[tokio::test]
async fn a_device_given_every_relay_moves_when_its_relay_drains() {
    let (_etcd, r1, r2, creds, public, _ca) = two_relays("drain").await;
    let echo = spawn_echo_server().await;
    let both = ClientConfig::new(format!("{},{}", r1.addr, r2.addr), public.pin().unwrap())
        .token(creds.dev.clone());
    let device = start_device(both, "pi", &[("echo", echo)]).await;
    // It started on one of the two (a random one); that relay shuts down.
    let ListenerState::Connected { relay: first, .. } = device.listener.state() else {
        panic!("not connected");
    };
    let (leaving, staying) = if first == r1.addr.to_string() {
        (r1, r2)
    } else {
        (r2, r1)
    };
    let Member {
        relay: leaving_relay,
        cluster: leaving_cluster,
        _stop: stop,
        ..
    } = leaving;
    drop(stop); // graceful shutdown: the idle device is sent away at once
    eventually("the device registers with the other relay", WAIT, || async {
        matches!(device.listener.state(), ListenerState::Connected { relay, .. } if relay == staying.addr.to_string())
    })
    .await;
    leaving_cluster.leave().await;
    assert!(leaving_relay.online_devices().is_empty());
    let dialer = Dialer::connect(client(&staying, &public, &creds.alice))
        .await
        .unwrap();
    let stream = within("dial after the move", WAIT, dialer.dial("pi", "echo"))
        .await
        .unwrap();
    assert_eq!(echo_exchange(stream, b"moved").await, b"moved");
    let holder = staying.cluster.presence("pi").await.unwrap().unwrap();
    assert_eq!(holder.relay, staying.cluster.relay_id());
}
