//! A process-wide monotonic clock in nanoseconds, cheap to store in atomics.
//!
//! # Invariants
//! - `now_ns` never returns 0 or `u64::MAX` ([`NEVER`]), which mean "unset"
//!   and "never" where a time is stored in an atomic.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since an arbitrary process-wide origin. Never 0 and never
/// `u64::MAX` (which mean "unset" and "never" where stored).
pub fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    (base.elapsed().as_nanos() as u64).saturating_add(1)
}

/// `now + d` in the same clock, saturating to "never" (`u64::MAX`).
pub fn deadline_after(d: Duration) -> u64 {
    now_ns().saturating_add(d.as_nanos().min(u64::MAX as u128) as u64)
}

/// Sentinel for "no deadline".
pub const NEVER: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_saturating() {
        let a = now_ns();
        let b = now_ns();
        assert!(a >= 1 && b >= a);
        assert_eq!(deadline_after(Duration::MAX), NEVER);
        assert!(deadline_after(Duration::from_secs(1)) > b);
    }
}
