//! The example binaries as child processes: where they are, a guard that kills one by its
//! PID, the `key value` lines they print at start, tokens made by `tunnel-relay token new`,
//! and readers for a process's memory and CPU time in `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::within;

/// Poll period of [`Proc::terminate`].
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Paths of the example binaries (package `tunnel-examples`).
///
/// The package's own integration tests take them the cargo way,
/// [`cargo_bins!`](crate::cargo_bins): cargo builds the binaries before those tests and names
/// them in `CARGO_BIN_EXE_*`. Other packages do not get those variables and use
/// [`Bins::in_dir`].
#[derive(Debug, Clone)]
pub struct Bins {
    /// `tunnel-relay`.
    pub relay: PathBuf,
    /// `tunnel-agent`.
    pub agent: PathBuf,
    /// `tunnel-access`.
    pub access: PathBuf,
}

/// The example binaries cargo built for the calling test ([`Bins`] from `CARGO_BIN_EXE_*`).
///
/// Expands to `env!` at the call site, so it compiles only in an integration test, bench or
/// example of the `tunnel-examples` package itself.
#[macro_export]
macro_rules! cargo_bins {
    () => {
        $crate::Bins {
            relay: ::std::path::PathBuf::from(::std::env!("CARGO_BIN_EXE_tunnel-relay")),
            agent: ::std::path::PathBuf::from(::std::env!("CARGO_BIN_EXE_tunnel-agent")),
            access: ::std::path::PathBuf::from(::std::env!("CARGO_BIN_EXE_tunnel-access")),
        }
    };
}

impl Bins {
    /// The binaries in `dir` (such as `target/release`), for code outside the
    /// `tunnel-examples` package, which cannot use [`cargo_bins!`](crate::cargo_bins).
    /// Panics if one is missing.
    pub fn in_dir(dir: &Path) -> Self {
        let bin = |name: &str| {
            let path = dir.join(name);
            assert!(
                path.exists(),
                "{} missing: build it with `cargo build -p tunnel-examples --bins`",
                path.display()
            );
            path
        };
        Self {
            relay: bin("tunnel-relay"),
            agent: bin("tunnel-agent"),
            access: bin("tunnel-access"),
        }
    }

    /// Runs `tunnel-relay token new --file <file> <args>` (args such as `--name pi --device
    /// pi`) and returns the new token; the file keeps only its hash.
    pub fn new_token(&self, file: &Path, args: &[&str]) -> String {
        let out = Command::new(&self.relay)
            .args(["token", "new", "--file"])
            .arg(file)
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
}

/// A fresh, empty directory `tunnel-<name>-<pid>` in the system's temporary directory (one
/// left over from an earlier run is removed first).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tunnel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A child process, killed (by its own PID) and reaped when dropped, pass or fail.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout piped, for [`Proc::read_keys`]; stderr goes
    /// where `cmd` says (inherited unless set).
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Self { child }
    }

    /// [`Proc::spawn`], then [`Proc::read_keys`].
    pub async fn start(cmd: &mut Command, keys: &[&str], limit: Duration) -> (Self, Vec<String>) {
        let mut proc = Self::spawn(cmd);
        let values = proc.read_keys(keys, limit).await;
        (proc, values)
    }

    /// Reads `key value` lines from the process's stdout until every key has been seen, for
    /// at most `limit`; returns the values in the order of `keys`. The rest of stdout is
    /// drained by a task, so the process never blocks on a full pipe.
    ///
    /// Takes stdout: call it once per process, from within a Tokio runtime.
    pub async fn read_keys(&mut self, keys: &[&str], limit: Duration) -> Vec<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .expect("stdout piped and not read yet");
        let stdout = tokio::process::ChildStdout::from_std(stdout).expect("async stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut found = vec![String::new(); keys.len()];
        within(&format!("the process to print {keys:?}"), limit, async {
            while found.iter().any(String::is_empty) {
                let line = lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("process ended early");
                for (value, key) in found.iter_mut().zip(keys) {
                    if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
                        v.clone_into(value);
                    }
                }
            }
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        found
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit; returns its status.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process {pid} ignored SIGTERM");
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Kills the process (SIGKILL) and reaps it; nothing happens if it has already exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS`); 0 once it has exited.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Peak resident memory of process `pid`, in KiB (`VmHWM`), since it started or since the
/// last [`reset_peak_rss`]; 0 once it has exited.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:")
}

/// Resets the peak of process `pid` (`VmHWM`) to its current RSS, so the next
/// [`peak_rss_kib`] is the peak of what happens from now on.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, all threads) process `pid` has used, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    f.iter().sum::<u64>() as f64 / 100.0
}
