//! [`Routing`]: the immutable routing table built from a [`Topology`], read by
//! publishers without locks; [`Route`] is where one publish goes.

use std::collections::HashMap;

use crate::error::PublishError;
use crate::model::exchange::ExchangeKind;
use crate::model::value::Headers;
use crate::transport::Envelope;

use super::headers::HeadersMatch;
use super::topic::TopicTrie;
use super::Topology;

/// Maps on the publish path use foldhash: several times faster than SipHash on
/// short names, with some resistance to crafted keys.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Topology {
    /// Builds the routing snapshot; `queue` resolves a queue name to the
    /// transport's handle (bindings of queues it does not resolve are skipped).
    pub fn snapshot<Q: Clone>(&self, queues: impl IntoIterator<Item = (String, Q)>) -> Routing<Q> {
        let mut by_name: FastMap<Box<[u8]>, usize> = FastMap::default();
        let mut targets = Vec::new();
        for (name, q) in queues {
            by_name.insert(name.into_bytes().into(), targets.len());
            targets.push(q);
        }
        let mut exchanges: FastMap<Box<[u8]>, Entry> = self
            .exchanges()
            .map(|e| {
                let index = match e.kind {
                    ExchangeKind::Direct => Index::Direct(FastMap::default()),
                    ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
                    ExchangeKind::Fanout => Index::Fanout(Vec::new()),
                    ExchangeKind::Headers => Index::Headers(Vec::new()),
                };
                (
                    e.name.as_bytes().into(),
                    Entry {
                        alternate: e.alternate_exchange.clone(),
                        index,
                    },
                )
            })
            .collect();
        for b in self.bindings() {
            let (Some(entry), Some(&t)) = (
                exchanges.get_mut(b.exchange.as_bytes()),
                by_name.get(b.queue.as_bytes()),
            ) else {
                continue;
            };
            match &mut entry.index {
                Index::Direct(m) => {
                    let v: &mut Vec<usize> = m.entry(b.routing_key.as_bytes().into()).or_default();
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
    Direct(FastMap<Box<[u8]>, Vec<usize>>),
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

/// An immutable routing table. Names are keyed by their bytes, so a publish
/// routes with the bytes of its envelope's names, never re-checking their
/// UTF-8 (every name came from a `&str`).
#[derive(Debug)]
pub struct Routing<Q> {
    exchanges: FastMap<Box<[u8]>, Entry>,
    by_name: FastMap<Box<[u8]>, usize>,
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
        self.by_name.get(name.as_bytes()).map(|&i| &self.targets[i])
    }

    /// Every queue handle.
    pub fn queues(&self) -> &[Q] {
        &self.targets
    }

    /// True when `name` is the default exchange or a declared one.
    pub fn has_exchange(&self, name: &str) -> bool {
        name.is_empty() || self.exchanges.contains_key(name.as_bytes())
    }

    /// Routes a publish of `env`: `Ok(None)` when no queue matched and it is
    /// not mandatory (it is dropped, counted as unroutable by the caller).
    #[inline(always)]
    pub fn route_publish(&self, env: &Envelope, mandatory: bool) -> Result<Option<Route>, Refused> {
        let (exchange, key) = (env.exchange.as_bytes(), env.routing_key.as_bytes());
        if exchange.is_empty() {
            // The default exchange: the queue named by the key (the common
            // case, looked up here so the result needs no reshaping).
            return match self.by_name.get(key) {
                Some(&i) => Ok(Some(Route::One(i))),
                None if mandatory => Err(Refused::Unroutable),
                None => Ok(None),
            };
        }
        match self.route_bytes(exchange, key, &env.properties().headers) {
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
        self.route_bytes(exchange.as_bytes(), routing_key.as_bytes(), headers)
    }

    /// [`Routing::route`] on the names' bytes (UTF-8, as every name is).
    fn route_bytes(
        &self,
        exchange: &[u8],
        routing_key: &[u8],
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
            let entry = self
                .exchanges
                .get(name)
                .ok_or_else(|| String::from_utf8_lossy(name).into_owned())?;
            let route = match &entry.index {
                Index::Direct(m) => match m.get(routing_key).map(Vec::as_slice) {
                    None | Some([]) => Route::None,
                    Some([one]) => Route::One(*one),
                    Some(many) => Route::Many(many.to_vec()),
                },
                Index::Fanout(v) => many(v.clone()),
                Index::Topic(t) => {
                    let mut out = Vec::new();
                    // Topic words are text: checked here, where they are split.
                    if let Ok(key) = std::str::from_utf8(routing_key) {
                        t.matches(key, &mut out);
                    }
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
                (Route::None, Some(ae)) => name = ae.as_bytes(),
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
