//! The store's topology (exchanges, queues, bindings) as JSON in `meta.json`,
//! rewritten whole (temporary file + rename) under the metadata lock.
//!
//! # Invariants
//! - Reading is strict: a missing required field, an unknown field or an
//!   unknown value (an exchange kind, an overflow policy) is an error naming
//!   it, never a default, so a damaged or foreign file is never half-read.
//!   Optional values (`null` when unset) may also be left out.
//! - The layout is version 2 (queues carry their incarnation `id`); any
//!   other version is refused.

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
    /// Declared queues.
    pub(crate) queues: Vec<QueueEntry>,
    /// Bindings.
    pub(crate) bindings: Vec<Binding>,
    /// The incarnation number the next queue declared gets.
    pub(crate) next_id: u64,
}

/// One declared queue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueEntry {
    /// Its declaration.
    pub(crate) decl: Queue,
    /// Its incarnation: a number no other queue of the store ever had, so a
    /// queue deleted and declared again under the same name is another
    /// queue (another directory) to every process.
    pub(crate) id: u64,
    /// The process (its id in the store) owning an exclusive queue.
    pub(crate) owner: Option<u32>,
}

impl Meta {
    /// Adds a queue as a new incarnation; returns its id.
    pub(crate) fn add_queue(&mut self, decl: Queue, owner: Option<u32>) -> u64 {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        self.queues.push(QueueEntry { decl, id, owner });
        id
    }

    /// The queue called `name`.
    pub(crate) fn queue(&self, name: &str) -> Option<&QueueEntry> {
        self.queues.iter().find(|q| q.decl.name == name)
    }

    /// Removes queue `name` (only the incarnation `id`, when given) and its
    /// bindings; true if it was there.
    pub(crate) fn remove_queue(&mut self, name: &str, id: Option<u64>) -> bool {
        let before = self.queues.len();
        self.queues
            .retain(|q| q.decl.name != name || id.is_some_and(|id| q.id != id));
        let removed = self.queues.len() != before;
        if removed {
            self.bindings.retain(|b| b.queue != name);
        }
        removed
    }
}

const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    next_id: u64,
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
    id: u64,
    owner: Option<u32>,
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
            next_id: self.next_id,
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
                .map(|QueueEntry { decl: q, id, owner }| QueueJson {
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
                    id: *id,
                    owner: *owner,
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
        let mut m = Meta {
            next_id: f.next_id,
            ..Meta::default()
        };
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
            if q.id == 0 || q.id >= f.next_id {
                return Err(format!(
                    "meta.json: queue {:?} has id {}, not below next_id {}",
                    d.name, q.id, f.next_id
                ));
            }
            m.queues.push(QueueEntry {
                decl: d,
                id: q.id,
                owner: q.owner,
            });
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
        let mut m = Meta {
            exchanges: vec![Exchange::topic("t").with_alternate_exchange("ae")],
            bindings: vec![Binding {
                exchange: "t".into(),
                queue: "q".into(),
                routing_key: "a.#".into(),
                arguments: args,
            }],
            ..Meta::default()
        };
        assert_eq!(m.add_queue(q, Some(42)), 1);
        assert_eq!(m.add_queue(Queue::new("plain"), None), 2);
        assert_eq!(Meta::from_json(&m.to_json().unwrap()).unwrap(), m);
    }

    #[test]
    fn bad_meta_is_a_clear_error() {
        assert!(Meta::from_json("{").unwrap_err().contains("meta.json"));
        assert!(Meta::from_json(r#"{"version":7}"#)
            .unwrap_err()
            .contains("version 7"));
        let empty = r#"{"version":2,"next_id":1,"exchanges":[],"queues":[],"bindings":[]}"#;
        assert_eq!(
            Meta::from_json(empty).unwrap(),
            Meta {
                next_id: 1,
                ..Meta::default()
            }
        );
        let e = Meta::from_json(
            r#"{"version":2,"next_id":1,"exchanges":[],"queues":[{"durable":true}],"bindings":[]}"#,
        )
        .unwrap_err();
        assert!(e.contains("missing field `name`"), "{e}");
        // A layout-1 file (store format 2) is refused by its version.
        let e = Meta::from_json(r#"{"version":1,"exchanges":[],"queues":[],"bindings":[]}"#)
            .unwrap_err();
        assert!(e.contains("version 1"), "{e}");
    }

    /// A value the format does not know is an error naming it, never a
    /// default: a damaged or foreign file is not half-read.
    #[test]
    fn unknown_values_and_fields_are_errors() {
        let mut m = Meta {
            exchanges: vec![Exchange::direct("d")],
            ..Meta::default()
        };
        m.add_queue(Queue::new("q").with_overflow(Overflow::DropHead), None);
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
        let untagged_number = r#"{"version":2,"next_id":1,"exchanges":[],"queues":[],"bindings":[{"exchange":"e","queue":"q","routing_key":"","arguments":{"n":5}}]}"#;
        assert!(Meta::from_json(untagged_number).is_err());
        let id_not_below_next = good.replace("\"next_id\":2", "\"next_id\":1");
        let e = Meta::from_json(&id_not_below_next).unwrap_err();
        assert!(e.contains("not below next_id"), "{e}");
    }

    /// Incarnations: removing by name and id leaves a newer queue of the
    /// same name alone.
    #[test]
    fn incarnations_tell_queues_of_one_name_apart() {
        let mut m = Meta::default();
        let old = m.add_queue(Queue::new("q"), None);
        assert!(m.remove_queue("q", Some(old)));
        let new = m.add_queue(Queue::new("q"), None);
        assert_ne!(old, new);
        assert!(
            !m.remove_queue("q", Some(old)),
            "the old one is gone already"
        );
        assert_eq!(m.queue("q").unwrap().id, new);
        assert!(m.remove_queue("q", None));
        assert!(m.queue("q").is_none());
    }
}
