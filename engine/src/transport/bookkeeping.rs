//! Queue bookkeeping that every transport keeps the same way: what a valid
//! declaration is, when a redeclaration or a delete is refused, which lane a
//! publish goes to, which limit a publish breaks, how long a message lives in
//! a queue, and when an auto-delete queue goes. One copy here, so that
//! memory://, local:// and later transports cannot drift apart.
//!
//! # Invariants
//! - A declaration any transport accepts, every transport accepts (and the
//!   same ones are refused, with the same error).
//! - A message's priority never silently changes on publish: above a target
//!   queue's `max_priority` it is an error, except for dead-lettered messages,
//!   which are clamped because there is nobody to hand them back to.

use std::task::Waker;
use std::time::Duration;

use crate::error::{Error, PublishError};
use crate::model::names::{check_exchange_ref, check_len, check_name};
use crate::model::queue::Queue;
use crate::notify::Notify;
use crate::routing::{Refused, Route, Routing};
use crate::stats::{Counters, TransportEvent};
use crate::sync::{AtomicU64, Ordering::SeqCst};

use super::Envelope;

/// Checks a queue declaration: its name, its dead-letter exchange and routing
/// key, and its limits (at least 1).
pub fn validate_declaration(q: &Queue) -> Result<(), Error> {
    check_name("queue", &q.name)?;
    if let Some(dlx) = &q.dead_letter_exchange {
        check_exchange_ref(dlx)?;
    }
    if let Some(rk) = &q.dead_letter_routing_key {
        check_len(rk).map_err(|r| Error::name("dead-letter routing key", rk, r))?;
    }
    if q.max_length == 0 || q.max_length_bytes == 0 {
        return Err(Error::InvalidArgument(
            "max_length and max_length_bytes must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A redeclaration of an existing queue must repeat its arguments.
pub fn check_redeclare(existing: &Queue, new: &Queue) -> Result<(), Error> {
    if existing == new {
        return Ok(());
    }
    Err(Error::PreconditionFailed(format!(
        "queue {:?} exists with other arguments ({existing:?}); redeclared as {new:?}",
        new.name
    )))
}

/// `queue_delete`'s conditions: `if_unused` refuses a queue with consumers,
/// `if_empty` one with ready messages.
pub fn check_delete(
    name: &str,
    if_unused: bool,
    if_empty: bool,
    consumers: u64,
    ready: u64,
) -> Result<(), Error> {
    if if_unused && consumers > 0 {
        return Err(Error::InUse(format!("queue {name:?}")));
    }
    if if_empty && ready > 0 {
        return Err(Error::NotEmpty(name.to_owned()));
    }
    Ok(())
}

/// How long a message lives in a queue: the shorter of the queue's
/// `message_ttl` and the message's own `expiration`.
pub fn effective_ttl(queue: Option<Duration>, message: Option<Duration>) -> Option<Duration> {
    match (queue, message) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Which of `q`'s limits a ready depth of `messages` and `bytes` breaks, if any.
pub fn limit_reached(q: &Queue, messages: u64, bytes: u64) -> Option<&'static str> {
    if messages > q.max_length {
        Some("max_length")
    } else if bytes > q.max_length_bytes {
        Some("max_length_bytes")
    } else {
        None
    }
}

/// The error of a publish refused by a full reject-publish queue (or another
/// budget named in `reason`); it hands the message back.
pub fn queue_full(q: &Queue, reason: String, env: Envelope) -> PublishError {
    PublishError::QueueFull {
        queue: q.name.clone(),
        reason,
        message: Box::new(env.into_message()),
    }
}

/// A priority above a target queue's `max_priority` (see [`lane_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityTooHigh {
    /// The message's priority.
    pub priority: u8,
    /// The queue's maximum.
    pub max: u8,
    /// The queue.
    pub queue: String,
}

impl PriorityTooHigh {
    /// The publish error, handing `env` back.
    pub fn into_error(self, env: Envelope) -> PublishError {
        PublishError::PriorityTooHigh {
            priority: self.priority,
            max: self.max,
            queue: self.queue,
            message: Box::new(env.into_message()),
        }
    }
}

/// The lane a publish of `env` takes in every one of `targets`: its priority.
/// A priority above a target's `max_priority` is refused, or lowered to the
/// smallest such maximum when `clamp` is set (dead-lettered messages). Takes
/// the envelope by reference: this is on every publish's path.
#[inline]
pub fn lane_for<'q>(
    env: &Envelope,
    targets: impl IntoIterator<Item = &'q Queue>,
    clamp: bool,
) -> Result<u8, PriorityTooHigh> {
    let mut priority = env.properties().priority.unwrap_or(0);
    for q in targets {
        if priority > q.max_priority {
            if !clamp {
                return Err(PriorityTooHigh {
                    priority,
                    max: q.max_priority,
                    queue: q.name.clone(),
                });
            }
            priority = q.max_priority;
        }
    }
    Ok(priority)
}

/// What every queue handle keeps the same way: the waiters for its next
/// message, whether it was deleted, and the consumers attached in this
/// process (with the auto-delete rule: an auto-delete queue goes when its
/// last consumer does).
///
/// The deleted flag and the consumer count share one atomic word, so "the
/// last consumer left, delete it" and "a consumer joins" cannot both win:
/// either the join comes first (and the queue stays) or the deletion does
/// (and the join fails).
#[derive(Debug, Default)]
pub struct QueueState {
    notify: Notify,
    /// Bit 63: deleted; the rest: consumers attached.
    word: AtomicU64,
}

const DELETED: u64 = 1 << 63;

impl QueueState {
    /// A live queue with no waiters and no consumers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every waiter (after a message became ready, or on delete).
    pub fn notify_all(&self) {
        self.notify.notify_all();
    }

    /// Registers a waiter (see [`Notify::register`]).
    pub fn register(&self, waker: &Waker) -> u64 {
        self.notify.register(waker)
    }

    /// Removes a registration.
    pub fn unregister(&self, id: u64) {
        self.notify.unregister(id)
    }

    /// Waiters registered now.
    pub fn waiters(&self) -> usize {
        self.notify.waiters()
    }

    /// True once the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.word.load(SeqCst) & DELETED != 0
    }

    /// Marks the queue deleted and wakes its waiters (they see it gone);
    /// true if it was not deleted before. A transport that drops the queue's
    /// messages does so between [`QueueState::set_deleted`] and
    /// [`QueueState::notify_all`] instead, so a woken waiter finds it empty.
    pub fn mark_deleted(&self) -> bool {
        let first = self.set_deleted();
        self.notify.notify_all();
        first
    }

    /// Marks the queue deleted without waking anyone; true if it was not
    /// deleted before.
    pub fn set_deleted(&self) -> bool {
        self.word.fetch_or(DELETED, SeqCst) & DELETED == 0
    }

    /// A consumer starts; false (and nothing counted) if the queue was
    /// deleted first.
    pub fn consumer_added(&self) -> bool {
        let mut cur = self.word.load(SeqCst);
        loop {
            if cur & DELETED != 0 {
                return false;
            }
            match self.word.compare_exchange(cur, cur + 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// A consumer stopped. True when `decl` is auto-delete and this was its
    /// last consumer: the queue is then marked deleted in the same atomic
    /// step (its waiters are woken) and the caller removes it.
    pub fn consumer_removed(&self, decl: &Queue) -> bool {
        let mut cur = self.word.load(SeqCst);
        loop {
            if cur & !DELETED == 0 {
                // Nobody to remove (a stray call): nothing changes.
                return false;
            }
            let count = (cur & !DELETED) - 1;
            let delete = count == 0 && decl.auto_delete && cur & DELETED == 0;
            let next = (cur & DELETED) | count | if delete { DELETED } else { 0 };
            match self.word.compare_exchange(cur, next, SeqCst, SeqCst) {
                Ok(_) => {
                    if delete {
                        self.notify.notify_all();
                    }
                    return delete;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// A consumer just added is taken back (it could not start): counted
    /// out without the auto-delete rule.
    pub fn consumer_withdrawn(&self) {
        let mut cur = self.word.load(SeqCst);
        loop {
            let next = (cur & DELETED) | (cur & !DELETED).saturating_sub(1);
            match self.word.compare_exchange(cur, next, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Consumers attached now.
    pub fn consumers(&self) -> u64 {
        self.word.load(SeqCst) & !DELETED
    }
}

/// Routes `env` against `routing`: the queues it goes to, or `None` when
/// nothing matched and it is not mandatory (then it is counted as published
/// and dropped as unroutable). A refusal becomes the error that hands the
/// message back with [`Refused::into_error`].
#[inline]
pub fn route_or_drop<Q>(
    routing: &Routing<Q>,
    env: &Envelope,
    mandatory: bool,
    counters: &Counters,
) -> Result<Option<Route>, Refused> {
    let route = routing.route_publish(env, mandatory)?;
    if route.is_none() {
        counters.record(TransportEvent::Published, 1);
        counters.record(TransportEvent::DroppedUnroutable, 1);
    }
    Ok(route)
}

/// Why a publish goes nowhere: refused by routing, or a priority a target
/// queue cannot take.
#[derive(Debug)]
pub enum NotRouted {
    /// Routing refused it (unknown exchange, mandatory and unroutable).
    Refused(Refused),
    /// Its priority is above a target queue's maximum.
    Priority(PriorityTooHigh),
}

impl NotRouted {
    /// The publish error, handing `env` back.
    pub fn into_error(self, env: Envelope) -> PublishError {
        match self {
            NotRouted::Refused(r) => r.into_error(env),
            NotRouted::Priority(p) => p.into_error(env),
        }
    }
}

/// The first steps of every transport's publish: routes `env`, picks its
/// lane (clamping its priority to the targets' when `clamp`, for
/// dead-lettered messages, and writing the clamped priority into `env`).
/// `Ok(None)`: nothing matched and it is not mandatory (counted and
/// dropped). `decl` names a target's declaration.
#[inline]
pub fn route_and_lane<Q>(
    routing: &Routing<Q>,
    env: &mut Envelope,
    mandatory: bool,
    clamp: bool,
    counters: &Counters,
    decl: impl Fn(&Q) -> &Queue,
) -> Result<Option<(Route, u8)>, NotRouted> {
    let Some(route) =
        route_or_drop(routing, env, mandatory, counters).map_err(NotRouted::Refused)?
    else {
        return Ok(None);
    };
    let priority = lane_for(
        env,
        route.as_slice().iter().map(|&t| decl(routing.target(t))),
        clamp,
    )
    .map_err(NotRouted::Priority)?;
    if clamp && env.properties().priority.is_some_and(|p| p != priority) {
        env.set_priority(priority);
    }
    Ok(Some((route, priority)))
}

/// Runs `tick` every `period` on a thread called `name` for as long as
/// `owner` lives (the thread holds it only during a tick). For transports'
/// timers (TTL sweeps) that must not keep their transport alive.
pub fn spawn_periodic<T: Send + Sync + 'static>(
    name: &str,
    owner: std::sync::Weak<T>,
    period: std::time::Duration,
    tick: impl Fn(&T) + Send + 'static,
) {
    let _ = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || loop {
            std::thread::sleep(period);
            let Some(owner) = owner.upgrade() else { return };
            tick(&owner);
        });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::model::message::Message;

    #[test]
    fn declarations_are_checked_alike() {
        assert!(validate_declaration(&Queue::new("q")).is_ok());
        assert!(matches!(
            validate_declaration(&Queue::new("")),
            Err(Error::InvalidName { .. })
        ));
        let long = "k".repeat(256);
        assert!(matches!(
            validate_declaration(&Queue::new("q").with_dead_letter("dlx", Some(&long))),
            Err(Error::InvalidName {
                kind: "dead-letter routing key",
                ..
            })
        ));
        assert!(matches!(
            validate_declaration(&Queue::new("q").with_max_length(0)),
            Err(Error::InvalidArgument(_))
        ));
        let a = Queue::new("q");
        assert!(check_redeclare(&a, &a.clone()).is_ok());
        assert!(matches!(
            check_redeclare(&a, &Queue::new("q").with_max_priority(3)),
            Err(Error::PreconditionFailed(_))
        ));
    }

    #[test]
    fn deletes_limits_and_ttls() {
        assert!(check_delete("q", true, true, 0, 0).is_ok());
        assert!(matches!(
            check_delete("q", true, false, 1, 0),
            Err(Error::InUse(_))
        ));
        assert!(matches!(
            check_delete("q", false, true, 0, 1),
            Err(Error::NotEmpty(_))
        ));
        let q = Queue::new("q").with_max_length(2).with_max_length_bytes(10);
        assert_eq!(limit_reached(&q, 2, 10), None);
        assert_eq!(limit_reached(&q, 3, 0), Some("max_length"));
        assert_eq!(limit_reached(&q, 1, 11), Some("max_length_bytes"));
        let s = Duration::from_secs;
        assert_eq!(effective_ttl(Some(s(3)), Some(s(2))), Some(s(2)));
        assert_eq!(effective_ttl(None, Some(s(2))), Some(s(2)));
        assert_eq!(effective_ttl(Some(s(3)), None), Some(s(3)));
        assert_eq!(effective_ttl(None, None), None);
    }

    #[test]
    fn lanes_refuse_or_clamp() {
        let env = Envelope::new(Message::new("m").with_priority(7), "", "q");
        let (low, high) = (Queue::new("low").with_max_priority(3), Queue::new("high"));
        let high = high.with_max_priority(9);
        assert_eq!(lane_for(&env, [&high], false), Ok(7));
        let e = lane_for(&env, [&high, &low], false).unwrap_err();
        assert_eq!((e.priority, e.max, e.queue.as_str()), (7, 3, "low"));
        let e = e.into_error(env.clone());
        assert!(matches!(e, PublishError::PriorityTooHigh { max: 3, .. }));
        assert_eq!(&e.into_message().body[..], b"m");
        assert_eq!(lane_for(&env, [&high, &low], true), Ok(3));
    }

    #[test]
    fn an_auto_delete_queue_goes_with_its_last_consumer_once() {
        let auto = Queue::new("q").with_auto_delete(true);
        let s = QueueState::new();
        assert!(s.consumer_added());
        assert!(s.consumer_added());
        assert!(!s.consumer_removed(&auto));
        assert_eq!(s.consumers(), 1);
        assert!(s.consumer_removed(&auto), "the last one deletes it");
        assert!(s.is_deleted());
        assert_eq!(s.consumers(), 0);
        // Deleted: a stray removal neither wraps nor deletes twice, and a new
        // consumer is refused.
        assert!(!s.consumer_removed(&auto));
        let stray = QueueState::new();
        assert!(!stray.consumer_removed(&auto), "no consumer to remove");
        assert!(!stray.is_deleted());
        assert!(!s.consumer_added());
        assert!(!s.mark_deleted());
        let withdrawn = QueueState::new();
        assert!(withdrawn.consumer_added());
        withdrawn.consumer_withdrawn();
        assert_eq!(withdrawn.consumers(), 0);
        assert!(
            !withdrawn.is_deleted(),
            "a withdrawn consumer never consumed"
        );
        let plain = QueueState::new();
        assert!(plain.consumer_added());
        assert!(!plain.consumer_removed(&Queue::new("p")));
        assert!(!plain.is_deleted());
        assert!(plain.mark_deleted());
        assert!(!plain.consumer_added());
    }

    #[test]
    fn unroutable_publishes_are_counted_and_dropped() {
        let counters = Counters::default();
        let routing: Routing<()> = Routing::default();
        let env = Envelope::new(Message::new("m"), "", "nowhere");
        assert!(route_or_drop(&routing, &env, false, &counters)
            .unwrap()
            .is_none());
        let k = counters.snapshot();
        assert_eq!((k.published, k.dropped_unroutable), (1, 1));
        let e = route_or_drop(&routing, &env, true, &counters).unwrap_err();
        let e = e.into_error(env);
        assert!(matches!(e, PublishError::Unroutable { .. }));
        assert_eq!(&e.into_message().body[..], b"m");
    }

    #[test]
    fn route_and_lane_clamps_only_when_asked_and_hands_the_message_back() {
        let low = Queue::new("low").with_max_priority(2);
        let routing = crate::routing::Topology::new().snapshot([("low".to_owned(), low)]);
        let counters = Counters::default();
        let hot = || Envelope::new(Message::new("m").with_priority(9), "", "low");
        let mut env = hot();
        let e =
            route_and_lane(&routing, &mut env, false, false, &counters, |q: &Queue| q).unwrap_err();
        assert!(matches!(e, NotRouted::Priority(_)));
        assert!(matches!(
            e.into_error(env),
            PublishError::PriorityTooHigh { max: 2, .. }
        ));
        let mut env = hot();
        let (route, lane) =
            route_and_lane(&routing, &mut env, false, true, &counters, |q: &Queue| q)
                .unwrap()
                .unwrap();
        assert_eq!((route.as_slice().len(), lane), (1, 2));
        assert_eq!(
            env.properties().priority,
            Some(2),
            "the clamp is written into the message"
        );
        let mut none = Envelope::new(Message::new("m"), "", "nowhere");
        assert!(
            route_and_lane(&routing, &mut none, false, false, &counters, |q: &Queue| q)
                .unwrap()
                .is_none()
        );
        assert_eq!(counters.snapshot().dropped_unroutable, 1);
    }

    #[test]
    fn a_periodic_thread_ticks_while_its_owner_lives() {
        let owner = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        spawn_periodic(
            "test-periodic",
            std::sync::Arc::downgrade(&owner),
            Duration::from_millis(5),
            |n: &std::sync::atomic::AtomicU64| {
                n.fetch_add(1, SeqCst);
            },
        );
        let start = std::time::Instant::now();
        while owner.load(SeqCst) < 3 {
            assert!(start.elapsed() < Duration::from_secs(10), "no ticks");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The thread holds only a weak reference between ticks.
        let weak = std::sync::Arc::downgrade(&owner);
        drop(owner);
        let start = std::time::Instant::now();
        while weak.upgrade().is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the thread kept its owner"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
