//! The clock every process of a host shares: lease deadlines and the times
//! reservations were first seen pending are written into the log in it.
//!
//! # Invariants
//! - [`shared_now_ns`] is the host's `CLOCK_MONOTONIC` in every process,
//!   whatever time namespace it runs in: a process of a namespace whose
//!   monotonic clock is shifted (`unshare --time`, a container restored by
//!   CRIU) takes its namespace's offset back off. Without that, a day's
//!   shift made one process take another's leased deliveries at once, or
//!   never.
//! - The offset is read once per process (again in a child forked since):
//!   a namespace's offsets cannot change once a process is in it.
//!   `/proc/self/timens_offsets` shows the namespace of the process's
//!   children, which `unshare` of a time namespace changes without moving
//!   the process itself: the offset is taken only while that namespace is
//!   the process's own (`/proc/self/ns/time` and `time_for_children` name
//!   one namespace), else 0. A process that enters another time namespace
//!   itself after its first read (`setns`, single-threaded processes only)
//!   keeps the offset it read.

use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicI64, AtomicUsize};

use crate::forked::Born;

/// `CLOCK_MONOTONIC` of the host, in nanoseconds: one clock for every
/// process of the host. Never 0 (0 means "no deadline" where stored).
pub(crate) fn shared_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let here = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    (here - i128::from(monotonic_offset_ns())).clamp(1, i128::from(u64::MAX)) as u64
}

/// A coarse `CLOCK_MONOTONIC` in nanoseconds (a few ms of resolution, read
/// without a syscall in a few ns): for rate limits on hot paths, within
/// this process only. Never 0.
pub(crate) fn coarse_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1)
}

/// Not read yet.
const UNREAD: i64 = i64::MIN;

/// The offset read, and the process it was read in ([`Born::id`]). Two
/// threads reading it at once read the same file: either store is right.
static OFFSET: AtomicI64 = AtomicI64::new(UNREAD);
static READ_IN: AtomicUsize = AtomicUsize::new(usize::MAX);

/// How far this process's `CLOCK_MONOTONIC` runs ahead of the host's, in
/// nanoseconds: its time namespace's offset, 0 outside one (or where the
/// kernel has none, or `/proc` is not mounted).
fn monotonic_offset_ns() -> i64 {
    let me = Born::now().id();
    let o = OFFSET.load(Acquire);
    if o != UNREAD && READ_IN.load(Acquire) == me {
        return o;
    }
    let own = std::fs::read_link("/proc/self/ns/time")
        .ok()
        .is_some_and(|t| std::fs::read_link("/proc/self/ns/time_for_children").ok() == Some(t));
    let read = match own {
        true => std::fs::read_to_string("/proc/self/timens_offsets")
            .map(|t| parse_offsets(&t))
            .unwrap_or(0),
        false => 0,
    };
    OFFSET.store(read, Release);
    READ_IN.store(me, Release);
    read
}

/// The monotonic offset of `/proc/self/timens_offsets`
/// (`monotonic <seconds> <nanoseconds>` a line; the clock may be given by
/// its number, 1).
fn parse_offsets(text: &str) -> i64 {
    text.lines()
        .find_map(|line| {
            let mut f = line.split_whitespace();
            let clock = f.next()?;
            if clock != "monotonic" && clock != "1" {
                return None;
            }
            let secs: i64 = f.next()?.parse().ok()?;
            let nanos: i64 = f.next()?.parse().ok()?;
            Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_and_never_zero() {
        let t = super::shared_now_ns();
        assert!(t > 0 && super::shared_now_ns() >= t);
        let c = super::coarse_now_ns();
        assert!(c > 0 && super::coarse_now_ns() >= c);
    }

    #[test]
    fn a_namespace_s_offsets_are_read_as_the_kernel_writes_them() {
        let shifted = "monotonic       86400         0\nboottime          100         0\n";
        assert_eq!(super::parse_offsets(shifted), 86_400_000_000_000);
        assert_eq!(super::parse_offsets("1 -600 500\n"), -599_999_999_500);
        assert_eq!(super::parse_offsets("monotonic 0 0\nboottime 0 0\n"), 0);
        assert_eq!(super::parse_offsets(""), 0);
        assert_eq!(super::parse_offsets("monotonic x 0\n"), 0);
    }
}
