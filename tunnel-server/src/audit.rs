//! The audit trail: one JSON line per event, in a size-rotated file in the state
//! directory (`audit.log`, then `audit.log.1` … `audit.log.4`), and optionally on stdout.
//! Field names follow Teleport's audit events (`event`, `code`, `time`, `user`,
//! `addr.remote`, `sid`, `success`), plus `device`, `service`, `relay`, `bytes.up`,
//! `bytes.down`, `duration_ms`, `admin`, and a sequence number `seq` to page by.
//!
//! The relay's events reach the [`Auditor`] through a bounded queue (the relay never waits
//! on the disk); a writer task appends them and keeps the device records of the store up
//! to date. No token, hash or key is ever written.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::warn;
use tunnel_core::{Event, EventSink};

use crate::model::{DEVICE, DeviceRecord, fmt_time};
use crate::store::{Expect, Store};

/// Events queued for the writer; past this, events are dropped and counted (the relay
/// must never wait on the audit disk).
const QUEUE: usize = 16_384;
/// Size at which `audit.log` is rotated.
pub const ROTATE_BYTES: u64 = 16 << 20;
/// Events written per batch (one file append, one store commit).
const BATCH: usize = 512;
/// Rotated files kept (`audit.log.1` … this).
const KEEP: usize = 4;

/// One audit line before it is numbered and written.
pub(crate) type Line = serde_json::Map<String, Value>;

/// Where the relay's events go: queued here, written by [`AuditWriter::run`].
#[derive(Clone)]
pub struct Auditor {
    queue: mpsc::Sender<Line>,
    dropped: Arc<AtomicU64>,
    relay_id: Arc<str>,
}

/// The writer's end.
pub struct AuditWriter {
    queue: mpsc::Receiver<Line>,
    dir: PathBuf,
    stdout: bool,
    store: Arc<dyn Store>,
}

impl Auditor {
    /// An auditor writing into `dir` (and to stdout if asked), updating device records
    /// in `store`. Spawn the returned writer.
    pub fn new(
        dir: &Path,
        stdout: bool,
        store: Arc<dyn Store>,
        relay_id: &str,
    ) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let auditor = Self {
            queue: tx,
            dropped: Arc::new(AtomicU64::new(0)),
            relay_id: relay_id.into(),
        };
        let writer = AuditWriter {
            queue: rx,
            dir: dir.to_owned(),
            stdout,
            store,
        };
        (auditor, writer)
    }

    /// Records an admin action.
    pub fn admin(&self, admin: &str, action: &str, target: &str, remote: &str) {
        let mut line = base(&format!("admin.{action}"), "TA0001I", true);
        line.insert("admin".into(), json!(admin));
        line.insert("user".into(), json!(admin));
        line.insert("target".into(), json!(target));
        line.insert("addr.remote".into(), json!(remote));
        self.push(line);
    }

    /// Records a failed admin authentication.
    pub fn admin_denied(&self, remote: &str) {
        let mut line = base("admin.auth", "TA0001W", false);
        line.insert("addr.remote".into(), json!(remote));
        self.push(line);
    }

    fn push(&self, mut line: Line) {
        line.insert("relay".into(), json!(&*self.relay_id));
        if self.queue.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("tunnel_audit_dropped_total").increment(1);
            if n.is_power_of_two() {
                warn!(dropped = n, "audit queue full; events dropped");
            }
        }
    }
}

fn base(event: &str, code: &str, success: bool) -> Line {
    let mut l = Line::new();
    l.insert("event".into(), json!(event));
    l.insert("code".into(), json!(code));
    l.insert("time".into(), json!(fmt_time_ms(SystemTime::now())));
    l.insert("success".into(), json!(success));
    l
}

fn fmt_time_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl EventSink for Auditor {
    fn event(&self, event: &Event) {
        let line = match event {
            Event::AuthSucceeded {
                session,
                name,
                role,
                peer,
                ..
            } => {
                let mut l = base("session.start", "T2000I", true);
                l.insert("user".into(), json!(name));
                l.insert("sid".into(), json!(session));
                l.insert("role".into(), json!(role.as_str()));
                l.insert("addr.remote".into(), json!(peer.to_string()));
                l
            }
            Event::AuthFailed { peer, reason } => {
                let mut l = base("user.login", "T1000W", false);
                l.insert("addr.remote".into(), json!(peer.to_string()));
                l.insert("error".into(), json!(reason));
                l
            }
            Event::SessionEnded {
                session,
                name,
                role,
                duration,
            } => {
                let mut l = base("session.end", "T2004I", true);
                l.insert("user".into(), json!(name));
                l.insert("sid".into(), json!(session));
                l.insert("role".into(), json!(role.as_str()));
                l.insert("duration_ms".into(), json!(duration.as_millis() as u64));
                l
            }
            Event::DeviceOnline {
                device,
                session,
                name,
                peer,
                services,
            } => {
                let mut l = base("device.online", "TD0001I", true);
                l.insert("device".into(), json!(device));
                l.insert("sid".into(), json!(session));
                l.insert("user".into(), json!(name));
                l.insert("addr.remote".into(), json!(peer.to_string()));
                l.insert("services".into(), json!(services));
                l
            }
            Event::DeviceOffline { device, session } => {
                let mut l = base("device.offline", "TD0002I", true);
                l.insert("device".into(), json!(device));
                l.insert("sid".into(), json!(session));
                l
            }
            Event::PublicPortBound {
                device,
                service,
                port,
            } => {
                let mut l = base("port.bind", "TP0001I", true);
                l.insert("device".into(), json!(device));
                l.insert("service".into(), json!(service));
                l.insert("port".into(), json!(port));
                l
            }
            Event::StreamOpened {
                stream,
                caller,
                device,
                service,
                peer,
                relay,
            } => {
                let mut l = base("stream.open", "TS0001I", true);
                if let Some(r) = relay {
                    // The other relay of a cross-relay stream: both relays log the hop.
                    l.insert("peer_relay".into(), json!(r));
                }
                l.insert("stream".into(), json!(stream));
                l.insert("user".into(), json!(caller));
                l.insert("device".into(), json!(device));
                l.insert("service".into(), json!(service));
                if let Some(p) = peer {
                    l.insert("addr.remote".into(), json!(p.to_string()));
                }
                l
            }
            Event::StreamRefused {
                caller,
                device,
                service,
                kind,
            } => {
                let mut l = base("stream.open", "TS0001W", false);
                l.insert("user".into(), json!(caller));
                l.insert("device".into(), json!(device));
                l.insert("service".into(), json!(service));
                l.insert("error".into(), json!(kind.as_str()));
                l
            }
            Event::StreamClosed {
                stream,
                caller,
                device,
                service,
                up,
                down,
                duration,
                clean,
            } => {
                let mut l = base("stream.close", "TS0002I", *clean);
                l.insert("stream".into(), json!(stream));
                l.insert("user".into(), json!(caller));
                l.insert("device".into(), json!(device));
                l.insert("service".into(), json!(service));
                l.insert("bytes.up".into(), json!(up));
                l.insert("bytes.down".into(), json!(down));
                l.insert("duration_ms".into(), json!(duration.as_millis() as u64));
                l
            }
            _ => return,
        };
        self.push(line);
    }
}

fn log_path(dir: &Path, n: usize) -> PathBuf {
    if n == 0 {
        dir.join("audit.log")
    } else {
        dir.join(format!("audit.log.{n}"))
    }
}

/// The last sequence number written in `dir`, so numbering goes on after a restart.
fn last_seq(dir: &Path) -> u64 {
    let Ok(file) = std::fs::File::open(log_path(dir, 0)) else {
        return 0;
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .last()
        .and_then(|l| serde_json::from_str::<Value>(&l).ok())
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .unwrap_or(0)
}

impl AuditWriter {
    /// Writes events until every [`Auditor`] is gone. Events are taken in batches: one
    /// file append and one store commit (one fsync) per batch, so a fleet registering at
    /// once does not back the queue up behind a fsync per device.
    pub async fn run(mut self) {
        let mut seq = last_seq(&self.dir);
        let mut batch = Vec::with_capacity(BATCH);
        while self.queue.recv_many(&mut batch, BATCH).await > 0 {
            let mut text = String::new();
            let mut lines = Vec::with_capacity(batch.len());
            for mut line in batch.drain(..) {
                seq += 1;
                line.insert("seq".into(), json!(seq));
                let l = Value::Object(line);
                text.push_str(&l.to_string());
                text.push('\n');
                lines.push(l);
            }
            self.track_devices(&lines).await;
            if self.stdout {
                print!("{text}");
            }
            let dir = self.dir.clone();
            match tokio::task::spawn_blocking(move || append(&dir, &text)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "writing the audit log failed"),
                Err(e) => warn!(error = %e, "audit writer task failed"),
            }
        }
    }

    /// Keeps `device/<id>` in the store in line with what the relay saw: the batch's
    /// device events folded per device, written in one compare-and-set commit (retried
    /// on a race with the API).
    async fn track_devices(&self, lines: &[Value]) {
        let events: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                matches!(
                    l.get("event").and_then(Value::as_str),
                    Some("device.online" | "device.offline" | "port.bind")
                )
            })
            .collect();
        if events.is_empty() {
            return;
        }
        let mut ids: Vec<&str> = events
            .iter()
            .filter_map(|e| e.get("device").and_then(Value::as_str))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let now = fmt_time(SystemTime::now());
        for _ in 0..4 {
            let mut puts = Vec::with_capacity(ids.len());
            for id in &ids {
                let key = format!("{DEVICE}{id}");
                let current = match self.store.get(&key).await {
                    Ok(c) => c,
                    Err(e) => return warn!(error = %e, "reading a device record failed"),
                };
                let (mut record, expect) = match &current {
                    Some(v) => (
                        serde_json::from_slice::<DeviceRecord>(&v.value).unwrap_or_default(),
                        Expect::Version(v.version),
                    ),
                    None => (DeviceRecord::default(), Expect::Absent),
                };
                for e in events
                    .iter()
                    .filter(|e| e.get("device").and_then(Value::as_str) == Some(id))
                {
                    apply(&mut record, id, e, &now);
                }
                puts.push((key, serde_json::to_vec(&record).unwrap_or_default(), expect));
            }
            match self.store.commit(puts).await {
                Ok(()) => return,
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return warn!(error = %e, "writing device records failed"),
            }
        }
    }
}

/// Folds one device event into its record.
fn apply(record: &mut DeviceRecord, id: &str, line: &Value, now: &str) {
    record.id = id.to_owned();
    if record.first_seen.is_empty() {
        record.first_seen = now.to_owned();
    }
    record.last_seen = now.to_owned();
    let s = |k: &str| line.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match line.get("event").and_then(Value::as_str) {
        Some("device.online") => {
            record.credential = s("user");
            record.last_addr = s("addr.remote");
            record.services = line
                .get("services")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            record.public_ports.clear();
        }
        Some("port.bind") => {
            if let (Some(service), Some(port)) = (
                line.get("service").and_then(Value::as_str),
                line.get("port").and_then(Value::as_u64),
            ) {
                record
                    .public_ports
                    .insert(service.to_owned(), u16::try_from(port).unwrap_or(0));
            }
        }
        _ => {}
    }
}

fn append(dir: &Path, text: &str) -> std::io::Result<()> {
    let path = log_path(dir, 0);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_BYTES) {
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(log_path(dir, n), log_path(dir, n + 1));
        }
        std::fs::rename(&path, log_path(dir, 1))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(text.as_bytes())
}

/// Audit lines matching a query, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// Only lines at or after this time (RFC 3339).
    pub since: Option<SystemTime>,
    /// Only lines about this device.
    pub device: Option<String>,
    /// Only lines of this credential (`user`).
    pub credential: Option<String>,
    /// Only lines with `seq` above this (the page cursor).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// Reads the audit files of `dir` (rotated ones first) and returns the matching lines.
pub fn read(dir: &Path, q: &Query) -> std::io::Result<Vec<Value>> {
    let mut out = VecDeque::new();
    for n in (0..=KEEP).rev() {
        let Ok(file) = std::fs::File::open(log_path(dir, n)) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let field = |k: &str| v.get(k).and_then(Value::as_str);
            if q.after
                .is_some_and(|a| v.get("seq").and_then(Value::as_u64).unwrap_or(0) <= a)
            {
                continue;
            }
            if q.device
                .as_deref()
                .is_some_and(|d| field("device") != Some(d))
            {
                continue;
            }
            if q.credential
                .as_deref()
                .is_some_and(|c| field("user") != Some(c))
            {
                continue;
            }
            if let Some(since) = q.since
                && field("time")
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .is_none_or(|t| t < since)
            {
                continue;
            }
            out.push_back(v);
            if out.len() >= q.limit {
                return Ok(out.into());
            }
        }
    }
    Ok(out.into())
}
