//! File I/O, fdatasync, fallocate and timers through the core's ring, with
//! many operations per `io_uring_enter`.

use std::time::{Duration, Instant};

use dashi_rt::io;

use super::{runtime, temp_file};

#[test]
fn write_read_sync_fallocate_round_trip() {
    let rt = runtime(2);
    let (_dir, file) = temp_file();
    let f = file.clone();
    let out = rt
        .spawn(1, move || async move {
            io::fallocate(&f, 0, 1 << 20, 0).await?;
            let (n, buf) = io::write_at(&f, vec![7u8; 4096], 4096).await;
            assert_eq!(n?, 4096);
            assert_eq!(buf.len(), 4096);
            io::fdatasync(&f).await?;
            let (n, back) = io::read_at(&f, vec![0u8; 8192], 0).await;
            assert_eq!(n?, 8192);
            std::io::Result::Ok(back)
        })
        .wait()
        .unwrap()
        .unwrap();
    assert!(out[..4096].iter().all(|b| *b == 0));
    assert!(out[4096..].iter().all(|b| *b == 7));
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
}

#[test]
fn errors_come_back_as_io_errors() {
    let rt = runtime(1);
    let (dir, _) = temp_file();
    let ro = std::sync::Arc::new(std::fs::File::open(dir.path().join("data")).unwrap());
    let r = rt
        .spawn(
            0,
            move || async move { io::write_at(&ro, vec![1], 0).await.0 },
        )
        .wait()
        .unwrap();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc_ebadf()));
    // Off a core thread the operations refuse, they do not panic.
    let e = futures::executor::block_on(io::nop()).unwrap_err();
    assert!(e.to_string().contains("not on a dashi core thread"), "{e}");
}

fn libc_ebadf() -> i32 {
    9
}

#[test]
fn many_operations_share_one_enter() {
    let rt = runtime(1);
    let (_dir, file) = temp_file();
    let before = rt.stats()[0].clone();
    let f = file.clone();
    rt.spawn(0, move || async move {
        let writes: Vec<_> = (0..64u64)
            .map(|i| io::write_at(&f, vec![i as u8; 512], i * 512))
            .collect();
        for (n, _) in futures::future::join_all(writes).await {
            assert_eq!(n.unwrap(), 512);
        }
    })
    .wait()
    .unwrap();
    let after = rt.stats()[0].clone();
    let ops = after.submitted - before.submitted;
    let enters = after.enters - before.enters;
    assert!(ops >= 64, "{ops}");
    assert!(
        enters * 8 <= ops,
        "{enters} io_uring_enter calls for {ops} operations"
    );
    assert_eq!(after.in_flight, 0);
}

#[test]
fn timers_run_on_the_ring() {
    let rt = runtime(1);
    let t0 = Instant::now();
    let (a, b) = (
        rt.spawn(0, || async { io::sleep(Duration::from_millis(60)).await }),
        rt.spawn(0, || async { io::sleep(Duration::from_millis(20)).await }),
    );
    b.wait().unwrap().unwrap();
    let b_done = t0.elapsed();
    a.wait().unwrap().unwrap();
    assert!(b_done >= Duration::from_millis(20));
    assert!(t0.elapsed() >= Duration::from_millis(60));
    // Both sleeps were in flight on one core at once, and dashi started no
    // thread besides its core: timers are ring operations.
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("dashi-") && !n.starts_with("dashi-core-")),
        "{names:?}"
    );
}

#[test]
fn dropping_an_operation_early_is_safe() {
    let rt = runtime(1);
    let (_dir, file) = temp_file();
    let f = file.clone();
    rt.spawn(0, move || async move {
        // Start a write, poll it once, drop it: its buffer stays owned by the
        // ring until the kernel completes it.
        let mut w = Box::pin(io::write_at(&f, vec![3u8; 1 << 16], 0));
        let waker = futures::task::noop_waker();
        let _ = w.as_mut().poll(&mut std::task::Context::from_waker(&waker));
        drop(w);
        let mut s = Box::pin(io::sleep(Duration::from_secs(3600)));
        let _ = s.as_mut().poll(&mut std::task::Context::from_waker(&waker));
        drop(s);
        io::nop().await.unwrap();
    })
    .wait()
    .unwrap();
}

use std::future::Future as _;

#[test]
fn sockets_send_and_receive_through_the_ring() {
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let sock = std::sync::Arc::new(std::net::TcpStream::connect(addr).unwrap());
    let got = rt
        .spawn(0, move || async move {
            let (n, _) = io::send(&sock, b"hello".to_vec()).await;
            assert_eq!(n.unwrap(), 5);
            let mut back = Vec::new();
            while back.len() < 5 {
                let (n, buf) = io::recv(&sock, vec![0u8; 16]).await;
                let n = n.unwrap();
                assert!(n > 0, "peer closed early");
                back.extend_from_slice(&buf[..n]);
            }
            back
        })
        .wait()
        .unwrap();
    assert_eq!(got, b"hello");
    echo.join().unwrap();
}
