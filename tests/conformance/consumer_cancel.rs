//! Cancelling consumers: by handle, by tag, by queue; unacked stay unacked;
//! auto-delete and exclusive queues.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashi::{ConsumerOptions, Error, Queue};

use super::*;

conformance! {
    fn cancel_by_tag_does_not_requeue(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for i in 0..3 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let consumer = ch
            .consume(
                ConsumerOptions::new("q").tag("worker-1").prefetch_count(2),
                move |d| h.lock().unwrap().push(d),
            )
            .unwrap();
        assert_eq!(consumer.tag(), "worker-1");
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 2);
        ch.cancel("worker-1").unwrap();
        assert!(consumer.is_cancelled());
        assert!(matches!(
            ch.cancel("worker-1"),
            Err(Error::UnknownConsumerTag(_))
        ));
        assert_eq!(c.stats().queue("q").unwrap().unacked, 2);
        assert_eq!(c.stats().queue("q").unwrap().consumers, 0);
        assert!(matches!(
            c.drain_events(Some(Duration::from_millis(10))),
            Err(Error::Timeout)
        ));
        for d in held.lock().unwrap().iter() {
            d.ack().unwrap();
        }
        assert_eq!(drain_bodies(&ch, "q"), ["2"]);
    }

    fn cancel_by_queue_and_tag_reuse(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "a");
        queue(&ch, "b");
        let _x = ch
            .consume(ConsumerOptions::new("a").tag("t1"), |_| {})
            .unwrap();
        let _y = ch
            .consume(ConsumerOptions::new("a").queue("b").tag("t2"), |_| {})
            .unwrap();
        let _z = ch
            .consume(ConsumerOptions::new("b").tag("t3"), |_| {})
            .unwrap();
        assert!(matches!(
            ch.consume(ConsumerOptions::new("b").tag("t3"), |_| {}),
            Err(Error::DuplicateConsumerTag(_))
        ));
        assert_eq!(ch.cancel_queue("a").unwrap(), 2);
        assert_eq!(c.stats().queue("a").unwrap().consumers, 0);
        assert_eq!(c.stats().queue("b").unwrap().consumers, 1);
        // Cancelled tags can be used again.
        let _again = ch
            .consume(ConsumerOptions::new("a").tag("t1"), |_| {})
            .unwrap();
    }

    fn dropping_the_consumer_handle_cancels(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        {
            let _c = ch.consume(ConsumerOptions::new("q"), |_| {}).unwrap();
            assert_eq!(c.stats().queue("q").unwrap().consumers, 1);
        }
        assert_eq!(c.stats().queue("q").unwrap().consumers, 0);
        ch.producer().publish("x", "q").unwrap();
        assert!(c.drain_events(Some(Duration::from_millis(10))).is_err());
        assert_eq!(drain_bodies(&ch, "q"), ["x"]);
    }

    fn auto_delete_queue_goes_with_its_last_consumer(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("tmp").with_auto_delete(true))
            .unwrap();
        let a = ch.consume(ConsumerOptions::new("tmp"), |_| {}).unwrap();
        let b = ch.consume(ConsumerOptions::new("tmp"), |_| {}).unwrap();
        a.cancel().unwrap();
        assert!(c.stats().queue("tmp").is_ok());
        b.cancel().unwrap();
        assert!(c.stats().queue("tmp").is_err_and(|e| matches!(e, dashi::Error::UnknownQueue(_))));
    }

    fn exclusive_queue_belongs_to_its_connection(url: &str) {
        let owner = connect(url);
        let other = connect(url);
        let och = owner.channel().unwrap();
        och.queue_declare(&Queue::new("mine").with_exclusive(true))
            .unwrap();
        let xch = other.channel().unwrap();
        assert!(matches!(
            xch.queue_declare(&Queue::new("mine").with_exclusive(true)),
            Err(Error::Exclusive(_))
        ));
        assert!(matches!(
            xch.get("mine", Duration::ZERO),
            Err(Error::Exclusive(_))
        ));
        assert!(matches!(
            xch.consume(ConsumerOptions::new("mine"), |_| {}),
            Err(Error::Exclusive(_))
        ));
        owner.close();
        assert!(other.stats().queue("mine").is_err_and(|e| matches!(e, dashi::Error::UnknownQueue(_))));
    }
}
