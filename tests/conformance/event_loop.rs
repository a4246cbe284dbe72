//! Event-loop integration: `Connection::arm` wakes a waker when
//! `drain_events` may have work (a message from another connection, a new
//! consumer), so epoll/libuv/asyncio programs drain without a thread of
//! their own.

use std::time::Duration;

use super::*;

/// A waker that counts its wakes.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn woken(c: &std::sync::Arc<Count>) -> bool {
    let end = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < end {
        if c.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

conformance! {
    fn an_armed_waker_wakes_for_a_message_from_another_connection_and_a_new_consumer(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let _consumer = ch
            .consume(dashi::ConsumerOptions::new("q"), move |d| {
                g.lock().unwrap().push(body(&d));
                d.ack().unwrap();
            })
            .unwrap();
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let armed = c.arm(&waker);
        assert!(matches!(c.drain_events(Some(Duration::ZERO)), Err(dashi::Error::Timeout)));
        let other = connect(url);
        other.channel().unwrap().producer().publish("m", "q").unwrap();
        assert!(woken(&count), "a publish did not wake the armed waker");
        assert_eq!(c.drain_events(Some(Duration::ZERO)).unwrap(), 1);
        assert_eq!(*got.lock().unwrap(), ["m"]);
        drop(armed);
        // Arm again: a consumer added wakes it too.
        let count = std::sync::Arc::new(Count(Default::default()));
        let _armed = c.arm(&std::task::Waker::from(count.clone()));
        queue(&ch, "r");
        let _second = ch
            .consume(dashi::ConsumerOptions::new("r"), |d| d.ack().unwrap())
            .unwrap();
        assert!(woken(&count), "a new consumer did not wake the armed waker");
    }
}
