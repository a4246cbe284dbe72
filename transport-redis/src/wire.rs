//! Kombu's wire format on Redis (kombu 5.x, see the README's Redis section):
//! the key names, the JSON envelope a message is stored as, the priority
//! mapping, and the topic pattern kombu stores with a binding.
//!
//! # Invariants
//! - What dashi writes, kombu 5.x reads: the envelope has kombu's key order
//!   and separators (`", "`, `": "`), ASCII-only `\uXXXX` escapes, a base64
//!   body, a uuid4 `delivery_tag` and `delivery_info`.
//! - Priority maps at this boundary only: dashi's most urgent (9 and above)
//!   is kombu's 0, which lands in the list kombu drains first.
//! - Decoding never panics: an envelope that cannot be read is an error
//!   naming what is wrong.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use dashi_engine::spi::Envelope;
use dashi_engine::{DeliveryMode, Headers, Properties, Value};
use serde_json::value::RawValue;

/// Kombu's default separator between a queue name and its priority step,
/// and between the fields of a binding member.
pub(crate) const DEFAULT_SEP: &str = "\x06\x16";
/// Kombu's default priority steps.
pub(crate) const DEFAULT_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The key layout of one deployment (options shared by every participant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) sep: String,
    /// Ascending, first 0 unless configured otherwise.
    pub(crate) steps: Vec<u8>,
    pub(crate) unacked: String,
    pub(crate) unacked_index: String,
    pub(crate) unacked_mutex: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: String::new(),
            sep: DEFAULT_SEP.into(),
            steps: DEFAULT_STEPS.to_vec(),
            unacked: "unacked".into(),
            unacked_index: "unacked_index".into(),
            unacked_mutex: "unacked_mutex".into(),
        }
    }
}

impl Keys {
    /// The list of `queue` for priority step `step`.
    pub(crate) fn list(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{}{step}", self.prefix, self.sep)
        }
    }

    /// Every list of `queue`, in the order they are drained (kombu's
    /// ascending steps: its most urgent first).
    pub(crate) fn lists(&self, queue: &str) -> Vec<String> {
        self.steps.iter().map(|&s| self.list(queue, s)).collect()
    }

    /// The binding set of `exchange`.
    pub(crate) fn binding(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// The set that protects `exchange`'s bindings from kombu 5.7's sweep.
    pub(crate) fn binding_permanent(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// The hash of unacked deliveries.
    pub(crate) fn unacked(&self) -> String {
        format!("{}{}", self.prefix, self.unacked)
    }

    /// The zset of delivery times.
    pub(crate) fn unacked_index(&self) -> String {
        format!("{}{}", self.prefix, self.unacked_index)
    }

    /// The restore lock.
    pub(crate) fn unacked_mutex(&self) -> String {
        format!("{}{}", self.prefix, self.unacked_mutex)
    }

    /// The queues dashi processes bound to fanout exchange `exchange`
    /// (dashi's own key): they get a durable copy of every fanout publish
    /// by a dashi process. kombu's fanout queues, bound in the same
    /// binding table, are served by `PUBLISH` only, as kombu expects.
    pub(crate) fn fanout_queues(&self, exchange: &str) -> String {
        format!("{}_dashi.fanout.{exchange}", self.prefix)
    }

    /// The marker that a fanout message was already copied into `queue`
    /// (its tag), so a kombu `PUBLISH` seen by several dashi processes is
    /// stored once.
    pub(crate) fn fanout_seen(&self, queue: &str, tag: &str) -> String {
        format!("{}_dashi.fanout_seen.{queue}.{tag}", self.prefix)
    }

    /// The dashi processes consuming auto-delete queue `queue`, each
    /// scored with the server time its lease runs out (dashi's own key).
    pub(crate) fn consumers(&self, queue: &str) -> String {
        format!("{}_dashi.consumers.{queue}", self.prefix)
    }

    /// Where envelopes that cannot be read are kept (dashi's own key).
    pub(crate) fn garbage(&self, queue: &str) -> String {
        format!("{}_dashi.garbage.{queue}", self.prefix)
    }

    /// Why `queue` cannot be a queue of this layout, if it cannot: its
    /// list would be one of kombu's bookkeeping keys or a key of dashi's
    /// own, or it holds kombu's priority separator (its lists would be
    /// another queue's, and its bindings could not be read back by kombu).
    pub(crate) fn queue_clash(&self, queue: &str) -> Option<String> {
        let own = [
            (&self.unacked, "the unacked messages"),
            (&self.unacked_index, "the unacked messages' times"),
            (&self.unacked_mutex, "the restore lock"),
        ];
        if let Some((_, what)) = own.iter().find(|(k, _)| k.as_str() == queue) {
            return Some(format!(
                "redis:// keeps {what} under that key (kombu's layout)"
            ));
        }
        for (p, whose) in [
            ("_kombu.", "kombu's binding tables"),
            ("_dashi.", "dashi's own keys"),
        ] {
            if queue.starts_with(p) {
                return Some(format!("names starting with {p:?} are {whose} on redis://"));
            }
        }
        self.separator_clash(queue)
    }

    /// Why `text` cannot be part of a binding (a queue name, a routing
    /// key), if it cannot: it holds kombu's separator, which splits a
    /// binding table's entries and a queue's priority lists.
    pub(crate) fn separator_clash(&self, text: &str) -> Option<String> {
        (!self.sep.is_empty() && text.contains(self.sep.as_str())).then(|| {
            format!(
                "it contains {:?}, the separator of kombu's Redis layout (bindings, priority lists)",
                self.sep
            )
        })
    }

    /// The step a kombu priority (0 = most urgent) lands in: the largest
    /// step not above it; a value below the first step wraps to the last
    /// (kombu's `bisect` quirk).
    pub(crate) fn step_for(&self, kombu_priority: u8) -> u8 {
        let p = kombu_priority.min(9);
        match self.steps.iter().rev().find(|&&s| s <= p) {
            Some(&s) => s,
            None => *self.steps.last().unwrap_or(&0),
        }
    }

    /// The queue a list key (with the global prefix) belongs to: the bare
    /// queue name, or the part before the separator of a step list.
    /// `None` for a key outside the prefix.
    pub(crate) fn queue_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        let key = key.strip_prefix(self.prefix.as_str())?;
        Some(match key.rsplit_once(self.sep.as_str()) {
            Some((q, step)) if step.parse::<u8>().is_ok_and(|s| self.steps.contains(&s)) => q,
            _ => key,
        })
    }

    /// A binding member: `routing_key SEP pattern SEP queue`.
    pub(crate) fn member(&self, routing_key: &str, pattern: &str, queue: &str) -> String {
        format!("{routing_key}{0}{pattern}{0}{queue}", self.sep)
    }

    /// A member's fields (routing key, pattern, queue), or `None` when it
    /// does not have three.
    pub(crate) fn split_member<'a>(&self, member: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let mut it = member.split(self.sep.as_str());
        let (rk, pat, q) = (it.next()?, it.next()?, it.next()?);
        it.next().is_none().then_some((rk, pat, q))
    }
}

/// dashi priority (higher = more urgent) → kombu's (0 = most urgent).
pub(crate) fn to_kombu_priority(dashi: u8) -> u8 {
    9 - dashi.min(9)
}

/// kombu priority → dashi's.
pub(crate) fn from_kombu_priority(kombu: u8) -> u8 {
    9 - kombu.min(9)
}

/// The regex kombu 5.7 stores for a topic binding key
/// (`TopicExchange.key_to_pattern`): punctuation other than `. # *`
/// escaped, `*` → `[^\.]+`, `#` → `.*?`, joined by `\.`, anchored.
pub(crate) fn topic_pattern(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len() * 2);
    for c in key.chars() {
        if c == '\0' {
            escaped.push_str("\\000");
        } else if c.is_alphanumeric() || matches!(c, '.' | '#' | '*') {
            escaped.push(c);
        } else {
            escaped.push('\\');
            escaped.push(c);
        }
    }
    let words: Vec<&str> = escaped
        .split('.')
        .map(|w| match w {
            "*" => "[^\\.]+",
            "#" => ".*?",
            w => w,
        })
        .collect();
    format!("^{}$", words.join("\\."))
}

/// Appends `s` as a JSON string the way Python's `json.dumps` writes it:
/// ASCII only, `\uXXXX` (lower-case hex, surrogate pairs) for the rest,
/// `/` not escaped.
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_finite() => {
            // Python's repr: shortest round trip, with a ".0" on integers.
            let s = serde_json::to_string(f).unwrap_or_else(|_| "0.0".into());
            out.push_str(&s);
        }
        // JSON has no NaN or infinity; Python writes them as these names.
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if *f > 0.0 => out.push_str("Infinity"),
        Value::Float(_) => out.push_str("-Infinity"),
        Value::Str(s) => json_str(out, s),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            // kombu's tagged types: bytes as text, or base64 when not UTF-8.
            Ok(s) => {
                out.push_str("{\"__type__\": \"bytes\", \"__value__\": ");
                json_str(out, s);
                out.push('}');
            }
            Err(_) => {
                out.push_str("{\"__type__\": \"base64\", \"__value__\": \"");
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
                out.push_str("\"}");
            }
        },
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json_value(out, item);
            }
            out.push(']');
        }
        Value::Table(t) => json_table(out, t),
        // A value kind added later: written as null rather than guessed.
        #[allow(unreachable_patterns)]
        _ => out.push_str("null"),
    }
}

fn json_table(out: &mut String, t: &Headers) {
    out.push('{');
    for (i, (k, v)) in t.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        json_str(out, k);
        out.push_str(": ");
        json_value(out, v);
    }
    out.push('}');
}

/// A new kombu delivery tag: a version-4 uuid string whose random bits are
/// 58 bits drawn once per process and a 64-bit counter, so tags are unique
/// without a system call per message (kombu only needs them unique). Drawn
/// again in a process forked from the one that drew them: children of one
/// parent had the parent's bits and counter, so the same tags (and the same
/// consumer id for auto-delete queues, which is one of them).
pub(crate) fn new_tag() -> String {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    const NONE: usize = usize::MAX;
    static PREFIX: AtomicU64 = AtomicU64::new(0);
    /// The fork count `PREFIX` was drawn under (`NONE`: not drawn).
    static DRAWN: AtomicUsize = AtomicUsize::new(NONE);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let forks = dashi_rt::forks();
    if DRAWN.load(Ordering::Acquire) != forks {
        // Threads racing here may each draw: any of the draws is fresh.
        PREFIX.store(uuid::Uuid::new_v4().as_u64_pair().0, Ordering::Release);
        DRAWN.store(forks, Ordering::Release);
    }
    let prefix = PREFIX.load(Ordering::Acquire);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // The version (4) and variant (10) bits sit where RFC 9562 puts them.
    let hi = (prefix & !0xF000) | 0x4000;
    let lo = (n & !(0b11 << 62)) | (0b10 << 62);
    uuid::Uuid::from_u64_pair(hi, lo).to_string()
}

/// The envelope kombu stores for `env` under delivery tag `tag`, byte for
/// byte as kombu 5.7 writes it (its §3.3 order and separators). The
/// priority is kombu's (see [`to_kombu_priority`]).
pub(crate) fn encode(env: &Envelope, tag: &str) -> String {
    encode_for(env, tag, false)
}

/// [`encode`] for the list it goes to: a queue without priorities keeps
/// every message in kombu's bare list (step 0), and the envelope must say
/// priority 0 there, or a kombu restore (which files a message by the
/// priority its envelope names) moves it to the least urgent list, behind
/// messages newer than it. dashi's own priority then travels in
/// `x-dashi-priority`, marked with `x-dashi-lane: 0` so a reader trusts it.
pub(crate) fn encode_for(env: &Envelope, tag: &str, one_lane: bool) -> String {
    let p = env.properties();
    let kombu = if one_lane {
        0
    } else {
        to_kombu_priority(p.priority.unwrap_or(0))
    };
    // kombu's value says dashi's exactly: no need for dashi's own.
    let exact = p
        .priority
        .is_some_and(|n| n <= 9 && to_kombu_priority(n) == kombu);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(env.body.len() * 4 / 3 + 320);
    out.push_str("{\"body\": \"");
    b64.encode_string(&env.body, &mut out);
    out.push_str("\", \"content-encoding\": ");
    // A body that is not text and says nothing of itself: kombu takes a
    // missing encoding for utf-8, fails to decode the body and never
    // delivers it. "binary" (what kombu writes for raw bytes) makes kombu
    // hand it over as bytes; `x-dashi-encoding: null` tells a dashi reader
    // the sender named none.
    let raw_bytes = p.content_encoding.is_none()
        && p.content_type.is_none()
        && std::str::from_utf8(&env.body).is_err();
    if raw_bytes {
        out.push_str("\"binary\"");
    } else {
        opt_str(&mut out, p.content_encoding.as_deref());
    }
    out.push_str(", \"content-type\": ");
    opt_str(&mut out, p.content_type.as_deref());
    out.push_str(", \"headers\": ");
    json_table(&mut out, &p.headers);
    out.push_str(", \"properties\": {");
    // The caller's properties first (as kombu writes `**properties`).
    if let Some(c) = &p.correlation_id {
        out.push_str("\"correlation_id\": ");
        json_str(&mut out, c);
        out.push_str(", ");
    }
    if let Some(r) = &p.reply_to {
        out.push_str("\"reply_to\": ");
        json_str(&mut out, r);
        out.push_str(", ");
    }
    if let Some(m) = &p.message_id {
        out.push_str("\"message_id\": ");
        json_str(&mut out, m);
        out.push_str(", ");
    }
    if let Some(t) = p.timestamp {
        let _ = write!(out, "\"timestamp\": {t}, ");
    }
    // dashi's own priority when kombu's 0-9 does not say it: none (dashi's
    // lowest lane), above 9, or a one-lane queue's (kombu's is then 0).
    if !exact {
        match p.priority {
            None => out.push_str("\"x-dashi-priority\": null, "),
            Some(n) => {
                let _ = write!(out, "\"x-dashi-priority\": {n}, ");
            }
        }
        if one_lane {
            out.push_str("\"x-dashi-lane\": 0, ");
        }
    }
    if raw_bytes {
        out.push_str("\"x-dashi-encoding\": null, ");
    }
    let mode = match p.delivery_mode {
        DeliveryMode::Transient => 1,
        _ => 2,
    };
    let _ = write!(out, "\"delivery_mode\": {mode}, ");
    if let Some(e) = p.expiration {
        let _ = write!(out, "\"expiration\": \"{}\", ", e.as_millis());
    }
    out.push_str("\"delivery_info\": {\"exchange\": ");
    json_str(&mut out, &env.exchange);
    out.push_str(", \"routing_key\": ");
    json_str(&mut out, &env.routing_key);
    let _ = write!(
        out,
        "}}, \"priority\": {kombu}, \"body_encoding\": \"base64\", \"delivery_tag\": "
    );
    json_str(&mut out, tag);
    out.push_str("}}");
    out
}

fn opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A kombu envelope as read: the message, with where kombu says it went.
/// (Its `delivery_tag` must be there: the pop script recorded it under it.)
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) envelope: Envelope,
}

/// Why an envelope cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Garbage(pub(crate) String);

impl std::fmt::Display for Garbage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(serde::Deserialize)]
struct RawEnvelope<'a> {
    #[serde(default, borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "content-type")]
    content_type: Option<String>,
    #[serde(default, rename = "content-encoding")]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    properties: Option<RawProperties>,
}

#[derive(serde::Deserialize)]
struct RawProperties {
    #[serde(default)]
    body_encoding: Option<String>,
    #[serde(default)]
    delivery_tag: Option<serde_json::Value>,
    #[serde(default)]
    delivery_info: Option<RawDeliveryInfo>,
    #[serde(default)]
    priority: Option<serde_json::Value>,
    #[serde(default)]
    delivery_mode: Option<serde_json::Value>,
    #[serde(default)]
    correlation_id: Option<serde_json::Value>,
    #[serde(default)]
    reply_to: Option<serde_json::Value>,
    #[serde(default)]
    message_id: Option<serde_json::Value>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    #[serde(default)]
    expiration: Option<serde_json::Value>,
    /// Present (possibly null) only in envelopes dashi wrote.
    #[serde(default, rename = "x-dashi-priority", deserialize_with = "present")]
    dashi_priority: Option<serde_json::Value>,
    /// 0 in an envelope dashi wrote for a queue without priorities (its
    /// kombu priority is then 0, whatever dashi's is).
    #[serde(default, rename = "x-dashi-lane")]
    dashi_lane: Option<serde_json::Value>,
    /// Present and null in an envelope dashi wrote "binary" into for a
    /// body whose sender named no encoding.
    #[serde(default, rename = "x-dashi-encoding", deserialize_with = "present")]
    dashi_encoding: Option<serde_json::Value>,
}

/// Deserializes a field that may be `null` as `Some(Null)`, so "present
/// and null" differs from "absent" (`None`, the default).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

#[derive(serde::Deserialize)]
struct RawDeliveryInfo {
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    redelivered: Option<serde_json::Value>,
}

/// The property dashi adds to the copy of a fanout publish it sends with
/// `PUBLISH`: dashi's own queues already got a durable copy.
pub(crate) const FANOUT_MARK: &str = "\"x-dashi-fanout\": true, ";

/// `raw` (as [`encode`] writes it) with [`FANOUT_MARK`] before its tag.
pub(crate) fn with_fanout_mark(raw: &str) -> String {
    match raw.rfind("\"delivery_tag\": ") {
        Some(at) => format!("{}{FANOUT_MARK}{}", &raw[..at], &raw[at..]),
        None => raw.to_owned(),
    }
}

/// The two fields dashi reads from a raw envelope without decoding it all.
#[derive(serde::Deserialize)]
struct Peek {
    properties: Option<PeekProperties>,
}

#[derive(serde::Deserialize)]
struct PeekProperties {
    #[serde(default)]
    delivery_tag: Option<serde_json::Value>,
    #[serde(default)]
    priority: Option<serde_json::Value>,
}

fn peek(raw: &[u8]) -> Option<PeekProperties> {
    serde_json::from_slice::<Peek>(raw).ok()?.properties
}

/// The delivery tag of a raw envelope (kombu's field), if it has one.
pub(crate) fn tag_of(raw: &[u8]) -> Option<String> {
    peek(raw)?.delivery_tag.as_ref().and_then(tag_text)
}

/// A kombu delivery tag as the text kombu uses for the `unacked` field.
pub(crate) fn tag_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// kombu's `int()` of a priority: ints, floats (truncated) and numeric
/// strings; anything else is its default, 0.
fn kombu_int(v: &Option<serde_json::Value>) -> Option<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        Some(serde_json::Value::Bool(b)) => Some(i64::from(*b)),
        _ => None,
    }
}

/// A JSON header value as a dashi [`Value`], kombu's `__type__` tags
/// decoded (`bytes`, `base64` → bytes; dates, times, decimals and uuids →
/// their text).
fn value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::Str(s),
        J::Array(a) => Value::List(a.into_iter().map(value).collect()),
        J::Object(mut m) => {
            if let (1, Some(J::String(name))) = (m.len(), m.get(NON_FINITE)) {
                match name.as_str() {
                    "NaN" => return Value::Float(f64::NAN),
                    "Infinity" => return Value::Float(f64::INFINITY),
                    "-Infinity" => return Value::Float(f64::NEG_INFINITY),
                    _ => {}
                }
            }
            if m.len() == 2 && m.contains_key("__type__") && m.contains_key("__value__") {
                let kind = m
                    .get("__type__")
                    .and_then(J::as_str)
                    .unwrap_or("")
                    .to_owned();
                let inner = m.remove("__value__").unwrap_or(J::Null);
                return match (kind.as_str(), inner) {
                    ("bytes", J::String(s)) => Value::Bytes(Bytes::from(s.into_bytes())),
                    ("base64", J::String(s)) => {
                        match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                            Ok(b) => Value::Bytes(Bytes::from(b)),
                            Err(_) => Value::Str(s),
                        }
                    }
                    ("uuid", J::Object(u)) => match u.get("hex") {
                        Some(J::String(h)) => Value::Str(h.clone()),
                        _ => Value::Table(Default::default()),
                    },
                    (_, J::String(s)) => Value::Str(s),
                    (_, other) => value(other),
                };
            }
            Value::Table(m.into_iter().map(|(k, v)| (k, value(v))).collect())
        }
    }
}

/// The key of the object [`python_numbers`] writes for a float JSON has
/// no number for.
const NON_FINITE: &str = "\u{0}dashi non-finite float";

/// Python's `json` (kombu's serializer, and dashi's own writer, as
/// Python does) writes a float that is not finite as the bare names `NaN`,
/// `Infinity` and `-Infinity`, which JSON has not: each one outside a
/// string is replaced by an object [`value`] reads back as that float.
/// `None` when there is none.
fn python_numbers(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let (mut in_str, mut escaped, mut any) = (false, false, false);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else if let Some(name) = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|n| raw[i..].starts_with(n))
        {
            out.extend_from_slice(b"{\"\\u0000dashi non-finite float\": \"");
            out.extend_from_slice(name);
            out.extend_from_slice(b"\"}");
            i += name.len();
            any = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    any.then_some(out)
}

/// Reads a kombu envelope. `Err` names why it cannot be delivered (it is
/// then set aside, never dropped).
pub(crate) fn decode(raw: &[u8]) -> Result<Decoded, Garbage> {
    match decode_json(raw) {
        Err(e) => match python_numbers(raw) {
            Some(read) => decode_json(&read).map_err(|_| e),
            None => Err(e),
        },
        decoded => decoded,
    }
}

/// [`decode`] of strict JSON.
fn decode_json(raw: &[u8]) -> Result<Decoded, Garbage> {
    let env: RawEnvelope<'_> =
        serde_json::from_slice(raw).map_err(|e| Garbage(format!("not a JSON envelope: {e}")))?;
    let props = env
        .properties
        .ok_or_else(|| Garbage("the envelope has no \"properties\" object".into()))?;
    props
        .delivery_tag
        .as_ref()
        .and_then(tag_text)
        .ok_or_else(|| Garbage("the envelope has no properties.delivery_tag".into()))?;
    let body_text = env.body.unwrap_or_default();
    let body = match props.body_encoding.as_deref() {
        Some(e) if e.eq_ignore_ascii_case("base64") => base64::engine::general_purpose::STANDARD
            .decode(body_text.as_bytes())
            .map(Bytes::from)
            .map_err(|e| Garbage(format!("the base64 body cannot be decoded: {e}")))?,
        None => Bytes::copy_from_slice(body_text.as_bytes()),
        Some(e) if e.eq_ignore_ascii_case("utf-8") || e.eq_ignore_ascii_case("utf8") => {
            Bytes::copy_from_slice(body_text.as_bytes())
        }
        Some(other) => {
            return Err(Garbage(format!("unknown body encoding {other:?}")));
        }
    };
    let mut headers: Headers = Default::default();
    let mut redelivered = false;
    let mut body = body;
    for (k, v) in env.headers.unwrap_or_default() {
        if k == "redelivered" {
            redelivered |= v == serde_json::Value::Bool(true);
            continue;
        }
        // kombu's zlib compression ("application/x-gzip" is zlib format):
        // the body is delivered decompressed, without the header. Other
        // codecs stay as they are, header included, for the application.
        if k == "compression" && v.as_str() == Some("application/x-gzip") {
            body = inflate(&body)?;
            continue;
        }
        headers.insert(k, value(v));
    }
    let (exchange, routing_key) = match &props.delivery_info {
        Some(di) => {
            redelivered |= di.redelivered == Some(serde_json::Value::Bool(true));
            (
                di.exchange.clone().unwrap_or_default(),
                di.routing_key.clone().unwrap_or_default(),
            )
        }
        None => (String::new(), String::new()),
    };
    let kombu_priority = kombu_int(&props.priority).unwrap_or(0).clamp(0, 9) as u8;
    // dashi's exact priority, when dashi wrote one that agrees with kombu's.
    // Written for a queue without priorities: kombu's 0 says nothing of
    // dashi's, which is in `x-dashi-priority`.
    let one_lane = kombu_priority == 0
        && props
            .dashi_lane
            .as_ref()
            .is_some_and(|v| v.as_u64() == Some(0));
    let priority = match &props.dashi_priority {
        Some(serde_json::Value::Null) if kombu_priority == 9 || one_lane => None,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .filter(|&n| one_lane || to_kombu_priority(n) == kombu_priority)
            .or(Some(from_kombu_priority(kombu_priority))),
        _ => Some(from_kombu_priority(kombu_priority)),
    };
    let properties = Properties {
        content_type: env.content_type,
        content_encoding: match (env.content_encoding, &props.dashi_encoding) {
            (Some(e), Some(serde_json::Value::Null)) if e == "binary" => None,
            (e, _) => e,
        },
        headers,
        delivery_mode: match kombu_int(&props.delivery_mode) {
            Some(1) => DeliveryMode::Transient,
            _ => DeliveryMode::Persistent,
        },
        priority,
        correlation_id: text(&props.correlation_id),
        reply_to: text(&props.reply_to),
        expiration: text(&props.expiration)
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis),
        message_id: text(&props.message_id),
        timestamp: kombu_int(&props.timestamp).and_then(|t| u64::try_from(t).ok()),
    };
    let mut envelope = Envelope::new(
        dashi_engine::Message {
            body,
            properties: Properties::DEFAULT,
        },
        &exchange,
        &routing_key,
    );
    envelope.properties = Some(Arc::new(properties));
    envelope.redelivered = redelivered;
    envelope.lane = priority.unwrap_or(0);
    Ok(Decoded { envelope })
}

/// dashi's note of where a restored message stood: when it was popped
/// (the score written with it) and its place in that pop. The restore
/// script puts a message behind restored messages that stood before it.
pub(crate) const ORDER_KEY: &str = "x-dashi-order";

/// The most a compressed body may inflate to (a bomb is garbage, not an
/// out-of-memory).
const MAX_INFLATED: u64 = 256 << 20;

/// Inflates a zlib stream (kombu's `zlib.compress`).
fn inflate(b: &[u8]) -> Result<Bytes, Garbage> {
    use std::io::Read;
    let mut out = Vec::with_capacity(b.len() * 4);
    let mut z = flate2::read::ZlibDecoder::new(b).take(MAX_INFLATED + 1);
    z.read_to_end(&mut out)
        .map_err(|e| Garbage(format!("the zlib-compressed body cannot be inflated: {e}")))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(Garbage(format!(
            "the compressed body inflates past {MAX_INFLATED} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// The envelope `raw` as it goes back to its list. With `flag`, kombu's
/// restore marks: `"redelivered": true` as the last key of `headers` and of
/// `properties.delivery_info` (replacing an existing one); a missing
/// `headers` or `delivery_info` is added (the latter naming `queue`), so
/// that kombu can consume and restore the result. With `order`,
/// `properties["x-dashi-order"]` is set to `[popped_at, index]`. Every
/// other byte is kept as it was. `None` when `raw` is not an object with
/// an object `properties`, or its `headers` is not an object.
pub(crate) fn restored(
    raw: &str,
    queue: &str,
    flag: bool,
    order: Option<(&str, u32)>,
) -> Option<String> {
    let top = object(raw)?;
    let mut out = String::with_capacity(raw.len() + 96);
    out.push('{');
    let mut saw_headers = false;
    let mut saw_properties = false;
    for (i, (k, v)) in top.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        json_str(&mut out, k);
        out.push_str(": ");
        match k.as_str() {
            "headers" => {
                saw_headers = true;
                if flag {
                    out.push_str(&with_flag(v.get())?);
                } else {
                    out.push_str(v.get());
                }
            }
            "properties" => {
                saw_properties = true;
                let props = object(v.get())?;
                out.push('{');
                let mut saw_info = false;
                let mut first = true;
                for (pk, pv) in props.iter().filter(|(pk, _)| pk != ORDER_KEY) {
                    if !first {
                        out.push_str(", ");
                    }
                    first = false;
                    json_str(&mut out, pk);
                    out.push_str(": ");
                    if pk == "delivery_info" {
                        saw_info = true;
                        if flag {
                            out.push_str(&with_flag(pv.get())?);
                        } else {
                            out.push_str(pv.get());
                        }
                    } else {
                        out.push_str(pv.get());
                    }
                }
                if !saw_info && flag {
                    if !first {
                        out.push_str(", ");
                    }
                    first = false;
                    out.push_str("\"delivery_info\": {\"exchange\": \"\", \"routing_key\": ");
                    json_str(&mut out, queue);
                    out.push_str(", \"redelivered\": true}");
                }
                if let Some((at, index)) = order {
                    if !first {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "\"{ORDER_KEY}\": [{at}, {index}]");
                }
                out.push('}');
            }
            _ => out.push_str(v.get()),
        }
    }
    if !saw_properties {
        return None;
    }
    if !saw_headers && flag {
        out.push_str(", \"headers\": {\"redelivered\": true}");
    }
    out.push('}');
    Some(out)
}

/// The members of a JSON object in their order, values left as raw text.
fn object(raw: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Ordered(Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Ordered, A::Error> {
                    let mut v = Vec::new();
                    while let Some((k, val)) = map.next_entry::<String, Box<RawValue>>()? {
                        v.push((k, val));
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Ordered>(raw).ok().map(|o| o.0)
}

/// An object with `"redelivered": true` as its last member.
fn with_flag(raw: &str) -> Option<String> {
    let members = object(raw)?;
    let mut out = String::from("{");
    for (k, v) in members.iter().filter(|(k, _)| k != "redelivered") {
        json_str(&mut out, k);
        out.push_str(": ");
        out.push_str(v.get());
        out.push_str(", ");
    }
    out.push_str("\"redelivered\": true}");
    Some(out)
}

/// The `unacked` hash value kombu expects: `[envelope, exchange,
/// routing_key]`. dashi writes exchange `""` and the queue it popped from,
/// so any restorer puts the message back into exactly that queue.
pub(crate) fn unacked_value(raw: &str, queue: &str) -> String {
    let mut out = String::with_capacity(raw.len() + queue.len() + 16);
    out.push('[');
    out.push_str(raw);
    out.push_str(", \"\", ");
    json_str(&mut out, queue);
    out.push(']');
    out
}

/// [`unacked_value`] of an envelope as popped, byte for byte (it need not
/// be UTF-8).
pub(crate) fn unacked_value_bytes(raw: &[u8], queue: &str) -> Vec<u8> {
    let mut tail = String::with_capacity(queue.len() + 8);
    tail.push_str(", \"\", ");
    json_str(&mut tail, queue);
    tail.push(']');
    let mut out = Vec::with_capacity(raw.len() + tail.len() + 1);
    out.push(b'[');
    out.extend_from_slice(raw);
    out.extend_from_slice(tail.as_bytes());
    out
}

/// An `unacked` hash value split into its envelope (raw text), exchange
/// and routing key.
pub(crate) fn split_unacked(value: &str) -> Option<(Box<RawValue>, String, String)> {
    let (env, ex, rk): (Box<RawValue>, String, String) = serde_json::from_str(value).ok()?;
    Some((env, ex, rk))
}

/// The kombu priority recorded in a raw envelope (0 when missing or not a
/// number, as kombu reads it).
pub(crate) fn kombu_priority_of(raw: &str) -> u8 {
    peek(raw.as_bytes())
        .and_then(|p| kombu_int(&p.priority))
        .unwrap_or(0)
        .clamp(0, 9) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashi_engine::Message;

    fn sample() -> Envelope {
        let mut m =
            Message::new(&b"{\"hello\": \"world\", \"n\": 0, \"sent_at\": 1795266596.4296215}"[..]);
        m.properties.content_type = Some("application/json".into());
        m.properties.content_encoding = Some("utf-8".into());
        m.properties
            .headers
            .insert("x-trace".into(), Value::Str("abc".into()));
        m.properties.priority = Some(4);
        Envelope::new(m, "ex1", "rk1")
    }

    #[test]
    fn encodes_kombus_exact_bytes() {
        // kombu-redis-wire.md §9.A, with dashi priority 4 = kombu 5.
        let got = encode(&sample(), "e03cdaa1-5dd9-4b15-a4af-9187744e8522");
        assert_eq!(
            got,
            "{\"body\": \"eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMCwgInNlbnRfYXQiOiAxNzk1MjY2NTk2LjQyOTYyMTV9\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \"headers\": {\"x-trace\": \"abc\"}, \"properties\": {\"delivery_mode\": 2, \"delivery_info\": {\"exchange\": \"ex1\", \"routing_key\": \"rk1\"}, \"priority\": 5, \"body_encoding\": \"base64\", \"delivery_tag\": \"e03cdaa1-5dd9-4b15-a4af-9187744e8522\"}}"
        );
    }

    /// Python writes a float that is not finite as a bare name, and so
    /// does dashi's writer: the reader set such envelopes aside as "not a
    /// JSON envelope", its own included.
    #[test]
    fn floats_that_are_not_finite_are_read_as_python_writes_them() {
        let mut m = Message::new("x");
        for (k, f) in [
            ("nan", f64::NAN),
            ("inf", f64::INFINITY),
            ("ninf", f64::NEG_INFINITY),
        ] {
            m.properties.headers.insert(k.into(), Value::Float(f));
        }
        // The names inside a string stay text.
        m.properties
            .headers
            .insert("s".into(), Value::Str("NaN \" Infinity".into()));
        let raw = encode(&Envelope::new(m, "", "q"), "t");
        assert!(raw.contains("\"nan\": NaN"), "{raw}");
        let h = decode(raw.as_bytes())
            .unwrap()
            .envelope
            .properties()
            .headers
            .clone();
        assert!(
            matches!(h.get("nan"), Some(Value::Float(f)) if f.is_nan()),
            "{h:?}"
        );
        assert_eq!(h.get("inf"), Some(&Value::Float(f64::INFINITY)));
        assert_eq!(h.get("ninf"), Some(&Value::Float(f64::NEG_INFINITY)));
        assert_eq!(h.get("s"), Some(&Value::Str("NaN \" Infinity".into())));
        // As kombu writes one (Python's json.dumps), tag last.
        let kombu = br#"{"body": "e30=", "headers": {"eta_score": Infinity, "l": [NaN, -Infinity]}, "properties": {"body_encoding": "base64", "delivery_tag": "k"}}"#;
        let h = decode(kombu).unwrap().envelope.properties().headers.clone();
        assert_eq!(h.get("eta_score"), Some(&Value::Float(f64::INFINITY)));
        assert!(
            matches!(h.get("l"), Some(Value::List(l)) if l.len() == 2
                && matches!(l[0], Value::Float(f) if f.is_nan())
                && l[1] == Value::Float(f64::NEG_INFINITY)),
            "{h:?}"
        );
        // Still not JSON: set aside with serde's reason.
        let bad = decode(br#"{"body": NaNx}"#).unwrap_err();
        assert!(bad.0.starts_with("not a JSON envelope"), "{bad}");
    }

    #[test]
    fn decodes_what_it_encodes() {
        let env = sample();
        let encoded = encode(&env, "t1");
        assert!(encoded.ends_with("\"delivery_tag\": \"t1\"}}"), "{encoded}");
        let d = decode(encoded.as_bytes()).unwrap();
        assert_eq!(d.envelope.body, env.body);
        assert_eq!(d.envelope.properties(), env.properties());
        assert_eq!(&*d.envelope.exchange, "ex1");
        assert_eq!(&*d.envelope.routing_key, "rk1");
        assert!(!d.envelope.redelivered);
        assert_eq!(d.envelope.lane, 4);
        // dashi's priorities kombu cannot say survive the round trip.
        for (p, kombu) in [(None, "9"), (Some(255), "0"), (Some(10), "0")] {
            let mut m = Message::new("x");
            m.properties.priority = p;
            let raw = encode(&Envelope::new(m, "", "q"), "t");
            assert!(raw.contains(&format!("\"priority\": {kombu}")), "{raw}");
            let d = decode(raw.as_bytes()).unwrap();
            assert_eq!(d.envelope.properties().priority, p);
            assert_eq!(d.envelope.lane, p.unwrap_or(0));
        }
        // A note that disagrees with kombu's priority is not believed.
        let odd = br#"{"body": "", "properties": {"delivery_tag": "t", "priority": 0, "x-dashi-priority": null}}"#;
        assert_eq!(decode(odd).unwrap().envelope.properties().priority, Some(9));
    }

    #[test]
    fn raw_bytes_say_binary_to_kombu_and_nothing_to_dashi() {
        // Not text, no type, no encoding: kombu would decode it as utf-8.
        let raw = encode(
            &Envelope::new(Message::new(&b"\xff\x00\xfe"[..]), "", "q"),
            "t",
        );
        assert!(raw.contains("\"content-encoding\": \"binary\""), "{raw}");
        assert!(raw.contains("\"content-type\": null"), "{raw}");
        let d = decode(raw.as_bytes()).unwrap();
        assert_eq!(&d.envelope.body[..], b"\xff\x00\xfe");
        assert_eq!(d.envelope.properties().content_encoding, None);
        assert_eq!(d.envelope.properties().content_type, None);
        // Text, or a body whose sender named its type or encoding, goes as
        // it was given.
        let text = encode(&Envelope::new(Message::new("hi"), "", "q"), "t");
        assert!(text.contains("\"content-encoding\": null"), "{text}");
        assert!(!text.contains("x-dashi-encoding"), "{text}");
        let mut typed = Message::new(&b"\xff"[..]);
        typed.properties.content_type = Some("application/x-thing".into());
        let typed = encode(&Envelope::new(typed, "", "q"), "t");
        assert!(typed.contains("\"content-encoding\": null"), "{typed}");
        // kombu's own raw bytes say "binary" and keep saying it.
        let kombu = br#"{"body": "/w==", "content-encoding": "binary", "content-type": "application/data", "properties": {"delivery_tag": "k", "body_encoding": "base64"}}"#;
        let d = decode(kombu).unwrap();
        assert_eq!(
            d.envelope.properties().content_encoding.as_deref(),
            Some("binary")
        );
    }

    #[test]
    fn priorities_map_both_ways() {
        // dashi 9 (and above) is kombu's most urgent, 0; kombu 9 is dashi 0.
        for (dashi, kombu) in [(0, 9), (1, 8), (4, 5), (9, 0), (200, 0)] {
            assert_eq!(to_kombu_priority(dashi), kombu);
        }
        for (kombu, dashi) in [(0, 9), (9, 0), (5, 4)] {
            assert_eq!(from_kombu_priority(kombu), dashi);
        }
        let k = Keys::default();
        assert_eq!(
            (0..=9).map(|p| k.step_for(p)).collect::<Vec<_>>(),
            [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]
        );
        let odd = Keys {
            steps: vec![2, 5],
            ..Keys::default()
        };
        assert_eq!(
            odd.step_for(1),
            5,
            "kombu's wrap-around below the first step"
        );
        assert_eq!(k.list("q1", 3), "q1\x06\x163");
        assert_eq!(k.list("q1", 0), "q1");
    }

    #[test]
    fn reads_what_kombu_accepts() {
        let minimal = br#"{"body": "hi", "content-type": null, "properties": {"delivery_tag": 7, "delivery_info": {"exchange": "", "routing_key": "q"}, "priority": "2"}}"#;
        let d = decode(minimal).unwrap();
        assert_eq!(&d.envelope.body[..], b"hi");
        assert_eq!(d.envelope.properties().priority, Some(7));
        let null_headers = br#"{"body": "aGk=", "headers": null, "properties": {"delivery_tag": "x", "body_encoding": "base64", "priority": "high"}}"#;
        let d = decode(null_headers).unwrap();
        assert_eq!(&d.envelope.body[..], b"hi");
        assert_eq!(
            d.envelope.properties().priority,
            Some(9),
            "kombu's default 0"
        );
        let tagged = br#"{"body": "", "headers": {"b": {"__type__": "bytes", "__value__": "raw"}, "d": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}, "redelivered": true}, "properties": {"delivery_tag": "y"}}"#;
        let d = decode(tagged).unwrap();
        let h = &d.envelope.properties().headers;
        assert_eq!(h["b"], Value::Bytes(Bytes::from_static(b"raw")));
        assert_eq!(h["d"], Value::Str("2024-01-02T03:04:05".into()));
        assert!(d.envelope.redelivered);
        assert!(!h.contains_key("redelivered"));
    }

    #[test]
    fn reads_kombus_zlib_compression() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"{\"x\": 1}").unwrap();
        let packed = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
        let raw = format!(
            r#"{{"body": "{packed}", "content-type": "application/json", "headers": {{"compression": "application/x-gzip", "k": 1}}, "properties": {{"delivery_tag": "z", "body_encoding": "base64"}}}}"#
        );
        let d = decode(raw.as_bytes()).unwrap();
        assert_eq!(&d.envelope.body[..], b"{\"x\": 1}");
        assert!(!d.envelope.properties().headers.contains_key("compression"));
        assert_eq!(d.envelope.properties().headers["k"], Value::Int(1));
        let bad = r#"{"body": "aGk=", "headers": {"compression": "application/x-gzip"}, "properties": {"delivery_tag": "z", "body_encoding": "base64"}}"#;
        assert!(decode(bad.as_bytes()).unwrap_err().0.contains("inflated"));
        let bz = r#"{"body": "aGk=", "headers": {"compression": "application/x-bz2"}, "properties": {"delivery_tag": "z", "body_encoding": "base64"}}"#;
        let d = decode(bz.as_bytes()).unwrap();
        assert_eq!(
            &d.envelope.body[..],
            b"hi",
            "other codecs are left to the application"
        );
        assert!(d.envelope.properties().headers.contains_key("compression"));
    }

    #[test]
    fn names_what_is_wrong_with_garbage() {
        for (raw, why) in [
            (&b"not json"[..], "not a JSON envelope"),
            (br#"{"body": "x"}"#, "no \"properties\""),
            (br#"{"properties": {}}"#, "delivery_tag"),
            (
                br#"{"body": "x", "properties": {"delivery_tag": "t", "body_encoding": "rot13"}}"#,
                "unknown body encoding",
            ),
            (
                br#"{"body": "!!", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}"#,
                "base64",
            ),
        ] {
            let e = decode(raw).unwrap_err();
            assert!(e.0.contains(why), "{e} should say {why}");
        }
    }

    #[test]
    fn restore_marks_keep_every_other_byte() {
        // kombu-redis-wire.md §9.B → §9.C.
        let raw = "{\"body\": \"eyJ9\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \"headers\": {\"x-trace\": \"abc\"}, \"properties\": {\"delivery_mode\": 2, \"delivery_info\": {\"exchange\": \"ex1\", \"routing_key\": \"rk1\"}, \"priority\": 5, \"body_encoding\": \"base64\", \"delivery_tag\": \"e0\"}}";
        let want = "{\"body\": \"eyJ9\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \"headers\": {\"x-trace\": \"abc\", \"redelivered\": true}, \"properties\": {\"delivery_mode\": 2, \"delivery_info\": {\"exchange\": \"ex1\", \"routing_key\": \"rk1\", \"redelivered\": true}, \"priority\": 5, \"body_encoding\": \"base64\", \"delivery_tag\": \"e0\"}}";
        assert_eq!(restored(raw, "q", true, None).unwrap(), want);
        assert_eq!(
            restored(want, "q", true, None).unwrap(),
            want,
            "marking twice changes nothing"
        );
        assert_eq!(
            restored("{\"headers\": null, \"properties\": {}}", "q", true, None),
            None
        );
        assert_eq!(restored("{\"body\": \"\"}", "q", true, None), None);
        assert_eq!(
            restored("{\"properties\": {\"delivery_tag\": 1}}", "q/1", true, None).unwrap(),
            "{\"properties\": {\"delivery_tag\": 1, \"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"q/1\", \"redelivered\": true}}, \"headers\": {\"redelivered\": true}}"
        );
    }

    #[test]
    fn restored_envelopes_carry_their_order() {
        let raw = "{\"headers\": {}, \"properties\": {\"delivery_tag\": \"t\", \"x-dashi-order\": [1.5, 0]}}";
        assert_eq!(
            restored(raw, "q", false, Some(("17.25", 3))).unwrap(),
            "{\"headers\": {}, \"properties\": {\"delivery_tag\": \"t\", \"x-dashi-order\": [17.25, 3]}}"
        );
        assert_eq!(
            restored(raw, "q", true, None).unwrap(),
            "{\"headers\": {\"redelivered\": true}, \"properties\": {\"delivery_tag\": \"t\", \"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"q\", \"redelivered\": true}}}"
        );
        let d = decode(
            restored(raw, "q", true, Some(("2.0", 1)))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(d.envelope.redelivered);
    }

    #[test]
    fn unacked_values_round_trip() {
        let v = unacked_value("{\"a\": 1}", "q/1");
        assert_eq!(v, "[{\"a\": 1}, \"\", \"q/1\"]");
        let (env, ex, rk) = split_unacked(&v).unwrap();
        assert_eq!(
            (env.get(), ex.as_str(), rk.as_str()),
            ("{\"a\": 1}", "", "q/1")
        );
        assert_eq!(kombu_priority_of("{\"properties\": {\"priority\": 6}}"), 6);
        assert_eq!(kombu_priority_of("{}"), 0);
    }

    #[test]
    fn topic_patterns_are_kombu_57s() {
        // kombu-redis-wire.md §9.D.
        assert_eq!(topic_pattern("a.#"), "^a\\..*?$");
        assert_eq!(topic_pattern("a.*.c"), "^a\\.[^\\.]+\\.c$");
        assert_eq!(topic_pattern("x_y-z$"), "^x\\_y\\-z\\$$");
        assert_eq!(topic_pattern("#"), "^.*?$");
    }

    #[test]
    fn json_strings_are_pythons() {
        let mut s = String::new();
        json_str(&mut s, "a/b\"é😀\u{1}");
        assert_eq!(s, "\"a/b\\\"\\u00e9\\ud83d\\ude00\\u0001\"");
    }

    #[test]
    fn the_fanout_mark_goes_before_the_tag() {
        let raw = encode(&Envelope::new(Message::new("x"), "bcast", ""), "t9");
        let marked = with_fanout_mark(&raw);
        assert!(
            marked.ends_with("\"x-dashi-fanout\": true, \"delivery_tag\": \"t9\"}}"),
            "{marked}"
        );
        assert_eq!(tag_of(marked.as_bytes()).as_deref(), Some("t9"));
        assert!(decode(marked.as_bytes()).is_ok());
        assert_eq!(tag_of(b"nope"), None);
    }

    /// A forked child draws its own random bits: children of one parent
    /// made the same tags (and the same auto-delete consumer id) before.
    #[test]
    #[allow(unsafe_code)]
    fn a_forked_child_makes_tags_of_its_own() {
        let mine = new_tag();
        let mut fds = [0; 2];
        // SAFETY: a pipe into an array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes a tag, writes it and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let t = new_tag();
            // SAFETY: writes the tag's bytes to the pipe, then ends.
            unsafe {
                libc::write(fds[1], t.as_ptr().cast(), t.len());
                libc::_exit(0);
            }
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads into `buf`, at most its length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        let mut status = 0;
        // SAFETY: `pid` is this process's child; the pipe's ends are ours.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let theirs = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
        assert_eq!(theirs.len(), 36, "{theirs}");
        // The first 64 bits are the random part (with the version nibble).
        assert_ne!(theirs[..18], mine[..18], "{theirs} {mine}");
        assert_eq!(new_tag()[..18], mine[..18]);
    }

    #[test]
    fn tags_are_unique_version_4_uuids() {
        let a = new_tag();
        let b = new_tag();
        assert_ne!(a, b);
        for t in [&a, &b] {
            let u = uuid::Uuid::parse_str(t).unwrap();
            assert_eq!(u.get_version_num(), 4, "{t}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{t}");
        }
    }

    #[test]
    fn list_keys_name_their_queue() {
        let k = Keys {
            prefix: "p:".into(),
            ..Keys::default()
        };
        assert_eq!(k.queue_of("p:q1\x06\x163"), Some("q1"));
        assert_eq!(k.queue_of("p:q1"), Some("q1"));
        assert_eq!(
            k.queue_of("p:q1\x06\x16x"),
            Some("q1\x06\x16x"),
            "not a step"
        );
        assert_eq!(
            k.queue_of("p:q1\x06\x164"),
            Some("q1\x06\x164"),
            "not one of the steps"
        );
        assert_eq!(k.queue_of("other"), None);
    }

    #[test]
    fn members_split_in_three() {
        let k = Keys::default();
        let m = k.member("rk1", "", "q1");
        assert_eq!(m, "rk1\x06\x16\x06\x16q1");
        assert_eq!(k.split_member(&m), Some(("rk1", "", "q1")));
        assert_eq!(k.split_member("a\x06\x16b"), None);
    }
}
