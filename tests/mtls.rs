//! Mutual TLS: the client certificate names the device; no token needed.

use std::time::Duration;

use tunnel_core::{
    CertAuthenticator, ClientConfig, ConnectError, DeviceConfig, FirstOf, Grants, Identity,
    Listener, Pattern, RefusalCode, Relay, TlsIdentity, Token, TokenAuthenticator,
};

const WAIT: Duration = Duration::from_secs(20);

/// A relay trusting `ca` for client certificates, with certificates tried before tokens.
async fn relay_trusting(
    ca: &TlsIdentity,
    tokens: TokenAuthenticator,
) -> (String, tunnel_core::SpkiPin) {
    let dir = std::env::temp_dir().join(format!(
        "tunnel-mtls-{}-{}",
        std::process::id(),
        ca.pin().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let auth = FirstOf::new(vec![Box::new(CertAuthenticator::new()), Box::new(tokens)]);
    let relay = Relay::builder(
        TlsIdentity::generate_self_signed(&["localhost"]).unwrap(),
        auth,
    )
    .client_ca_file(&ca_file)
    .unwrap()
    .build()
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let pin = relay.pin();
    tokio::spawn(async move { relay.serve(tcp, std::future::pending()).await });
    (addr, pin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_registers_the_device_it_names_and_no_other() {
    // A self-signed device certificate doubles as its own CA here.
    let device_cert = TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
    let (addr, pin) = relay_trusting(&device_cert, TokenAuthenticator::new()).await;
    let client = ClientConfig::new(addr, pin).client_cert(device_cert);

    let listener = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(client.clone(), "pi-7").service("ssh")),
    )
    .await
    .unwrap()
    .expect("the certificate names pi-7");
    listener.wait_connected(WAIT).await.unwrap();

    let other = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(client, "pi-8").service("ssh")),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            other,
            Err(ConnectError::Refused {
                code: RefusalCode::DeviceIdDenied,
                ..
            })
        ),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_issuer_is_refused_and_tokens_still_work() {
    let trusted = TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
    let token = Token::generate().unwrap();
    let mut tokens = TokenAuthenticator::new();
    tokens
        .insert(
            token.hash(),
            Identity::new("tok", Grants::new().register(Pattern::new("pi-9").unwrap())),
        )
        .unwrap();
    let (addr, pin) = relay_trusting(&trusted, tokens).await;

    let rogue = TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
    let client = ClientConfig::new(addr.clone(), pin).client_cert(rogue);
    let result = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(client, "pi-7").service("ssh")),
    )
    .await
    .unwrap();
    assert!(
        matches!(result, Err(ConnectError::CertificateRejected(_))),
        "a certificate the relay does not trust must not register: {result:?}"
    );

    let client = ClientConfig::new(addr, pin).token(token);
    let listener = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(client, "pi-9").service("ssh")),
    )
    .await
    .unwrap()
    .expect("token fallback");
    listener.wait_connected(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_named_like_a_certificate_identity_cannot_take_its_device_id() {
    // Certificate identities and token names live in separate namespaces: a token
    // credential *named* `pi-7` is not the certificate holder `pi-7`.
    let device_cert = TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
    let token = Token::generate().unwrap();
    let mut tokens = TokenAuthenticator::new();
    tokens
        .insert(
            token.hash(),
            Identity::new(
                "pi-7",
                Grants::new().register(Pattern::new("pi-7").unwrap()),
            ),
        )
        .unwrap();
    let (addr, pin) = relay_trusting(&device_cert, tokens).await;
    let real = ClientConfig::new(addr.clone(), pin).client_cert(device_cert);
    let listener = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(real, "pi-7").service("ssh")),
    )
    .await
    .unwrap()
    .expect("the certificate registers pi-7");
    listener.wait_connected(WAIT).await.unwrap();

    let named_alike = ClientConfig::new(addr, pin).token(token);
    let result = tokio::time::timeout(
        WAIT,
        Listener::bind(DeviceConfig::new(named_alike, "pi-7").service("ssh")),
    )
    .await
    .unwrap();
    match result {
        Err(ConnectError::Refused {
            code: RefusalCode::DeviceIdTaken,
            ..
        }) => {}
        Ok(l) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                !matches!(l.state(), tunnel_core::ListenerState::Connected { .. }),
                "the token named pi-7 took the certificate's device"
            );
        }
        Err(e) => panic!("expected device id taken, got {e:?}"),
    }
    assert!(
        matches!(
            listener.state(),
            tunnel_core::ListenerState::Connected { .. }
        ),
        "the certificate holder keeps its session"
    );
}
