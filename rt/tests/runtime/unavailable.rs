//! io_uring disabled (simulated as the kernel reports it: EPERM from
//! io_uring_setup) is one clear error from `Runtime::start`, not a panic per core.

use dashi_rt::{RtError, Runtime, RuntimeConfig};

#[test]
fn disabled_io_uring_is_one_clear_error() {
    let mut cfg = RuntimeConfig::default().with_cores(4);
    cfg.simulate_unavailable = Some(1); // EPERM
    let e = Runtime::start(cfg).unwrap_err();
    assert!(matches!(e, RtError::Unavailable(_)));
    let text = e.to_string();
    assert!(
        text.starts_with("io_uring is unavailable: io_uring is disabled"),
        "{text}"
    );
    assert!(text.contains("kernel.io_uring_disabled"), "{text}");
}

#[test]
fn zero_cores_is_refused() {
    let e = Runtime::start(RuntimeConfig::default().with_cores(0)).unwrap_err();
    assert!(e.to_string().contains("at least one core"), "{e}");
}
