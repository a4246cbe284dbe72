//! Start-up probe: can this process use io_uring, and does the kernel support
//! every operation the engine issues? One clear error naming what is missing,
//! instead of a failure per core later.

use io_uring::{opcode, IoUring, Probe};

use super::RtError;

/// The operations the cores issue, with their names for error messages.
pub(crate) const REQUIRED: &[(u8, &str)] = &[
    (opcode::Nop::CODE, "NOP"),
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Fallocate::CODE, "FALLOCATE"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Recv::CODE, "RECV"),
];

/// Turns an `io_uring_setup` failure into a sentence a user can act on.
pub(crate) fn explain_setup_error(e: &std::io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) => {
            "io_uring is disabled for this process (sysctl kernel.io_uring_disabled, \
             a seccomp filter or a container runtime policy)"
        }
        Some(libc::ENOSYS) => "this kernel has no io_uring (Linux 5.6 or later is needed)",
        Some(libc::ENOMEM) => {
            "the kernel could not allocate the ring (raise RLIMIT_MEMLOCK or use fewer ring entries)"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => "no file descriptor is left for the ring",
        _ => "io_uring_setup failed",
    };
    format!("{why}: {e}")
}

/// Checks a probe result against [`REQUIRED`].
pub(crate) fn missing(supported: impl Fn(u8) -> bool) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .filter(|(code, _)| !supported(*code))
        .map(|(_, name)| *name)
        .collect()
}

/// Probes the running kernel. `setup` builds the ring (the real one, or a
/// failing one in tests).
pub(crate) fn check(setup: impl FnOnce() -> std::io::Result<IoUring>) -> Result<(), RtError> {
    let ring = setup().map_err(|e| RtError::Unavailable(explain_setup_error(&e)))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| RtError::Unavailable(format!("the io_uring probe failed: {e}")))?;
    let gone = missing(|code| probe.is_supported(code));
    if gone.is_empty() {
        Ok(())
    } else {
        Err(RtError::MissingOpcodes(gone))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_passes() {
        check(|| IoUring::new(8)).unwrap();
    }

    #[test]
    fn disabled_io_uring_is_one_clear_error() {
        let e = check(|| Err(std::io::Error::from_raw_os_error(libc::EPERM))).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, RtError::Unavailable(_)));
        assert!(text.contains("kernel.io_uring_disabled"), "{text}");
        let e = check(|| Err(std::io::Error::from_raw_os_error(libc::ENOSYS))).unwrap_err();
        assert!(e.to_string().contains("Linux 5.6"), "{e}");
        let e = check(|| Err(std::io::Error::from_raw_os_error(libc::ENOMEM))).unwrap_err();
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
    }

    #[test]
    fn missing_opcodes_are_named() {
        let gone = missing(|code| code != opcode::Fallocate::CODE && code != opcode::Timeout::CODE);
        assert_eq!(gone, vec!["FALLOCATE", "TIMEOUT"]);
        let e = RtError::MissingOpcodes(gone);
        assert_eq!(
            e.to_string(),
            "the kernel's io_uring lacks operations dashi needs: FALLOCATE, TIMEOUT"
        );
    }
}
