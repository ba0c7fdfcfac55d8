//! The control plane against the relay process, through its admin HTTP API: live
//! credentials (revocation, expiry, narrowed grants), durability across a restart and a
//! `kill -9`, admin authentication, bad input, the audit trail and the metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::{ClientConfig, ConnectError, Dialer, ListenerState, RefusalCode, SpkiPin, Token};
use tunnel_testkit::{
    HttpReply, Proc, WAIT, cargo_bins, eventually, expect_read_error, fresh_dir, http,
    spawn_echo_server, start_device, within,
};

/// A relay process with its state store and admin API.
struct ControlRelay {
    child: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    pin: SpkiPin,
    admin_token: String,
    dir: PathBuf,
}

impl ControlRelay {
    async fn start(name: &str) -> Self {
        let dir = fresh_dir(&format!("control-{name}"));
        let out = Command::new(cargo_bins!().relay)
            .args(["admin-token", "new", "--name", "ops", "--state-dir"])
            .arg(&dir)
            .output()
            .expect("admin-token new");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_token = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned();
        Self::serve(dir, admin_token).await
    }

    async fn serve(dir: PathBuf, admin_token: String) -> Self {
        let mut child = Proc::spawn(
            Command::new(cargo_bins!().relay)
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                ])
                .args(["--heartbeat-ms", "1000", "--grace-secs", "1", "--state-dir"])
                .arg(&dir)
                .env("RUST_LOG", "warn")
                .stderr(std::fs::File::create(dir.join("relay.log")).expect("log")),
        );
        let [addr, pin, admin]: [String; 3] = child
            .read_keys(&["listening", "pin", "admin"], WAIT)
            .await
            .try_into()
            .expect("three keys");
        Self {
            child,
            addr: addr.parse().expect("addr"),
            admin: admin.parse().expect("admin addr"),
            pin: pin.parse().expect("pin"),
            admin_token,
            dir,
        }
    }

    /// Kills the relay (SIGKILL) and starts it again on the same state directory.
    async fn kill_and_restart(mut self) -> Self {
        self.child.kill();
        let (dir, token) = (self.dir.clone(), self.admin_token.clone());
        std::mem::forget(self);
        Self::serve(dir, token).await
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> HttpReply {
        let body = body.map(|b| b.to_string());
        http(
            self.admin,
            method,
            path,
            Some(&self.admin_token),
            body.as_deref(),
        )
        .await
    }

    async fn json(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let reply = self.api(method, path, body).await;
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body);
        serde_json::from_str(&reply.body).unwrap_or(Value::Null)
    }

    /// Creates a credential through the API; returns its token.
    async fn credential(&self, body: Value) -> String {
        let v = self
            .json("POST", "/api/v1/credentials", Some(body), 201)
            .await;
        v["token"].as_str().expect("token").to_owned()
    }

    fn client(&self, token: &str) -> ClientConfig {
        ClientConfig::new(self.addr.to_string(), self.pin).token(Token::new(token))
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ControlRelay {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn refused_as(result: Result<Dialer, ConnectError>, code: RefusalCode) -> bool {
    matches!(result, Err(ConnectError::Refused { code: c, .. }) if c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_loses_its_sessions_and_streams_within_a_second() {
    let relay = ControlRelay::start("revoke").await;
    let dev = relay
        .credential(json!({"name": "pi", "grants": {"devices": ["pi"]}}))
        .await;
    let user = relay
        .credential(
            json!({"name": "alice", "grants": {"access": ["pi/*"]}, "labels": {"team": "ops"}}),
        )
        .await;
    let echo = spawn_echo_server().await;
    let device = start_device(relay.client(&dev), "pi", &[("echo", echo)]).await;
    let dialer = within("alice connects", WAIT, Dialer::connect(relay.client(&user)))
        .await
        .expect("alice connects");
    let mut stream = within("dial", WAIT, dialer.dial("pi", "echo"))
        .await
        .expect("dial");
    stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.expect("echo");

    // Revoke alice: her stream in flight is reset and her session closes, within 1 s.
    let started = Instant::now();
    let v = relay
        .json("DELETE", "/api/v1/credentials/alice", None, 200)
        .await;
    assert_eq!(v["status"], "revoked");
    expect_read_error(&mut stream, Duration::from_secs(1)).await;
    let cut = started.elapsed();
    eventually(
        "alice's session is gone",
        Duration::from_secs(1),
        || async {
            let v = relay.json("GET", "/api/v1/sessions", None, 200).await;
            !v.as_array()
                .expect("list")
                .iter()
                .any(|s| s["credential"] == "alice")
        },
    )
    .await;
    // Her next handshake is refused, and says why.
    let again = Dialer::connect(relay.client(&user)).await;
    assert!(
        refused_as(again, RefusalCode::Revoked),
        "reconnect must be refused as revoked"
    );

    // Revoking the device's credential takes the device offline too.
    relay
        .json("DELETE", "/api/v1/credentials/pi", None, 200)
        .await;
    let mut state = device.listener.watch_state();
    within(
        "the device loses its session",
        Duration::from_secs(1),
        state.wait_for(|s| !matches!(s, ListenerState::Connected { .. })),
    )
    .await
    .expect("state");
    eventually("the device reports the revocation", WAIT, || {
        let s = device.listener.state();
        async move { matches!(&s, ListenerState::Reconnecting { last_error } if last_error.contains("Revoked")) }
    })
    .await;
    println!("MEASURE revocation: stream reset {cut:?} after DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_expires_stops_working_and_its_sessions_close() {
    let relay = ControlRelay::start("expiry").await;
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3));
    let dev = relay
        .credential(json!({"name": "pi", "grants": {"devices": ["pi"]}}))
        .await;
    let user = relay
        .credential(
            json!({"name": "temp", "grants": {"access": ["pi/*"]}, "expires": soon.to_string()}),
        )
        .await;
    let echo = spawn_echo_server().await;
    let _device = start_device(relay.client(&dev), "pi", &[("echo", echo)]).await;
    let dialer = within("temp connects", WAIT, Dialer::connect(relay.client(&user)))
        .await
        .expect("temp connects before expiry");
    let mut stream = within("dial", WAIT, dialer.dial("pi", "echo"))
        .await
        .expect("dial");
    expect_read_error(&mut stream, Duration::from_secs(6)).await;
    let v = relay
        .json("GET", "/api/v1/credentials/temp", None, 200)
        .await;
    assert_eq!(v["status"], "expired");
    assert!(refused_as(
        Dialer::connect(relay.client(&user)).await,
        RefusalCode::Revoked
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_grant_cuts_open_streams_and_refuses_new_ones() {
    let relay = ControlRelay::start("narrow").await;
    let dev = relay
        .credential(json!({"name": "pi", "grants": {"devices": ["pi"]}}))
        .await;
    let user = relay
        .credential(json!({"name": "bob", "grants": {"access": ["pi/*"]}}))
        .await;
    let echo = spawn_echo_server().await;
    let _device = start_device(relay.client(&dev), "pi", &[("echo", echo), ("web", echo)]).await;
    let dialer = within("bob", WAIT, Dialer::connect(relay.client(&user)))
        .await
        .expect("bob");
    let mut stream = within("dial", WAIT, dialer.dial("pi", "echo"))
        .await
        .expect("dial");
    relay
        .json(
            "PATCH",
            "/api/v1/credentials/bob",
            Some(json!({"grants": {"access": ["pi/web"]}})),
            200,
        )
        .await;
    expect_read_error(&mut stream, Duration::from_secs(1)).await;
    // The dialer reconnects under the new grants: echo is refused, web works.
    let refused = within("dial echo again", WAIT, dialer.dial("pi", "echo")).await;
    assert!(
        matches!(refused, Err(tunnel_core::DialError::Denied(_))),
        "{refused:?}"
    );
    within("dial web", WAIT, dialer.dial("pi", "web"))
        .await
        .expect("web is still granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_a_restart_and_kill_minus_9() {
    let relay = ControlRelay::start("durable").await;
    let token = relay
        .credential(json!({"name": "keep", "grants": {"access": ["x/*"]}, "labels": {"a": "b"}}))
        .await;
    relay
        .credential(json!({"name": "gone", "grants": {"access": ["x/*"]}}))
        .await;
    relay
        .json("DELETE", "/api/v1/credentials/gone", None, 200)
        .await;
    // Killed right after the acknowledgements: nothing acknowledged may be lost.
    let relay = relay.kill_and_restart().await;
    let v = relay
        .json("GET", "/api/v1/credentials/keep", None, 200)
        .await;
    assert_eq!(
        (v["labels"]["a"].as_str(), v["status"].as_str()),
        (Some("b"), Some("active"))
    );
    let v = relay
        .json("GET", "/api/v1/credentials/gone", None, 200)
        .await;
    assert_eq!(v["status"], "revoked");
    within(
        "the kept token works",
        WAIT,
        Dialer::connect(relay.client(&token)),
    )
    .await
    .expect("the credential survived kill -9");
    assert!(relay.dir().join("state.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_wants_a_valid_token_and_throttles_guessing() {
    let relay = ControlRelay::start("adminauth").await;
    let none = http(relay.admin, "GET", "/api/v1/credentials", None, None).await;
    assert_eq!(none.status, 401, "{}", none.body);
    let v: Value = serde_json::from_str(&none.body).expect("json error");
    assert_eq!(v["error"]["code"], "unauthorized");
    let mut statuses = Vec::new();
    for i in 0..14 {
        let r = http(
            relay.admin,
            "GET",
            "/api/v1/credentials",
            Some(&format!("tun_{i:064x}")),
            None,
        )
        .await;
        statuses.push(r.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        statuses[10..].iter().all(|s| *s == 429),
        "guessing is throttled: {statuses:?}"
    );
    // The public endpoints need no token.
    assert_eq!(
        http(relay.admin, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(relay.admin, "GET", "/readyz", None, None).await.status,
        200
    );
    let doc = http(relay.admin, "GET", "/api/v1/openapi.json", None, None).await;
    let doc: Value = serde_json::from_str(&doc.body).expect("openapi json");
    assert!(doc["paths"]["/api/v1/credentials/{name}"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_documented_status_and_message_and_pages_end() {
    let relay = ControlRelay::start("input").await;
    let cases = [
        ("{\"name\": \"x\", ", 400, "malformed_json"),
        ("{\"name\": \"x\", \"colour\": \"red\"}", 422, "invalid"),
        ("{\"name\": \"bad name!\"}", 422, "invalid"),
        (
            "{\"name\": \"x\", \"grants\": {\"access\": [\"no-slash\"]}}",
            422,
            "invalid",
        ),
        (
            "{\"name\": \"x\", \"expires\": \"tomorrow\"}",
            422,
            "invalid",
        ),
    ];
    for (body, status, code) in cases {
        let r = relay.api("POST", "/api/v1/credentials", None).await;
        assert_eq!(r.status, 415, "no body is not JSON: {}", r.body);
        let r = http(
            relay.admin,
            "POST",
            "/api/v1/credentials",
            Some(&relay.admin_token),
            Some(body),
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("json error");
        assert_eq!(v["error"]["code"], code, "{body}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    let huge = json!({"name": "x", "labels": {"k": "v".repeat(100_000)}});
    let r = relay.api("POST", "/api/v1/credentials", Some(huge)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    relay.credential(json!({"name": "dup"})).await;
    let r = relay
        .api("POST", "/api/v1/credentials", Some(json!({"name": "dup"})))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        relay
            .api("GET", "/api/v1/credentials/nobody", None)
            .await
            .status,
        404
    );
    assert_eq!(relay.api("GET", "/api/v1/nothing", None).await.status, 404);
    // Pagination to the last page.
    for i in 0..4 {
        relay.credential(json!({"name": format!("c{i}")})).await;
    }
    let mut names = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let v = relay
            .json(
                "GET",
                &format!("/api/v1/credentials?limit=2{after}"),
                None,
                200,
            )
            .await;
        names.extend(
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_owned()),
        );
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(names, ["c0", "c1", "c2", "c3", "dup"]);
    let r = relay.api("GET", "/api/v1/credentials?limit=0", None).await;
    assert_eq!(r.status, 422);
    // Listings never show a token or a hash.
    let all = relay.api("GET", "/api/v1/credentials", None).await.body;
    assert!(!all.contains("sha256:") && !all.contains("tun_"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_tells_one_scenario_exactly_and_metrics_move() {
    let relay = ControlRelay::start("audit").await;
    let dev = relay
        .credential(json!({"name": "pi", "grants": {"devices": ["pi"]}}))
        .await;
    let user = relay
        .credential(json!({"name": "carol", "grants": {"access": ["pi/echo"]}}))
        .await;
    let echo = spawn_echo_server().await;
    let device = start_device(relay.client(&dev), "pi", &[("echo", echo)]).await;
    let dialer = within("carol", WAIT, Dialer::connect(relay.client(&user)))
        .await
        .expect("carol");
    let back = tunnel_testkit::echo_exchange(
        within("dial", WAIT, dialer.dial("pi", "echo"))
            .await
            .expect("dial"),
        b"12345",
    )
    .await;
    assert_eq!(back, b"12345");
    assert!(dialer.dial("pi", "ssh").await.is_err());
    dialer.close().await;
    drop(device);
    // Wait for the device's offline event, then read the trail of device pi.
    eventually(
        "the audit trail records the device going offline",
        WAIT,
        || async {
            let v = relay
                .json("GET", "/api/v1/audit?device=pi&limit=1000", None, 200)
                .await;
            v["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["event"] == "device.offline"))
        },
    )
    .await;
    let v = relay
        .json("GET", "/api/v1/audit?device=pi&limit=1000", None, 200)
        .await;
    let events: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
    let story: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("").to_owned(),
                e["user"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("device.online", "pi"),
        ("stream.open", "carol"),
        ("stream.close", "carol"),
        ("stream.open", "carol"),
        ("device.offline", ""),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(story, want, "{events:#?}");
    let close = &events[2];
    assert_eq!(
        (close["bytes.up"].as_u64(), close["bytes.down"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(events[3]["success"], false);
    assert_eq!(
        events[3]["error"], "denied",
        "grants come before the device is asked"
    );
    for e in &events {
        assert!(e["time"].is_string() && e["code"].is_string() && e["seq"].is_u64());
        let text = e.to_string();
        assert!(
            !text.contains("tun_") && !text.contains("sha256:"),
            "a secret in the trail: {text}"
        );
    }
    // Admin actions are in the trail too, with the admin's name.
    let v = relay
        .json("GET", "/api/v1/audit?credential=ops&limit=1000", None, 200)
        .await;
    let admin: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        admin,
        ["admin.credential.create", "admin.credential.create"]
    );
    // The device record and the metrics.
    let d = relay.json("GET", "/api/v1/devices/pi", None, 200).await;
    assert_eq!(
        (d["online"].as_bool(), d["credential"].as_str()),
        (Some(false), Some("pi"))
    );
    let metrics = http(relay.admin, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .body
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        value("tunnel_streams_total{result=\"ok\"}"),
        1.0,
        "{}",
        metrics.body
    );
    assert_eq!(value("tunnel_streams_total{result=\"denied\"}"), 1.0);
    assert_eq!(value("tunnel_bytes_total{direction=\"up\"}"), 5.0);
    assert_eq!(value("tunnel_devices_connected"), 0.0);
    promtool_check(&metrics.body);
}

/// Checks the exposition with Prometheus's own `promtool` where the test script installed
/// it; says so loudly where it is missing (the values were checked above either way).
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIP promtool check: promtool not installed (apt-get install prometheus)");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || !report.contains("error"),
        "promtool: {report}"
    );
}

#[test]
fn an_empty_store_starts_a_relay_that_admits_nobody() {
    let dir = fresh_dir("control-empty");
    let mut child = Proc::spawn(
        Command::new(cargo_bins!().relay)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&dir)
            .stderr(std::process::Stdio::piped()),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let [addr, pin]: [String; 2] = child
            .read_keys(&["listening", "pin"], WAIT)
            .await
            .try_into()
            .expect("keys");
        let client = ClientConfig::new(addr, pin.parse::<SpkiPin>().expect("pin"))
            .token(Token::generate().expect("token"));
        let result = Dialer::connect(client).await;
        assert!(
            refused_as(result, RefusalCode::AuthFailed),
            "nobody gets in"
        );
    });
    child.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_can_be_served_over_tls_with_the_relays_identity() {
    let dir = fresh_dir("control-tls");
    let mut child = Proc::spawn(
        Command::new(cargo_bins!().relay)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--admin-tls")
            .arg("--state-dir")
            .arg(&dir)
            .env("RUST_LOG", "warn"),
    );
    let [_, pin, admin]: [String; 3] = child
        .read_keys(&["listening", "pin", "admin"], WAIT)
        .await
        .try_into()
        .expect("keys");
    let admin: SocketAddr = admin.parse().expect("admin");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = http(admin, "GET", "/healthz", None, None).await;
    assert_ne!(plain.status, 200, "{}", plain.body);
    // HTTPS works; the certificate is the relay's (the pin clients already have).
    let Ok(out) = Command::new("curl")
        .args([
            "-sk",
            "-w",
            "\n%{http_code}",
            &format!("https://{admin}/healthz"),
        ])
        .output()
    else {
        eprintln!("SKIP https check: curl not installed (apt-get install curl)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200") && text.starts_with("ok"), "{text}");
    assert!(pin.starts_with("sha256:"));
    child.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
