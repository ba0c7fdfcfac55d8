//! End-to-end tests of the shipped binaries: tunnel-relay, tunnel-agent and tunnel-access as
//! real processes on loopback. `scripts/test.sh` builds them before running the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait in these tests; generous because the machine may be loaded.
const WAIT: Duration = Duration::from_secs(30);

/// Directory holding the example binaries (next to this test's `deps/` directory).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p tunnel-examples --bins` first",
        path.display()
    );
    path
}

/// A child process killed (by its own PID) when the test ends, pass or fail.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process {pid} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads `key value` lines from a child's stdout until every key is seen.
async fn read_keys(child: &mut Child, keys: &[&str]) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines =
        BufReader::new(tokio::process::ChildStdout::from_std(stdout).expect("async stdout"))
            .lines();
    let mut found = vec![String::new(); keys.len()];
    let read = async {
        while found.iter().any(String::is_empty) {
            let line = lines
                .next_line()
                .await
                .expect("read stdout")
                .expect("process ended early");
            for (i, k) in keys.iter().enumerate() {
                if let Some(v) = line.strip_prefix(&format!("{k} ")) {
                    found[i] = v.to_owned();
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("timed out reading process output");
    found
}

fn new_token(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("tunnel-relay"))
        .args(["token", "new", "--file"])
        .arg(dir.join("tokens.toml"))
        .args(args)
        .output()
        .expect("tunnel-relay token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn relay_cmd(dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(bin("tunnel-relay"));
    cmd.args([
        "serve",
        "--listen",
        listen,
        "--heartbeat-ms",
        "300",
        "--grace-secs",
        "1",
        "--tokens",
    ])
    .arg(dir.join("tokens.toml"))
    .arg("--state-dir")
    .arg(dir.join("state"));
    cmd
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tunnel-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A local echo service standing in for the device's sshd.
async fn echo_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn echo_round_trip(addr: &str, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(msg).await?;
    tcp.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await??;
    Ok(out)
}

/// Retries `f` every 200 ms until it returns true, up to [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn relay_refuses_to_start_without_a_token_file() {
    let dir = temp_dir("noauth");
    let out = Command::new(bin("tunnel-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .expect("run relay");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev"));
}

#[test]
fn token_file_stores_only_the_hash() {
    let dir = temp_dir("hash");
    let token = new_token(&dir, &["--name", "pi", "--device", "pi"]);
    assert!(token.starts_with("tun_"));
    let file = std::fs::read_to_string(dir.join("tokens.toml")).expect("tokens.toml");
    assert!(!file.contains(&token) && file.contains("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_reach_a_device_privately_and_survive_a_relay_restart() {
    let dir = temp_dir("restart");
    let device_token = new_token(&dir, &["--name", "pi", "--device", "pi-42"]);
    let laptop_token = new_token(&dir, &["--name", "laptop", "--access", "pi-42/*"]);

    let mut relay = Proc::spawn(&mut relay_cmd(&dir, "127.0.0.1:0"));
    let [relay_addr, pin]: [String; 2] = read_keys(&mut relay.0, &["listening", "pin"])
        .await
        .try_into()
        .unwrap();

    let ssh = echo_service().await;
    let client = |cmd: &mut Command, token: &str| {
        cmd.args(["--relay", &relay_addr, "--pin", &pin])
            .env("TUNNEL_TOKEN", token)
            .env_remove("RUST_LOG");
    };
    let mut agent_cmd = Command::new(bin("tunnel-agent"));
    client(&mut agent_cmd, &device_token);
    let _agent =
        Proc::spawn(agent_cmd.args(["--device-id", "pi-42", "--expose", &format!("ssh={ssh}")]));

    // --list shows the device once it is online.
    eventually("the device to be listed online", || {
        let mut list = Command::new(bin("tunnel-access"));
        client(&mut list, &laptop_token);
        let out = list.arg("--list").output().expect("tunnel-access --list");
        async move { String::from_utf8_lossy(&out.stdout).contains("pi-42\tonline\tssh") }
    })
    .await;

    // --listen serves the device's ssh on a local port.
    let mut access_cmd = Command::new(bin("tunnel-access"));
    client(&mut access_cmd, &laptop_token);
    let mut access = Proc::spawn(access_cmd.args([
        "--device",
        "pi-42",
        "--service",
        "ssh",
        "--listen",
        "127.0.0.1:0",
    ]));
    let [local]: [String; 1] = read_keys(&mut access.0, &["listening"])
        .await
        .try_into()
        .unwrap();
    assert_eq!(
        echo_round_trip(&local, b"SSH-2.0-test").await.unwrap(),
        b"SSH-2.0-test"
    );

    // --stdio, as an ssh ProxyCommand uses it.
    let mut stdio_cmd = Command::new(bin("tunnel-access"));
    client(&mut stdio_cmd, &laptop_token);
    let mut stdio = stdio_cmd
        .args(["--device", "pi-42", "--service", "ssh", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn --stdio");
    {
        use std::io::Write;
        let mut stdin = stdio.stdin.take().expect("stdin");
        stdin.write_all(b"over stdio").expect("write stdin");
    } // stdin closed: half-close, the echo comes back and the process exits
    let out = tokio::task::spawn_blocking(move || stdio.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"over stdio");

    // Restart the relay on the same address with the same state directory (same pin).
    assert!(
        relay.terminate().success(),
        "relay must exit cleanly on SIGTERM"
    );
    let mut relay2 = None;
    eventually("the relay to rebind its port", || {
        let mut p = Proc::spawn(&mut relay_cmd(&dir, &relay_addr));
        std::thread::sleep(Duration::from_millis(100));
        let alive = p.0.try_wait().expect("try_wait").is_none();
        if alive {
            relay2 = Some(p);
        }
        async move { alive }
    })
    .await;
    let mut relay2 = relay2.unwrap();
    let [_, pin2]: [String; 2] = read_keys(&mut relay2.0, &["listening", "pin"])
        .await
        .try_into()
        .unwrap();
    assert_eq!(pin2, pin, "the state directory keeps the relay's key");

    // The agent reconnects by itself, and the access client's next connection works.
    eventually("a stream through the restarted relay", || {
        let local = local.clone();
        async move {
            echo_round_trip(&local, b"again")
                .await
                .is_ok_and(|r| r == b"again")
        }
    })
    .await;
}
