//! A task that panics fails only itself; a core whose loop panics fails every
//! pending task of that core, refuses new ones, and is reported by `health`;
//! other cores keep working.

use std::time::Duration;

use dashi_rt::{io, RtError};

use super::runtime;

#[test]
fn a_panicking_task_fails_only_itself() {
    let rt = runtime(1);
    let bad = rt.spawn(0, || async {
        if io::current_core().is_some() {
            panic!("task failure");
        }
    });
    match bad.wait() {
        Err(RtError::TaskPanicked(m)) => assert!(m.contains("task failure")),
        other => panic!("{other:?}"),
    }
    assert_eq!(rt.spawn(0, || async { 5 }).wait().unwrap(), 5);
    rt.health().unwrap();
}

#[test]
fn a_panicking_core_fails_its_pending_work_and_is_reported() {
    let rt = runtime(2);
    let pending: Vec<_> = (0..5)
        .map(|_| rt.spawn(0, || async { io::sleep(Duration::from_secs(3600)).await }))
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    rt.inject_core_panic(0);
    for h in pending {
        match h.wait() {
            Err(RtError::CorePanicked { core: 0, message }) => {
                assert!(message.contains("asked to panic"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        rt.spawn(0, || async {}).wait(),
        Err(RtError::CorePanicked { core: 0, .. })
    ));
    assert!(matches!(
        rt.health(),
        Err(RtError::CorePanicked { core: 0, .. })
    ));
    assert!(rt.stats()[0].panicked && !rt.stats()[1].panicked);
    assert_eq!(rt.spawn(1, || async { 9 }).wait().unwrap(), 9);
    rt.shutdown().unwrap();
}
