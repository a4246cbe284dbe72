//! The store's topology (exchanges, queues, bindings) as JSON in `meta.json`,
//! rewritten whole (temporary file + rename) under the metadata lock.

use std::time::Duration;

use dashi_engine::exchange::{Exchange, ExchangeKind};
use dashi_engine::queue::{Overflow, Queue};
use dashi_engine::routing::Binding;
use dashi_engine::value::{Headers, Value};
use serde_json::{json, Map, Value as Json};

/// Everything `meta.json` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Declared exchanges.
    pub exchanges: Vec<Exchange>,
    /// Declared queues, with the process id owning an exclusive one.
    pub queues: Vec<(Queue, Option<u32>)>,
    /// Bindings.
    pub bindings: Vec<Binding>,
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!({"i": i}),
        Value::Float(f) => json!({"f": f}),
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!({"b": b.to_vec()}),
        Value::List(l) => Json::Array(l.iter().map(value_json).collect()),
        Value::Table(t) => json!({"t": headers_json(t)}),
        _ => Json::Null,
    }
}

fn headers_json(h: &Headers) -> Json {
    Json::Object(
        h.iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn json_value(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::List(a.iter().map(json_value).collect::<Result<_, _>>()?),
        Json::Object(o) => match (o.get("i"), o.get("f"), o.get("b"), o.get("t")) {
            (Some(i), _, _, _) => Value::Int(i.as_i64().ok_or("bad int")?),
            (_, Some(f), _, _) => Value::Float(f.as_f64().ok_or("bad float")?),
            (_, _, Some(Json::Array(b)), _) => Value::Bytes(
                b.iter()
                    .map(|x| {
                        x.as_u64()
                            .and_then(|n| u8::try_from(n).ok())
                            .ok_or("bad byte")
                    })
                    .collect::<Result<Vec<u8>, _>>()?
                    .into(),
            ),
            (_, _, _, Some(t)) => Value::Table(json_headers(t)?),
            _ => return Err("unknown tagged value".into()),
        },
        Json::Number(_) => return Err("untagged number".into()),
    })
}

fn json_headers(j: &Json) -> Result<Headers, String> {
    let o = j.as_object().ok_or("headers are not an object")?;
    o.iter()
        .map(|(k, v)| Ok((k.clone(), json_value(v)?)))
        .collect()
}

fn ms(d: Option<Duration>) -> Json {
    d.map_or(Json::Null, |d| json!(d.as_millis() as u64))
}

impl Meta {
    /// As JSON text.
    pub fn to_json(&self) -> String {
        let exchanges: Vec<Json> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({"name": e.name, "kind": e.kind.as_str(), "durable": e.durable,
                       "auto_delete": e.auto_delete, "alternate": e.alternate_exchange})
            })
            .collect();
        let queues: Vec<Json> = self
            .queues
            .iter()
            .map(|(q, owner)| {
                json!({"name": q.name, "durable": q.durable, "exclusive": q.exclusive,
                       "auto_delete": q.auto_delete, "max_priority": q.max_priority,
                       "max_length": q.max_length, "max_length_bytes": q.max_length_bytes,
                       "overflow": match q.overflow { Overflow::RejectPublish => "reject-publish", Overflow::DropHead => "drop-head" },
                       "message_ttl_ms": ms(q.message_ttl), "dlx": q.dead_letter_exchange,
                       "dlrk": q.dead_letter_routing_key, "lease_ms": ms(q.lease), "owner_pid": owner})
            })
            .collect();
        let bindings: Vec<Json> = self
            .bindings
            .iter()
            .map(|b| {
                json!({"exchange": b.exchange, "queue": b.queue, "routing_key": b.routing_key,
                       "arguments": headers_json(&b.arguments)})
            })
            .collect();
        json!({"version": 1, "exchanges": exchanges, "queues": queues, "bindings": bindings})
            .to_string()
    }

    /// From JSON text; errors name what is wrong.
    pub fn from_json(text: &str) -> Result<Meta, String> {
        let j: Json = serde_json::from_str(text).map_err(|e| format!("meta.json: {e}"))?;
        if j["version"] != 1 {
            return Err(format!(
                "meta.json: version {} is not supported",
                j["version"]
            ));
        }
        let s = |v: &Json, k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or(format!("meta.json: {k} missing"))
        };
        let opt_s = |v: &Json, k: &str| v[k].as_str().map(str::to_owned);
        let u = |v: &Json, k: &str| v[k].as_u64().ok_or(format!("meta.json: {k} missing"));
        let b = |v: &Json, k: &str| v[k].as_bool().unwrap_or(false);
        let d = |v: &Json, k: &str| v[k].as_u64().map(Duration::from_millis);
        let mut m = Meta::default();
        for e in j["exchanges"].as_array().into_iter().flatten() {
            let kind: ExchangeKind = s(e, "kind")?
                .parse()
                .map_err(|x| format!("meta.json: {x}"))?;
            let mut ex = Exchange::new(s(e, "name")?, kind);
            ex.durable = b(e, "durable");
            ex.auto_delete = b(e, "auto_delete");
            ex.alternate_exchange = opt_s(e, "alternate");
            m.exchanges.push(ex);
        }
        for q in j["queues"].as_array().into_iter().flatten() {
            let mut d2 = Queue::new(s(q, "name")?);
            d2.durable = b(q, "durable");
            d2.exclusive = b(q, "exclusive");
            d2.auto_delete = b(q, "auto_delete");
            d2.max_priority =
                u8::try_from(u(q, "max_priority")?).map_err(|_| "meta.json: max_priority")?;
            d2.max_length = u(q, "max_length")?;
            d2.max_length_bytes = u(q, "max_length_bytes")?;
            d2.overflow = match s(q, "overflow")?.as_str() {
                "drop-head" => Overflow::DropHead,
                _ => Overflow::RejectPublish,
            };
            d2.message_ttl = d(q, "message_ttl_ms");
            d2.dead_letter_exchange = opt_s(q, "dlx");
            d2.dead_letter_routing_key = opt_s(q, "dlrk");
            d2.lease = d(q, "lease_ms");
            let owner = q["owner_pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            m.queues.push((d2, owner));
        }
        for x in j["bindings"].as_array().into_iter().flatten() {
            m.bindings.push(Binding {
                exchange: s(x, "exchange")?,
                queue: s(x, "queue")?,
                routing_key: s(x, "routing_key")?,
                arguments: json_headers(&x["arguments"]).map_err(|e| format!("meta.json: {e}"))?,
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_everything() {
        let mut q = Queue::new("q")
            .with_max_priority(9)
            .with_overflow(Overflow::DropHead)
            .with_message_ttl(Duration::from_millis(1500))
            .with_dead_letter("dlx", Some("rk"))
            .with_lease(Duration::from_secs(3));
        q.exclusive = true;
        let args: Headers = [
            ("x-match".to_string(), Value::from("any")),
            ("n".to_string(), Value::from(5)),
            ("f".to_string(), Value::from(0.5)),
            (
                "b".to_string(),
                Value::from(bytes::Bytes::from_static(&[1, 2])),
            ),
            (
                "l".to_string(),
                Value::List(vec![Value::Null, Value::Bool(true)]),
            ),
            (
                "t".to_string(),
                Value::Table(Headers::from([("k".to_string(), Value::from("v"))])),
            ),
        ]
        .into_iter()
        .collect();
        let m = Meta {
            exchanges: vec![Exchange::topic("t").with_alternate_exchange("ae")],
            queues: vec![(q, Some(42)), (Queue::new("plain"), None)],
            bindings: vec![Binding {
                exchange: "t".into(),
                queue: "q".into(),
                routing_key: "a.#".into(),
                arguments: args,
            }],
        };
        assert_eq!(Meta::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn bad_meta_is_a_clear_error() {
        assert!(Meta::from_json("{").unwrap_err().contains("meta.json"));
        assert!(Meta::from_json(r#"{"version":7}"#)
            .unwrap_err()
            .contains("version 7"));
        assert!(
            Meta::from_json(r#"{"version":1,"queues":[{"durable":true}]}"#)
                .unwrap_err()
                .contains("name missing")
        );
    }
}
