//! The store's topology (exchanges, queues, bindings) as JSON in `meta.json`,
//! rewritten whole (temporary file + rename) under the metadata lock.
//!
//! # Invariants
//! - Reading is strict: a missing required field, an unknown field or an
//!   unknown value (an exchange kind, an overflow policy) is an error naming
//!   it, never a default, so a damaged or foreign file is never half-read.
//!   Optional values (`null` when unset) may also be left out.
//! - The layout is version 1; any other version is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use dashi_engine::exchange::{Exchange, ExchangeKind};
use dashi_engine::queue::{Overflow, Queue};
use dashi_engine::spi::Binding;
use dashi_engine::value::{Headers, Value};
use serde::{Deserialize, Serialize};

/// Everything `meta.json` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Meta {
    /// Declared exchanges.
    pub(crate) exchanges: Vec<Exchange>,
    /// Declared queues, with the process id owning an exclusive one.
    pub(crate) queues: Vec<(Queue, Option<u32>)>,
    /// Bindings.
    pub(crate) bindings: Vec<Binding>,
}

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    exchanges: Vec<ExchangeJson>,
    queues: Vec<QueueJson>,
    bindings: Vec<BindingJson>,
}

/// Just the version, read first so that another version is refused by name
/// rather than by whatever field it changed.
#[derive(Deserialize)]
struct VersionOnly {
    version: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeJson {
    name: String,
    kind: KindJson,
    durable: bool,
    auto_delete: bool,
    alternate: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum KindJson {
    Direct,
    Topic,
    Fanout,
    Headers,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueJson {
    name: String,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    max_priority: u8,
    max_length: u64,
    max_length_bytes: u64,
    overflow: OverflowJson,
    message_ttl_ms: Option<u64>,
    dlx: Option<String>,
    dlrk: Option<String>,
    lease_ms: Option<u64>,
    owner_pid: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum OverflowJson {
    RejectPublish,
    DropHead,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingJson {
    exchange: String,
    queue: String,
    routing_key: String,
    arguments: BTreeMap<String, ValueJson>,
}

/// A header value: JSON's own types for null, booleans, strings and lists;
/// one-key objects for the rest (`{"i": int}`, `{"f": float}`,
/// `{"b": [bytes]}`, `{"t": {table}}`), so numbers never change type.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValueJson {
    Null(()),
    Bool(bool),
    Str(String),
    List(Vec<ValueJson>),
    Tagged(Tagged),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
enum Tagged {
    #[serde(rename = "i")]
    Int(i64),
    #[serde(rename = "f")]
    Float(f64),
    #[serde(rename = "b")]
    Bytes(Vec<u8>),
    #[serde(rename = "t")]
    Table(BTreeMap<String, ValueJson>),
}

fn kind_json(k: ExchangeKind) -> Result<KindJson, String> {
    Ok(match k {
        ExchangeKind::Direct => KindJson::Direct,
        ExchangeKind::Topic => KindJson::Topic,
        ExchangeKind::Fanout => KindJson::Fanout,
        ExchangeKind::Headers => KindJson::Headers,
        #[allow(unreachable_patterns)] // ExchangeKind may grow.
        other => return Err(format!("exchange kind {other} cannot be stored")),
    })
}

fn kind(k: KindJson) -> ExchangeKind {
    match k {
        KindJson::Direct => ExchangeKind::Direct,
        KindJson::Topic => ExchangeKind::Topic,
        KindJson::Fanout => ExchangeKind::Fanout,
        KindJson::Headers => ExchangeKind::Headers,
    }
}

fn value_json(v: &Value) -> Result<ValueJson, String> {
    Ok(match v {
        Value::Null => ValueJson::Null(()),
        Value::Bool(b) => ValueJson::Bool(*b),
        Value::Int(i) => ValueJson::Tagged(Tagged::Int(*i)),
        Value::Float(f) => ValueJson::Tagged(Tagged::Float(*f)),
        Value::Str(s) => ValueJson::Str(s.clone()),
        Value::Bytes(b) => ValueJson::Tagged(Tagged::Bytes(b.to_vec())),
        Value::List(l) => ValueJson::List(l.iter().map(value_json).collect::<Result<_, _>>()?),
        Value::Table(t) => ValueJson::Tagged(Tagged::Table(headers_json(t)?)),
        #[allow(unreachable_patterns)] // Value may grow.
        other => return Err(format!("header value {other:?} cannot be stored")),
    })
}

fn headers_json(h: &Headers) -> Result<BTreeMap<String, ValueJson>, String> {
    h.iter()
        .map(|(k, v)| Ok((k.clone(), value_json(v)?)))
        .collect()
}

fn value(j: ValueJson) -> Value {
    match j {
        ValueJson::Null(()) => Value::Null,
        ValueJson::Bool(b) => Value::Bool(b),
        ValueJson::Str(s) => Value::Str(s),
        ValueJson::List(l) => Value::List(l.into_iter().map(value).collect()),
        ValueJson::Tagged(Tagged::Int(i)) => Value::Int(i),
        ValueJson::Tagged(Tagged::Float(f)) => Value::Float(f),
        ValueJson::Tagged(Tagged::Bytes(b)) => Value::Bytes(b.into()),
        ValueJson::Tagged(Tagged::Table(t)) => Value::Table(headers(t)),
    }
}

fn headers(t: BTreeMap<String, ValueJson>) -> Headers {
    t.into_iter().map(|(k, v)| (k, value(v))).collect()
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Meta {
    /// As JSON text; `Err` names a value the format cannot hold.
    pub(crate) fn to_json(&self) -> Result<String, String> {
        let file = File {
            version: VERSION,
            exchanges: self
                .exchanges
                .iter()
                .map(|e| {
                    Ok(ExchangeJson {
                        name: e.name.clone(),
                        kind: kind_json(e.kind)?,
                        durable: e.durable,
                        auto_delete: e.auto_delete,
                        alternate: e.alternate_exchange.clone(),
                    })
                })
                .collect::<Result<_, String>>()?,
            queues: self
                .queues
                .iter()
                .map(|(q, owner)| QueueJson {
                    name: q.name.clone(),
                    durable: q.durable,
                    exclusive: q.exclusive,
                    auto_delete: q.auto_delete,
                    max_priority: q.max_priority,
                    max_length: q.max_length,
                    max_length_bytes: q.max_length_bytes,
                    overflow: match q.overflow {
                        Overflow::DropHead => OverflowJson::DropHead,
                        _ => OverflowJson::RejectPublish,
                    },
                    message_ttl_ms: ms(q.message_ttl),
                    dlx: q.dead_letter_exchange.clone(),
                    dlrk: q.dead_letter_routing_key.clone(),
                    lease_ms: ms(q.lease),
                    owner_pid: *owner,
                })
                .collect(),
            bindings: self
                .bindings
                .iter()
                .map(|b| {
                    Ok(BindingJson {
                        exchange: b.exchange.clone(),
                        queue: b.queue.clone(),
                        routing_key: b.routing_key.clone(),
                        arguments: headers_json(&b.arguments)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        serde_json::to_string(&file).map_err(|e| format!("meta.json: {e}"))
    }

    /// From JSON text; errors name what is wrong.
    pub(crate) fn from_json(text: &str) -> Result<Meta, String> {
        let v: VersionOnly = serde_json::from_str(text).map_err(|e| format!("meta.json: {e}"))?;
        if v.version != VERSION {
            return Err(format!("meta.json: version {} is not supported", v.version));
        }
        let f: File = serde_json::from_str(text).map_err(|e| format!("meta.json: {e}"))?;
        let mut m = Meta::default();
        for e in f.exchanges {
            let mut ex = Exchange::new(e.name, kind(e.kind));
            ex.durable = e.durable;
            ex.auto_delete = e.auto_delete;
            ex.alternate_exchange = e.alternate;
            m.exchanges.push(ex);
        }
        for q in f.queues {
            let mut d = Queue::new(q.name);
            d.durable = q.durable;
            d.exclusive = q.exclusive;
            d.auto_delete = q.auto_delete;
            d.max_priority = q.max_priority;
            d.max_length = q.max_length;
            d.max_length_bytes = q.max_length_bytes;
            d.overflow = match q.overflow {
                OverflowJson::RejectPublish => Overflow::RejectPublish,
                OverflowJson::DropHead => Overflow::DropHead,
            };
            d.message_ttl = q.message_ttl_ms.map(Duration::from_millis);
            d.dead_letter_exchange = q.dlx;
            d.dead_letter_routing_key = q.dlrk;
            d.lease = q.lease_ms.map(Duration::from_millis);
            m.queues.push((d, q.owner_pid));
        }
        for b in f.bindings {
            m.bindings.push(Binding {
                exchange: b.exchange,
                queue: b.queue,
                routing_key: b.routing_key,
                arguments: headers(b.arguments),
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
        assert_eq!(Meta::from_json(&m.to_json().unwrap()).unwrap(), m);
    }

    #[test]
    fn bad_meta_is_a_clear_error() {
        assert!(Meta::from_json("{").unwrap_err().contains("meta.json"));
        assert!(Meta::from_json(r#"{"version":7}"#)
            .unwrap_err()
            .contains("version 7"));
        let empty = r#"{"version":1,"exchanges":[],"queues":[],"bindings":[]}"#;
        assert_eq!(Meta::from_json(empty).unwrap(), Meta::default());
        let e = Meta::from_json(
            r#"{"version":1,"exchanges":[],"queues":[{"durable":true}],"bindings":[]}"#,
        )
        .unwrap_err();
        assert!(e.contains("missing field `name`"), "{e}");
    }

    /// A value the format does not know is an error naming it, never a
    /// default: a damaged or foreign file is not half-read.
    #[test]
    fn unknown_values_and_fields_are_errors() {
        let m = Meta {
            exchanges: vec![Exchange::direct("d")],
            queues: vec![(Queue::new("q").with_overflow(Overflow::DropHead), None)],
            bindings: vec![],
        };
        let good = m.to_json().unwrap();
        assert_eq!(Meta::from_json(&good).unwrap(), m);
        let bad_overflow = good.replace("drop-head", "drop-tail");
        let e = Meta::from_json(&bad_overflow).unwrap_err();
        assert!(e.contains("drop-tail"), "{e}");
        let bad_kind = good.replace("\"direct\"", "\"x-delayed\"");
        let e = Meta::from_json(&bad_kind).unwrap_err();
        assert!(e.contains("x-delayed"), "{e}");
        let extra = good.replace(
            "\"durable\":true,\"exclusive\"",
            "\"durable\":true,\"colour\":1,\"exclusive\"",
        );
        let e = Meta::from_json(&extra).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let untagged_number = r#"{"version":1,"exchanges":[],"queues":[],"bindings":[{"exchange":"e","queue":"q","routing_key":"","arguments":{"n":5}}]}"#;
        assert!(Meta::from_json(untagged_number).is_err());
    }

    /// The file written by the layout's first writer (hand-built JSON) still
    /// reads the same.
    #[test]
    fn files_of_the_first_writer_still_read() {
        let old = r#"{"bindings":[{"arguments":{"x-match":"any","n":{"i":5}},"exchange":"h","queue":"q","routing_key":""}],"exchanges":[{"alternate":null,"auto_delete":false,"durable":true,"kind":"headers","name":"h"}],"queues":[{"auto_delete":false,"dlrk":null,"dlx":null,"durable":true,"exclusive":false,"lease_ms":null,"max_length":16777216,"max_length_bytes":1073741824,"max_priority":0,"message_ttl_ms":1500,"name":"q","overflow":"reject-publish","owner_pid":null}],"version":1}"#;
        let m = Meta::from_json(old).unwrap();
        assert_eq!(m.queues[0].0.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(m.bindings[0].arguments["n"], Value::from(5));
        assert_eq!(m.exchanges[0].kind, ExchangeKind::Headers);
    }
}
