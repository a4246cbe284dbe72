//! Shutdown with work in flight finishes or fails every task within the
//! configured time, never hangs, and refuses new work.

use std::time::{Duration, Instant};

use dashi_rt::{io, RtError, Runtime, RuntimeConfig};

#[test]
fn shutdown_fails_long_tasks_within_the_timeout() {
    let rt = Runtime::start(
        RuntimeConfig::default()
            .with_cores(2)
            .with_shutdown_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let sleepers: Vec<_> = (0..10)
        .map(|i| {
            rt.spawn(i % 2, || async {
                io::sleep(Duration::from_secs(3600)).await.unwrap();
            })
        })
        .collect();
    let quick = rt.spawn(0, || async {
        io::sleep(Duration::from_millis(10)).await.unwrap();
        "done"
    });
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    rt.shutdown().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(quick.wait().unwrap(), "done");
    for h in sleepers {
        assert!(matches!(h.wait(), Err(RtError::ShuttingDown)));
    }
}

#[test]
fn shutdown_lets_short_tasks_finish() {
    let rt = Runtime::start(
        RuntimeConfig::default()
            .with_cores(1)
            .with_shutdown_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let h = rt.spawn(0, || async {
        io::sleep(Duration::from_millis(100)).await.unwrap();
        7
    });
    std::thread::sleep(Duration::from_millis(10));
    rt.shutdown().unwrap();
    assert_eq!(h.wait().unwrap(), 7);
}

#[test]
fn drop_is_bounded_and_late_work_is_refused() {
    let rt = Runtime::start(
        RuntimeConfig::default()
            .with_cores(1)
            .with_shutdown_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    let h = rt.spawn(0, || async { io::sleep(Duration::from_secs(3600)).await });
    let rt = std::sync::Arc::new(rt);
    let t0 = Instant::now();
    let late = {
        let rt2 = rt.clone();
        drop(rt);
        // The last reference goes here.
        let r = std::sync::Arc::try_unwrap(rt2).unwrap();
        let pending = r.spawn(0, || async { 1 });
        drop(r);
        pending
    };
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(matches!(h.wait(), Err(RtError::ShuttingDown)));
    // Spawned before the drop: it either ran or was refused, never lost.
    match late.wait() {
        Ok(1) | Err(RtError::ShuttingDown) => {}
        other => panic!("{other:?}"),
    }
}

/// An idle wait (periodic housekeeping) ends at once when the runtime
/// stops, with `ECANCELED`, so a store that closes does not wait out its
/// flush period; a plain sleep still runs its time, and an idle wait begun
/// during the shutdown fails at once.
#[test]
fn idle_waits_end_when_the_runtime_stops_and_sleeps_do_not() {
    let rt = Runtime::start(
        RuntimeConfig::default()
            .with_cores(1)
            .with_shutdown_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let idle = rt.spawn(0, || async {
        let first = io::idle(Duration::from_secs(3600)).await;
        // Begun while stopping: fails at once.
        let again = io::idle(Duration::from_secs(3600)).await;
        (
            first.map_err(|e| e.raw_os_error()),
            again.map_err(|e| e.raw_os_error()),
        )
    });
    let slept = rt.spawn(0, || async {
        let t0 = Instant::now();
        io::sleep(Duration::from_millis(300)).await.unwrap();
        t0.elapsed()
    });
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    rt.shutdown().unwrap();
    let took = t0.elapsed();
    let canceled = Some(libc::ECANCELED);
    assert_eq!(idle.wait().unwrap(), (Err(canceled), Err(canceled)));
    assert!(slept.wait().unwrap() >= Duration::from_millis(300));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Idle alone: the shutdown does not wait out its period.
    let rt = Runtime::start(RuntimeConfig::default().with_cores(1)).unwrap();
    let h = rt.spawn(0, || async {
        io::idle(Duration::from_secs(3600)).await.is_err()
    });
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    rt.shutdown().unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(h.wait().unwrap());
    // Off a core, an idle wait is an error, not a hang.
    let off = futures::executor::block_on(io::idle(Duration::from_secs(1)));
    assert!(off.is_err());
}
