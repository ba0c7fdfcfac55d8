//! A real etcd for the cluster's tests and benches: one member on loopback ports picked by
//! the OS, its data in a fresh directory, killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Proc, WAIT, eventually, fresh_dir};

/// A one-member etcd on `127.0.0.1`.
pub struct Etcd {
    proc: Proc,
    /// Its client URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its client address.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Etcd {
    /// Stops etcd, then removes its data directory (about 120 MiB of preallocated WAL per
    /// test, which would otherwise pile up in /tmp).
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Where `bin` is on the PATH (or in /usr/sbin, /usr/bin).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file())
}

impl Etcd {
    /// Starts etcd and waits until it reports healthy. Panics, naming the package to
    /// install, when etcd is not installed: a cluster test never passes without running.
    pub async fn start(name: &str) -> Self {
        let bin = which("etcd").unwrap_or_else(|| {
            panic!("etcd is not installed: apt-get install etcd-server (scripts/test.sh does)")
        });
        let dir = fresh_dir(&format!("etcd-{name}"));
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let proc = Proc::spawn(
            Command::new(bin)
                .args(["--name", "e1", "--data-dir"])
                .arg(dir.join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("e1={peer_url}")])
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse().expect("addr");
        let etcd = Self {
            proc,
            url,
            addr,
            dir,
        };
        eventually("etcd reports healthy", WAIT, || etcd.healthy()).await;
        etcd
    }

    /// Whether `GET /health` answers `"health":"true"`.
    pub async fn healthy(&self) -> bool {
        self.get("/health").await.contains("\"health\":\"true\"")
    }

    /// The body of `GET path` on the client port (empty on any failure): `/health`,
    /// `/metrics` (Prometheus text).
    pub async fn get(&self, path: &str) -> String {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(self.addr).await else {
            return String::new();
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n");
        if tcp.write_all(req.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
        if !matches!(read, Ok(Ok(_))) {
            return String::new();
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The etcd process (its PID for CPU figures).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}
