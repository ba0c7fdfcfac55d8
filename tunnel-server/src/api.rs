//! The admin HTTP API, on its own listener (never the tunnel port): JSON under `/api/v1`,
//! bearer admin tokens (hashed at rest, compared in constant time, failures throttled per
//! source like the tunnel's logins), errors as `{"error": {"code", "message"}}`, a body
//! limit, a timeout on every request, and an OpenAPI document generated from this file.
//!
//! The router is assembled in [`router`], top to bottom; handlers are thin and call
//! [`Credentials`], the store and the [`Relay`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tunnel_core::{AuthThrottle, Relay, Token};
use utoipa::OpenApi;

use crate::audit::{self, Auditor};
use crate::cluster::{Health, RelayCluster};
use crate::credentials::{CredError, CredentialPatch, Credentials, NewCredential};
use crate::model::{
    ADMIN, AdminRecord, CredentialView, DEVICE, DeviceRecord, PresenceRecord, RelayRecord, fmt_time,
};
use crate::store::{Expect, Store, StoreError};

/// Largest request body: credentials and labels are small.
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline of every request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page.
const MAX_PAGE: usize = 1000;
/// Default page.
const DEFAULT_PAGE: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The relay whose sessions the API lists and cuts.
    pub relay: Relay,
    /// The live credentials.
    pub credentials: Arc<Credentials>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The audit trail.
    pub auditor: Auditor,
    /// Where the audit files are.
    pub state_dir: PathBuf,
    /// Prometheus text for `/metrics`, if a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Failed admin logins per source.
    pub throttle: Arc<AuthThrottle>,
    /// The cluster this relay belongs to, if any: the API then answers for every relay.
    pub cluster: Option<RelayCluster>,
}

/// An API error: a status, a stable code and a message for humans.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<CredError> for ApiError {
    fn from(e: CredError) -> Self {
        match e {
            CredError::NotFound(_) => Self::not_found(e.to_string()),
            CredError::Exists(_) => Self::new(StatusCode::CONFLICT, "exists", e.to_string()),
            CredError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            CredError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            _ => Self::new(StatusCode::SERVICE_UNAVAILABLE, "store", e.to_string()),
        }
    }
}

/// A JSON body whose rejections are API errors: 413 too large, 400 malformed, 422 wrong
/// fields or types, 415 not JSON.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                e.body_text(),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                e.body_text(),
            )),
            Err(JsonRejection::MissingJsonContentType(e)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not_json",
                e.body_text(),
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body exceeds {MAX_BODY} bytes"),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.body_text(),
            )),
        }
    }
}

/// The admin who made the request, after checking its bearer token.
pub struct Admin {
    name: String,
    remote: SocketAddr,
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            )
        };
        if state.throttle.is_blocked(remote.ip()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many failed admin logins from this address; retry later",
            ));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(Token::new);
        let hash = token.map(|t| t.hash());
        let admins = state.store.list(ADMIN, None, MAX_PAGE).await?;
        // Compare against every admin, whatever matches, in constant time per entry.
        let mut found = None;
        for (_, v) in admins {
            let Ok(r) = serde_json::from_slice::<AdminRecord>(&v.value) else {
                continue;
            };
            if hash
                .as_ref()
                .is_some_and(|h| r.token_hash.parse().is_ok_and(|stored| h.ct_eq(&stored)))
                && found.is_none()
            {
                found = Some(r.name);
            }
        }
        match found {
            Some(name) => Ok(Self { name, remote }),
            None => {
                state.throttle.failed(remote.ip());
                state.auditor.admin_denied(&remote.to_string());
                Err(unauthorized())
            }
        }
    }
}

impl Admin {
    fn did(&self, state: &ApiState, action: &str, target: &str) {
        state
            .auditor
            .admin(&self.name, action, target, &self.remote.to_string());
    }
}

/// A page of items and the cursor of the next one.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Paging parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Start after this cursor (the previous page's `next`).
    pub after: Option<String>,
}

fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("limit {n} out of range 1..={MAX_PAGE}"),
        )),
    }
}

/// The admin API's router, with its layers.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/credentials",
            get(list_credentials).post(create_credential),
        )
        .route(
            "/api/v1/credentials/{name}",
            get(get_credential)
                .patch(patch_credential)
                .delete(revoke_credential),
        )
        .route("/api/v1/devices", get(list_devices))
        .route(
            "/api/v1/devices/{id}",
            get(get_device).patch(patch_device).delete(delete_device),
        )
        .route("/api/v1/sessions", get(list_sessions))
        .route(
            "/api/v1/sessions/{id}",
            axum::routing::delete(delete_session),
        )
        .route("/api/v1/streams", get(list_streams))
        .route("/api/v1/streams/{id}", axum::routing::delete(delete_stream))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/cluster", get(cluster_view))
        .fallback(|| async { ApiError::not_found("no such resource") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "tunnel relay admin API", version = "1"),
    paths(
        healthz,
        readyz,
        list_credentials,
        create_credential,
        get_credential,
        patch_credential,
        revoke_credential,
        list_devices,
        get_device,
        patch_device,
        delete_device,
        list_sessions,
        delete_session,
        list_streams,
        delete_stream,
        audit_log,
        cluster_view
    ),
    components(schemas(
        CredentialView,
        NewCredential,
        CredentialPatch,
        CreatedCredential,
        DeviceView,
        LabelsPatch,
        SessionView,
        StreamView,
        ClusterView,
        RelayRecord,
        Health
    ))
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "the process serves")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", responses((status = 200), (status = 503, description = "the store does not answer, or (in a cluster) this relay holds no lease")))]
async fn readyz(State(s): State<ApiState>) -> Result<String, ApiError> {
    s.store.get("meta/ready").await?;
    let Some(cluster) = &s.cluster else {
        return Ok("ready".into());
    };
    // The read above reached the store: it is up now, even if the lease keeper's last
    // keep-alive fell into a leader election.
    cluster.store_answered();
    let health = cluster.health();
    if !health.store || !health.lease {
        let why = health
            .store_error
            .unwrap_or_else(|| "this relay holds no lease in the cluster's store".into());
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            why,
        ));
    }
    if health.peers_failing.is_empty() {
        return Ok("ready".into());
    }
    let mut peers: Vec<&String> = health.peers_failing.keys().collect();
    peers.sort();
    Ok(format!("ready; links failing to {peers:?}"))
}

/// The cluster as this relay sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// This relay's ID.
    relay: String,
    /// Its view of the store and of its peers.
    health: Health,
    /// Every relay with a live lease, with its session counts.
    relays: Vec<RelayRecord>,
}

#[utoipa::path(get, path = "/api/v1/cluster", responses((status = 200, body = ClusterView), (status = 404, description = "not a cluster")))]
async fn cluster_view(
    _admin: Admin,
    State(s): State<ApiState>,
) -> Result<Json<ClusterView>, ApiError> {
    let cluster = s
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this relay is not part of a cluster"))?;
    let mut relays = cluster.relays().await?;
    // Records are refreshed every few seconds; this relay's own counts are live.
    if let Some(me) = relays.iter_mut().find(|r| r.id == cluster.relay_id()) {
        let sessions = s.relay.sessions();
        me.devices = sessions.iter().filter(|x| x.device.is_some()).count() as u64;
        me.access = sessions.len() as u64 - me.devices;
    }
    Ok(Json(ClusterView {
        relay: cluster.relay_id().to_owned(),
        health: cluster.health(),
        relays,
    }))
}

async fn metrics_text(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::not_found("no metrics recorder installed").into_response(),
    }
}

/// A new credential with its token, which is shown only in this answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedCredential {
    #[serde(flatten)]
    credential: CredentialView,
    /// The bearer token: store it now, it is not shown again.
    token: String,
}

#[utoipa::path(get, path = "/api/v1/credentials", params(Paging), responses((status = 200, body = [CredentialView])))]
async fn list_credentials(
    _admin: Admin,
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
) -> Result<Json<Page<CredentialView>>, ApiError> {
    let limit = page_size(p.limit)?;
    let items = s.credentials.list(p.after.as_deref(), limit);
    let next = (items.len() == limit)
        .then(|| items.last().map(|c| c.name.clone()))
        .flatten();
    Ok(Json(Page { items, next }))
}

#[utoipa::path(post, path = "/api/v1/credentials", request_body = NewCredential,
    responses((status = 201, body = CreatedCredential), (status = 409), (status = 422)))]
async fn create_credential(
    admin: Admin,
    State(s): State<ApiState>,
    Body(new): Body<NewCredential>,
) -> Result<(StatusCode, Json<CreatedCredential>), ApiError> {
    let (credential, token) = s.credentials.create(new).await?;
    admin.did(&s, "credential.create", &credential.name);
    let token = token.expose().to_owned();
    Ok((
        StatusCode::CREATED,
        Json(CreatedCredential { credential, token }),
    ))
}

#[utoipa::path(get, path = "/api/v1/credentials/{name}", responses((status = 200, body = CredentialView), (status = 404)))]
async fn get_credential(
    _admin: Admin,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    s.credentials
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no credential named {name:?}")))
}

#[utoipa::path(patch, path = "/api/v1/credentials/{name}", request_body = CredentialPatch,
    responses((status = 200, body = CredentialView), (status = 404), (status = 422)))]
async fn patch_credential(
    admin: Admin,
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(patch): Body<CredentialPatch>,
) -> Result<Json<CredentialView>, ApiError> {
    let (view, cut) = s.credentials.patch(&name, patch).await?;
    if cut {
        s.relay.close_sessions_of(&format!("token:{name}"));
    }
    admin.did(&s, "credential.update", &name);
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/credentials/{name}", responses((status = 200, body = CredentialView), (status = 404)))]
async fn revoke_credential(
    admin: Admin,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let view = s.credentials.revoke(&name).await?;
    s.relay.close_sessions_of(&format!("token:{name}"));
    admin.did(&s, "credential.revoke", &name);
    Ok(Json(view))
}

/// A device as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    id: String,
    online: bool,
    /// In a cluster, the relay that holds it while online.
    relay: Option<String>,
    labels: BTreeMap<String, String>,
    credential: String,
    services: Vec<String>,
    public_ports: BTreeMap<String, u16>,
    first_seen: String,
    last_seen: String,
    /// The address of its session now, or of its last one.
    remote_addr: String,
    /// RFC 3339, while online.
    online_since: Option<String>,
    /// Bytes of its streams open now, caller to device and back.
    bytes_up: u64,
    bytes_down: u64,
}

/// Filters of the device list.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// `key=value`: only devices with this label.
    label: Option<String>,
    /// Only devices online (or offline) now.
    online: Option<bool>,
    /// Only IDs starting with this.
    prefix: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Start after this device ID.
    after: Option<String>,
}

struct Live {
    online: HashMap<String, (String, String)>,
    bytes: HashMap<String, (u64, u64)>,
    /// This relay's ID in a cluster.
    here: Option<String>,
    /// In a cluster: devices online on any relay, with the relay.
    presence: HashMap<String, PresenceRecord>,
}

impl Live {
    /// Holds the cluster's presence of the devices from `first` to `last` (one page), in
    /// place of the previous page's.
    async fn with_presence(
        mut self,
        s: &ApiState,
        first: Option<&str>,
        last: Option<&str>,
    ) -> Result<Self, ApiError> {
        self.presence.clear();
        let (Some(cluster), Some(first), Some(last)) = (&s.cluster, first, last) else {
            return Ok(self);
        };
        // Presence keys sort as device IDs do: the first one, then pages after it.
        if let Some(p) = cluster.presence(first).await? {
            self.presence.insert(first.to_owned(), p);
        }
        if first == last {
            return Ok(self);
        }
        let mut after = first.to_owned();
        loop {
            let page = cluster.presence_page(Some(&after), MAX_PAGE).await?;
            let done = page.len() < MAX_PAGE;
            let Some((next, _)) = page.last() else {
                return Ok(self);
            };
            after = next.clone();
            for (device, record) in page {
                if device.as_str() <= last {
                    self.presence.insert(device, record);
                }
            }
            if done || after.as_str() > last {
                return Ok(self);
            }
        }
    }
}

fn live(s: &ApiState) -> Live {
    let relay = &s.relay;
    let online = relay
        .sessions()
        .into_iter()
        .filter_map(|s| {
            let since = fmt_time(s.since);
            s.device.map(|d| (d, (since, s.peer.to_string())))
        })
        .collect();
    let mut bytes: HashMap<String, (u64, u64)> = HashMap::new();
    for st in relay.streams() {
        let e = bytes.entry(st.device).or_default();
        e.0 += st.up;
        e.1 += st.down;
    }
    Live {
        online,
        bytes,
        here: s.cluster.as_ref().map(|c| c.relay_id().to_owned()),
        presence: HashMap::new(),
    }
}

fn view(r: DeviceRecord, live: &Live) -> DeviceView {
    let session = live.online.get(&r.id);
    let (up, down) = live.bytes.get(&r.id).copied().unwrap_or_default();
    let elsewhere = live.presence.get(&r.id);
    let relay = match (session, elsewhere) {
        (Some(_), _) => live.here.clone(),
        (None, Some(p)) => Some(p.relay.clone()),
        (None, None) => None,
    };
    DeviceView {
        online: session.is_some() || elsewhere.is_some(),
        relay,
        online_since: session.map(|s| s.0.clone()),
        remote_addr: session.map_or(r.last_addr.clone(), |s| s.1.clone()),
        id: r.id,
        labels: r.labels,
        credential: r.credential,
        services: r.services,
        public_ports: r.public_ports,
        first_seen: r.first_seen,
        last_seen: r.last_seen,
        bytes_up: up,
        bytes_down: down,
    }
}

#[utoipa::path(get, path = "/api/v1/devices", params(DeviceFilter), responses((status = 200, body = [DeviceView])))]
async fn list_devices(
    _admin: Admin,
    State(s): State<ApiState>,
    Query(f): Query<DeviceFilter>,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    let limit = page_size(f.limit)?;
    let label = match &f.label {
        Some(l) => Some(l.split_once('=').ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "label wants key=value",
            )
        })?),
        None => None,
    };
    let prefix = format!("{DEVICE}{}", f.prefix.as_deref().unwrap_or(""));
    let mut after = f.after.map(|a| format!("{DEVICE}{a}"));
    let mut items = Vec::new();
    // Page through the store until the page is full: filters may skip records.
    // This relay's sessions once per request; the cluster's presence once per batch.
    let mut live = live(&s);
    loop {
        let batch = s.store.list(&prefix, after.as_deref(), MAX_PAGE).await?;
        let done = batch.len() < MAX_PAGE;
        after = batch.last().map(|(k, _)| k.clone());
        let first = batch.first().and_then(|(k, _)| k.strip_prefix(DEVICE));
        let last = batch.last().and_then(|(k, _)| k.strip_prefix(DEVICE));
        live = live.with_presence(&s, first, last).await?;
        for (_, v) in batch {
            let Ok(r) = serde_json::from_slice::<DeviceRecord>(&v.value) else {
                continue;
            };
            if label.is_some_and(|(k, val)| r.labels.get(k).map(String::as_str) != Some(val)) {
                continue;
            }
            let d = view(r, &live);
            if f.online.is_some_and(|o| o != d.online) {
                continue;
            }
            items.push(d);
            if items.len() == limit {
                let next = items.last().map(|d| d.id.clone());
                return Ok(Json(Page { items, next }));
            }
        }
        if done {
            return Ok(Json(Page { items, next: None }));
        }
    }
}

async fn device_record(s: &ApiState, id: &str) -> Result<(DeviceRecord, u64), ApiError> {
    let v = s
        .store
        .get(&format!("{DEVICE}{id}"))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
    let r = serde_json::from_slice(&v.value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((r, v.version))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", responses((status = 200, body = DeviceView), (status = 404)))]
async fn get_device(
    _admin: Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let (r, _) = device_record(&s, &id).await?;
    let live = live(&s).with_presence(&s, Some(&id), Some(&id)).await?;
    Ok(Json(view(r, &live)))
}

/// New labels of a device (they replace the old ones).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsPatch {
    labels: BTreeMap<String, String>,
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", request_body = LabelsPatch,
    responses((status = 200, body = DeviceView), (status = 404), (status = 409)))]
async fn patch_device(
    admin: Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Body(patch): Body<LabelsPatch>,
) -> Result<Json<DeviceView>, ApiError> {
    let (mut r, version) = device_record(&s, &id).await?;
    r.labels = patch.labels;
    let bytes = serde_json::to_vec(&r).unwrap_or_default();
    s.store
        .put(
            &format!("{DEVICE}{id}"),
            bytes,
            Expect::Version(version),
            None,
        )
        .await?;
    admin.did(&s, "device.update", &id);
    Ok(Json(view(r, &live(&s))))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", responses((status = 204), (status = 404)))]
async fn delete_device(
    admin: Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let existed = s
        .store
        .delete(&format!("{DEVICE}{id}"), Expect::Any)
        .await?;
    let released = s.relay.release_device(&id);
    let sessions: Vec<u64> = s
        .relay
        .sessions()
        .into_iter()
        .filter(|x| x.device.as_deref() == Some(id.as_str()))
        .map(|x| x.id)
        .collect();
    for sid in &sessions {
        s.relay.close_session(*sid);
    }
    if !existed && !released && sessions.is_empty() {
        return Err(ApiError::not_found(format!("no device {id:?}")));
    }
    admin.did(&s, "device.delete", &id);
    Ok(StatusCode::NO_CONTENT)
}

/// A session as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    id: u64,
    credential: String,
    role: String,
    device: Option<String>,
    remote_addr: String,
    since: String,
}

#[utoipa::path(get, path = "/api/v1/sessions", responses((status = 200, body = [SessionView])))]
async fn list_sessions(_admin: Admin, State(s): State<ApiState>) -> Json<Vec<SessionView>> {
    Json(
        s.relay
            .sessions()
            .into_iter()
            .map(|x| SessionView {
                id: x.id,
                credential: x.name,
                role: x.role.as_str().to_owned(),
                device: x.device,
                remote_addr: x.peer.to_string(),
                since: fmt_time(x.since),
            })
            .collect(),
    )
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", responses((status = 204), (status = 404)))]
async fn delete_session(
    admin: Admin,
    State(s): State<ApiState>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    if !s.relay.close_session(id) {
        return Err(ApiError::not_found(format!("no session {id}")));
    }
    admin.did(&s, "session.delete", &id.to_string());
    Ok(StatusCode::NO_CONTENT)
}

/// A joined stream as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamView {
    id: u64,
    caller: String,
    device: String,
    service: String,
    since: String,
    bytes_up: u64,
    bytes_down: u64,
}

#[utoipa::path(get, path = "/api/v1/streams", responses((status = 200, body = [StreamView])))]
async fn list_streams(_admin: Admin, State(s): State<ApiState>) -> Json<Vec<StreamView>> {
    Json(
        s.relay
            .streams()
            .into_iter()
            .map(|x| StreamView {
                id: x.id,
                caller: x.caller,
                device: x.device,
                service: x.service,
                since: fmt_time(x.since),
                bytes_up: x.up,
                bytes_down: x.down,
            })
            .collect(),
    )
}

#[utoipa::path(delete, path = "/api/v1/streams/{id}", responses((status = 204), (status = 404)))]
async fn delete_stream(
    admin: Admin,
    State(s): State<ApiState>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    if !s.relay.cut_stream(id) {
        return Err(ApiError::not_found(format!("no stream {id}")));
    }
    admin.did(&s, "stream.delete", &id.to_string());
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of the audit trail.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// RFC 3339: only events at or after this time.
    since: Option<String>,
    /// Only events about this device.
    device: Option<String>,
    /// Only events of this credential.
    credential: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Only events after this sequence number (the previous page's `next`).
    after: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditFilter), responses((status = 200)))]
async fn audit_log(
    _admin: Admin,
    State(s): State<ApiState>,
    Query(f): Query<AuditFilter>,
) -> Result<Json<Page<Value>>, ApiError> {
    let limit = page_size(f.limit)?;
    let since = f
        .since
        .as_deref()
        .map(|t| {
            crate::model::parse_time(t).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("since: {e}"),
                )
            })
        })
        .transpose()?;
    let q = audit::Query {
        since,
        device: f.device,
        credential: f.credential,
        after: f.after,
        limit,
    };
    let dir = s.state_dir.clone();
    let items = tokio::task::spawn_blocking(move || audit::read(&dir, &q))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let next = (items.len() == limit)
        .then(|| {
            items
                .last()
                .and_then(|v| v.get("seq"))
                .map(|s| s.to_string())
        })
        .flatten();
    Ok(Json(Page { items, next }))
}

/// Creates an admin token named `name` in the store and returns it (shown once).
pub async fn new_admin_token(store: &dyn Store, name: &str) -> Result<Token, ApiError> {
    let token = Token::generate()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let record = AdminRecord {
        name: name.to_owned(),
        token_hash: token.hash().to_string(),
        created: fmt_time(SystemTime::now()),
    };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    store
        .put(&format!("{ADMIN}{name}"), bytes, Expect::Absent, None)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("an admin token named {name:?} exists already"),
            ),
            e => e.into(),
        })?;
    Ok(token)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}
