//! Shared pieces of publish and consume: declaring what the flags name, header
//! parsing, and rendering deliveries and header values as JSON.

use base64::Engine as _;
use dashi::{Channel, Connection, Delivery, Exchange, Headers, Queue, Value};
use serde_json::{json, Map};

use crate::args::{Kind, Topology};

pub(crate) fn connect(url: &str) -> Result<Connection, String> {
    dashi::connect(url).map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// The URL as it may be printed (password hidden).
pub(crate) fn redact(url: &str) -> String {
    match dashi::spi::ConnectUrl::parse(url) {
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// Declares the exchange, the queue and the binding that the flags name.
/// Existing entities with other arguments are an error (from the transport).
pub(crate) fn declare(
    ch: &Channel,
    topo: &Topology,
    queue: Option<&str>,
    default_key: &str,
    binding_args: Headers,
) -> Result<(), String> {
    let exchange = topo.exchange.as_deref().unwrap_or("");
    if !exchange.is_empty() {
        ch.exchange_declare(&Exchange::new(exchange, topo.kind.into()))
            .map_err(|e| format!("declaring exchange {exchange:?}: {e}"))?;
    }
    if let Some(q) = queue {
        let mut decl = Queue::new(q);
        if let Some(p) = topo.max_priority {
            decl = decl.with_max_priority(p);
        }
        ch.queue_declare(&decl)
            .map_err(|e| format!("declaring queue {q:?}: {e}"))?;
        if !exchange.is_empty() {
            let key = match topo.kind {
                Kind::Fanout | Kind::Headers => topo.binding_key.clone().unwrap_or_default(),
                Kind::Direct | Kind::Topic => topo
                    .binding_key
                    .clone()
                    .unwrap_or_else(|| default_key.to_owned()),
            };
            ch.queue_bind(q, exchange, &key, binding_args)
                .map_err(|e| format!("binding queue {q:?} to exchange {exchange:?}: {e}"))?;
        }
    }
    Ok(())
}

/// Parses `K=V` header flags (values are strings).
pub(crate) fn parse_headers(flags: &[String]) -> Result<Headers, String> {
    flags
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Value::from(v))),
            _ => Err(format!("--header {kv:?} is not K=V")),
        })
        .collect()
}

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
    use dashi::Message;
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
    fn header_flags_and_values() {
        let h = parse_headers(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(h["a"], Value::from("1"));
        assert_eq!(h["b"], Value::from("x=y"));
        assert!(parse_headers(&["=v".into()]).is_err());
        let nested = Value::Table(h);
        assert_eq!(value_json(&nested), json!({"a": "1", "b": "x=y"}));
        assert_eq!(
            value_json(&Value::List(vec![
                Value::Null,
                Value::Bool(true),
                Value::Float(1.5)
            ])),
            json!([null, true, 1.5])
        );
        assert_eq!(redact("redis://u:secret@h"), "redis://u:***@h");
        assert_eq!(redact("::"), "<unparsable URL>");
    }
}
