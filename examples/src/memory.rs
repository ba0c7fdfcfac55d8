//! Giving memory back to the system once a load has passed.
//!
//! glibc's allocator keeps what a burst of streams freed: each worker thread allocates from
//! its own arena, and an arena returns memory to the system only from the top of its heap,
//! so the holes a burst leaves stay in the process for good. After `benches/compare.sh`'s
//! load (one 256 MiB stream, 100 then 1000 full-duplex connections, 1000 idle ones), the
//! relay held 45 MiB against 12 MiB before it, and the agent 24 MiB against 6 MiB, with no
//! stream open; `malloc_trim` brought them to 17 and 8 MiB (benches/RESULTS.md, 5.15).
//!
//! [`give_back_memory`] starts a thread that looks every [`CHECK_EVERY`] at how much freed
//! memory the allocator holds and how much the process has resident, and trims when both
//! say a load has passed: over [`TRIM_AT`] of free memory, and the resident size up by as
//! much since the last trim. A trim releases pages, not chunks (the allocator still counts
//! them free), hence the resident size: an idle process is trimmed once, not every time.
//! Under a steady load a trim hands back pages that are faulted in again soon: at most one
//! trim per check, which costs little next to the memory a device or relay keeps otherwise.
//!
//! Only where the allocator is glibc's (Linux, `target_env = "gnu"`); elsewhere nothing
//! is started. A library user can call `malloc_trim` the same way: `tunnel-core` itself
//! leaves the process's allocator alone.

use std::time::Duration;

/// How often the allocator is looked at: often enough that memory comes back seconds after
/// a load; each look walks the free lists of every arena, a fraction of a millisecond.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Freed memory (and resident growth since the last trim) worth a trim: below a few MiB a
/// trim is not worth the arena locks it takes (a device's whole footprint is about 6 MiB).
pub const TRIM_AT: usize = 4 * 1024 * 1024;

/// Stack of the trimming thread: it calls two libc functions and reads one file.
const STACK: usize = 64 * 1024;

/// When to trim, from what the allocator holds free and what the process has resident.
#[derive(Debug, Default)]
struct Policy {
    /// Resident bytes right after the last trim (0 before the first).
    resident_after_trim: usize,
}

impl Policy {
    /// Whether to trim now.
    fn should_trim(&mut self, free_held: usize, resident: usize) -> bool {
        // Memory given back some other way lowers the mark, so growth is counted from it.
        self.resident_after_trim = self.resident_after_trim.min(resident);
        free_held >= TRIM_AT && resident >= self.resident_after_trim + TRIM_AT
    }

    /// A trim left `resident` bytes resident.
    fn trimmed(&mut self, resident: usize) {
        self.resident_after_trim = resident;
    }
}

/// Starts the thread that gives freed memory back (see the module doc). Returns whether
/// it runs: not where the allocator is not glibc's, nor when the thread cannot start.
pub fn give_back_memory() -> bool {
    if !glibc::AVAILABLE {
        return false;
    }
    std::thread::Builder::new()
        .name("give-back-memory".into())
        .stack_size(STACK)
        .spawn(|| {
            let mut policy = Policy::default();
            loop {
                std::thread::sleep(CHECK_EVERY);
                let (free, before) = (glibc::free_held(), resident_bytes());
                if policy.should_trim(free, before) {
                    glibc::trim();
                    let after = resident_bytes();
                    policy.trimmed(after);
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
    fn a_load_that_left_freed_memory_and_grew_the_process_is_trimmed_once() {
        let mut policy = Policy::default();
        assert!(!policy.should_trim(MIB, 10 * MIB), "little free memory");
        assert!(policy.should_trim(30 * MIB, 45 * MIB), "after a load");
        policy.trimmed(17 * MIB);
        // The allocator still counts the trimmed chunks free: no trim again while idle.
        assert!(!policy.should_trim(30 * MIB, 17 * MIB));
        assert!(!policy.should_trim(30 * MIB, 17 * MIB + TRIM_AT - 1));
        // The next load faults pages in again.
        assert!(policy.should_trim(30 * MIB, 40 * MIB));
    }

    #[test]
    fn memory_given_back_otherwise_lowers_the_mark() {
        let mut policy = Policy::default();
        policy.trimmed(20 * MIB);
        assert!(!policy.should_trim(8 * MIB, 12 * MIB));
        assert!(policy.should_trim(8 * MIB, 12 * MIB + TRIM_AT));
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
