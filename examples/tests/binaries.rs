//! End-to-end tests of the shipped binaries: tunnel-relay, tunnel-agent and tunnel-access as
//! real processes on loopback. Cargo builds the binaries for these tests (`CARGO_BIN_EXE_*`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_testkit::{Bins, Proc, WAIT, cargo_bins, eventually, fresh_dir, spawn_echo_server};

fn relay_cmd(bins: &Bins, dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(&bins.relay);
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
    .arg(dir.join("state"))
    .stderr(Stdio::null());
    cmd
}

async fn echo_round_trip(addr: &str, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(msg).await?;
    tcp.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await??;
    Ok(out)
}

#[test]
fn token_file_stores_only_the_hash() {
    let dir = fresh_dir("test-hash");
    let token = cargo_bins!().new_token(
        &dir.join("tokens.toml"),
        &["--name", "pi", "--device", "pi"],
    );
    assert!(token.starts_with("tun_"));
    let file = std::fs::read_to_string(dir.join("tokens.toml")).expect("tokens.toml");
    assert!(!file.contains(&token) && file.contains("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_reach_a_device_privately_and_survive_a_relay_restart() {
    let bins = cargo_bins!();
    let dir = fresh_dir("test-restart");
    let tokens = dir.join("tokens.toml");
    let device_token = bins.new_token(&tokens, &["--name", "pi", "--device", "pi-42"]);
    let laptop_token = bins.new_token(&tokens, &["--name", "laptop", "--access", "pi-42/*"]);

    let mut relay = Proc::spawn(&mut relay_cmd(&bins, &dir, "127.0.0.1:0"));
    let [relay_addr, pin]: [String; 2] = relay
        .read_keys(&["listening", "pin"], WAIT)
        .await
        .try_into()
        .unwrap();

    let ssh = spawn_echo_server().await;
    let client = |cmd: &mut Command, token: &str| {
        cmd.args(["--relay", &relay_addr, "--pin", &pin])
            .env("TUNNEL_TOKEN", token)
            .env_remove("RUST_LOG")
            .stderr(Stdio::null());
    };
    let mut agent_cmd = Command::new(&bins.agent);
    client(&mut agent_cmd, &device_token);
    let _agent =
        Proc::spawn(agent_cmd.args(["--device-id", "pi-42", "--expose", &format!("ssh={ssh}")]));

    // --list shows the device once it is online.
    eventually("the device to be listed online", WAIT, || {
        let mut list = Command::new(&bins.access);
        client(&mut list, &laptop_token);
        let out = list.arg("--list").output().expect("tunnel-access --list");
        async move { String::from_utf8_lossy(&out.stdout).contains("pi-42\tonline\tssh") }
    })
    .await;

    // --listen serves the device's ssh on a local port.
    let mut access_cmd = Command::new(&bins.access);
    client(&mut access_cmd, &laptop_token);
    let mut access = Proc::spawn(access_cmd.args([
        "--device",
        "pi-42",
        "--service",
        "ssh",
        "--listen",
        "127.0.0.1:0",
    ]));
    let [local]: [String; 1] = access
        .read_keys(&["listening"], WAIT)
        .await
        .try_into()
        .unwrap();
    assert_eq!(
        echo_round_trip(&local, b"SSH-2.0-test").await.unwrap(),
        b"SSH-2.0-test"
    );

    // --stdio, as an ssh ProxyCommand uses it.
    let mut stdio_cmd = Command::new(&bins.access);
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
        relay.terminate(WAIT).success(),
        "relay must exit cleanly on SIGTERM"
    );
    let mut relay2 = None;
    eventually("the relay to rebind its port", WAIT, || {
        let mut p = Proc::spawn(&mut relay_cmd(&bins, &dir, &relay_addr));
        std::thread::sleep(Duration::from_millis(100));
        let alive = p.is_running();
        if alive {
            relay2 = Some(p);
        }
        async move { alive }
    })
    .await;
    let mut relay2 = relay2.unwrap();
    let [_, pin2]: [String; 2] = relay2
        .read_keys(&["listening", "pin"], WAIT)
        .await
        .try_into()
        .unwrap();
    assert_eq!(pin2, pin, "the state directory keeps the relay's key");

    // The agent reconnects by itself, and the access client's next connection works.
    eventually("a stream through the restarted relay", WAIT, || {
        let local = local.clone();
        async move {
            echo_round_trip(&local, b"again")
                .await
                .is_ok_and(|r| r == b"again")
        }
    })
    .await;
}
