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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod credentials;
pub mod model;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tunnel_core::{AuthThrottle, Relay};

use crate::audit::{AuditWriter, Auditor};
use crate::credentials::{Credentials, StoreAuthenticator};
use crate::store::{SqliteStore, Store, StoreError};

/// The database file in the state directory.
pub const DB_FILE: &str = "state.db";
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
}

impl ControlPlane {
    /// Opens the store in `dir` (creating it) and loads the credentials. Audit lines also
    /// go to stdout when `audit_stdout`. Call within a tokio runtime.
    pub async fn open(dir: &Path, audit_stdout: bool, relay_id: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join(DB_FILE))?);
        let credentials = Credentials::load(store.clone()).await?;
        let (auditor, writer) = Auditor::new(dir, audit_stdout, store.clone(), relay_id);
        Ok(Self {
            dir: dir.to_owned(),
            store,
            credentials,
            auditor,
            writer: Some(writer),
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
        self.credentials.enforce(relay.clone());
        if let Some(writer) = self.writer.take() {
            tokio::spawn(writer.run());
        }
    }

    /// Serves the admin API on `listener` until `shutdown` completes.
    pub async fn serve_api(
        &self,
        relay: Relay,
        listener: TcpListener,
        metrics: Option<PrometheusHandle>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = api::ApiState {
            relay,
            credentials: self.credentials.clone(),
            store: self.store.clone(),
            auditor: self.auditor.clone(),
            state_dir: self.dir.clone(),
            metrics,
            throttle: Arc::new(AuthThrottle::new(ADMIN_FAILURE_BURST, ADMIN_FAILURE_REFILL)),
        };
        let app = api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
