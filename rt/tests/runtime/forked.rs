//! A process forked from one running a runtime has none of its cores: the
//! copy it inherited refuses work at once, and dropping it waits for no
//! thread (the parent's runtime is untouched).

use std::time::{Duration, Instant};

use dashi_rt::{RtError, Runtime, RuntimeConfig};

#[test]
#[allow(unsafe_code)]
fn a_forked_child_gets_an_error_from_the_parent_s_runtime_at_once() {
    // The default shutdown time (3 s): a drop that waited for the cores
    // would take twice that and more.
    let rt = Runtime::start(RuntimeConfig::default().with_cores(1)).unwrap();
    assert_eq!(rt.spawn(0, || async { 1 }).wait(), Ok(1));
    // SAFETY: the child only spawns, waits, drops and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let rt_was_here = rt.started_here();
        let healthy = rt.health();
        let mut h = rt.spawn(0, || async { 2 });
        let got = h.wait_timeout(Duration::from_secs(10));
        let t0 = Instant::now();
        drop(rt);
        let code = match got {
            _ if rt_was_here => 5,
            _ if healthy != Err(RtError::Forked) => 6,
            Some(Err(RtError::Forked)) if t0.elapsed() < Duration::from_secs(3) => 0,
            Some(Err(RtError::Forked)) => 2,
            None => 3,
            Some(_) => 4,
        };
        // SAFETY: ends the child at once (no harness, no destructor).
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "2: the drop waited for the cores, 3: the task never ran nor failed, 4: another result, \
         5: started_here in the child, 6: healthy in the child (a confirm waiting on it never ends)"
    );
    assert!(rt.started_here());
    // The parent's runtime carries on.
    assert_eq!(rt.spawn(0, || async { 3 }).wait(), Ok(3));
    assert_eq!(
        RtError::Forked.to_string(),
        "the runtime's cores run in the process this one was forked from, not here"
    );
}
