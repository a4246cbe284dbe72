//! Leases (visibility timeouts): expired deliveries come back with
//! `redelivered = true`; `extend_lease` keeps them.

use std::time::{Duration, Instant};

use dashi::{AckError, ConsumerOptions, Queue, Settled};

use super::*;

conformance! {
    fn expired_lease_restores_with_redelivered(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_lease(Duration::from_millis(50)))
            .unwrap();
        ch.producer().publish("x", "q").unwrap();
        let first = must_get(&ch, "q");
        assert!(!first.redelivered());
        let again = must_get(&ch, "q");
        assert_eq!(body(&again), "x");
        assert!(again.redelivered());
        assert!(matches!(
            first.ack(),
            Err(AckError::AlreadySettled {
                state: Settled::Restored,
                ..
            })
        ));
        again.ack().unwrap();
        // Counted by the reaper once the queue has the message back, which
        // a consumer can see (and get) a moment before the count.
        let t0 = Instant::now();
        while c.stats().counters().restored < 1 {
            assert!(t0.elapsed() < Duration::from_secs(5), "no restore counted");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn extend_lease_keeps_the_delivery(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_lease(Duration::from_millis(100)))
            .unwrap();
        ch.producer().publish("x", "q").unwrap();
        let d = must_get(&ch, "q");
        d.extend_lease(Duration::from_secs(600)).unwrap();
        // Well past the original lease: the message must not come back.
        assert!(ch.get("q", Duration::from_millis(400)).unwrap().is_none());
        d.ack().unwrap();
        assert!(matches!(
            d.extend_lease(Duration::from_secs(1)),
            Err(AckError::AlreadySettled {
                state: Settled::Acked,
                ..
            })
        ));
    }

    fn consumer_lease_overrides_queue_and_many_expire_in_one_pass(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for i in 0..500 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = held.clone();
        let consumer = ch
            .consume(
                ConsumerOptions::new("q")
                    .lease(Duration::from_millis(30))
                    .prefetch_count(500),
                move |d| h.lock().unwrap().push(d),
            )
            .unwrap();
        let mut n = 0;
        while n < 500 {
            n += c.drain_events(Some(WAIT)).unwrap();
        }
        consumer.cancel().unwrap();
        // No cap per pass: all 500 come back.
        let start = Instant::now();
        let other = c.channel().unwrap();
        let mut back = 0;
        while back < 500 && start.elapsed() < WAIT * 2 {
            if let Some(d) = other.get("q", Duration::from_millis(200)).unwrap() {
                assert!(d.redelivered());
                d.ack().unwrap();
                back += 1;
            }
        }
        assert_eq!(back, 500);
    }

    fn connection_default_lease_from_url(url: &str) {
        let sep = if url.contains('?') { '&' } else { '?' };
        let c = connect(&format!("{url}{sep}visibility_timeout=0.05"));
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        let _held = must_get(&ch, "q");
        assert!(must_get(&ch, "q").redelivered());
    }
}
