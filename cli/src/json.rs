//! Deliveries and header values as the JSON `consume --json` prints.

use base64::Engine as _;
use dashi::{Delivery, Headers, Value};
use serde_json::{json, Map};

pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::List(l) => serde_json::Value::Array(l.iter().map(value_json).collect()),
        Value::Table(t) => headers_json(t),
        _ => serde_json::Value::Null,
    }
}

pub(crate) fn headers_json(h: &Headers) -> serde_json::Value {
    serde_json::Value::Object(
        h.iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// One delivery as the JSON object `consume --json` prints.
pub(crate) fn delivery_json(d: &Delivery) -> serde_json::Value {
    let mut o = json!({
        "queue": d.queue(),
        "exchange": d.exchange(),
        "routing_key": d.routing_key(),
        "priority": d.priority(),
        "redelivered": d.redelivered(),
        "delivery_tag": d.delivery_tag(),
        "headers": headers_json(&d.properties().headers),
        "content_type": d.properties().content_type,
    });
    match std::str::from_utf8(d.body()) {
        Ok(text) => o["body"] = json!(text),
        Err(_) => {
            o["body"] = json!(base64::engine::general_purpose::STANDARD.encode(d.body()));
            o["body_encoding"] = json!("base64");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashi::{Message, Queue};
    use std::time::Duration;

    #[test]
    fn consume_json_has_the_contract_fields() {
        let conn = dashi::connect("memory://cli-json-shape").unwrap();
        let ch = conn.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_priority(3))
            .unwrap();
        let p = ch.producer();
        p.publish(
            Message::new("text body")
                .with_priority(2)
                .with_content_type("text/plain")
                .with_header("k", "v")
                .with_header("n", 7)
                .with_header("raw", bytes::Bytes::from_static(&[0xff])),
            "q",
        )
        .unwrap();
        p.publish(Message::new(vec![0xffu8, 0xfe, 0x00]), "q")
            .unwrap();
        let d = ch.get("q", Duration::from_secs(1)).unwrap().unwrap();
        let v = delivery_json(&d);
        assert_eq!(v["queue"], "q");
        assert_eq!(v["exchange"], "");
        assert_eq!(v["routing_key"], "q");
        assert_eq!(v["priority"], 2);
        assert_eq!(v["redelivered"], false);
        assert_eq!(v["delivery_tag"], 1);
        assert_eq!(v["headers"], json!({"k": "v", "n": 7, "raw": "/w=="}));
        assert_eq!(v["content_type"], "text/plain");
        assert_eq!(v["body"], "text body");
        assert!(v.get("body_encoding").is_none());
        let d = ch.get("q", Duration::from_secs(1)).unwrap().unwrap();
        let v = delivery_json(&d);
        assert_eq!(v["body"], "//4A");
        assert_eq!(v["body_encoding"], "base64");
        assert_eq!(v["content_type"], serde_json::Value::Null);
    }

    #[test]
    fn nested_values() {
        let h: Headers = [("a".to_string(), Value::from("1"))].into_iter().collect();
        assert_eq!(value_json(&Value::Table(h)), json!({"a": "1"}));
        assert_eq!(
            value_json(&Value::List(vec![
                Value::Null,
                Value::Bool(true),
                Value::Float(1.5)
            ])),
            json!([null, true, 1.5])
        );
    }
}
