//! Devices (a listener plus the `forward` task) and dialers, every step bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tunnel_core::{
    ClientConfig, ConnectError, DeviceConfig, Dialer, Listener, ListenerState, Stream, forward,
};

use crate::{TestRelay, WAIT, within};

/// A device listener and the `forward` task serving it. Dropping it closes the listener.
pub struct TestDevice {
    /// The device's listener (its state, its public ports).
    pub listener: Arc<Listener>,
    /// The task forwarding the listener's streams to the local services.
    pub forward: JoinHandle<()>,
}

impl TestDevice {
    /// The public ports the relay bound for this device, as last reported.
    pub fn public_ports(&self) -> Vec<(String, u16)> {
        match self.listener.state() {
            ListenerState::Connected { public, .. } => public,
            other => panic!("device not connected: {other:?}"),
        }
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.listener.close();
    }
}

/// Binds a listener for `config` and forwards its streams to `targets`
/// (service name → local address). Returns the bind error as is.
pub async fn try_start_device(
    config: DeviceConfig,
    targets: HashMap<String, String>,
) -> Result<TestDevice, ConnectError> {
    let listener = within("Listener::bind", WAIT, Listener::bind(config)).await?;
    let listener = Arc::new(listener);
    let forward = tokio::spawn({
        let listener = listener.clone();
        async move { forward(&listener, targets).await }
    });
    Ok(TestDevice { listener, forward })
}

/// Starts device `id` declaring and forwarding `services`; waits until it is connected.
pub async fn start_device(
    client: ClientConfig,
    id: &str,
    services: &[(&str, SocketAddr)],
) -> TestDevice {
    let config = services
        .iter()
        .fold(DeviceConfig::new(client, id), |c, (s, _)| c.service(*s));
    let device = try_start_device(config, targets(services))
        .await
        .expect("device bind");
    device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    device
}

/// Starts device `web-dev` with credential 0, publishing `service` (forwarded to `target`)
/// on any free relay port; waits until it is online. Returns the device and its public
/// `(service, port)` list.
pub async fn start_public_device(
    relay: &TestRelay,
    service: &str,
    target: SocketAddr,
) -> (TestDevice, Vec<(String, u16)>) {
    let config = DeviceConfig::new(relay.client(0), "web-dev")
        .service(service)
        .public(service, 0);
    let device = try_start_device(config, targets(&[(service, target)]))
        .await
        .expect("public device binds");
    let public = device
        .listener
        .wait_connected(WAIT)
        .await
        .expect("device connects");
    relay.wait_online("web-dev").await;
    (device, public)
}

/// A TCP connection to a relay's public `port` on loopback, within [`WAIT`].
pub async fn connect_public(port: u16) -> tokio::net::TcpStream {
    within(
        "connect to the public port",
        WAIT,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("public port accepts")
}

/// A forward map from `(service, address)` pairs.
pub fn targets(services: &[(&str, SocketAddr)]) -> HashMap<String, String> {
    services
        .iter()
        .map(|(s, a)| ((*s).to_owned(), a.to_string()))
        .collect()
}

/// Connects a dialer (bounded).
pub async fn connect_dialer(client: ClientConfig) -> Dialer {
    within("Dialer::connect", WAIT, Dialer::connect(client))
        .await
        .expect("dialer connects")
}

/// Opens a stream (bounded), panicking on error.
pub async fn dial(dialer: &Dialer, device: &str, service: &str) -> Stream {
    within(
        &format!("dial {device}/{service}"),
        WAIT,
        dialer.dial(device, service),
    )
    .await
    .unwrap_or_else(|e| panic!("dial {device}/{service}: {e}"))
}
