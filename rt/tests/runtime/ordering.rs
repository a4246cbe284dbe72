//! Many user threads submitting to many cores: every task runs on the core it
//! was sent to, and each thread's tasks run on each core in the order sent.

use std::sync::{Arc, Mutex};

use super::runtime;

/// Per core, the (thread, sequence) pairs in the order the core ran them.
type Log = Arc<Vec<Mutex<Vec<(usize, u32)>>>>;

#[test]
fn per_thread_order_is_kept_on_every_core() {
    let rt = Arc::new(runtime(3));
    let log: Log = Arc::new((0..rt.cores()).map(|_| Mutex::new(Vec::new())).collect());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (rt, log) = (rt.clone(), log.clone());
            std::thread::spawn(move || {
                let mut handles = Vec::new();
                for seq in 0..500u32 {
                    let core = (seq as usize * 7 + t) % rt.cores();
                    let log = log.clone();
                    handles.push(rt.spawn(core, move || async move {
                        assert_eq!(dashi_rt::io::current_core(), Some(core));
                        log[core].lock().unwrap().push((t, seq));
                    }));
                }
                for h in handles {
                    h.wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut total = 0;
    for core_log in log.iter() {
        let entries = core_log.lock().unwrap();
        total += entries.len();
        for t in 0..6 {
            let seqs: Vec<u32> = entries
                .iter()
                .filter(|(x, _)| *x == t)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "thread {t} out of order: {seqs:?}"
            );
        }
    }
    assert_eq!(total, 6 * 500);
    let stats = rt.stats();
    assert_eq!(stats.iter().map(|s| s.tasks_done).sum::<u64>(), 3000);
}

#[test]
fn core_for_is_stable_and_spreads_keys() {
    let rt = runtime(2);
    let a = rt.core_for(b"orders");
    assert_eq!(a, rt.core_for(b"orders"));
    let mut seen = [0usize; 2];
    for i in 0..100 {
        seen[rt.core_for(format!("queue-{i}").as_bytes())] += 1;
    }
    assert!(seen.iter().all(|n| *n > 20), "{seen:?}");
    let again = runtime(2);
    assert_eq!(again.core_for(b"orders"), a);
}

#[test]
fn join_handles_are_futures_too() {
    let rt = runtime(1);
    let h = rt.spawn(0, || async { 40 + 2 });
    assert_eq!(futures::executor::block_on(h).unwrap(), 42);
    let h = rt.spawn(5, || async {});
    assert!(matches!(
        h.wait(),
        Err(dashi_rt::RtError::NoSuchCore { core: 5, cores: 1 })
    ));
}

#[test]
fn pinned_cores_run_on_one_cpu_each() {
    let rt = dashi_rt::Runtime::start(
        dashi_rt::RuntimeConfig::default()
            .with_cores(2)
            .with_pinning(true),
    )
    .unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    for core in 0..2 {
        let allowed = rt
            .spawn(core, || async {
                // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
                let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
                // SAFETY: pid 0 = this thread; the size matches the set.
                let rc = unsafe {
                    libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
                };
                assert_eq!(rc, 0);
                // SAFETY: CPU_ISSET reads one bit of the set for an index below CPU_SETSIZE.
                (0..64)
                    .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
                    .collect::<Vec<_>>()
            })
            .wait()
            .unwrap();
        assert_eq!(allowed, vec![core % cpus]);
    }
}
