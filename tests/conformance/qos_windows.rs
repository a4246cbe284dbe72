//! Prefetch windows in messages and in bytes.

use std::sync::{Arc, Mutex};

use dashi::{ConsumerOptions, Delivery, Error};

use super::*;

fn collector() -> (
    Arc<Mutex<Vec<Delivery>>>,
    impl FnMut(Delivery) + Send + 'static,
) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    (got, move |d| g.lock().unwrap().push(d))
}

conformance! {
    fn prefetch_count_bounds_unacked_deliveries(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for i in 0..10 {
            p.publish(i.to_string(), "q").unwrap();
        }
        let (got, cb) = collector();
        let consumer = ch
            .consume(ConsumerOptions::new("q").prefetch_count(3), cb)
            .unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 3);
        assert!(matches!(
            c.drain_events(Some(std::time::Duration::from_millis(20))),
            Err(Error::Timeout)
        ));
        assert_eq!(consumer.in_flight().0, 3);
        got.lock().unwrap().remove(0).ack().unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        let all: Vec<Delivery> = got.lock().unwrap().drain(..).collect();
        all.last().unwrap().ack_multiple().unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 3);
        assert_eq!(c.stats().queue("q").unwrap().messages, 3);
    }

    fn prefetch_bytes_bounds_unacked_bytes_allowing_one_large_message(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        p.publish(vec![0u8; 100], "q").unwrap();
        p.publish(vec![1u8; 100], "q").unwrap();
        p.publish(vec![2u8; 10], "q").unwrap();
        let (got, cb) = collector();
        let consumer = ch
            .consume(ConsumerOptions::new("q").prefetch_bytes(50), cb)
            .unwrap();
        // The first message crosses the byte window on its own: it is delivered
        // (a large message never blocks a window), then the window is full.
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        assert_eq!(consumer.in_flight(), (1, 100));
        assert!(c
            .drain_events(Some(std::time::Duration::from_millis(20)))
            .is_err());
        got.lock().unwrap()[0].ack().unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        assert_eq!(consumer.in_flight(), (1, 100));
    }

    fn no_ack_consumers_ignore_the_window(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for i in 0..5 {
            p.publish(i.to_string(), "q").unwrap();
        }
        let (got, cb) = collector();
        let _consumer = ch
            .consume(ConsumerOptions::new("q").prefetch_count(1).no_ack(true), cb)
            .unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 5);
        let ds = got.lock().unwrap();
        assert!(matches!(ds[0].ack(), Err(dashi::AckError::NoAck(_))));
        assert_eq!(c.stats().queue("q").unwrap().unacked, 0);
        assert_eq!(c.stats().counters().acked, 5);
        assert_eq!(ch.unacked(), 0);
    }

    fn get_ignores_prefetch(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for i in 0..3 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        let held: Vec<_> = (0..3).map(|_| must_get(&ch, "q")).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(ch.unacked(), 3);
        let d = ch.get_no_ack("q", std::time::Duration::ZERO).unwrap();
        assert!(d.is_none());
    }

    fn requeue_inside_the_callback_frees_its_window_share_once(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&dashi::Queue::new("q").with_max_priority(9))
            .unwrap();
        let p = ch.producer();
        p.publish(dashi::Message::new("a").with_priority(1), "q")
            .unwrap();
        p.publish(dashi::Message::new("b").with_priority(9), "q")
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let consumer = ch
            .consume(ConsumerOptions::new("q").prefetch_count(2), move |d| {
                let mut v = s.lock().unwrap();
                v.push((body(&d), d.redelivered()));
                if v.len() == 1 {
                    d.reject(true).unwrap();
                } else {
                    d.ack().unwrap();
                }
            })
            .unwrap();
        let mut n = 0;
        while n < 3 {
            n += c.drain_events(Some(WAIT)).unwrap();
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [("b".into(), false), ("a".into(), false), ("b".into(), true)]
        );
        assert_eq!(consumer.in_flight(), (0, 0));
    }
}
