//! Kombu's SimpleQueue: put / get with timeout.

use std::time::Duration;

use dashi::{Error, SimpleQueue};

use super::*;

conformance! {
    fn put_get_ack_and_timeout(url: &str) {
        let c = connect(url);
        let q = c.simple_queue("jobs").unwrap();
        assert_eq!(q.name(), "jobs");
        q.put("one").unwrap();
        q.put("two").unwrap();
        assert_eq!(q.qsize().unwrap(), 2);
        let d = q.get(WAIT).unwrap();
        assert_eq!(body(&d), "one");
        d.ack().unwrap();
        assert!(matches!(
            q.get(Duration::from_millis(10)).map(|d| body(&d)),
            Ok(ref b) if b == "two"
        ));
        assert!(matches!(q.get_nowait(), Err(Error::Timeout)));
        q.put("three").unwrap();
        assert_eq!(q.clear().unwrap(), 1);
        assert_eq!(q.qsize().unwrap(), 0);
    }

    fn unacked_gets_come_back_when_closed(url: &str) {
        let c = connect(url);
        let q = SimpleQueue::new(&c, "jobs").unwrap();
        q.put("x").unwrap();
        let _held = q.get(WAIT).unwrap();
        q.close();
        let q2 = SimpleQueue::new(&c, "jobs").unwrap();
        let d = q2.get(WAIT).unwrap();
        assert!(d.redelivered());
    }

    fn get_waits_for_a_put_from_another_thread(url: &str) {
        let c = connect(url);
        let q = c.simple_queue("jobs").unwrap();
        let url2 = url.to_owned();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let c2 = connect(&url2);
            c2.simple_queue("jobs").unwrap().put("late").unwrap();
        });
        assert_eq!(body(&q.get(WAIT * 2).unwrap()), "late");
        t.join().unwrap();
    }
}
