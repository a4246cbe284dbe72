//! Topology (exchanges and bindings) and the immutable routing snapshot built
//! from it. Transports keep a [`Topology`] under a slow-path lock, rebuild a
//! [`Routing`] after each change and publish it by atomic pointer swap;
//! publishers route on their own thread against the snapshot, without locks.

use std::collections::HashMap;

/// Maps on the publish path use foldhash: several times faster than SipHash on
/// short names, with some resistance to crafted keys.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use crate::error::{Error, PublishError};
use crate::exchange::headers::HeadersMatch;
use crate::exchange::topic::{validate_pattern, TopicTrie};
use crate::exchange::{Exchange, ExchangeKind};
use crate::names::{check_exchange_ref, check_len, check_name};
use crate::transport::Envelope;
use crate::value::Headers;

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Exchange name.
    pub exchange: String,
    /// Queue name.
    pub queue: String,
    /// Binding key (pattern for topic exchanges; ignored by fanout and headers).
    pub routing_key: String,
    /// Binding arguments (`x-match` and pairs for headers exchanges).
    pub arguments: Headers,
}

/// The declared exchanges and bindings: the mutable master copy of a
/// transport's topology. Queue existence is the transport's business; methods
/// that need it take a predicate.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    exchanges: HashMap<String, Exchange>,
    bindings: Vec<Binding>,
}

impl Topology {
    /// An empty topology (the default exchange `""` always exists implicitly).
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `ex`; redeclaring with other arguments is `PreconditionFailed`.
    /// Returns true when something changed.
    pub fn declare_exchange(&mut self, ex: &Exchange) -> Result<bool, Error> {
        check_name("exchange", &ex.name)?;
        if let Some(ae) = &ex.alternate_exchange {
            check_name("alternate exchange", ae)?;
        }
        match self.exchanges.get(&ex.name) {
            Some(existing) if existing == ex => Ok(false),
            Some(existing) => Err(Error::PreconditionFailed(format!(
                "exchange {:?} exists as {} (durable={}, auto_delete={}, alternate={:?}); \
                 redeclared as {} (durable={}, auto_delete={}, alternate={:?})",
                ex.name,
                existing.kind,
                existing.durable,
                existing.auto_delete,
                existing.alternate_exchange,
                ex.kind,
                ex.durable,
                ex.auto_delete,
                ex.alternate_exchange
            ))),
            None => {
                self.exchanges.insert(ex.name.clone(), ex.clone());
                Ok(true)
            }
        }
    }

    /// The exchange called `name`.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.get(name)
    }

    /// Every exchange.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.values()
    }

    /// Every binding.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Deletes an exchange and its bindings.
    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), Error> {
        check_name("exchange", name)?;
        if !self.exchanges.contains_key(name) {
            return Err(Error::UnknownExchange(name.to_owned()));
        }
        if if_unused && self.bindings.iter().any(|b| b.exchange == name) {
            return Err(Error::InUse(format!("exchange {name:?}")));
        }
        self.exchanges.remove(name);
        self.bindings.retain(|b| b.exchange != name);
        Ok(())
    }

    /// Adds a binding after validating it; `queue_exists` answers for queues.
    /// Returns true when something changed.
    pub fn bind(&mut self, b: Binding, queue_exists: impl Fn(&str) -> bool) -> Result<bool, Error> {
        check_name("queue", &b.queue)?;
        check_exchange_ref(&b.exchange)?;
        check_len(&b.routing_key).map_err(|r| Error::name("binding key", &b.routing_key, r))?;
        if b.exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "queues cannot be bound to the default exchange \"\"; it routes by queue name"
                    .into(),
            ));
        }
        let ex = self
            .exchanges
            .get(&b.exchange)
            .ok_or_else(|| Error::UnknownExchange(b.exchange.clone()))?;
        if !queue_exists(&b.queue) {
            return Err(Error::UnknownQueue(b.queue.clone()));
        }
        match ex.kind {
            ExchangeKind::Topic => validate_pattern(&b.routing_key)?,
            ExchangeKind::Headers => {
                HeadersMatch::from_arguments(&b.arguments)?;
            }
            ExchangeKind::Direct | ExchangeKind::Fanout => {}
        }
        if self.bindings.contains(&b) {
            return Ok(false);
        }
        self.bindings.push(b);
        Ok(true)
    }

    /// Removes a binding; unknown bindings are an error naming what was missing.
    pub fn unbind(&mut self, b: &Binding) -> Result<(), Error> {
        let before = self.bindings.len();
        self.bindings.retain(|x| x != b);
        if self.bindings.len() == before {
            return Err(Error::InvalidArgument(format!(
                "no binding of queue {:?} to exchange {:?} with key {:?}",
                b.queue, b.exchange, b.routing_key
            )));
        }
        self.drop_auto_delete(&b.exchange);
        Ok(())
    }

    /// Removes every binding of `queue` (it was deleted).
    pub fn remove_queue(&mut self, queue: &str) {
        let exchanges: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| b.queue == queue)
            .map(|b| b.exchange.clone())
            .collect();
        self.bindings.retain(|b| b.queue != queue);
        for ex in exchanges {
            self.drop_auto_delete(&ex);
        }
    }

    fn drop_auto_delete(&mut self, exchange: &str) {
        let auto = self.exchanges.get(exchange).is_some_and(|e| e.auto_delete);
        if auto && !self.bindings.iter().any(|b| b.exchange == exchange) {
            self.exchanges.remove(exchange);
        }
    }

    /// Builds the routing snapshot; `queue` resolves a queue name to the
    /// transport's handle (bindings of queues it does not resolve are skipped).
    pub fn snapshot<Q: Clone>(&self, queues: impl IntoIterator<Item = (String, Q)>) -> Routing<Q> {
        let mut by_name = FastMap::default();
        let mut targets = Vec::new();
        for (name, q) in queues {
            by_name.insert(name, targets.len());
            targets.push(q);
        }
        let mut exchanges: FastMap<String, Entry> = self
            .exchanges
            .values()
            .map(|e| {
                let index = match e.kind {
                    ExchangeKind::Direct => Index::Direct(FastMap::default()),
                    ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
                    ExchangeKind::Fanout => Index::Fanout(Vec::new()),
                    ExchangeKind::Headers => Index::Headers(Vec::new()),
                };
                (
                    e.name.clone(),
                    Entry {
                        alternate: e.alternate_exchange.clone(),
                        index,
                    },
                )
            })
            .collect();
        for b in &self.bindings {
            let (Some(entry), Some(&t)) = (exchanges.get_mut(&b.exchange), by_name.get(&b.queue))
            else {
                continue;
            };
            match &mut entry.index {
                Index::Direct(m) => {
                    let v: &mut Vec<usize> = m.entry(b.routing_key.clone()).or_default();
                    if !v.contains(&t) {
                        v.push(t)
                    }
                }
                Index::Topic(trie) => trie.insert(&b.routing_key, t),
                Index::Fanout(v) => {
                    if !v.contains(&t) {
                        v.push(t)
                    }
                }
                Index::Headers(v) => {
                    if let Ok(m) = HeadersMatch::from_arguments(&b.arguments) {
                        v.push((m, t));
                    }
                }
            }
        }
        Routing {
            exchanges,
            by_name,
            targets,
        }
    }
}

#[derive(Debug)]
enum Index {
    Direct(FastMap<String, Vec<usize>>),
    Topic(TopicTrie),
    Fanout(Vec<usize>),
    Headers(Vec<(HeadersMatch, usize)>),
}

#[derive(Debug)]
struct Entry {
    alternate: Option<String>,
    index: Index,
}

/// The queues a publish goes to, as indices into [`Routing::target`].
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// No queue matched (and no alternate exchange took it).
    None,
    /// Exactly one queue (the common case; no allocation).
    One(usize),
    /// Several queues, each once.
    Many(Vec<usize>),
}

impl Route {
    /// The indices, in no particular order.
    pub fn as_slice(&self) -> &[usize] {
        match self {
            Route::None => &[],
            Route::One(i) => std::slice::from_ref(i),
            Route::Many(v) => v,
        }
    }
}

/// Why a publish is refused before it reaches any queue; turned into the
/// error that hands the message back by [`Refused::into_error`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// This exchange (the target or an alternate in the chain) does not exist.
    UnknownExchange(String),
    /// Mandatory, and no queue matched.
    Unroutable,
}

impl Refused {
    /// The publish error for `env`, which it hands back.
    pub fn into_error(self, env: Envelope) -> PublishError {
        match self {
            Refused::UnknownExchange(exchange) => PublishError::UnknownExchange {
                exchange,
                message: Box::new(env.into_message()),
            },
            Refused::Unroutable => PublishError::Unroutable {
                exchange: env.exchange.to_string(),
                routing_key: env.routing_key.to_string(),
                message: Box::new(env.into_message()),
            },
        }
    }
}

/// An immutable routing table.
#[derive(Debug)]
pub struct Routing<Q> {
    exchanges: FastMap<String, Entry>,
    by_name: FastMap<String, usize>,
    targets: Vec<Q>,
}

impl<Q> Default for Routing<Q> {
    fn default() -> Self {
        Routing {
            exchanges: FastMap::default(),
            by_name: FastMap::default(),
            targets: Vec::new(),
        }
    }
}

/// Longest chain of alternate exchanges followed.
const MAX_ALTERNATE_HOPS: usize = 8;

impl<Q> Routing<Q> {
    /// The queue handle behind a route index.
    pub fn target(&self, i: usize) -> &Q {
        &self.targets[i]
    }

    /// The queue called `name`.
    pub fn queue(&self, name: &str) -> Option<&Q> {
        self.by_name.get(name).map(|&i| &self.targets[i])
    }

    /// Every queue handle.
    pub fn queues(&self) -> &[Q] {
        &self.targets
    }

    /// True when `name` is the default exchange or a declared one.
    pub fn has_exchange(&self, name: &str) -> bool {
        name.is_empty() || self.exchanges.contains_key(name)
    }

    /// Routes a publish of `env`: `Ok(None)` when no queue matched and it is
    /// not mandatory (it is dropped, counted as unroutable by the caller).
    pub fn route_publish(&self, env: &Envelope, mandatory: bool) -> Result<Option<Route>, Refused> {
        match self.route(&env.exchange, &env.routing_key, &env.properties().headers) {
            Err(missing) => Err(Refused::UnknownExchange(missing)),
            Ok(Route::None) if mandatory => Err(Refused::Unroutable),
            Ok(Route::None) => Ok(None),
            Ok(r) => Ok(Some(r)),
        }
    }

    /// Routes a message. `Err` carries the name of an exchange that does not
    /// exist (the target, or an alternate exchange in the chain).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &Headers,
    ) -> Result<Route, String> {
        let mut name = exchange;
        for _ in 0..MAX_ALTERNATE_HOPS {
            if name.is_empty() {
                return Ok(match self.by_name.get(routing_key) {
                    Some(&i) => Route::One(i),
                    None => Route::None,
                });
            }
            let entry = self.exchanges.get(name).ok_or_else(|| name.to_owned())?;
            let route = match &entry.index {
                Index::Direct(m) => match m.get(routing_key).map(Vec::as_slice) {
                    None | Some([]) => Route::None,
                    Some([one]) => Route::One(*one),
                    Some(many) => Route::Many(many.to_vec()),
                },
                Index::Fanout(v) => many(v.clone()),
                Index::Topic(t) => {
                    let mut out = Vec::new();
                    t.matches(routing_key, &mut out);
                    out.sort_unstable();
                    out.dedup();
                    many(out)
                }
                Index::Headers(v) => {
                    let mut out: Vec<usize> = v
                        .iter()
                        .filter(|(m, _)| m.matches(headers))
                        .map(|(_, t)| *t)
                        .collect();
                    out.sort_unstable();
                    out.dedup();
                    many(out)
                }
            };
            match (&route, &entry.alternate) {
                (Route::None, Some(ae)) => name = ae,
                _ => return Ok(route),
            }
        }
        Ok(Route::None)
    }
}

fn many(v: Vec<usize>) -> Route {
    match v.len() {
        0 => Route::None,
        1 => Route::One(v[0]),
        _ => Route::Many(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn bind(t: &mut Topology, ex: &str, q: &str, key: &str) {
        t.bind(
            Binding {
                exchange: ex.into(),
                queue: q.into(),
                routing_key: key.into(),
                arguments: Headers::new(),
            },
            |_| true,
        )
        .unwrap();
    }

    fn names(r: &Routing<&'static str>, route: Route) -> Vec<&'static str> {
        let mut v: Vec<_> = route.as_slice().iter().map(|&i| *r.target(i)).collect();
        v.sort();
        v
    }

    #[test]
    fn routes_every_kind_and_alternate() {
        let mut t = Topology::new();
        t.declare_exchange(&Exchange::direct("d").with_alternate_exchange("f"))
            .unwrap();
        t.declare_exchange(&Exchange::fanout("f")).unwrap();
        t.declare_exchange(&Exchange::topic("t")).unwrap();
        t.declare_exchange(&Exchange::headers("h")).unwrap();
        bind(&mut t, "d", "q1", "k");
        bind(&mut t, "d", "q2", "k");
        bind(&mut t, "f", "q3", "");
        bind(&mut t, "t", "q1", "a.*");
        bind(&mut t, "t", "q1", "a.#");
        t.bind(
            Binding {
                exchange: "h".into(),
                queue: "q2".into(),
                routing_key: String::new(),
                arguments: [("x".to_string(), Value::from(1))].into_iter().collect(),
            },
            |_| true,
        )
        .unwrap();
        let r = t.snapshot([
            ("q1".to_string(), "q1"),
            ("q2".into(), "q2"),
            ("q3".into(), "q3"),
        ]);
        let none = Headers::new();
        assert_eq!(names(&r, r.route("d", "k", &none).unwrap()), ["q1", "q2"]);
        assert_eq!(names(&r, r.route("d", "zz", &none).unwrap()), ["q3"]);
        assert_eq!(names(&r, r.route("t", "a.b", &none).unwrap()), ["q1"]);
        assert_eq!(r.route("t", "b", &none).unwrap(), Route::None);
        let hx: Headers = [("x".to_string(), Value::from(1))].into_iter().collect();
        assert_eq!(names(&r, r.route("h", "", &hx).unwrap()), ["q2"]);
        assert_eq!(names(&r, r.route("", "q3", &none).unwrap()), ["q3"]);
        assert_eq!(r.route("", "nope", &none).unwrap(), Route::None);
        assert_eq!(r.route("missing", "k", &none), Err("missing".to_string()));
        assert!(r.has_exchange("") && r.has_exchange("d") && !r.has_exchange("x"));
        assert_eq!(r.queue("q2"), Some(&"q2"));
        assert_eq!(r.queues().len(), 3);
    }

    #[test]
    fn redeclare_and_bind_errors() {
        let mut t = Topology::new();
        assert!(t.declare_exchange(&Exchange::direct("d")).unwrap());
        assert!(!t.declare_exchange(&Exchange::direct("d")).unwrap());
        assert!(matches!(
            t.declare_exchange(&Exchange::topic("d")),
            Err(Error::PreconditionFailed(_))
        ));
        assert!(matches!(
            t.declare_exchange(&Exchange::topic("")),
            Err(Error::InvalidName { .. })
        ));
        let b = |ex: &str, key: &str| Binding {
            exchange: ex.into(),
            queue: "q".into(),
            routing_key: key.into(),
            arguments: Headers::new(),
        };
        assert!(matches!(
            t.bind(b("", "q"), |_| true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            t.bind(b("x", "q"), |_| true),
            Err(Error::UnknownExchange(_))
        ));
        assert!(matches!(
            t.bind(b("d", "q"), |_| false),
            Err(Error::UnknownQueue(_))
        ));
        t.declare_exchange(&Exchange::topic("t")).unwrap();
        assert!(matches!(
            t.bind(b("t", "a*"), |_| true),
            Err(Error::InvalidPattern { .. })
        ));
        assert!(t.bind(b("d", "k"), |_| true).unwrap());
        assert!(!t.bind(b("d", "k"), |_| true).unwrap());
        assert!(matches!(t.delete_exchange("d", true), Err(Error::InUse(_))));
        t.unbind(&b("d", "k")).unwrap();
        assert!(matches!(
            t.unbind(&b("d", "k")),
            Err(Error::InvalidArgument(_))
        ));
        t.delete_exchange("d", true).unwrap();
        assert!(matches!(
            t.delete_exchange("d", false),
            Err(Error::UnknownExchange(_))
        ));
    }

    #[test]
    fn auto_delete_exchange_goes_with_last_binding() {
        let mut t = Topology::new();
        t.declare_exchange(&Exchange::fanout("a").with_auto_delete(true))
            .unwrap();
        bind(&mut t, "a", "q", "");
        t.remove_queue("q");
        assert!(t.exchange("a").is_none());
        assert_eq!(t.exchanges().count(), 0);
        assert!(t.bindings().is_empty());
    }
}
