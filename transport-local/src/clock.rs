//! The clock every process of a host shares: lease deadlines written into the
//! log are in it.

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the host.
/// Never 0 (0 means "no deadline" where stored).
pub(crate) fn shared_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1)
}

/// A coarse `CLOCK_MONOTONIC` in nanoseconds (a few ms of resolution, read
/// without a syscall in a few ns): for rate limits on hot paths. Never 0.
pub(crate) fn coarse_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1)
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
}
