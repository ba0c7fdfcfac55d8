//! The relay's control plane: state in a store (SQLite by default), live credentials, an
//! admin HTTP API, an audit trail and Prometheus metrics. It plugs into `tunnel-core`'s
//! relay through the traits the relay already has (an [`Authenticator`](tunnel_core::Authenticator)
//! and an [`EventSink`](tunnel_core::EventSink)), so a device application that depends on
//! `tunnel-core` alone never compiles any of this.
//!
//! The entry point is [`ControlPlane::open`] on a state directory; then
//! [`ControlPlane::authenticator`] and [`ControlPlane::auditor`] go into the
//! [`RelayBuilder`](tunnel_core::RelayBuilder), and [`ControlPlane::start`] attaches the
//! built relay (enforcement of revocations and expiries, the audit writer) and
//! [`ControlPlane::serve_api`] serves the admin API on a listener of its own.
//!
//! - [`store`]: the store interface (keys, compare-and-set, leases, watch) and SQLite.
//! - [`model`]: the records and their keys.
//! - [`credentials`]: live credentials, the authenticator, enforcement.
//! - [`audit`]: the JSON-lines audit trail and the device records.
//! - [`api`]: the admin HTTP API.
//! - [`cluster`]: a cluster of relays on etcd (presence, relay-to-relay links).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod cluster;
pub mod credentials;
pub mod model;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnel_core::{AuthThrottle, Relay};

use crate::audit::{AuditWriter, Auditor};
use crate::credentials::{Credentials, StoreAuthenticator};
use crate::store::{SqliteStore, Store, StoreError};

/// The database file in the state directory.
pub const DB_FILE: &str = "state.db";
/// Admin API connections served at once over HTTPS; more are dropped at accept.
pub const MAX_API_CONNECTIONS: usize = 256;
/// Deadline for an admin API client's TLS handshake.
pub const API_TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Failed admin logins a source may make in a row before it is throttled.
const ADMIN_FAILURE_BURST: u32 = 10;
/// Then one more try per this.
const ADMIN_FAILURE_REFILL: Duration = Duration::from_secs(6);

/// The control plane of one relay, on one state directory.
pub struct ControlPlane {
    dir: PathBuf,
    store: Arc<dyn Store>,
    credentials: Arc<Credentials>,
    auditor: Auditor,
    writer: Option<AuditWriter>,
    /// Cancelled by [`ControlPlane::close`]: enforcement and the admin API stop.
    stop: CancellationToken,
    /// The cluster, once [`ControlPlane::join`]ed.
    cluster: Option<cluster::RelayCluster>,
}

impl ControlPlane {
    /// Opens the store in `dir` (creating it) and loads the credentials. Audit lines also
    /// go to stdout when `audit_stdout`. Call within a tokio runtime.
    pub async fn open(dir: &Path, audit_stdout: bool, relay_id: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join(DB_FILE))?);
        Self::open_with_store(dir, store, audit_stdout, relay_id).await
    }

    /// Like [`open`](Self::open), on a store of the caller's (an [`EtcdStore`](store::EtcdStore)
    /// shared by a cluster); `dir` holds the audit files.
    pub async fn open_with_store(
        dir: &Path,
        store: Arc<dyn Store>,
        audit_stdout: bool,
        relay_id: &str,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let credentials = Credentials::load(store.clone()).await?;
        let (auditor, writer) = Auditor::new(dir, audit_stdout, store.clone(), relay_id);
        Ok(Self {
            dir: dir.to_owned(),
            store,
            credentials,
            auditor,
            writer: Some(writer),
            stop: CancellationToken::new(),
            cluster: None,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The live credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The authenticator to build the relay with.
    pub fn authenticator(&self) -> StoreAuthenticator {
        self.credentials.authenticator()
    }

    /// The event sink to build the relay with (the audit trail and device records).
    pub fn auditor(&self) -> Auditor {
        self.auditor.clone()
    }

    /// Attaches the built relay: revocations, grant changes and expiries close its
    /// sessions from now on, and the audit writer runs.
    pub fn start(&mut self, relay: &Relay) {
        self.credentials.enforce(relay.clone(), self.stop.clone());
        if let Some(writer) = self.writer.take() {
            tokio::spawn(writer.run());
        }
    }

    /// Makes the admin API answer for the whole cluster (devices on every relay, the
    /// relays and their health). Call before serving the API.
    pub fn join(&mut self, cluster: cluster::RelayCluster) {
        self.cluster = Some(cluster);
    }

    /// Stops enforcement and the admin API (for an in-process relay that stops; the
    /// audit writer ends once the relay, its last event source, is dropped).
    pub fn close(&self) {
        self.stop.cancel();
    }

    fn api_state(&self, relay: Relay, metrics: Option<PrometheusHandle>) -> api::ApiState {
        api::ApiState {
            relay,
            credentials: self.credentials.clone(),
            store: self.store.clone(),
            auditor: self.auditor.clone(),
            state_dir: self.dir.clone(),
            metrics,
            throttle: Arc::new(AuthThrottle::new(ADMIN_FAILURE_BURST, ADMIN_FAILURE_REFILL)),
            cluster: self.cluster.clone(),
        }
    }

    /// Serves the admin API over plain HTTP on `listener` until `shutdown` completes.
    pub async fn serve_api(
        &self,
        relay: Relay,
        listener: TcpListener,
        metrics: Option<PrometheusHandle>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = api::router(self.api_state(relay, metrics))
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop = self.stop.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = stop.cancelled() => {}
                }
            })
            .await
    }

    /// Serves the admin API over HTTPS with `tls` (for example the relay's own identity,
    /// [`TlsIdentity::server_config_for`](tunnel_core::TlsIdentity::server_config_for)) on
    /// `listener` until `shutdown` completes. At most [`MAX_API_CONNECTIONS`] at once;
    /// each TLS handshake within [`API_TLS_HANDSHAKE`].
    pub async fn serve_api_tls(
        &self,
        relay: Relay,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        metrics: Option<PrometheusHandle>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = api::router(self.api_state(relay, metrics));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_API_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut shutdown => return Ok(()),
                () = self.stop.cancelled() => return Ok(()),
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // over the cap: the connection is dropped
            };
            let app = app
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let handshake = tokio::time::timeout(API_TLS_HANDSHAKE, acceptor.accept(tcp));
                let Ok(Ok(tls)) = handshake.await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    }
}
