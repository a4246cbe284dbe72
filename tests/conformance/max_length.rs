//! max_length / max_length_bytes with reject-publish and drop-head.

use dashi::{Overflow, PublishError, Queue};

use super::*;

conformance! {
    fn reject_publish_hands_back_the_message(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_length(2))
            .unwrap();
        let p = ch.producer();
        p.publish("1", "q").unwrap();
        p.publish("2", "q").unwrap();
        let err = p.publish("3", "q").unwrap_err();
        assert!(err.is_transient());
        match &err {
            PublishError::QueueFull { queue, reason, .. } => {
                assert_eq!(queue, "q");
                assert!(reason.contains("max_length"), "{reason}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(&err.into_message().body[..], b"3");
        // Consuming makes room again.
        must_get(&ch, "q").ack().unwrap();
        p.publish("3", "q").unwrap();
        assert_eq!(drain_bodies(&ch, "q"), ["2", "3"]);
    }

    fn max_length_bytes_counts_body_bytes(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_length_bytes(10))
            .unwrap();
        let p = ch.producer();
        p.publish(vec![0u8; 6], "q").unwrap();
        let err = p.publish(vec![0u8; 6], "q").unwrap_err();
        assert!(
            matches!(&err, PublishError::QueueFull { reason, .. } if reason.contains("max_length_bytes"))
        );
        p.publish(vec![0u8; 4], "q").unwrap();
        assert_eq!(c.stats().queue("q").unwrap().bytes, 10);
    }

    fn a_full_queue_blocks_a_fanout_publish_everywhere(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&dashi::Exchange::fanout("f")).unwrap();
        ch.queue_declare(&Queue::new("roomy")).unwrap();
        ch.queue_declare(&Queue::new("tiny").with_max_length(1))
            .unwrap();
        for q in ["roomy", "tiny"] {
            ch.queue_bind(q, "f", "", dashi::Headers::new()).unwrap();
        }
        let p = ch.producer().with_exchange("f");
        p.publish("a", "").unwrap();
        assert!(p.publish("b", "").is_err());
        assert_eq!(drain_bodies(&ch, "roomy"), ["a"]);
        assert_eq!(drain_bodies(&ch, "tiny"), ["a"]);
    }

    fn drop_head_without_dlx_counts_drops(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(
            &Queue::new("q")
                .with_max_length(3)
                .with_overflow(Overflow::DropHead),
        )
        .unwrap();
        for i in 0..10 {
            ch.producer().publish(i.to_string(), "q").unwrap();
        }
        assert_eq!(drain_bodies(&ch, "q"), ["7", "8", "9"]);
        assert_eq!(c.stats().counters().dropped_overflow, 7);
    }
}
