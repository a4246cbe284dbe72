//! `memory://`: the in-process transport and the reference implementation of
//! dashi's semantics.
//!
//! # Invariants
//! - Publish and consume run on the caller's thread: no thread hop, no lock on
//!   the fast path. Routing reads an immutable [`Routing`] snapshot swapped
//!   atomically (`arc-swap`) after each topology change; the topology itself is
//!   behind a `parking_lot` mutex touched only by declare/bind/delete.
//! - A message routed to several queues shares its body (`Bytes`) and
//!   properties (one `Arc`); each queue holds an envelope, stored inline in the
//!   lane's FIFO blocks, so publishing allocates nothing per message in the
//!   common case (default properties, names of at most 30 bytes).
//! - `memory://` (no name) is one process-wide instance, as in Kombu;
//!   `memory://NAME` is an isolated instance shared by every connection that
//!   names it. Instances live as long as the process, so messages outlive the
//!   connections that published them.

mod lanes;
mod queue;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::clock::{deadline_after, NEVER};
use crate::error::{Error, PublishError};
use crate::model::exchange::Exchange;
use crate::model::names::check_name;
use crate::model::queue::{Queue, QueueInfo};
use crate::routing::{Binding, Routing, Topology};
use crate::stats::{Counters, QueueStats, TransportEvent};
use crate::transport::{
    check_delete, check_redeclare, dead_letter_with, effective_ttl, queue_full, route_and_lane,
    spawn_periodic, validate_declaration, ConnectionId, DeathReason, Envelope, Implements,
    QueueStore, Transport,
};

pub(crate) use queue::MemQueue;
use queue::Reserve;

#[derive(Debug, Default)]
struct Topo {
    topology: Topology,
    queues: HashMap<String, Arc<MemQueue>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    topo: Mutex<Topo>,
    routing: ArcSwap<Routing<Arc<MemQueue>>>,
    pub(crate) counters: Counters,
    /// The thread that expires heads of queues whose messages can expire.
    sweeper: std::sync::OnceLock<()>,
}

/// How often the sweeper looks at the heads of queues with expiring messages.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The in-process transport. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    name: String,
    shared: Arc<Shared>,
}

static INSTANCES: OnceLock<Mutex<HashMap<String, MemoryTransport>>> = OnceLock::new();

impl MemoryTransport {
    /// The process-wide instance called `name` ("" for the default one),
    /// created on first use.
    pub fn named(name: &str) -> MemoryTransport {
        let mut map = INSTANCES.get_or_init(Default::default).lock();
        map.entry(name.to_owned())
            .or_insert_with(|| MemoryTransport::isolated(name))
            .clone()
    }

    /// A new instance shared with nobody else.
    pub fn isolated(name: &str) -> MemoryTransport {
        MemoryTransport {
            name: name.to_owned(),
            shared: Arc::new(Shared {
                topo: Mutex::new(Topo::default()),
                routing: ArcSwap::from_pointee(Routing::default()),
                counters: Counters::default(),
                sweeper: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The instance's name ("" for the default).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Shared {
    /// Starts (once) the thread that expires the heads of queues whose
    /// messages can expire, every [`SWEEP_EVERY`], so a message in a queue
    /// nobody reads is dead-lettered on time (the delay-queue idiom).
    pub(crate) fn ensure_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            spawn_periodic(
                "dashi-memory-ttl",
                Arc::downgrade(self),
                SWEEP_EVERY,
                |shared: &Shared| {
                    let queues: Vec<Arc<MemQueue>> = shared
                        .topo
                        .lock()
                        .queues
                        .values()
                        .filter(|q| q.may_expire())
                        .cloned()
                        .collect();
                    for q in queues {
                        let expired = q.expire_heads();
                        q.expired(expired);
                    }
                },
            );
        });
    }

    fn republish_snapshot(&self, topo: &Topo) {
        let snap = topo
            .topology
            .snapshot(topo.queues.iter().map(|(n, q)| (n.clone(), q.clone())));
        self.routing.store(Arc::new(snap));
    }

    /// Removes `q` from the topology if it is still the queue registered
    /// under its name (not a newer one declared since), marks it deleted and
    /// purges it; returns how many ready messages it held.
    pub(crate) fn remove_queue(&self, q: &MemQueue) -> u64 {
        {
            let mut topo = self.topo.lock();
            let name = &q.decl.name;
            if topo
                .queues
                .get(name)
                .is_some_and(|x| std::ptr::eq(Arc::as_ptr(x), q))
            {
                topo.queues.remove(name);
                topo.topology.remove_queue(name);
                self.republish_snapshot(&topo);
            }
        }
        q.mark_deleted()
    }

    /// Routes and enqueues. Nothing is enqueued anywhere unless every target
    /// accepts (priority, limits). `clamp` lowers a priority above a target's
    /// maximum instead of refusing it (dead-lettered messages).
    fn publish(&self, env: Envelope, mandatory: bool, clamp: bool) -> Result<(), PublishError> {
        let routing = self.routing.load();
        let mut env = env;
        let (route, priority) =
            match route_and_lane(&routing, &mut env, mandatory, clamp, &self.counters, |q| {
                &q.decl
            }) {
                Ok(Some(planned)) => planned,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into_error(env)),
            };
        let targets = route.as_slice();
        let size = env.size() as u64;
        for (i, &t) in targets.iter().enumerate() {
            if let Reserve::Full(which) = routing.target(t).reserve(size) {
                for &done in &targets[..i] {
                    routing.target(done).unreserve(size);
                }
                let reason = format!("{which} reached and overflow is reject-publish");
                return Err(queue_full(&routing.target(t).decl, reason, env));
            }
        }
        let msg_ttl = env.properties().expiration;
        env.lane = priority;
        let push = |t: usize, mut copy: Envelope| {
            let q = routing.target(t);
            copy.expires_at =
                effective_ttl(q.decl.message_ttl, msg_ttl).map_or(NEVER, deadline_after);
            q.push_reserved(copy);
        };
        if let Some((&last, rest)) = targets.split_last() {
            for &t in rest {
                push(t, env.clone());
            }
            push(last, env);
        }
        self.counters.record(TransportEvent::Published, 1);
        self.counters
            .record(TransportEvent::Routed, targets.len() as u64);
        Ok(())
    }

    /// Sends a message that left `from` unacked (rejected, expired, dropped by
    /// overflow) to its dead-letter exchange, or counts it as dropped.
    pub(crate) fn dead_letter(&self, from: &MemQueue, env: Envelope, reason: DeathReason) {
        dead_letter_with(&self.counters, &from.decl, &env, reason, |dl| {
            self.publish(dl, true, true)
        });
    }

    fn queue_for(&self, name: &str, owner: ConnectionId) -> Result<Arc<MemQueue>, Error> {
        check_name("queue", name)?;
        let topo = self.topo.lock();
        let q = topo
            .queues
            .get(name)
            .ok_or_else(|| Error::UnknownQueue(name.to_owned()))?;
        if q.owner.is_some_and(|o| o != owner) {
            return Err(Error::Exclusive(name.to_owned()));
        }
        Ok(q.clone())
    }
}

impl Transport for MemoryTransport {
    fn scheme(&self) -> &'static str {
        "memory"
    }

    fn implements(&self) -> Implements {
        Implements {
            priorities: true,
            fanout: true,
            native_leases: false,
            durable: false,
            multi_process: false,
        }
    }

    fn declare_exchange(&self, ex: &Exchange) -> Result<(), Error> {
        let mut topo = self.shared.topo.lock();
        if topo.topology.declare_exchange(ex)? {
            self.shared.republish_snapshot(&topo);
        }
        Ok(())
    }

    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        let mut topo = self.shared.topo.lock();
        topo.topology.delete_exchange(name, if_unused)?;
        self.shared.republish_snapshot(&topo);
        Ok(())
    }

    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error> {
        validate_declaration(q)?;
        let mut topo = self.shared.topo.lock();
        if let Some(existing) = topo.queues.get(&q.name) {
            if existing.owner.is_some_and(|o| o != owner) {
                return Err(Error::Exclusive(q.name.clone()));
            }
            check_redeclare(&existing.decl, q)?;
            return Ok(QueueInfo {
                name: q.name.clone(),
                message_count: existing.ready(),
                consumer_count: existing.consumers(),
            });
        }
        let mq = Arc::new(MemQueue::new(
            q.clone(),
            q.exclusive.then_some(owner),
            Arc::downgrade(&self.shared),
        ));
        topo.queues.insert(q.name.clone(), mq);
        self.shared.republish_snapshot(&topo);
        tracing::debug!(queue = %q.name, "queue declared");
        Ok(QueueInfo {
            name: q.name.clone(),
            message_count: 0,
            consumer_count: 0,
        })
    }

    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error> {
        let q = self.shared.queue_for(name, owner)?;
        check_delete(name, if_unused, if_empty, q.consumers(), q.ready())?;
        Ok(self.shared.remove_queue(&q))
    }

    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error> {
        Ok(self.shared.queue_for(name, owner)?.purge())
    }

    fn bind(&self, binding: Binding) -> Result<(), Error> {
        let mut topo = self.shared.topo.lock();
        let Topo { topology, queues } = &mut *topo;
        if topology.bind(binding, |q| queues.contains_key(q))? {
            self.shared.republish_snapshot(&topo);
        }
        Ok(())
    }

    fn unbind(&self, binding: &Binding) -> Result<(), Error> {
        let mut topo = self.shared.topo.lock();
        topo.topology.unbind(binding)?;
        self.shared.republish_snapshot(&topo);
        Ok(())
    }

    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error> {
        Ok(self.shared.queue_for(name, owner)?)
    }

    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError> {
        self.shared.publish(envelope, mandatory, false)
    }

    fn connection_closed(&self, owner: ConnectionId) {
        let owned: Vec<Arc<MemQueue>> = self
            .shared
            .topo
            .lock()
            .queues
            .values()
            .filter(|q| q.owner == Some(owner))
            .cloned()
            .collect();
        for q in owned {
            self.shared.remove_queue(&q);
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, Error> {
        Ok(self.shared.routing.load().queue(name).map(|q| q.stats()))
    }

    fn all_queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        Ok(self
            .shared
            .routing
            .load()
            .queues()
            .iter()
            .map(|q| q.stats())
            .collect())
    }
}

/// Opens a `memory://[NAME][?options]` URL: the process-wide instance NAME
/// ("" = the default instance). Options: those of
/// [`ConnectUrl::take_connection_config`](crate::url::ConnectUrl::take_connection_config).
pub fn open(mut url: crate::url::ConnectUrl) -> Result<crate::Connection, Error> {
    if url.scheme != "memory" {
        return Err(crate::UrlError::UnknownScheme {
            scheme: url.scheme,
            supported: "memory".into(),
        }
        .into());
    }
    if url.user.is_some() || url.password.is_some() || url.port.is_some() {
        return Err(crate::UrlError::Malformed {
            reason: "memory:// takes an instance name only (no user, password or port)".into(),
        }
        .into());
    }
    if !(url.path.is_empty() || url.path == "/") {
        return Err(crate::UrlError::Malformed {
            reason: format!(
                "memory:// takes an instance name, not a path ({:?})",
                url.path
            ),
        }
        .into());
    }
    let config = url.take_connection_config()?;
    url.reject_unknown_options()?;
    let transport = MemoryTransport::named(&url.host);
    Ok(crate::Connection::with_transport(
        Arc::new(transport),
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::Message;
    use std::time::Duration;

    #[test]
    fn named_instances_are_shared_and_isolated() {
        let a = MemoryTransport::named("unit-named-a");
        let b = MemoryTransport::named("unit-named-a");
        let c = MemoryTransport::named("unit-named-c");
        a.declare_queue(&Queue::new("q"), 1).unwrap();
        assert!(b.queue_stats("q").unwrap().is_some());
        assert!(c.queue_stats("q").unwrap().is_none());
        assert_eq!(a.name(), "unit-named-a");
        assert_eq!(a.scheme(), "memory");
        assert!(a.implements().priorities && !a.implements().durable);
    }

    /// Removing a queue by its handle never removes a newer queue declared
    /// under the same name since (an auto-delete or delete racing a
    /// redeclare).
    #[test]
    fn removing_an_old_queue_leaves_its_successor() {
        let t = MemoryTransport::isolated("aba");
        t.declare_queue(&Queue::new("q"), 1).unwrap();
        let old = t.shared.queue_for("q", 1).unwrap();
        t.delete_queue("q", false, false, 1).unwrap();
        t.declare_queue(&Queue::new("q"), 1).unwrap();
        t.publish(Envelope::new(Message::new("new"), "", "q"), true)
            .unwrap();
        assert_eq!(t.shared.remove_queue(&old), 0);
        let s = t
            .queue_stats("q")
            .unwrap()
            .expect("the successor was removed");
        assert_eq!(s.messages, 1);
    }

    /// A publish that lands in a queue being deleted does not linger in it.
    #[test]
    fn a_publish_into_a_deleted_queue_is_purged() {
        let t = MemoryTransport::isolated("late");
        t.declare_queue(&Queue::new("q"), 1).unwrap();
        let q = t.shared.queue_for("q", 1).unwrap();
        t.delete_queue("q", false, false, 1).unwrap();
        assert!(matches!(q.reserve(4), Reserve::Ok));
        q.push_reserved(Envelope::new(Message::new("late"), "", "q"));
        assert_eq!(q.ready(), 0);
        assert!(q.pop().unwrap().is_none());
    }

    fn bodies(envs: &[Envelope]) -> Vec<String> {
        envs.iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect()
    }

    /// A run taken in one call records each message's original position,
    /// so restoring them in any order puts them back in their order, ahead
    /// of what was never taken; the counts agree with what is in the lanes.
    #[test]
    fn a_run_keeps_positions_and_counts() {
        let t = MemoryTransport::isolated("run");
        t.declare_queue(&Queue::new("q"), 1).unwrap();
        for b in ["m0", "m1", "m2", "m3", "m4"] {
            t.publish(Envelope::new(Message::new(b), "", "q"), true)
                .unwrap();
        }
        let q = t.shared.queue_for("q", 1).unwrap();
        let mut run = Vec::new();
        assert_eq!(q.pop_many(3, &mut run).unwrap(), 3);
        assert_eq!(bodies(&run), ["m0", "m1", "m2"]);
        assert_eq!((q.ready(), q.stats().unacked), (2, 3));
        // Restored last-first: they still come back first and in order.
        let (first, rest) = run.split_at(1);
        q.restore(rest.iter().rev().cloned().collect()).unwrap();
        q.restore(first.to_vec()).unwrap();
        assert_eq!((q.ready(), q.stats().unacked), (5, 0));
        let mut again = Vec::new();
        assert_eq!(q.pop_many(10, &mut again).unwrap(), 5);
        assert_eq!(bodies(&again), ["m0", "m1", "m2", "m3", "m4"]);
        assert_eq!((q.ready(), q.stats().unacked), (0, 5));
    }

    /// Messages that expired are taken out of a run (counted as expired,
    /// dead-lettered when the queue says so) and the run is refilled
    /// behind them, in order.
    #[test]
    fn a_run_drops_what_expired_and_refills() {
        let t = MemoryTransport::isolated("run-ttl");
        t.declare_queue(&Queue::new("dlq"), 1).unwrap();
        t.declare_queue(&Queue::new("q").with_dead_letter("", Some("dlq")), 1)
            .unwrap();
        let soon = Duration::from_millis(1);
        for (b, ttl) in [
            ("m0", None),
            ("gone1", Some(soon)),
            ("m2", None),
            ("gone3", Some(soon)),
            ("m4", None),
            ("m5", None),
        ] {
            let mut m = Message::new(b);
            m.properties.expiration = ttl;
            t.publish(Envelope::new(m, "", "q"), true).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        let q = t.shared.queue_for("q", 1).unwrap();
        let mut run = Vec::new();
        assert_eq!(q.pop_many(3, &mut run).unwrap(), 3);
        assert_eq!(bodies(&run), ["m0", "m2", "m4"]);
        assert_eq!(t.counters().snapshot().expired, 2);
        assert_eq!(t.queue_stats("dlq").unwrap().unwrap().messages, 2);
        assert_eq!((q.ready(), q.stats().unacked), (1, 3));
    }

    /// A run stops collecting expired messages at a bound (they are held
    /// until it ends); what it left is expired by the next call. (A queue
    /// of its own, with no transport behind it: no sweep runs meanwhile.)
    #[test]
    fn a_run_holds_a_bounded_number_of_expired_messages() {
        let q = MemQueue::new(Queue::new("q"), None, std::sync::Weak::new());
        let push = |body: &'static str, expires_at: u64| {
            assert!(matches!(q.reserve(4), Reserve::Ok));
            let mut env = Envelope::new(Message::new(body), "", "q");
            env.expires_at = expires_at;
            q.push_reserved(env);
        };
        let past = crate::clock::now_ns();
        for _ in 0..300 {
            push("gone", past);
        }
        push("live", crate::clock::NEVER);
        let mut run = Vec::new();
        assert_eq!(q.pop_many(32, &mut run).unwrap(), 0);
        assert_eq!(q.ready(), 301 - 256);
        assert_eq!(q.pop_many(32, &mut run).unwrap(), 1);
        assert_eq!(bodies(&run), ["live"]);
        assert_eq!((q.ready(), q.stats().unacked), (0, 1));
    }

    #[test]
    fn unknown_exchange_hands_message_back() {
        let t = MemoryTransport::isolated("x");
        let err = t
            .publish(Envelope::new(Message::new("b"), "nope", "k"), false)
            .unwrap_err();
        assert!(matches!(err, PublishError::UnknownExchange { .. }));
        assert_eq!(&err.into_message().body[..], b"b");
    }
}
