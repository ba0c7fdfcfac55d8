//! Giving memory back to the system once a load has passed.
//!
//! glibc's allocator keeps what a burst of streams freed: each worker thread allocates from
//! its own arena, and an arena returns memory to the system only from the top of its heap,
//! so the holes a burst leaves stay in the process for good. After `benches/compare.sh`'s
//! load (one 256 MiB stream, 100 then 1000 full-duplex connections, 1000 idle ones), the
//! relay held 35 to 356 MiB against 12 MiB before it, and the agent 24 MiB against 6 MiB,
//! with no stream open; `malloc_trim` brought them to about 16 and 8 MiB
//! (benches/RESULTS.md, 5.15).
//!
//! [`give_back_memory`] starts a thread that looks every [`CHECK_EVERY`] at how much freed
//! memory the allocator holds and how much the process has resident, and trims once a load
//! has passed: memory moved since the last trim, nothing moved since the last look, and
//! over [`TRIM_AT`] is free. So a trim never stalls a busy process's allocations (it takes
//! every arena's lock in turn) nor hands back pages about to be faulted in again, and an
//! idle process is trimmed once, not at every look (a trim releases pages, not chunks: the
//! allocator still counts them free). Memory comes back 5 to 10 s after a load ends.
//!
//! Used by the `tunnel-relay`, `tunnel-agent` and `tunnel-access` binaries and offered to
//! Python as `tunnel.give_back_memory()`. `tunnel-core` itself leaves the process's
//! allocator alone: an application that embeds it calls [`give_back_memory`] if it wants
//! the same. Only where the allocator is glibc's (Linux, `target_env = "gnu"`); elsewhere
//! nothing is started.

use std::sync::OnceLock;
use std::time::Duration;

/// The name of the thread, as `ps -T` and `/proc/PID/task/*/comm` show it (15 bytes).
pub const THREAD_NAME: &str = "give-back-mem";

/// How often the allocator is looked at: often enough that memory comes back seconds after
/// a load; each look walks the free lists of every arena, a fraction of a millisecond.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Freed memory worth a trim: below a few MiB a trim is not worth the arena locks it takes
/// (a device's whole footprint is about 6 MiB).
pub const TRIM_AT: usize = 4 * 1024 * 1024;

/// Stack of the trimming thread: it calls two libc functions and reads one file.
const STACK: usize = 64 * 1024;

/// A change of the allocator's free memory, or a growth of the process, that tells memory
/// moved since the last look: below it, the process is idle (heartbeats, a keystroke).
const MOVED: usize = 1024 * 1024;

/// When to trim, from what the allocator holds free and what the process has resident.
#[derive(Debug, Default)]
struct Policy {
    /// Free and resident bytes at the last look (after its trim, if it trimmed).
    last: Option<(usize, usize)>,
    /// Memory moved since the last trim (or since start).
    moved_since_trim: bool,
}

impl Policy {
    /// Whether to trim now: memory moved since the last trim (a load ran), it is quiet
    /// since the last look (the load is over: no trim stalls a busy process's allocations,
    /// nor hands back pages it is about to fault in again), and enough is free. A trim does
    /// not change what the allocator counts free, so an idle process is trimmed once.
    fn should_trim(&mut self, free_held: usize, resident: usize) -> bool {
        let moving = match self.last {
            None => true,
            Some((free, res)) => free_held.abs_diff(free) >= MOVED || resident >= res + MOVED,
        };
        self.last = Some((free_held, resident));
        if moving {
            self.moved_since_trim = true;
            return false;
        }
        self.moved_since_trim && free_held >= TRIM_AT
    }

    /// A trim left `resident` bytes resident; the allocator still counts `free_held` free.
    fn trimmed(&mut self, free_held: usize, resident: usize) {
        self.last = Some((free_held, resident));
        self.moved_since_trim = false;
    }
}

/// Whether the thread runs (one per process, however many times it is asked for).
static STARTED: OnceLock<bool> = OnceLock::new();

/// Starts the thread that gives freed memory back (see the crate doc), once per process:
/// later calls return the first one's answer. Returns whether it runs: not where the
/// allocator is not glibc's, nor if the thread could not start.
pub fn give_back_memory() -> bool {
    *STARTED.get_or_init(|| glibc::AVAILABLE && start())
}

fn start() -> bool {
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .stack_size(STACK)
        .spawn(|| {
            let mut policy = Policy::default();
            loop {
                std::thread::sleep(CHECK_EVERY);
                let (free, before) = (glibc::free_held(), resident_bytes());
                if policy.should_trim(free, before) {
                    glibc::trim();
                    let after = resident_bytes();
                    policy.trimmed(free, after); // a trim leaves chunks free
                    tracing::debug!(free, before, after, "gave freed memory back");
                }
            }
        })
        .is_ok()
}

/// This process's resident size in bytes (0 if `/proc` cannot tell).
fn resident_bytes() -> usize {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    kib * 1024
}

// The only unsafe code of the crate: two glibc calls with no arguments to get wrong.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    pub(super) const AVAILABLE: bool = true;

    /// Bytes in free chunks of every arena: memory the process holds and does not use.
    pub(super) fn free_held() -> usize {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's state under
        // its arena locks.
        unsafe { libc::mallinfo2() }.fordblks
    }

    /// Returns the free pages of every arena to the system (`madvise`), not only the top.
    pub(super) fn trim() {
        // SAFETY: malloc_trim is safe to call at any time from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) const AVAILABLE: bool = false;
    pub(super) fn free_held() -> usize {
        0
    }
    pub(super) fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_process_is_trimmed_once_when_a_load_has_passed() {
        let mut policy = Policy::default();
        assert!(!policy.should_trim(MIB, 10 * MIB), "the first look");
        assert!(
            !policy.should_trim(MIB, 10 * MIB),
            "little free memory, nothing moved"
        );
        assert!(!policy.should_trim(20 * MIB, 40 * MIB), "a load runs");
        assert!(!policy.should_trim(10 * MIB, 45 * MIB), "and runs");
        assert!(
            !policy.should_trim(30 * MIB, 45 * MIB),
            "it ends: its memory is freed"
        );
        assert!(policy.should_trim(30 * MIB, 45 * MIB), "quiet since: trim");
        policy.trimmed(30 * MIB, 17 * MIB);
        // The allocator still counts the trimmed chunks free: no trim again while idle.
        assert!(!policy.should_trim(30 * MIB, 17 * MIB));
        assert!(!policy.should_trim(30 * MIB + MOVED - 1, 17 * MIB + MOVED - 1));
    }

    #[test]
    fn a_busy_process_is_not_trimmed_until_it_is_quiet() {
        let mut policy = Policy::default();
        for i in 0..10 {
            // Free memory swings by more than MOVED at every look.
            let free = if i % 2 == 0 { 10 * MIB } else { 20 * MIB };
            assert!(!policy.should_trim(free, 60 * MIB), "look {i}");
        }
        assert!(policy.should_trim(20 * MIB, 60 * MIB));
    }

    #[test]
    fn a_new_load_is_trimmed_after_it() {
        let mut policy = Policy::default();
        policy.trimmed(30 * MIB, 17 * MIB);
        // The next load takes freed chunks back (faulting their pages in) …
        assert!(!policy.should_trim(2 * MIB, 45 * MIB));
        assert!(
            !policy.should_trim(2 * MIB, 45 * MIB),
            "too little free to trim"
        );
        // … and frees them when it ends.
        assert!(!policy.should_trim(30 * MIB, 45 * MIB));
        assert!(policy.should_trim(30 * MIB, 45 * MIB));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_thread_starts_once_however_often_it_is_asked_for() {
        assert!(give_back_memory());
        assert!(give_back_memory());
        let named = || {
            std::fs::read_dir("/proc/self/task")
                .expect("list threads")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim_end() == THREAD_NAME)
                .count()
        };
        // A new thread names itself once it runs: up to 2 s for that.
        for _ in 0..200 {
            if named() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(named(), 1);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_returns_the_pages_of_holes_in_the_heap() {
        // 32 MiB of 16 KiB blocks, every other one freed: holes that glibc keeps, the
        // shape a burst of streams leaves behind.
        let mut blocks: Vec<Vec<u8>> = (0..2048).map(|i| vec![i as u8; 16 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        let free = glibc::free_held();
        assert!(free >= 8 * MIB, "{free} bytes free, 16 MiB expected");
        let before = resident_bytes();
        glibc::trim();
        let after = resident_bytes();
        assert!(
            before >= after + 8 * MIB,
            "resident {before} -> {after} bytes: the holes' pages were not returned"
        );
        assert_eq!(kept.len(), 1024);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (2 * i) as u8));
    }
}
