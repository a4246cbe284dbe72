//! [`Topology`]: the declared exchanges and bindings, the mutable master copy
//! a transport keeps under its slow-path lock.

use std::collections::HashMap;

use crate::error::Error;
use crate::model::exchange::{Exchange, ExchangeKind};
use crate::model::names::{check_exchange_ref, check_len, check_name};
use crate::model::value::Headers;

use super::headers::HeadersMatch;
use super::topic::validate_pattern;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::Value;
    use crate::routing::{Route, Routing};

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
