//! `stat`, `purge`, `publish` and `consume` on memory:// (one process each, so
//! what crosses processes is tested with the durable transports).

mod common;
use common::*;

#[test]
fn stat_json_shape() {
    let o = dashi(&["stat", "memory://", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "memory");
    assert_eq!(v["scope"], "process");
    assert!(v["queues"].as_array().unwrap().is_empty());
    for k in [
        "published",
        "routed",
        "dropped_unroutable",
        "delivered",
        "acked",
        "rejected",
        "redelivered",
        "restored",
        "expired",
        "dead_lettered",
    ] {
        assert_eq!(v["counters"][k], 0, "counter {k}");
    }
    let o = dashi(&["stat", "memory://"]);
    assert!(stdout(&o).contains("(no queues)"));
    let line = one_line_error(&dashi(&["stat", "memory://", "--queue", "missing"]));
    assert!(line.contains("unknown queue"));
}

#[test]
fn publish_declares_and_reports() {
    let o = dashi(&[
        "publish",
        "memory://",
        "--exchange",
        "ex",
        "--type",
        "topic",
        "--queue",
        "q",
        "--binding-key",
        "a.#",
        "--routing-key",
        "a.b",
        "--max-priority",
        "5",
        "--priority",
        "3",
        "--count",
        "3",
        "--body",
        "hi",
        "--header",
        "k=v",
        "--content-type",
        "text/plain",
        "--mandatory",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "published 3 messages to exchange \"ex\" with routing key \"a.b\""
    );
    // Priority above the queue's max is refused, with the message's fate said.
    let line = one_line_error(&dashi(&[
        "publish",
        "memory://",
        "--queue",
        "p",
        "--max-priority",
        "2",
        "--priority",
        "3",
    ]));
    assert!(
        line.contains("priority 3 is above max_priority 2"),
        "{line}"
    );
    // Unroutable with --mandatory fails; without it the drop is reported.
    let line = one_line_error(&dashi(&[
        "publish",
        "memory://",
        "--exchange",
        "e",
        "--routing-key",
        "x",
        "--mandatory",
    ]));
    assert!(line.contains("unroutable"), "{line}");
    let o = dashi(&[
        "publish",
        "memory://",
        "--exchange",
        "e",
        "--routing-key",
        "x",
    ]);
    assert!(stdout(&o).contains("matched no queue"), "{}", stdout(&o));
}

#[test]
fn consume_times_out_cleanly_and_purge_reports() {
    let o = dashi(&[
        "consume",
        "memory://",
        "--queue",
        "q",
        "--timeout",
        "0.05",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let line = one_line_error(&dashi(&["purge", "memory://", "--queue", "missing"]));
    assert!(line.contains("unknown queue"), "{line}");
}
