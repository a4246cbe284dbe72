//! Push delivery through `drain_events`: fair round-robin among consumers of a
//! queue, timeouts, consumers over several queues, and cross-thread wake-ups.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashi::{ConsumerOptions, Error};

use super::*;

conformance! {
    fn consumers_of_one_queue_take_turns(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for i in 0..10 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let mk = |name: &'static str| {
            let log = log.clone();
            move |d: dashi::Delivery| {
                log.lock().unwrap().push((name, body(&d)));
                d.ack().unwrap();
            }
        };
        let _a = ch.consume(ConsumerOptions::new("q"), mk("a")).unwrap();
        let _b = ch.consume(ConsumerOptions::new("q"), mk("b")).unwrap();
        let mut n = 0;
        while n < 10 {
            n += c.drain_events(Some(WAIT)).unwrap();
        }
        let log = log.lock().unwrap();
        let a = log.iter().filter(|(w, _)| *w == "a").count();
        assert_eq!(a, 5, "{log:?}");
        // Alternating, and FIFO overall.
        for pair in log.windows(2) {
            assert_ne!(pair[0].0, pair[1].0, "{log:?}");
        }
        let bodies: Vec<_> = log.iter().map(|(_, b)| b.clone()).collect();
        let want: Vec<_> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(bodies, want);
    }

    fn drain_events_times_out_when_idle(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let _a = ch.consume(ConsumerOptions::new("q"), |_| {}).unwrap();
        let e = c.drain_events(Some(Duration::from_millis(30))).unwrap_err();
        assert!(e.is_timeout() && e.is_transient());
    }

    fn a_publish_from_another_thread_wakes_drain_events(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let _a = ch
            .consume(ConsumerOptions::new("q"), move |d| {
                g.lock().unwrap().push(body(&d));
                d.ack().unwrap();
            })
            .unwrap();
        let url2 = url.to_owned();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let c2 = connect(&url2);
            c2.channel()
                .unwrap()
                .producer()
                .publish("wake", "q")
                .unwrap();
        });
        assert_eq!(c.drain_events(Some(WAIT * 2)).unwrap(), 1);
        t.join().unwrap();
        assert_eq!(*got.lock().unwrap(), ["wake"]);
    }

    fn an_ack_from_another_thread_reopens_a_full_window(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for i in 0..2 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let _a = ch
            .consume(ConsumerOptions::new("q").prefetch_count(1), move |d| {
                tx.send(d).unwrap();
            })
            .unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        let d = rx.recv().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            d.ack().unwrap();
        });
        assert_eq!(c.drain_events(Some(WAIT * 2)).unwrap(), 1);
        t.join().unwrap();
    }

    fn one_consumer_over_several_queues_serves_them_round_robin(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "x");
        queue(&ch, "y");
        for i in 0..3 {
            ch.producer().publish(format!("x{i}"), "x").unwrap();
            ch.producer().publish(format!("y{i}"), "y").unwrap();
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let _a = ch
            .consume(ConsumerOptions::new("x").queue("y"), move |d| {
                g.lock().unwrap().push((d.queue().to_owned(), body(&d)));
                d.ack().unwrap();
            })
            .unwrap();
        let mut n = 0;
        while n < 6 {
            n += c.drain_events(Some(WAIT)).unwrap();
        }
        let got = got.lock().unwrap();
        let queues: Vec<_> = got.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(queues, ["x", "y", "x", "y", "x", "y"]);
        assert_eq!(got[0].1, "x0");
    }

    fn channels_of_a_closed_connection_refuse_work(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        assert!(c.is_open() && ch.is_open());
        c.health().unwrap();
        c.close();
        assert!(!ch.is_open());
        assert!(matches!(
            ch.get("q", Duration::ZERO),
            Err(Error::ConnectionClosed)
        ));
        assert!(matches!(
            ch.consume(ConsumerOptions::new("q"), |_| {}),
            Err(Error::ConnectionClosed)
        ));
        assert!(matches!(
            ch.producer().publish("x", "q"),
            Err(dashi::PublishError::ChannelClosed(_))
        ));
        assert!(matches!(
            ch.ack(1, false),
            Err(dashi::AckError::ChannelClosed)
        ));
    }

    fn drain_events_without_consumers_times_out(url: &str) {
        let c = connect(url);
        assert!(matches!(
            c.drain_events(Some(Duration::from_millis(5))),
            Err(Error::Timeout)
        ));
    }

    fn drain_events_from_inside_a_callback_is_an_error_not_a_deadlock(url: &str) {
        let c = Arc::new(connect(url));
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        let inner = Arc::new(Mutex::new(None));
        let (c2, i2) = (Arc::downgrade(&c), inner.clone());
        let _a = ch
            .consume(ConsumerOptions::new("q"), move |d| {
                let c = c2.upgrade().unwrap();
                *i2.lock().unwrap() = Some(c.drain_events(Some(Duration::from_millis(1))));
                d.ack().unwrap();
            })
            .unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        assert!(matches!(
            inner.lock().unwrap().take(),
            Some(Err(Error::InvalidArgument(_)))
        ));
        // The thread is not left marked: draining works again.
        ch.producer().publish("y", "q").unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
    }

    fn a_panicking_callback_loses_nothing(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("boom", "q").unwrap();
        let consumer = ch
            .consume(ConsumerOptions::new("q"), |_d| panic!("callback failed"))
            .unwrap();
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.drain_events(Some(WAIT))));
        assert!(r.is_err());
        drop(consumer);
        // The delivery is still unacked on the channel; closing restores it.
        assert_eq!(c.stats().queue("q").unwrap().unacked, 1);
        ch.close();
        let ch2 = c.channel().unwrap();
        let d = must_get(&ch2, "q");
        assert!(d.redelivered());
        assert_eq!(body(&d), "boom");
    }
}
