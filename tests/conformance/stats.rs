//! The stats handle: per-queue depth by lane, bytes, unacked, consumers, and
//! the transport's counters.

use dashi::{ConsumerOptions, Message, Queue};

use super::*;

conformance! {
    fn queue_figures_and_counters_track_every_step(url: &str) {
        let c = connect(url);
        let stats = c.stats();
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("s").with_max_priority(2))
            .unwrap();
        let p = ch.producer();
        p.publish(Message::new(vec![0u8; 10]).with_priority(2), "s")
            .unwrap();
        p.publish(Message::new(vec![0u8; 5]), "s").unwrap();
        p.publish("x", "nowhere").unwrap();
        let q = stats.queue("s").unwrap();
        assert_eq!(q.name, "s");
        assert_eq!(q.depth_by_lane, [1, 0, 1]);
        assert_eq!((q.messages, q.bytes, q.unacked, q.consumers), (2, 15, 0, 0));
        let d = must_get(&ch, "s");
        let _consumer = ch.consume(ConsumerOptions::new("s"), |_| {}).unwrap();
        let q = stats.queue("s").unwrap();
        assert_eq!((q.messages, q.bytes, q.unacked, q.consumers), (1, 5, 1, 1));
        d.reject(true).unwrap();
        let k = stats.counters();
        assert_eq!(k.published, 3);
        assert_eq!(k.routed, 2);
        assert_eq!(k.dropped_unroutable, 1);
        assert_eq!(k.delivered, 1);
        assert_eq!(k.rejected, 1);
        assert_eq!(k.restored, 1);
        assert_eq!(
            stats
                .queues().unwrap()
                .iter()
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>(),
            ["s"]
        );
        assert!(stats.queue("missing").is_err_and(|e| matches!(e, dashi::Error::UnknownQueue(_))));
        assert!(format!("{stats:?}").contains("memory") || !url.starts_with("memory"));
    }
}
