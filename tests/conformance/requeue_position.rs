//! Reject with requeue and restore put the message back ahead of everything
//! never delivered in its lane, with `redelivered = true`, at its original
//! position among other returned messages (AMQP 0-9-1, as RabbitMQ does).

use dashi::{Message, Queue};

use super::*;

conformance! {
    fn reject_requeue_goes_to_front_marked_redelivered(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in ["1", "2", "3"] {
            p.publish(b, "q").unwrap();
        }
        let first = must_get(&ch, "q");
        assert!(!first.redelivered());
        first.reject(true).unwrap();
        let again = must_get(&ch, "q");
        assert_eq!(body(&again), "1");
        assert!(again.redelivered());
        again.ack().unwrap();
        let next = must_get(&ch, "q");
        assert_eq!(body(&next), "2");
        assert!(!next.redelivered());
        next.ack().unwrap();
        assert_eq!(c.stats().counters().redelivered, 1);
    }

    /// Take A B C, requeue A then C: A, C, D come next, not C, A, D.
    fn requeued_messages_keep_their_original_order(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in ["A", "B", "C", "D"] {
            p.publish(b, "q").unwrap();
        }
        let (a, b, cc) = (must_get(&ch, "q"), must_get(&ch, "q"), must_get(&ch, "q"));
        a.reject(true).unwrap();
        cc.reject(true).unwrap();
        b.ack().unwrap();
        assert_eq!(
            drain_flags(&ch, "q"),
            flags(&[("A", true), ("C", true), ("D", false)])
        );
        // The same when they come back the other way round, by channel close.
        for b in ["E", "F", "G"] {
            p.publish(b, "q").unwrap();
        }
        let other = c.channel().unwrap();
        let (e, f, g) = (must_get(&other, "q"), must_get(&other, "q"), must_get(&other, "q"));
        g.reject(true).unwrap();
        f.ack().unwrap();
        drop(e);
        other.close();
        assert_eq!(drain_flags(&ch, "q"), flags(&[("E", true), ("G", true)]));
    }

    fn requeue_stays_in_its_own_lane(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_priority(5))
            .unwrap();
        let p = ch.producer();
        p.publish(Message::new("low").with_priority(1), "q")
            .unwrap();
        p.publish(Message::new("high").with_priority(5), "q")
            .unwrap();
        let low_first = {
            let h = must_get(&ch, "q");
            assert_eq!(body(&h), "high");
            let l = must_get(&ch, "q");
            assert_eq!(body(&l), "low");
            h.ack().unwrap();
            l
        };
        p.publish(Message::new("low2").with_priority(1), "q")
            .unwrap();
        low_first.reject(true).unwrap();
        p.publish(Message::new("high2").with_priority(5), "q")
            .unwrap();
        assert_eq!(drain_bodies(&ch, "q"), ["high2", "low", "low2"]);
    }

    fn nack_multiple_requeues_in_tag_order(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in ["a", "b", "c", "d"] {
            p.publish(b, "q").unwrap();
        }
        let ds: Vec<_> = (0..3).map(|_| must_get(&ch, "q")).collect();
        ds[2].nack_multiple(true).unwrap();
        assert_eq!(
            drain_flags(&ch, "q"),
            flags(&[("a", true), ("b", true), ("c", true), ("d", false)])
        );
    }

    fn reject_without_requeue_drops_and_counts(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        must_get(&ch, "q").reject(false).unwrap();
        assert!(ch.get("q", std::time::Duration::ZERO).unwrap().is_none());
        let s = c.stats().counters();
        assert_eq!((s.rejected, s.acked), (1, 0));
        assert_eq!(c.stats().queue("q").unwrap().unacked, 0);
    }
}
