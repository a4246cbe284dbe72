//! Who holds what: process identities that survive pid reuse.
//!
//! A process is named by its pid and its start time (clock ticks since boot,
//! field 22 of `/proc/<pid>/stat`). Process ids are recycled; a pid whose
//! current process started at another time is a different process, so a
//! claim or reservation of the old one is treated as the dead process's.
//!
//! # Invariants
//! - A claim or reservation is treated as its owner's only while a process with
//!   that pid *and* that start time runs.

use std::sync::OnceLock;

/// Bits of the start time kept in a claim word (bits 3..32).
pub(crate) const CLAIM_START_BITS: u32 = 29;

/// The start time (clock ticks since boot) of process `pid`, or `None` when no
/// such process runs (a zombie counts as gone).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    parse_start(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line, `None` for a zombie.
fn parse_start(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain anything;
    // fields 3.. follow the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 22 is the 20th after the state (field 3).
    fields.nth(18)?.parse().ok()
}

/// This process: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Me {
    /// Process id.
    pub(crate) pid: u32,
    /// Start time in clock ticks since boot.
    pub(crate) start: u64,
}

impl Me {
    /// The calling process.
    pub(crate) fn get() -> Me {
        static ME: OnceLock<Me> = OnceLock::new();
        // A fork gets a new pid: compare before trusting the cache.
        let pid = std::process::id();
        let me = *ME.get_or_init(|| Me::of(pid));
        if me.pid == pid {
            me
        } else {
            Me::of(pid)
        }
    }

    fn of(pid: u32) -> Me {
        Me {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// The owner part of a claim word: pid in bits 32.., start-time bits in 3..32.
    pub(crate) fn claim_owner(self) -> u64 {
        claim_owner(self.pid, self.start)
    }

    /// The `writer` field of a record header: pid << 32 | low 32 start-time bits.
    pub(crate) fn writer(self) -> u64 {
        (u64::from(self.pid) << 32) | (self.start & 0xffff_ffff)
    }
}

/// The owner part of a claim word for process `pid` started at `start`.
pub(crate) fn claim_owner(pid: u32, start: u64) -> u64 {
    (u64::from(pid) << 32) | ((start & ((1 << CLAIM_START_BITS) - 1)) << 3)
}

/// True while the process named by a claim-word owner runs.
pub(crate) fn claim_owner_alive(owner: u64) -> bool {
    let pid = (owner >> 32) as u32;
    start_time(pid).is_some_and(|s| claim_owner(pid, s) == owner)
}

/// True while the process named by a record's `writer` field runs.
pub(crate) fn writer_alive(writer: u64) -> bool {
    let pid = (writer >> 32) as u32;
    start_time(pid).is_some_and(|s| s & 0xffff_ffff == writer & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Me::get();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0);
        assert!(claim_owner_alive(me.claim_owner()));
        assert!(writer_alive(me.writer()));
        // The same pid with another start time: a recycled pid, not us.
        let other = claim_owner(me.pid, me.start + 1);
        assert!(!claim_owner_alive(other));
        assert!(!writer_alive(me.writer() ^ 1));
        // Claim-word owners leave the state bits (0..3) free.
        assert_eq!(me.claim_owner() & 7, 0);
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
        assert_eq!(start_time(0), None);
    }

    #[test]
    fn the_start_time_is_field_22_even_when_the_name_has_parentheses() {
        let fields: Vec<String> = (3..=30).map(|i| i.to_string()).collect();
        let line = format!("4242 (evil) (name ) ) S {}", fields[1..].join(" "));
        assert_eq!(parse_start(&line), Some(22));
        let zombie = format!("4242 (x) Z {}", fields[1..].join(" "));
        assert_eq!(parse_start(&zombie), None);
        assert_eq!(parse_start("4242 (truncated) S 1 2"), None);
    }
}
