//! [`RedisTransport`]: the seam implemented over kombu's key layout.
//!
//! - Topology: exchanges (their types) live in this process, as in kombu;
//!   bindings live in Redis (`_kombu.binding.<ex>`), cached here and read
//!   again on every bind and on a timer, so queues bound by other
//!   processes (dashi or kombu) receive this process's publishes.
//! - Publish: one envelope per message, one `LPUSH` per target list; a
//!   batch is one variadic `LPUSH` per list. The confirm is the reply.
//! - Consume: the pop script takes up to `batch` envelopes and records
//!   them as unacked in one atomic step. A consumer alone on its queue
//!   keeps the next pop on its way while it delivers (within its prefetch
//!   window: `QueueStore::pop_many_ahead`), sent without waiting behind
//!   the replies of acks (`Link::call_urgent`).
//! - Ack: `HDEL` + `ZREM`, sent one-way (not waited for) and merged with
//!   the other acks of the link's next flush. Restore: compare-and-restore
//!   script, `RPUSH` (the message is the next one popped).
//!
//! # Invariants
//! - No reply is the delivery: a message leaves its list only inside the
//!   pop script, which records it as unacked in the same atomic step.
//! - A held delivery is known by its `unacked` field and the exact value
//!   written there; a restore or garbage move happens only while that value
//!   is unchanged (compare-and-restore), so a message acked or restored by
//!   someone else is never pushed back twice.
//! - Every delivery this process holds is re-scored in `unacked_index`
//!   more often than the visibility timeout, so no restorer (kombu's or
//!   dashi's) takes a message whose holder is alive. Messages taken ahead
//!   count as held: a pop sent ahead whose reply has come is decoded by
//!   the upkeep before it re-scores, even when no consumer asks.
//! - Messages taken ahead are never more than the consumer's window had
//!   room for after the batch it was given, are handed out before anything
//!   popped later, and leave with the consumer: back at the head of their
//!   list, unseen and in order (dropped if the queue was deleted here).
//! - dashi holds the restore lock (`unacked_mutex`) for at most
//!   `LOCK_LEASE` at a time, renewing it only while it still holds its own
//!   token, and releases a token whose unlock could not be sent on its next
//!   pass: a dashi restorer that dies mid-pass holds the others up for
//!   seconds, never for kombu's `unacked_mutex_expire`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashi_engine::exchange::{Exchange, ExchangeKind};
use dashi_engine::queue::{Queue, QueueInfo};
use dashi_engine::spi::{
    check_delete, check_redeclare, route_and_lane, spawn_periodic, validate_declaration, Accepted,
    Binding, ConnectionId, Counters, Envelope, Implements, PendingConfirm, QueueState, QueueStore,
    Routing, Topology, Transport, TransportEvent,
};
use dashi_engine::{Error, NameError, PublishError, QueueStats, StoreFailure};
use dashi_rt::{Runtime, RuntimeConfig};
use parking_lot::Mutex;

use crate::conn::{link_error, reply_error, reply_failure, store_failure, Conn};
use crate::link::{LinkError, Outcome};
use crate::options::RedisOptions;
use crate::resp::{self, Cmd, Frame};
use crate::scripts::{Script, Scripts};
use crate::wire::{self, Keys};

/// The `redis://` transport. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

/// Envelope bytes past which one pop stops taking more (it takes one at
/// least): a reply of a batch of large messages stays under an output
/// limit a server may set for its clients (`client-output-buffer-limit
/// normal`, none by default), which would otherwise cut the connection at
/// every pop. A full batch of small messages (256 envelopes of a 64-byte
/// body are about 100 KB) stays under it: 32 KB took consume+ack from
/// about 210 k to 135 k msgs/s here.
const POP_BYTES: u64 = 1024 * 1024;

/// Longest hold of the restore lock before it is renewed (see
/// `Inner::lock_lease`).
const LOCK_LEASE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Inner {
    /// This transport, for the queue handles it makes.
    me: Weak<Inner>,
    pub(crate) opts: RedisOptions,
    pub(crate) keys: Keys,
    _rt: Arc<Runtime>,
    pub(crate) conn: Conn,
    /// The publishes the command link's next flush sends.
    open_publish: Mutex<Option<Arc<PublishCell>>>,
    watch: crate::watch::Watch,
    scripts: Scripts,
    /// This transport instance among the consumers of auto-delete queues
    /// (a random tag: unique across hosts and PID namespaces).
    member: String,
    topo: Mutex<Topo>,
    routing: ArcSwap<Routing<Arc<RedisQueue>>>,
    counters: Counters,
    /// Unique in this process: suffixes of colliding `unacked` fields.
    nonce: String,
    /// Logged once: envelopes set aside as garbage.
    garbage_logged: AtomicBool,
    /// Tokens of `unacked_mutex` locks this process may still hold: taken
    /// (or sent, with no reply) on a connection that died before the
    /// unlock went through. Each restore pass releases them first, so a
    /// server restart or a cut connection mid-pass does not leave the mutex
    /// standing for its lease.
    /// Each with when it was taken: past the lock's lease the key is
    /// gone by itself and the token is forgotten.
    stale_locks: Mutex<Vec<(String, Instant)>>,
    /// The last restore scan failed: its failure was said once, at warning
    /// level; the next success says so too.
    restore_failing: AtomicBool,
}

#[derive(Debug, Default)]
struct Topo {
    topology: Topology,
    /// Queues declared here or seen in a binding set.
    queues: HashMap<String, Arc<RedisQueue>>,
    /// Bindings made by this process (kept when the sets are read again).
    local: Vec<Binding>,
    /// Exclusive queues and their connection.
    exclusive: HashMap<String, ConnectionId>,
    /// kombu fanout channel patterns this process listens on, and the
    /// queues each feeds.
    fanout_in: HashMap<String, Vec<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Acks still in the inbox reach Redis before the links close.
        self.flush_one_way();
    }
}

/// Process-wide source of delivery tokens.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds as kombu writes a score (Python's float repr).
fn score(s: f64) -> String {
    format!("{s:.7}")
}

/// The `unacked_index` score of a delivery taken (or re-scored) at `now`:
/// whole seconds, rounded up. Redis keeps a small sorted set as a packed
/// list and finds each insert's place by reading the scores before it;
/// integer scores are read as integers, float strings are parsed one by
/// one, and with a consumer's unacked entries all in that list the pop
/// script spent about a third of its Redis time there (17.6 against 12.1
/// µs of Redis CPU per message, pop and ack, in one A/B). Rounding up keeps
/// every restorer, kombu's included, from taking an entry early: at most a
/// second late against a visibility timeout of an hour by default.
fn pop_score(now: f64) -> String {
    format!("{}", now.max(0.0).ceil() as u64)
}

/// Transports open in this process, by URL: connections to the same URL
/// share one (its topology, exclusive queues and links), as connections to
/// one broker would.
static OPEN: Mutex<Vec<(String, Weak<Inner>)>> = Mutex::new(Vec::new());

/// Opens a connection from a (single or failover) `redis://` URL.
pub fn open(urls: &str) -> Result<dashi_engine::Connection, Error> {
    let opts = crate::options::parse(urls)?;
    let config = opts.config.clone();
    let t = {
        let mut open = OPEN.lock();
        open.retain(|(_, w)| w.strong_count() > 0);
        match open
            .iter()
            .filter(|(u, _)| u == urls)
            .filter_map(|(_, w)| w.upgrade())
            // Not one a process this one was forked from opened.
            .find(|i| i._rt.started_here())
        {
            Some(inner) => RedisTransport { inner },
            None => {
                let t = RedisTransport::open(opts)?;
                open.push((urls.to_owned(), Arc::downgrade(&t.inner)));
                t
            }
        }
    };
    Ok(dashi_engine::Connection::with_transport(
        Arc::new(t),
        config,
    ))
}

impl RedisTransport {
    pub(crate) fn open(opts: RedisOptions) -> Result<RedisTransport, Error> {
        let cfg = RuntimeConfig::default()
            .with_cores(1)
            .with_idle_spin(Duration::ZERO)
            .with_shutdown_timeout(Duration::from_millis(500));
        let rt = Runtime::start(cfg).map(Arc::new).map_err(|e| {
            Error::Store(StoreFailure::new(
                dashi_engine::FailureKind::Runtime,
                "redis transport runtime",
                e,
            ))
        })?;
        let conn = Conn::new(rt.clone(), 0, opts.servers.clone(), opts.timeout, None);
        // Connect now: a wrong address or password is an error of
        // `connect`, not of the first publish.
        conn.link().map_err(|e| link_error("connect", &e))?;
        let sub_conn = {
            let rt = rt.clone();
            let servers = opts.servers.clone();
            let timeout = opts.timeout;
            move |me: &Weak<Inner>| {
                let me = me.clone();
                Conn::new(
                    rt,
                    0,
                    servers,
                    timeout,
                    Some(Box::new(move || crate::watch::handler(me.clone()))),
                )
            }
        };
        let track_conn = Conn::new(rt.clone(), 0, opts.servers.clone(), opts.timeout, None);
        let inner = Arc::new_cyclic(|me| Inner {
            watch: crate::watch::Watch::new(sub_conn(me), track_conn),
            open_publish: Mutex::new(None),
            me: me.clone(),
            keys: opts.keys.clone(),
            opts,
            _rt: rt,
            conn,
            scripts: Scripts::default(),
            topo: Mutex::new(Topo::default()),
            routing: ArcSwap::from_pointee(Routing::default()),
            counters: Counters::default(),
            nonce: format!("{}-{}", std::process::id(), NEXT_TOKEN.fetch_add(1, SeqCst)),
            member: wire::new_tag(),
            garbage_logged: AtomicBool::new(false),
            stale_locks: Mutex::new(Vec::new()),
            restore_failing: AtomicBool::new(false),
        });
        inner.start_upkeep();
        Ok(RedisTransport { inner })
    }
}

impl Inner {
    /// Runs `script` with `EVALSHA`, loading it first when this server does
    /// not have it.
    /// After a `NOSCRIPT` (the script cache was flushed: `SCRIPT FLUSH`, a
    /// restart, a failover) it runs as `EVAL` with the script's text, which
    /// no flush can make fail, and the next call loads it again.
    fn eval(&self, script: &Script, keys: &[String], args: Vec<Bytes>) -> Result<Frame, Error> {
        let sha = self.script_sha(script)?;
        let mut cmd = eval_cmd(&sha, keys, &args);
        for _ in 0..2 {
            let reply = self
                .conn
                .call(vec![cmd])
                .map_err(|e| link_error("script", &e))?;
            match reply.into_iter().next() {
                Some(Frame::Error(e)) if e.starts_with("NOSCRIPT") => {
                    *script.sha.lock() = None;
                    cmd = eval_text_cmd(script.text, keys, &args);
                }
                Some(Frame::Error(e)) => return Err(reply_error("script", &e)),
                Some(f) => return Ok(f),
                None => return Err(reply_error("script", "no reply")),
            }
        }
        Err(reply_error("script", "NOSCRIPT for EVAL"))
    }

    fn script_sha(&self, script: &Script) -> Result<String, Error> {
        if let Some(s) = script.sha.lock().clone() {
            return Ok(s);
        }
        let reply = self
            .conn
            .call(vec![Cmd::new("SCRIPT").arg("LOAD").arg(script.text)])
            .map_err(|e| link_error("script load", &e))?;
        let sha = match reply.first() {
            Some(Frame::Error(e)) => return Err(reply_error("script load", e)),
            Some(f) => resp::bytes(f)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned)
                .ok_or_else(|| reply_error("script load", "unexpected reply"))?,
            None => return Err(reply_error("script load", "no reply")),
        };
        *script.sha.lock() = Some(sha.clone());
        Ok(sha)
    }

    /// Runs commands that must all succeed; their replies.
    fn call_ok(&self, what: &str, cmds: Vec<Cmd>) -> Result<Vec<Frame>, Error> {
        let reply = self.conn.call(cmds).map_err(|e| link_error(what, &e))?;
        for f in &reply {
            if let Frame::Error(e) = f {
                return Err(reply_error(what, e));
            }
        }
        Ok(reply)
    }

    /// The handle of queue `name`, made when it is first named.
    fn handle(&self, topo: &mut Topo, name: &str) -> Arc<RedisQueue> {
        topo.queues
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(RedisQueue::new(
                    self.me.clone(),
                    &self.keys,
                    // A queue only seen in a binding: any priority goes.
                    Queue::new(name).with_max_priority(255),
                    false,
                ))
            })
            .clone()
    }

    fn republish(&self, topo: &Topo) {
        let snap = topo
            .topology
            .snapshot(topo.queues.iter().map(|(n, q)| (n.clone(), q.clone())));
        self.routing.store(Arc::new(snap));
    }

    /// Reads the binding sets of every exchange declared here and rebuilds
    /// the routing table from them and this process's own bindings.
    fn refresh_bindings(&self) -> Result<(), Error> {
        let exchanges: Vec<String> = {
            let topo = self.topo.lock();
            topo.topology
                .exchanges()
                .filter(|e| e.kind != ExchangeKind::Headers)
                .map(|e| e.name.clone())
                .collect()
        };
        if exchanges.is_empty() {
            return Ok(());
        }
        let fanout: Vec<bool> = {
            let topo = self.topo.lock();
            exchanges
                .iter()
                .map(|e| {
                    topo.topology
                        .exchange(e)
                        .is_some_and(|x| x.kind == ExchangeKind::Fanout)
                })
                .collect()
        };
        let mut cmds: Vec<Cmd> = exchanges
            .iter()
            .map(|e| Cmd::new("SMEMBERS").arg(self.keys.binding(e)))
            .collect();
        cmds.extend(
            exchanges
                .iter()
                .map(|e| Cmd::new("SMEMBERS").arg(self.keys.fanout_queues(e))),
        );
        let mut replies = self.call_ok("binding table read", cmds)?;
        let dashi_fanout = replies.split_off(exchanges.len());
        let mut remote = Vec::new();
        for (i, (ex, reply)) in exchanges.iter().zip(replies).enumerate() {
            let Frame::Array(members) = reply else {
                continue;
            };
            // A fanout exchange copies into the queues dashi bound to it;
            // kombu's fanout queues take its PUBLISH instead.
            let durable: Option<Vec<Bytes>> = fanout[i].then(|| match &dashi_fanout[i] {
                Frame::Array(qs) => qs.iter().filter_map(resp::bytes).cloned().collect(),
                _ => Vec::new(),
            });
            for m in members {
                let Some(m) = resp::bytes(&m).and_then(|b| std::str::from_utf8(b).ok()) else {
                    continue;
                };
                if let Some((rk, _pattern, queue)) = self.keys.split_member(m) {
                    if durable
                        .as_ref()
                        .is_some_and(|qs| !qs.iter().any(|q| &q[..] == queue.as_bytes()))
                    {
                        continue;
                    }
                    remote.push(Binding {
                        exchange: ex.clone(),
                        queue: queue.to_owned(),
                        routing_key: rk.to_owned(),
                        arguments: Default::default(),
                    });
                }
            }
        }
        let mut topo = self.topo.lock();
        let mut fresh = Topology::new();
        for ex in topo.topology.exchanges() {
            let _ = fresh.declare_exchange(ex);
        }
        for b in topo.local.clone().into_iter().chain(remote) {
            if dashi_engine::spi::check_name("queue", &b.queue).is_err() {
                continue;
            }
            self.handle(&mut topo, &b.queue);
            // A binding another process wrote that this process's rules
            // refuse (a topic key that is not a valid pattern) is skipped.
            let _ = fresh.bind(b, |_| true);
        }
        topo.topology = fresh;
        self.republish(&topo);
        Ok(())
    }

    /// The periodic work: binding refresh, re-scoring held deliveries, the
    /// visibility-timeout restore scan, and waking waiting consumers.
    fn start_upkeep(&self) {
        let vt = self.opts.visibility_timeout;
        let keep = (vt / 3).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let scan = (vt / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let tick = self
            .opts
            .poll_interval
            .min(keep)
            .min(scan)
            .max(Duration::from_millis(10));
        let poll = self.opts.poll_interval;
        let health = self.opts.health_check_interval;
        // When each job last ran: poll, keep, scan, health.
        let last = Mutex::new([Instant::now(); 4]);
        spawn_periodic(
            "dashi-redis-upkeep",
            self.me.clone(),
            tick.min(health),
            move |me: &Inner| {
                let now = Instant::now();
                let due: Vec<bool> = {
                    let mut l = last.lock();
                    [poll, keep, scan, health]
                        .iter()
                        .zip(l.iter_mut())
                        .map(|(&every, at)| {
                            let due = now >= *at + every;
                            if due {
                                *at = now;
                            }
                            due
                        })
                        .collect()
                };
                if me.ensure_watch() || due[0] {
                    me.wake_waiters();
                }
                if due[0] {
                    let _ = me.refresh_bindings();
                }
                if due[1] {
                    let _ = me.rescore_held();
                    me.renew_consumers();
                }
                if due[2] {
                    // Said once a streak: messages of dead consumers wait
                    // in `unacked` while it fails (a server cutting the
                    // replies, a user not allowed the commands).
                    match me.restore_visible() {
                        Err(e) if !me.restore_failing.swap(true, SeqCst) => tracing::warn!(
                            error = %e,
                            "redis: the restore of unacked messages past the visibility timeout failed; they wait until it succeeds"
                        ),
                        Err(e) => tracing::debug!(error = %e, "redis restore scan failed"),
                        Ok(_) => {
                            if me.restore_failing.swap(false, SeqCst) {
                                tracing::info!(
                                    "redis: the restore of unacked messages works again"
                                );
                            }
                        }
                    }
                }
                if due[3] {
                    // A link that stopped answering is found here, not by
                    // the next caller: the PING fails, the link is dropped
                    // and the next call connects anew.
                    for conn in [&me.conn, me.watch.track_conn()] {
                        let _ = conn.call(vec![Cmd::new("PING")]);
                    }
                }
            },
        );
    }

    /// Keeps key-space notifications on for every queue this process
    /// consumes; true when they were (re)established.
    fn ensure_watch(&self) -> bool {
        let (prefixes, patterns) = {
            let mut topo = self.topo.lock();
            let prefixes = topo
                .queues
                .values()
                .filter(|q| q.declared.load(SeqCst) || q.adopted.load(SeqCst))
                .map(|q| format!("{}{}", self.keys.prefix, q.name))
                .collect();
            // kombu's fanout publishes reach this process's queues bound to
            // fanout exchanges through these subscriptions.
            let mut fanout_in: HashMap<String, Vec<String>> = HashMap::new();
            for b in &topo.local {
                let fanout = topo
                    .topology
                    .exchange(&b.exchange)
                    .is_some_and(|e| e.kind == ExchangeKind::Fanout);
                if fanout {
                    let pattern =
                        self.fanout_channel(&b.exchange, &b.routing_key.replace('#', "*"));
                    let qs = fanout_in.entry(pattern).or_default();
                    if !qs.contains(&b.queue) {
                        qs.push(b.queue.clone());
                    }
                }
            }
            let patterns = fanout_in.keys().cloned().collect();
            topo.fanout_in = fanout_in;
            (prefixes, patterns)
        };
        self.watch.ensure(prefixes, patterns)
    }

    /// kombu's pub/sub channel of fanout exchange `exchange` for `key`:
    /// `[global_keyprefix]/<db>.<exchange>[/<key>]` (§2.4 of the wire spec).
    fn fanout_channel(&self, exchange: &str, key: &str) -> String {
        let db = self.opts.servers.first().map_or(0, |s| s.login.db);
        let prefix = self
            .opts
            .fanout_prefix
            .as_deref()
            .map(|p| p.replace("{db}", &db.to_string()))
            .unwrap_or_default();
        let mut c = format!("{}{prefix}{exchange}", self.keys.prefix);
        if self.opts.fanout_patterns && !key.is_empty() {
            c.push('/');
            c.push_str(key);
        }
        c
    }

    /// A kombu fanout message arrived on a subscribed pattern: each queue
    /// of this process bound to it gets it once (whichever dashi process
    /// sees it first), unless a dashi process published it (its queues got
    /// their copy then). Runs on the link's core: nothing here waits.
    pub(crate) fn fanout_received(&self, pattern: &[u8], data: Bytes) {
        let text = String::from_utf8_lossy(&data);
        if text.contains(wire::FANOUT_MARK) {
            return;
        }
        let queues: Vec<(String, u8)> = {
            let topo = self.topo.lock();
            let Some(qs) = topo.fanout_in.get(&*String::from_utf8_lossy(pattern)) else {
                return;
            };
            qs.iter()
                .map(|q| {
                    let one_lane = topo.queues.get(q).is_none_or(|h| h.decl.max_priority == 0);
                    let step = if one_lane {
                        0
                    } else {
                        self.keys.step_for(wire::kombu_priority_of(&text))
                    };
                    (q.clone(), step)
                })
                .collect()
        };
        let Some(tag) = wire::tag_of(&data) else {
            self.note_garbage("", "a fanout message with no delivery_tag");
            return;
        };
        let cmds = queues
            .iter()
            .map(|(q, step)| {
                Cmd::new("EVAL")
                    .arg(crate::scripts::FANOUT_IN)
                    .arg("2")
                    .arg(self.keys.fanout_seen(q, &tag))
                    .arg(self.keys.list(q, *step))
                    .arg(data.clone())
            })
            .collect();
        if let Err(e) = self.conn.send_oneway(cmds) {
            tracing::warn!(error = %e, "redis: a kombu fanout message could not be stored");
        }
    }

    /// A list was written (a key-space notification): the queue it belongs
    /// to wakes its waiting consumers.
    pub(crate) fn key_written(&self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let Some(name) = self.keys.queue_of(key) else {
            return;
        };
        let q = self.topo.lock().queues.get(name).cloned();
        if let Some(q) = q {
            if q.state.waiters() > 0 {
                q.state.notify_all();
            }
        }
    }

    /// Wakes every consumer waiting on a queue of this process: each looks
    /// at its lists again (the fallback when no notification came).
    fn wake_waiters(&self) {
        let queues: Vec<Arc<RedisQueue>> = self.topo.lock().queues.values().cloned().collect();
        for q in queues {
            if q.state.waiters() > 0 {
                q.state.notify_all();
            }
        }
    }

    /// How long an auto-delete queue counts this process as a consumer
    /// after its last renewal (renewed with the held deliveries, every
    /// third of the visibility timeout, at most every minute, so four
    /// renewals may be missed): a killed process stops counting that long
    /// after it died (five minutes with kombu's default timeout).
    fn consumer_lease(&self) -> Duration {
        let keep = (self.opts.visibility_timeout / 3)
            .clamp(Duration::from_millis(50), Duration::from_secs(60));
        (5 * keep).max(Duration::from_secs(2))
    }

    /// Says (`here`) or unsays that this process consumes auto-delete
    /// queue `name`; how many other processes (of dashi) still do.
    fn consumer_presence(&self, name: &str, here: bool) -> Result<u64, Error> {
        let lease = self.consumer_lease().as_millis().to_string();
        let f = self.eval(
            &self.scripts.consumers,
            &[self.keys.consumers(name)],
            vec![
                Bytes::from(self.member.clone()),
                Bytes::from(lease),
                Bytes::from_static(if here { b"1" } else { b"0" }),
            ],
        )?;
        resp::int(&f)
            .map(|n| n.max(0) as u64)
            .ok_or_else(|| reply_error("auto-delete consumers", "unexpected reply"))
    }

    /// Renews this process's lease on every auto-delete queue it consumes.
    fn renew_consumers(&self) {
        let queues: Vec<Arc<RedisQueue>> = self
            .topo
            .lock()
            .queues
            .values()
            .filter(|q| q.decl.auto_delete && q.state.consumers() > 0)
            .cloned()
            .collect();
        for q in queues {
            let _said = q.presence.lock();
            if q.state.consumers() == 0 {
                continue;
            }
            if let Err(e) = self.consumer_presence(&q.name, true) {
                tracing::debug!(queue = %q.name, error = %e, "renewing an auto-delete lease failed");
            }
        }
    }

    /// Re-scores every delivery this process holds without a lease of its
    /// own, so that no restorer takes it while this process is alive.
    fn rescore_held(&self) -> Result<(), Error> {
        let now = pop_score(now_secs());
        let mut cmd = Cmd::new("ZADD").arg(self.keys.unacked_index()).arg("XX");
        let mut n = 0;
        let queues: Vec<Arc<RedisQueue>> = self.topo.lock().queues.values().cloned().collect();
        for q in queues {
            q.settle_ahead();
            for h in q.held.lock().values() {
                if h.leased {
                    continue;
                }
                cmd.push(now.clone());
                cmd.push(h.field.clone());
                n += 1;
            }
        }
        if n == 0 {
            return Ok(());
        }
        self.call_ok("unacked re-score", vec![cmd]).map(|_| ())
    }

    /// kombu's `restore_visible`: under `unacked_mutex`, every unacked
    /// entry older than the visibility timeout goes back to its queue (no
    /// cap per pass), marked redelivered.
    pub(crate) fn restore_visible(&self) -> Result<usize, Error> {
        // Locks of earlier passes whose unlock did not go through.
        let stale = std::mem::take(&mut *self.stale_locks.lock());
        for (token, taken) in stale {
            if taken.elapsed() < self.lock_lease() {
                self.unlock(token, taken);
            }
        }
        // A lock token unique to this pass (kombu uses a uuid1 hex).
        let token = uuid::Uuid::new_v4().simple().to_string();
        let taken = Instant::now();
        let px = self.lock_lease().as_millis().max(1) as i64;
        let got = match self.call_ok(
            "restore lock",
            vec![Cmd::new("SET")
                .arg(self.keys.unacked_mutex())
                .arg(token.clone())
                .arg("NX")
                .arg("PX")
                .int(px)],
        ) {
            Ok(got) => got,
            Err(e) => {
                // The SET may have run with its reply lost.
                self.stale_locks.lock().push((token, taken));
                return Err(e);
            }
        };
        if got.first() == Some(&Frame::Null) {
            return Ok(0);
        }
        let result = self.restore_visible_locked(&token);
        self.unlock(token, taken);
        result
    }

    /// How long the restore lock is taken for: kombu's
    /// `unacked_mutex_expire`, but at most [`LOCK_LEASE`], renewed while a
    /// pass runs. A restorer killed mid-pass blocks the others for that
    /// long, not for kombu's 300 s.
    fn lock_lease(&self) -> Duration {
        self.opts.unacked_mutex_expire.min(LOCK_LEASE)
    }

    /// Extends the restore lock by another lease; false when it is no
    /// longer ours (it ran out: another restorer may be at work).
    fn renew_lock(&self, token: &str) -> Result<bool, Error> {
        let r = self.eval(
            &self.scripts.renew,
            &[self.keys.unacked_mutex()],
            vec![
                Bytes::from(token.to_owned()),
                Bytes::from(self.lock_lease().as_millis().max(1).to_string()),
            ],
        )?;
        Ok(matches!(r, Frame::Integer(1)))
    }

    /// Releases `unacked_mutex` if it still holds `token` (compare and
    /// delete); kept for the next pass when the server cannot be told.
    fn unlock(&self, token: String, taken: Instant) {
        let r = self.eval(
            &self.scripts.unlock,
            &[self.keys.unacked_mutex()],
            vec![Bytes::from(token.clone())],
        );
        if r.is_err() {
            self.stale_locks.lock().push((token, taken));
        }
    }

    fn restore_visible_locked(&self, token: &str) -> Result<usize, Error> {
        let ceil = now_secs() - self.opts.visibility_timeout.as_secs_f64();
        let reply = self.call_ok(
            "restore scan",
            // Oldest first: each goes back behind the restored messages
            // that stood before it (the restore script's order walk), so a
            // consumer taking messages while the scan runs takes them in
            // their original order too.
            vec![Cmd::new("ZRANGEBYSCORE")
                .arg(self.keys.unacked_index())
                .arg("0")
                .arg(score(ceil))
                .arg("WITHSCORES")],
        )?;
        let Some(Frame::Array(pairs)) = reply.into_iter().next() else {
            return Ok(0);
        };
        let scores: HashMap<Bytes, Bytes> = pairs
            .chunks(2)
            .filter_map(|p| {
                Some((
                    resp::bytes(p.first()?)?.clone(),
                    resp::bytes(p.get(1)?)?.clone(),
                ))
            })
            .collect();
        let fields: Vec<Frame> = pairs.into_iter().step_by(2).collect();
        let held: std::collections::HashSet<Bytes> = {
            let queues: Vec<Arc<RedisQueue>> = self.topo.lock().queues.values().cloned().collect();
            queues
                .iter()
                .flat_map(|q| {
                    q.held
                        .lock()
                        .values()
                        .map(|h| h.field.clone())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let fields: Vec<Bytes> = fields
            .iter()
            .filter_map(|f| resp::bytes(f).cloned())
            .filter(|f| !held.contains(f))
            .collect();
        let mut restored = 0;
        let mut last_score: Option<(Bytes, u32)> = None;
        for (k, chunk) in self.restore_chunks(&fields)?.into_iter().enumerate() {
            if k > 0 && !self.renew_lock(token)? {
                // Past the lease: another restorer may be at work now.
                break;
            }
            let values = self.call_ok(
                "restore read",
                chunk
                    .iter()
                    .map(|f| Cmd::new("HGET").arg(self.keys.unacked()).arg(f.clone()))
                    .collect(),
            )?;
            for (field, value) in chunk.iter().zip(values) {
                let Some(value) = resp::bytes(&value) else {
                    // Acked meanwhile, or a zset entry without its hash
                    // entry: drop the index entry only.
                    let _ = self.call_ok(
                        "restore cleanup",
                        vec![Cmd::new("ZREM")
                            .arg(self.keys.unacked_index())
                            .arg(field.clone())],
                    );
                    continue;
                };
                let at = scores
                    .get(field)
                    .cloned()
                    .unwrap_or_else(|| Bytes::from_static(b"0"));
                // Entries of one score (one pop, or one second of pops)
                // keep the scan's order among themselves: each goes behind
                // the ones restored before it.
                let place = match &last_score {
                    Some((s, n)) if *s == at => n + 1,
                    _ => 0,
                };
                last_score = Some((at.clone(), place));
                if self.restore_entry(field, value, at, place)? {
                    restored += 1;
                }
            }
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "redis: unacked messages past the visibility timeout restored"
            );
            self.wake_waiters();
        }
        Ok(restored)
    }

    /// `fields` in the order given, cut into the reads of a restore: at
    /// most 256 entries, and no more than [`POP_BYTES`] of them (their
    /// lengths asked first, `HSTRLEN`) unless one alone is larger, so a
    /// reply stays within a client output limit the server may set, as a
    /// pop's does.
    fn restore_chunks<'f>(&self, fields: &'f [Bytes]) -> Result<Vec<&'f [Bytes]>, Error> {
        let mut out = Vec::new();
        for group in fields.chunks(256) {
            let lens = self.call_ok(
                "restore sizes",
                group
                    .iter()
                    .map(|f| Cmd::new("HSTRLEN").arg(self.keys.unacked()).arg(f.clone()))
                    .collect(),
            )?;
            let (mut start, mut bytes) = (0, 0u64);
            for (i, len) in lens.iter().enumerate() {
                let len = resp::int(len).map_or(0, |n| n.max(0) as u64);
                if i > start && bytes + len > POP_BYTES {
                    out.push(&group[start..i]);
                    (start, bytes) = (i, 0);
                }
                bytes += len;
            }
            if start < group.len() {
                out.push(&group[start..]);
            }
        }
        Ok(out)
    }

    /// Puts back one `unacked` entry written by anyone: `[env, ex, rk]`
    /// routed as kombu would (exchange `""` = the queue named `rk`).
    fn restore_entry(
        &self,
        field: &Bytes,
        value: &Bytes,
        popped_at: Bytes,
        place: u32,
    ) -> Result<bool, Error> {
        let text = String::from_utf8_lossy(value);
        let Some((env, ex, rk)) = wire::split_unacked(&text) else {
            return self.set_aside_entry(
                field,
                value,
                "an unacked entry that is not [envelope, exchange, routing_key]",
            );
        };
        let queues: Vec<String> = if ex.is_empty() {
            vec![rk.clone()]
        } else {
            let routing = self.routing.load();
            match routing.route(&ex, &rk, &Default::default()) {
                Ok(r) => r
                    .as_slice()
                    .iter()
                    .map(|&i| routing.target(i).name.clone())
                    .collect(),
                // An exchange this process does not know: direct, as
                // kombu treats it, from the binding table.
                Err(_) => self.direct_lookup(&ex, &rk)?,
            }
        };
        let Some(first) = queues.first() else {
            return self.set_aside_entry(
                field,
                value,
                "an unacked message whose exchange routes it nowhere",
            );
        };
        let at = String::from_utf8_lossy(&popped_at).into_owned();
        let Some(marked) = wire::restored(env.get(), first, true, Some((&at, place))) else {
            return self.set_aside_entry(field, value, "an unacked envelope kombu cannot restore");
        };
        let step = self.keys.step_for(wire::kombu_priority_of(env.get()));
        let mut keys = vec![self.keys.unacked(), self.keys.unacked_index()];
        {
            let topo = self.topo.lock();
            keys.extend(queues.iter().map(|q| {
                // A queue declared here without priorities reads one list.
                let one_lane = topo
                    .queues
                    .get(q)
                    .is_some_and(|h| h.declared.load(SeqCst) && h.decl.max_priority == 0);
                self.keys.list(q, if one_lane { 0 } else { step })
            }));
        }
        let done = self.eval(
            &self.scripts.restore,
            &keys,
            vec![
                field.clone(),
                value.clone(),
                Bytes::from(marked),
                Bytes::from_static(b"RPUSH"),
                popped_at,
                Bytes::from(place.to_string()),
            ],
        )?;
        Ok(resp::int(&done) == Some(1))
    }

    fn direct_lookup(&self, ex: &str, rk: &str) -> Result<Vec<String>, Error> {
        let reply = self.call_ok(
            "binding table read",
            vec![Cmd::new("SMEMBERS").arg(self.keys.binding(ex))],
        )?;
        let mut out = Vec::new();
        if let Some(Frame::Array(members)) = reply.into_iter().next() {
            for m in members {
                let Some(m) = resp::bytes(&m).and_then(|b| std::str::from_utf8(b).ok()) else {
                    continue;
                };
                if let Some((mrk, _, q)) = self.keys.split_member(m) {
                    if mrk == rk && !out.iter().any(|x| x == q) {
                        out.push(q.to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves an `unacked` entry nobody can restore to the garbage list of
    /// the queue it names (or of `""`), if it is still `value`.
    fn set_aside_entry(&self, field: &Bytes, value: &Bytes, why: &str) -> Result<bool, Error> {
        let queue = wire::split_unacked(&String::from_utf8_lossy(value))
            .map(|(_, _, rk)| rk)
            .unwrap_or_default();
        self.move_to_garbage(&queue, field.clone(), value.clone(), value.clone(), why)?;
        Ok(false)
    }

    /// Moves the `unacked` entry `field` (if it still holds `value`) to the
    /// garbage list of `queue`, as `kept`; logged once.
    fn move_to_garbage(
        &self,
        queue: &str,
        field: Bytes,
        value: Bytes,
        kept: Bytes,
        why: &str,
    ) -> Result<(), Error> {
        self.note_garbage(queue, why);
        let keys = vec![
            self.keys.unacked(),
            self.keys.unacked_index(),
            self.keys.garbage(queue),
        ];
        self.eval(
            &self.scripts.restore,
            &keys,
            vec![field, value, kept, Bytes::from_static(b"LPUSH")],
        )
        .map(|_| ())
    }

    fn note_garbage(&self, queue: &str, why: &str) {
        if !self.garbage_logged.swap(true, SeqCst) {
            tracing::warn!(
                queue,
                reason = why,
                list = %self.keys.garbage(queue),
                "redis: an envelope that cannot be delivered was set aside (logged once; \
                 later ones are counted in stats)"
            );
        }
    }

    /// Publishes: routes, encodes, and sends one `LPUSH` per target list
    /// (variadic per list across the batch). Returns per message its
    /// outcome: the commands' handle to wait for, or its error.
    fn publish_batch(&self, batch: Vec<(Envelope, bool)>) -> Vec<Result<Planned, PublishError>> {
        let routing = self.routing.load();
        let fanouts: Vec<String> = {
            let topo = self.topo.lock();
            topo.topology
                .exchanges()
                .filter(|e| e.kind == ExchangeKind::Fanout)
                .map(|e| e.name.clone())
                .collect()
        };
        let mut out = Vec::with_capacity(batch.len());
        // (list key, queue) → encoded envelopes, in publish order.
        let mut lists: Vec<(String, Arc<RedisQueue>, Vec<Bytes>)> = Vec::new();
        // kombu's fanout: (channel, envelope) sent with PUBLISH.
        let mut broadcasts: Vec<(String, Bytes)> = Vec::new();
        for (mut env, mandatory) in batch {
            let fanout = fanouts.iter().any(|f| **f == *env.exchange);
            let targets: Vec<Arc<RedisQueue>> = if fanout {
                // Never unroutable: kombu's subscribers are not known here.
                match routing.route(&env.exchange, &env.routing_key, &env.properties().headers) {
                    Ok(r) => r
                        .as_slice()
                        .iter()
                        .map(|&i| routing.target(i).clone())
                        .collect(),
                    Err(missing) => {
                        out.push(Err(
                            dashi_engine::spi::Refused::UnknownExchange(missing).into_error(env)
                        ));
                        continue;
                    }
                }
            } else if env.exchange.is_empty() {
                match self.default_target(&routing, &env.routing_key, mandatory) {
                    Ok(Some(q)) => vec![q],
                    Ok(None) => {
                        self.counters.record(TransportEvent::Published, 1);
                        self.counters.record(TransportEvent::DroppedUnroutable, 1);
                        out.push(Ok(Planned::Dropped));
                        continue;
                    }
                    Err(e) => {
                        out.push(Err(e.into_error(env)));
                        continue;
                    }
                }
            } else {
                match route_and_lane(&routing, &mut env, mandatory, false, &self.counters, |q| {
                    &q.decl
                }) {
                    Ok(Some((route, _))) => route
                        .as_slice()
                        .iter()
                        .map(|&i| routing.target(i).clone())
                        .collect(),
                    Ok(None) => {
                        out.push(Ok(Planned::Dropped));
                        continue;
                    }
                    Err(e) => {
                        out.push(Err(e.into_error(env)));
                        continue;
                    }
                }
            };
            if let Some(q) = targets
                .iter()
                .find(|q| env.properties().priority.unwrap_or(0) > q.decl.max_priority)
            {
                let e = dashi_engine::spi::PriorityTooHigh {
                    priority: env.properties().priority.unwrap_or(0),
                    max: q.decl.max_priority,
                    queue: q.name.clone(),
                };
                out.push(Err(e.into_error(env)));
                continue;
            }
            let tag = wire::new_tag();
            let text = wire::encode(&env, &tag);
            // Which of this batch's commands carry this message.
            let mut mine: Vec<Target> = Vec::with_capacity(targets.len() + 1);
            if fanout {
                mine.push(Target::Broadcast(broadcasts.len()));
                broadcasts.push((
                    self.fanout_channel(&env.exchange, &env.routing_key),
                    Bytes::from(wire::with_fanout_mark(&text)),
                ));
            }
            let encoded = Bytes::from(text);
            // For queues without priorities, encoded once if there are any.
            let mut one_lane: Option<Bytes> = None;
            let step = self.keys.step_for(wire::to_kombu_priority(
                env.properties().priority.unwrap_or(0),
            ));
            for q in &targets {
                // A queue without priorities has one lane: kombu's bare
                // list, where kombu and Celery put their messages too, with
                // the priority that list stands for in the envelope.
                let (step, bytes) = if q.decl.max_priority == 0 {
                    let b = one_lane
                        .get_or_insert_with(|| Bytes::from(wire::encode_for(&env, &tag, true)));
                    (0, b.clone())
                } else {
                    (step, encoded.clone())
                };
                let key = self.keys.list(&q.name, step);
                match lists.iter().position(|(k, _, _)| *k == key) {
                    Some(i) => {
                        lists[i].2.push(bytes);
                        mine.push(Target::List(i));
                    }
                    None => {
                        mine.push(Target::List(lists.len()));
                        lists.push((key, q.clone(), vec![bytes]));
                    }
                }
            }
            self.counters.record(TransportEvent::Published, 1);
            self.counters
                .record(TransportEvent::Routed, targets.len() as u64);
            out.push(Ok(Planned::Sent(env, mine)));
        }
        if lists.is_empty() && broadcasts.is_empty() {
            return out;
        }
        let woken: Vec<Arc<RedisQueue>> = lists.iter().map(|(_, q, _)| q.clone()).collect();
        let lists: Vec<(String, Vec<Bytes>)> =
            lists.into_iter().map(|(k, _, msgs)| (k, msgs)).collect();
        let shared = self.join_publish(lists, broadcasts, woken);
        out.into_iter()
            .map(|r| match r {
                Ok(Planned::Sent(env, mine)) => match &shared {
                    Ok((s, list_at, bcast_at)) => {
                        // Positions in this batch → commands of the cell.
                        let targets = mine
                            .into_iter()
                            .map(|t| match t {
                                Target::List(i) => Target::List(list_at[i]),
                                Target::Broadcast(i) => Target::Broadcast(bcast_at + i),
                            })
                            .collect();
                        Ok(Planned::Pending(env, s.clone(), targets))
                    }
                    // Nothing was sent: the message was not stored.
                    Err(e) => Err(PublishError::Store {
                        failure: store_failure("publish", e),
                        message: Box::new(env.into_message()),
                    }),
                },
                other => other,
            })
            .collect()
    }

    /// Adds commands to the publish cell that the link's next flush sends
    /// (opening one when none is open): every publish of one turn of the
    /// core shares one outcome and one variadic `LPUSH` per list, and its
    /// confirms resolve together, so a pipelining producer is woken once per
    /// flush rather than once per message.
    fn join_publish(
        &self,
        lists: Vec<(String, Vec<Bytes>)>,
        broadcasts: Vec<(String, Bytes)>,
        woken: Vec<Arc<RedisQueue>>,
    ) -> Result<(Arc<SharedReply>, Vec<usize>, usize), LinkError> {
        // Not into a batch inherited from the process this one was forked
        // from: the parent's core sends that one, never this process's.
        self.conn.check_here()?;
        let mut open = self.open_publish.lock();
        if let Some(cell) = open.as_ref() {
            let mut st = cell.state.lock();
            // The reply is set before the cell is shared (under `open`).
            if let (false, Some(reply)) = (st.closed, cell.reply.get()) {
                let (list_at, bcast_at) = st.add(lists, broadcasts);
                reply.woken.lock().extend(woken);
                return Ok((reply.clone(), list_at, bcast_at));
            }
        }
        let cell = Arc::new(PublishCell {
            state: Mutex::new(OpenPublish::default()),
            reply: std::sync::OnceLock::new(),
            pushes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });
        let (list_at, bcast_at) = cell.state.lock().add(lists, broadcasts);
        let wait = match self.opts.confirm {
            // Half the link's timeout: WAIT's own answer (too few
            // replicas) arrives before the link gives up on it.
            crate::options::ConfirmLevel::Replicated(n) => Some(
                Cmd::new("WAIT")
                    .int(i64::from(n))
                    .int((self.opts.timeout.as_millis() as i64 / 2).max(1)),
            ),
            crate::options::ConfirmLevel::Server => None,
        };
        let guard = CloseOnDrop(cell.clone());
        let outcome = self.conn.start_deferred(Box::new(move || {
            let mut st = guard.0.state.lock();
            let cmds = st.close(wait);
            guard.0.pushes.store(st.pushes, SeqCst);
            drop(st);
            drop(guard);
            cmds
        }))?;
        let reply = SharedReply::new(outcome, woken, self.opts.confirm, cell.pushes.clone());
        let _ = cell.reply.set(reply.clone());
        *open = Some(cell);
        Ok((reply, list_at, bcast_at))
    }

    /// The default exchange routes to the queue named by the routing key,
    /// when this process knows it (declared here or bound in Redis), as in
    /// AMQP: a publish to a queue nobody declared is unroutable (counted,
    /// or refused when mandatory), not pushed into a list nobody reads.
    fn default_target(
        &self,
        routing: &Routing<Arc<RedisQueue>>,
        key: &str,
        mandatory: bool,
    ) -> Result<Option<Arc<RedisQueue>>, dashi_engine::spi::Refused> {
        match routing.queue(key) {
            Some(q) => Ok(Some(q.clone())),
            None if mandatory => Err(dashi_engine::spi::Refused::Unroutable),
            None => Ok(None),
        }
    }
}

/// `s` with Redis glob characters escaped (a key prefix inside a `MATCH`).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What became of one message of a publish batch.
enum Planned {
    /// Routed nowhere and not mandatory (counted as unroutable).
    Dropped,
    /// Routed; carried by these commands of the batch.
    Sent(Envelope, Vec<Target>),
    /// Waiting for the cell's replies to these of its commands.
    Pending(Envelope, Arc<SharedReply>, Vec<Target>),
}

/// A command of a publish cell that carries a message.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The cell's `LPUSH` number `i`.
    List(usize),
    /// The cell's `PUBLISH` number `i` (after every `LPUSH`).
    Broadcast(usize),
}

/// Publishes waiting for the link's next flush.
#[derive(Default)]
struct OpenPublish {
    /// Taken by the flush: later publishes open a new cell.
    closed: bool,
    /// (list, envelopes in publish order).
    lists: Vec<(String, Vec<Bytes>)>,
    /// kombu fanout: (channel, envelope).
    broadcasts: Vec<(String, Bytes)>,
    /// `LPUSH` commands sent (set at close): the `PUBLISH`es follow them.
    pushes: usize,
}

impl OpenPublish {
    /// Adds a batch; returns where each of its lists is among the cell's
    /// `LPUSH`es and where its broadcasts start among the `PUBLISH`es.
    fn add(
        &mut self,
        lists: Vec<(String, Vec<Bytes>)>,
        broadcasts: Vec<(String, Bytes)>,
    ) -> (Vec<usize>, usize) {
        let mut at = Vec::with_capacity(lists.len());
        for (key, msgs) in lists {
            match self.lists.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    self.lists[i].1.extend(msgs);
                    at.push(i);
                }
                None => {
                    at.push(self.lists.len());
                    self.lists.push((key, msgs));
                }
            }
        }
        let bcast_at = self.broadcasts.len();
        self.broadcasts.extend(broadcasts);
        (at, bcast_at)
    }

    /// Closes the cell and makes its commands: one `LPUSH` per list, the
    /// `PUBLISH`es, and `wait` last.
    fn close(&mut self, wait: Option<Cmd>) -> Vec<Cmd> {
        self.closed = true;
        self.pushes = self.lists.len();
        let mut cmds: Vec<Cmd> = std::mem::take(&mut self.lists)
            .into_iter()
            .map(|(key, msgs)| {
                let mut c = Cmd::new("LPUSH").arg(key);
                for m in msgs {
                    c.push(m);
                }
                c
            })
            .collect();
        cmds.extend(
            std::mem::take(&mut self.broadcasts)
                .into_iter()
                .map(|(channel, env)| Cmd::new("PUBLISH").arg(channel).arg(env)),
        );
        if !cmds.is_empty() {
            cmds.extend(wait);
        }
        cmds
    }
}

/// One flush's publishes and their shared replies.
struct PublishCell {
    state: Mutex<OpenPublish>,
    reply: std::sync::OnceLock<Arc<SharedReply>>,
    /// `LPUSH` commands it sent (set when it closes; read by the confirms).
    pushes: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for PublishCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishCell")
            .field("closed", &self.state.lock().closed)
            .finish()
    }
}

/// Closes a cell whose flush never ran (its link died): its publishes
/// fail with the link's outcome and later ones open a new cell.
struct CloseOnDrop(Arc<PublishCell>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
    }
}

/// The replies of one publish cell, shared by its messages' confirms. The
/// link's outcome wakes a settler that stores the replies once, on whatever
/// thread completes them; each confirm judges the commands that carried
/// its own message.
struct SharedReply {
    handle: Mutex<Option<Arc<Outcome>>>,
    replies: Mutex<Option<Result<Arc<Vec<Frame>>, StoreFailure>>>,
    judged: parking_lot::Condvar,
    wakers: Mutex<Vec<Waker>>,
    woken: Mutex<Vec<Arc<RedisQueue>>>,
    confirm: crate::options::ConfirmLevel,
    /// The fork count it was made under: in a process forked since, only
    /// the parent's core could settle it (`judge` says so instead).
    forks: usize,
    /// `LPUSH` commands in the cell (set when it closes).
    pushes: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for SharedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReply")
            .field("known", &self.replies.lock().is_some())
            .finish()
    }
}

/// Wakes when a cell's replies arrive, and settles the cell.
struct Settler(Weak<SharedReply>);

impl std::task::Wake for Settler {
    fn wake(self: Arc<Self>) {
        if let Some(s) = self.0.upgrade() {
            s.try_settle(&Waker::from(self.clone()));
        }
    }
}

impl SharedReply {
    fn new(
        h: Arc<Outcome>,
        woken: Vec<Arc<RedisQueue>>,
        confirm: crate::options::ConfirmLevel,
        pushes: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Arc<SharedReply> {
        let s = Arc::new(SharedReply {
            handle: Mutex::new(Some(h)),
            replies: Mutex::new(None),
            judged: parking_lot::Condvar::new(),
            wakers: Mutex::new(Vec::new()),
            woken: Mutex::new(woken),
            confirm,
            forks: dashi_rt::forks(),
            pushes,
        });
        let settler = Waker::from(Arc::new(Settler(Arc::downgrade(&s))));
        s.try_settle(&settler);
        s
    }

    /// Stores the replies if they arrived (else `settler` is woken when they
    /// do), and wakes the consumers of this process waiting on the lists.
    fn try_settle(&self, settler: &Waker) {
        let reply = {
            let mut h = self.handle.lock();
            let Some(o) = h.as_ref() else { return };
            match o.poll(settler) {
                Poll::Ready(r) => {
                    h.take();
                    r
                }
                Poll::Pending => return,
            }
        };
        let stored = reply
            .map(Arc::new)
            .map_err(|e| store_failure("publish", &e));
        if stored.is_ok() {
            for q in self.woken.lock().iter() {
                if q.state.waiters() > 0 {
                    q.state.notify_all();
                }
            }
        }
        *self.replies.lock() = Some(stored);
        self.judged.notify_all();
        for w in self.wakers.lock().drain(..) {
            w.wake();
        }
    }

    /// The outcome for a message carried by `targets`, once the replies
    /// are in: each of its commands answered without an error, and with
    /// `confirm=replicated:N`, `WAIT` reached N replicas.
    fn judge(&self, targets: &[Target]) -> Option<Result<(), StoreFailure>> {
        let replies = match self.replies.lock().as_ref()? {
            Ok(r) => r.clone(),
            Err(f) => return Some(Err(f.clone())),
        };
        let pushes = self.pushes.load(SeqCst);
        let mut refused = None;
        let mut stored = 0;
        for t in targets {
            let i = match *t {
                Target::List(i) => i,
                Target::Broadcast(i) => pushes + i,
            };
            match replies.get(i) {
                // An error reply to an LPUSH or a PUBLISH: not done.
                Some(Frame::Error(e)) => {
                    refused.get_or_insert_with(|| reply_failure("publish", e));
                }
                Some(_) => stored += 1,
                None => return Some(Err(reply_failure("publish", "a reply is missing"))),
            }
        }
        if let Some(f) = refused {
            // Refused by every list it was for: certainly not stored; by
            // some of them only: stored in the others.
            return Some(Err(if stored == 0 { f.refused() } else { f }));
        }
        if let crate::options::ConfirmLevel::Replicated(n) = self.confirm {
            let acked = replies.last().and_then(resp::int).unwrap_or(0);
            if acked < i64::from(n) {
                return Some(Err(StoreFailure::new(
                    dashi_engine::FailureKind::Io { transient: true },
                    "redis publish",
                    format!("WAIT: {acked} of {n} replicas acknowledged the write in time"),
                )));
            }
        }
        Some(Ok(()))
    }
}

#[derive(Debug)]
struct RedisConfirm(Arc<SharedReply>, Vec<Target>);

impl RedisConfirm {
    /// The confirm's outcome in a process forked since it was made: unknown
    /// here (the parent's core sends the batch, or sent it).
    fn forked(&self) -> Option<Result<(), StoreFailure>> {
        (self.0.forks != dashi_rt::forks()).then(|| {
            Err(crate::conn::store_failure(
                "publish",
                &crate::link::LinkError::Forked,
            ))
        })
    }
}

impl PendingConfirm for RedisConfirm {
    fn poll_confirm(&self, waker: &Waker) -> Poll<Result<(), StoreFailure>> {
        // What the replies said, when they came before the fork; else
        // unknown in a forked child.
        if let Some(o) = self.0.judge(&self.1).or_else(|| self.forked()) {
            return Poll::Ready(o);
        }
        if let Some(o) = self.0.judge(&self.1) {
            return Poll::Ready(o);
        }
        self.0.wakers.lock().push(waker.clone());
        // Settled between the two looks: not left waiting.
        match self.0.judge(&self.1) {
            Some(o) => Poll::Ready(o),
            None => Poll::Pending,
        }
    }

    fn wait_confirm(&self, deadline: Option<Instant>) -> Option<Result<(), StoreFailure>> {
        if let Some(o) = self.0.judge(&self.1).or_else(|| self.forked()) {
            return Some(o);
        }
        {
            let mut r = self.0.replies.lock();
            while r.is_none() {
                match deadline {
                    None => self.0.judged.wait(&mut r),
                    Some(d) => {
                        if self.0.judged.wait_until(&mut r, d).timed_out() {
                            break;
                        }
                    }
                }
            }
        }
        self.0.judge(&self.1)
    }
}

fn eval_cmd(sha: &str, keys: &[String], args: &[Bytes]) -> Cmd {
    script_cmd(Cmd::new("EVALSHA").arg(sha.to_owned()), keys, args)
}

/// `EVAL` with the script's text: what a `NOSCRIPT` falls back to.
fn eval_text_cmd(text: &'static str, keys: &[String], args: &[Bytes]) -> Cmd {
    script_cmd(Cmd::new("EVAL").arg(text), keys, args)
}

fn script_cmd(c: Cmd, keys: &[String], args: &[Bytes]) -> Cmd {
    let mut c = c.int(keys.len() as i64);
    for k in keys {
        c.push(k.clone());
    }
    for a in args {
        c.push(a.clone());
    }
    c
}

/// One delivery held by this process.
#[derive(Debug, Clone)]
struct Held {
    /// Its `unacked` field, as popped (a tag need not be UTF-8: kept as
    /// text it no longer named its entry).
    field: Bytes,
    /// The envelope exactly as popped.
    raw: Bytes,
    /// A lease was set on it (`extend_lease`): its score is the lease's.
    leased: bool,
    /// When it was popped (its first score) and its place in that pop.
    popped_at: Bytes,
    index: u32,
}

/// A pop sent ahead of the consumer's next call, and what such pops took
/// that no call has taken yet (popped, recorded as unacked and held here,
/// in order).
#[derive(Debug, Default)]
struct Ahead {
    /// Pops on their way, oldest first (at most two): the reply to come,
    /// the pop's time, how many it asked.
    pending: std::collections::VecDeque<PendingPop>,
    /// Decoded and held, not yet handed to the engine.
    spare: std::collections::VecDeque<Envelope>,
    /// The last pop took all it asked for (more may wait).
    full: bool,
}

/// A pop on its way: the link it went on, its reply to come, the pop's
/// time and how many it asked.
type PendingPop = (Arc<crate::link::Link>, Arc<Outcome>, f64, usize);

/// How many envelopes a pop script's reply carries (`{garbage, field,
/// envelope, ...}`, garbage not counted).
fn popped_count(reply: &crate::link::Reply) -> Option<usize> {
    match reply.as_ref().ok()?.first()? {
        Frame::Array(items) => Some(items.len().saturating_sub(1) / 2),
        _ => None,
    }
}

/// One queue of a [`RedisTransport`].
#[derive(Debug)]
pub(crate) struct RedisQueue {
    inner: Weak<Inner>,
    pub(crate) name: String,
    pub(crate) decl: Queue,
    lists: Vec<String>,
    queue_json: Bytes,
    pub(crate) state: QueueState,
    held: Mutex<HashMap<u64, Held>>,
    /// Messages taken ahead for this handle's next pop (see
    /// [`QueueStore::pop_many_ahead`]).
    ahead: Mutex<Ahead>,
    /// Held while this process's auto-delete lease is said or unsaid with
    /// the consumer count that decides it: a renewal that read "one
    /// consumer" just before the last one left put the lease back after
    /// it was removed, and kept the queue from its deletion for a lease.
    presence: Mutex<()>,
    declared: AtomicBool,
    /// Consumed here without a declaration of its own (it exists on the
    /// server).
    adopted: AtomicBool,
}

impl RedisQueue {
    /// [`RedisQueue::restore`], by `EVALSHA` or (`by_text`, after a
    /// `NOSCRIPT`) by `EVAL` with the script's text.
    fn restore_via(&self, envs: Vec<Envelope>, by_text: bool) -> Result<(), Error> {
        if envs.is_empty() {
            return Ok(());
        }
        let inner = self.inner()?;
        let mut back: Vec<(u64, Held)> = {
            let mut held = self.held.lock();
            envs.iter()
                .filter_map(|e| held.remove(&e.token).map(|h| (e.token, h)))
                .collect()
        };
        // Oldest delivery first: each goes back behind the restored ones
        // that stood before it (the restore script's order walk), ahead of
        // the rest, so a consumer taking messages meanwhile still takes
        // them in their original order.
        back.sort_by_key(|(token, _)| *token);
        let sha = if by_text {
            None
        } else {
            Some(inner.script_sha(&inner.scripts.restore)?)
        };
        let mut cmds = Vec::with_capacity(back.len());
        let redelivered: std::collections::HashSet<u64> = envs
            .iter()
            .filter(|e| e.redelivered)
            .map(|e| e.token)
            .collect();
        for (token, h) in &back {
            let raw = String::from_utf8_lossy(&h.raw);
            let value = wire::unacked_value(&raw, &self.name);
            // A message put back unseen (never handed to the application)
            // keeps its flag: its envelope goes back as it was.
            let at = String::from_utf8_lossy(&h.popped_at);
            let marked = wire::restored(
                &raw,
                &self.name,
                redelivered.contains(token),
                Some((&at, h.index)),
            )
            .unwrap_or_else(|| raw.to_string());
            let step = if self.decl.max_priority == 0 {
                0
            } else {
                inner.keys.step_for(wire::kombu_priority_of(&raw))
            };
            let keys = vec![
                inner.keys.unacked(),
                inner.keys.unacked_index(),
                inner.keys.list(&self.name, step),
            ];
            let args = [
                h.field.clone(),
                Bytes::from(value),
                Bytes::from(marked),
                Bytes::from_static(b"RPUSH"),
                h.popped_at.clone(),
                Bytes::from(h.index.to_string()),
            ];
            cmds.push(match &sha {
                Some(sha) => eval_cmd(sha, &keys, &args),
                None => eval_text_cmd(inner.scripts.restore.text, &keys, &args),
            });
        }
        let replies = inner.conn.call(cmds).map_err(|e| {
            // Not known whether they went back: they stay unacked in
            // Redis (the scan restores them) and are no longer held.
            link_error("restore", &e)
        })?;
        if !by_text
            && replies
                .iter()
                .any(|f| matches!(f, Frame::Error(e) if e.starts_with("NOSCRIPT")))
        {
            *inner.scripts.restore.sha.lock() = None;
            // Put the still-held ones back and run them all again by text:
            // one that did run finds its entry gone and does nothing.
            {
                let mut held = self.held.lock();
                for (t, h) in back {
                    held.insert(t, h);
                }
            }
            return self.restore_via(envs, true);
        }
        if let Some(Frame::Error(e)) = replies.iter().find(|f| matches!(f, Frame::Error(_))) {
            return Err(reply_error("restore", e));
        }
        if self.state.waiters() > 0 {
            self.state.notify_all();
        }
        Ok(())
    }

    fn new(inner: Weak<Inner>, keys: &Keys, decl: Queue, declared: bool) -> RedisQueue {
        let mut json = String::new();
        wire::json_str(&mut json, &decl.name);
        RedisQueue {
            inner,
            name: decl.name.clone(),
            lists: keys.lists(&decl.name),
            queue_json: Bytes::from(json),
            decl,
            state: QueueState::new(),
            held: Mutex::new(HashMap::new()),
            presence: Mutex::new(()),
            ahead: Mutex::new(Ahead::default()),
            declared: AtomicBool::new(declared),
            adopted: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> Result<Arc<Inner>, Error> {
        self.inner.upgrade().ok_or(Error::ConnectionClosed)
    }

    /// Unsays this process as a consumer of this auto-delete queue; whether
    /// another dashi process still consumes it. When Redis cannot answer,
    /// the queue is kept (a queue left behind loses nothing; one deleted
    /// under a consumer loses its messages).
    fn consumed_elsewhere(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        match inner.consumer_presence(&self.name, false) {
            Ok(others) => others > 0,
            Err(e) => {
                tracing::warn!(queue = %self.name, error = %e, "auto-delete kept the queue: its consumers could not be counted");
                true
            }
        }
    }

    /// Ready messages in each list, kombu's step order.
    fn depths(&self, inner: &Inner) -> Result<Vec<u64>, Error> {
        let replies = inner.call_ok(
            "queue depth",
            self.lists
                .iter()
                .map(|l| Cmd::new("LLEN").arg(l.clone()))
                .collect(),
        )?;
        Ok(replies
            .iter()
            .map(|f| resp::int(f).unwrap_or(0).max(0) as u64)
            .collect())
    }

    fn settle_fields(&self, envs: &[&Envelope]) -> Vec<Held> {
        let mut held = self.held.lock();
        envs.iter().filter_map(|e| held.remove(&e.token)).collect()
    }

    /// Removes delivered entries from `unacked` (ack, or reject without
    /// requeue: kombu has no dead-lettering on Redis), pipelined.
    fn forget(&self, gone: &[Held]) -> Result<(), Error> {
        if gone.is_empty() {
            return Ok(());
        }
        let inner = self.inner()?;
        let mut hdel = Cmd::new("HDEL").arg(inner.keys.unacked());
        let mut zrem = Cmd::new("ZREM").arg(inner.keys.unacked_index());
        for h in gone {
            hdel.push(h.field.clone());
            zrem.push(h.field.clone());
        }
        // Sent, not waited for (as AMQP's basic.ack): the link runs it
        // before anything sent after it, and if the link fails first the
        // entries stay in `unacked` and the messages come back after the
        // visibility timeout, marked redelivered. Not sent at all (no
        // connection) is an error the caller sees.
        inner
            .conn
            .send_oneway(vec![hdel, zrem])
            .map_err(|e| link_error("ack", &e))
    }

    /// The pop script's keys: the lists, most urgent first, then
    /// `unacked`, `unacked_index` and the garbage list.
    fn pop_keys(&self, inner: &Inner) -> Vec<String> {
        let mut keys = self.lists.clone();
        keys.push(inner.keys.unacked());
        keys.push(inner.keys.unacked_index());
        keys.push(inner.keys.garbage(&self.name));
        keys
    }

    /// The pop script's arguments for up to `max` messages popped at `now`.
    fn pop_args(&self, inner: &Inner, max: usize, now: f64) -> Vec<Bytes> {
        vec![
            Bytes::from(max.to_string()),
            Bytes::from(pop_score(now)),
            self.queue_json.clone(),
            Bytes::from(inner.nonce.clone()),
            Bytes::from(POP_BYTES.to_string()),
        ]
    }

    /// Takes up to `max` messages and waits for them.
    fn pop_now(&self, inner: &Inner, max: usize, out: &mut Vec<Envelope>) -> Result<usize, Error> {
        let (link, o, now, _) = self.start_pop(inner, max)?;
        if let Some(n) = self.popped(inner, link.finish(&o), now, out)? {
            return Ok(n);
        }
        // NOSCRIPT (the script was flushed): the call that loads it again.
        let now = now_secs();
        let reply = inner.eval(
            &inner.scripts.pop,
            &self.pop_keys(inner),
            self.pop_args(inner, max, now),
        )?;
        self.decode_pop(inner, reply, now, out)
    }

    /// Sends a pop of up to `max` messages without waiting for it; it is
    /// not held behind replies still to come (acks).
    fn start_pop(&self, inner: &Inner, max: usize) -> Result<PendingPop, Error> {
        let now = now_secs();
        let sha = inner.script_sha(&inner.scripts.pop)?;
        let cmd = eval_cmd(&sha, &self.pop_keys(inner), &self.pop_args(inner, max, now));
        let (link, o) = inner
            .conn
            .start_urgent(vec![cmd])
            .map_err(|e| link_error("script", &e))?;
        Ok((link, o, now, max))
    }

    /// The messages of a pop started by [`RedisQueue::start_pop`] at `now`;
    /// `None` when the script did not run (`NOSCRIPT`: it is loaded again
    /// on the next call).
    fn popped(
        &self,
        inner: &Inner,
        reply: crate::link::Reply,
        now: f64,
        out: &mut Vec<Envelope>,
    ) -> Result<Option<usize>, Error> {
        let frames = reply.map_err(|e| link_error("script", &e))?;
        match frames.into_iter().next() {
            Some(Frame::Error(e)) if e.starts_with("NOSCRIPT") => {
                *inner.scripts.pop.sha.lock() = None;
                Ok(None)
            }
            Some(Frame::Error(e)) => Err(reply_error("script", &e)),
            Some(f) => self.decode_pop(inner, f, now, out).map(Some),
            None => Err(reply_error("script", "no reply")),
        }
    }

    /// Turns the pop script's reply into held deliveries (in order) in
    /// `out`; envelopes that cannot be decoded go to the garbage list.
    fn decode_pop(
        &self,
        inner: &Inner,
        reply: Frame,
        now: f64,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, Error> {
        let popped_at = Bytes::from(score(now));
        let Frame::Array(items) = reply else {
            return Err(reply_error("pop", "the pop script answered with no list"));
        };
        let mut it = items.into_iter();
        if let Some(g) = it.next().as_ref().and_then(resp::int) {
            for _ in 0..g.max(0) {
                inner.note_garbage(&self.name, "not a kombu envelope (invalid JSON, no properties, no delivery_tag or null headers)");
            }
        }
        let mut n = 0;
        let mut taken = Vec::with_capacity(it.len() / 2);
        let mut bad = Vec::new();
        while let (Some(field), Some(raw)) = (it.next(), it.next()) {
            let (Some(field), Some(raw)) = (resp::bytes(&field), resp::bytes(&raw)) else {
                continue;
            };
            let held = Held {
                field: field.clone(),
                raw: raw.clone(),
                leased: false,
                popped_at: popped_at.clone(),
                index: n as u32,
            };
            match wire::decode(raw) {
                Ok(d) => {
                    out.push(d.envelope);
                    taken.push(held);
                    n += 1;
                }
                Err(why) => bad.push((held, why.0)),
            }
        }
        // One token range and one lock of the held map per pop.
        let first = NEXT_TOKEN.fetch_add(taken.len() as u64, SeqCst);
        {
            let mut held = self.held.lock();
            let start = out.len() - taken.len();
            for ((env, h), token) in out[start..].iter_mut().zip(taken).zip(first..) {
                env.token = token;
                held.insert(token, h);
            }
        }
        for (held, why) in bad {
            self.set_aside(inner, &held, &why);
        }
        Ok(n)
    }

    /// The reply of a pop sent ahead (`asked` messages at `at`) into
    /// `a.spare`, held and in order. A script that did not run took
    /// nothing; an error is the pop's (what it may have taken stays
    /// unacked and comes back after the visibility timeout).
    fn collect(
        &self,
        inner: &Inner,
        a: &mut Ahead,
        reply: crate::link::Reply,
        at: f64,
        asked: usize,
    ) -> Result<(), Error> {
        let took = popped_count(&reply);
        let mut got = Vec::new();
        if self.popped(inner, reply, at, &mut got)?.is_some() {
            a.full = took == Some(asked);
            a.spare.extend(got);
        }
        Ok(())
    }

    /// Decodes a pop sent ahead whose reply has come, so what it took is
    /// held (and re-scored) even while nobody asks for it. Skipped while a
    /// consumer is taking (it holds the lock and decodes them itself), so
    /// the upkeep never waits behind a reply.
    fn settle_ahead(&self) {
        let Ok(inner) = self.inner() else { return };
        let Some(mut a) = self.ahead.try_lock() else {
            return;
        };
        while let Some((link, o, at, asked)) = a.pending.pop_front() {
            match o.wait(Some(Instant::now())) {
                None => {
                    a.pending.push_front((link, o, at, asked));
                    return;
                }
                Some(reply) => {
                    if let Err(e) = self.collect(&inner, &mut a, reply, at, asked) {
                        tracing::warn!(queue = %self.name, error = %e, "redis: a pop sent ahead failed; what it took comes back after the visibility timeout");
                    }
                }
            }
        }
    }

    /// Puts back, unseen, what was taken ahead and not handed out (the
    /// consumer stopped); drops it if the queue was deleted.
    fn release_ahead(&self) {
        let Ok(inner) = self.inner() else { return };
        let spare = {
            let mut a = self.ahead.lock();
            while let Some((link, o, at, asked)) = a.pending.pop_front() {
                let reply = link.finish(&o);
                if let Err(e) = self.collect(&inner, &mut a, reply, at, asked) {
                    tracing::warn!(queue = %self.name, error = %e, "redis: a pop sent ahead failed; what it took comes back after the visibility timeout");
                }
            }
            a.full = false;
            std::mem::take(&mut a.spare)
        };
        if spare.is_empty() {
            return;
        }
        let r = if self.state.is_deleted() {
            self.reject(spare.into())
        } else {
            self.restore(spare.into())
        };
        if let Err(e) = r {
            tracing::warn!(queue = %self.name, error = %e, "redis: messages taken ahead not put back; they come back after the visibility timeout");
        }
    }

    /// Puts a popped envelope that cannot be delivered in the garbage list.
    fn set_aside(&self, inner: &Inner, held: &Held, why: &str) {
        // Byte for byte what the pop script wrote: an envelope that is not
        // UTF-8, made text, no longer matched its entry, and stayed unacked
        // (for the visibility timeout) while the log said it was set aside.
        let value = wire::unacked_value_bytes(&held.raw, &self.name);
        if let Err(e) = inner.move_to_garbage(
            &self.name,
            held.field.clone(),
            Bytes::from(value),
            held.raw.clone(),
            why,
        ) {
            // It stays unacked and comes back after the visibility timeout.
            tracing::warn!(queue = %self.name, error = %e, "redis: setting a bad envelope aside failed");
        }
    }
}

impl QueueStore for RedisQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn declaration(&self) -> &Queue {
        &self.decl
    }

    fn pop(&self) -> Result<Option<Envelope>, Error> {
        let mut out = Vec::with_capacity(1);
        self.pop_many(1, &mut out)?;
        Ok(out.pop())
    }

    fn pop_many(&self, max: usize, out: &mut Vec<Envelope>) -> Result<usize, Error> {
        self.pop_many_ahead(max, 0, out)
    }

    fn pop_many_ahead(
        &self,
        max: usize,
        ahead: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, Error> {
        if max == 0 || self.state.is_deleted() {
            return Ok(0);
        }
        let inner = self.inner()?;
        let max = max.min(inner.opts.batch);
        let ahead = ahead.min(inner.opts.batch);
        let mut a = self.ahead.lock();
        // What was taken ahead comes first, in order.
        let n = loop {
            if !a.spare.is_empty() {
                let n = a.spare.len().min(max);
                out.extend(a.spare.drain(..n));
                break n;
            }
            if let Some((link, pending, at, asked)) = a.pending.pop_front() {
                // The queue looked full and all of this pop goes out now:
                // the next one goes before this one is awaited, so Redis
                // runs it while this reply travels and is decoded.
                if ahead > 0 && a.full && a.pending.is_empty() && asked <= max {
                    if let Ok(p) = self.start_pop(&inner, ahead) {
                        a.pending.push_back(p);
                    }
                }
                let reply = link.finish(&pending);
                self.collect(&inner, &mut a, reply, at, asked)?;
                continue;
            }
            // Not under the lock: competing consumers of this handle pop
            // side by side.
            drop(a);
            let n = self.pop_now(&inner, max, out)?;
            a = self.ahead.lock();
            a.full = n == max;
            break n;
        };
        // The queue had more than was asked: the next run is taken now, so
        // it is on its way while this one is delivered.
        if ahead > 0 && a.full && a.spare.is_empty() && a.pending.is_empty() {
            if let Ok(p) = self.start_pop(&inner, ahead) {
                a.pending.push_back(p);
            }
        }
        Ok(n)
    }

    fn batch_hint(&self) -> usize {
        self.inner.upgrade().map_or(1, |i| i.opts.batch)
    }

    fn ack(&self, envs: &[&Envelope]) -> Result<(), Error> {
        let gone = self.settle_fields(envs);
        self.forget(&gone)
    }

    fn reject(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        let refs: Vec<&Envelope> = envs.iter().collect();
        let gone = self.settle_fields(&refs);
        self.forget(&gone)
    }

    fn restore(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        self.restore_via(envs, false)
    }

    fn lease(&self, env: &Envelope, lease: Duration) -> bool {
        // Always `true`: another process's restore is found by the ack
        // (kombu's layout has no owner to compare).
        let Ok(inner) = self.inner() else { return true };
        let field = {
            let mut held = self.held.lock();
            let Some(h) = held.get_mut(&env.token) else {
                return true;
            };
            h.leased = true;
            h.field.clone()
        };
        let at = now_secs() + lease.as_secs_f64() - inner.opts.visibility_timeout.as_secs_f64();
        // Not waited for: `XX` makes a re-score that lands after the ack a
        // no-op, and a lost one leaves the delivery's earlier score (the
        // engine restores an expired lease itself while this process runs).
        let _ = inner.conn.start(vec![Cmd::new("ZADD")
            .arg(inner.keys.unacked_index())
            .arg("XX")
            .arg(score(at))
            .arg(field)]);
        true
    }

    fn state(&self) -> &QueueState {
        &self.state
    }

    fn consumer_added(&self) -> bool {
        let _said = self.decl.auto_delete.then(|| self.presence.lock());
        let added = self.state.consumer_added();
        if added && self.decl.auto_delete {
            // Other processes must not delete it under this consumer.
            if let Some(inner) = self.inner.upgrade() {
                if let Err(e) = inner.consumer_presence(&self.name, true) {
                    tracing::warn!(queue = %self.name, error = %e, "an auto-delete queue's consumer went unsaid");
                }
            }
        }
        added
    }

    fn consumer_removed(&self) {
        self.release_ahead();
        let _said = self.decl.auto_delete.then(|| self.presence.lock());
        if self.decl.auto_delete && self.state.consumers() == 1 && self.consumed_elsewhere() {
            // The last consumer of every dashi process deletes it, not this
            // process's last: another process takes from it.
            self.state.consumer_withdrawn();
            return;
        }
        if self.state.consumer_removed(&self.decl) {
            if let Some(inner) = self.inner.upgrade() {
                // Left behind, it loses nothing; say so rather than nothing.
                if let Err(e) = inner.delete(&self.name) {
                    tracing::warn!(queue = %self.name, error = %e,
                        "auto-delete queue kept: deleting it failed");
                }
            }
        } else if self.decl.auto_delete && self.state.consumers() > 0 {
            // A consumer of this process started while the last one left
            // (which unsaid this process): say it again.
            if let Some(inner) = self.inner.upgrade() {
                let _ = inner.consumer_presence(&self.name, true);
            }
        }
    }
}

impl Inner {
    /// Figures of queue `name`: depth per priority step from its lists,
    /// unacked from `unacked` (every process's), consumers attached here.
    fn stats_of(&self, name: &str, unacked: &HashMap<String, u64>) -> Result<QueueStats, Error> {
        let handle = self.topo.lock().queues.get(name).cloned();
        let lists = self.keys.lists(name);
        let replies = self.call_ok(
            "queue depth",
            lists
                .iter()
                .chain(std::iter::once(&self.keys.garbage(name)))
                .map(|l| Cmd::new("LLEN").arg(l.clone()))
                .collect(),
        )?;
        let mut depths: Vec<u64> = replies
            .iter()
            .map(|f| resp::int(f).unwrap_or(0).max(0) as u64)
            .collect();
        let garbage = depths.pop().unwrap_or(0);
        // A queue declared here shows its own lanes; any other, Kombu's ten.
        let top = handle
            .as_ref()
            .filter(|h| h.declared.load(SeqCst))
            .map_or(9, |h| h.decl.max_priority);
        // Lanes by dashi priority: each step's depth is shown in the most
        // urgent lane (up to the queue's maximum) that maps to it.
        let max = top.min(9);
        let mut by_lane = vec![0u64; usize::from(top) + 1];
        for (&step, d) in self.keys.steps.iter().zip(&depths) {
            let lane = (0..=max)
                .rev()
                .find(|&p| self.keys.step_for(wire::to_kombu_priority(p)) == step)
                .map(|p| if p == max { top } else { p });
            match lane {
                Some(lane) => by_lane[usize::from(lane)] += d,
                None => by_lane[0] += d,
            }
        }
        Ok(QueueStats::new(
            name.to_owned(),
            by_lane,
            depths.iter().sum(),
            0,
            unacked.get(name).copied().unwrap_or(0),
            handle.map_or(0, |h| h.state.consumers()),
        )
        .with_garbage(garbage))
    }

    /// Unacked deliveries per queue, every process's: dashi's entries name
    /// their queue; kombu's name an exchange and key, routed as direct
    /// through the binding table (as kombu restores them).
    fn unacked_by_queue(&self) -> Result<HashMap<String, u64>, Error> {
        // HVALS, a read: figures still answer while writes are paused.
        let reply = self.call_ok(
            "unacked figures",
            vec![Cmd::new("HVALS").arg(self.keys.unacked())],
        )?;
        let mut pairs: HashMap<(String, String), u64> = HashMap::new();
        if let Some(Frame::Array(values)) = reply.into_iter().next() {
            for v in values.iter().filter_map(resp::bytes) {
                if let Some((_, ex, rk)) = wire::split_unacked(&String::from_utf8_lossy(v)) {
                    *pairs.entry((ex, rk)).or_default() += 1;
                }
            }
        }
        let mut out: HashMap<String, u64> = HashMap::new();
        for ((ex, rk), n) in pairs {
            let queues = if ex.is_empty() {
                vec![rk]
            } else {
                self.direct_lookup(&ex, &rk)?
            };
            for q in queues {
                *out.entry(q).or_default() += n;
            }
        }
        Ok(out)
    }

    /// True when queue `name` has messages or a binding on the server.
    fn exists_on_server(&self, name: &str) -> Result<bool, Error> {
        let mut exists = Cmd::new("EXISTS");
        for l in self.keys.lists(name) {
            exists.push(l);
        }
        let reply = self.call_ok("queue lookup", vec![exists])?;
        if reply.first().and_then(resp::int).unwrap_or(0) > 0 {
            return Ok(true);
        }
        // Every message of it delivered and unacked (its consumer may be
        // dead: the next one must be able to wait for them to come back).
        if self.unacked_by_queue()?.contains_key(name) {
            return Ok(true);
        }
        Ok(self.discover()?.iter().any(|n| n == name))
    }

    /// Refuses a queue name kombu's Redis layout has no room for
    /// ([`Keys::queue_clash`]): a queue named `unacked_index` made every
    /// consumer of the server fail (its list is where the unacked times
    /// go), and one holding the separator wrote into another queue's
    /// priority list.
    fn check_queue_name(&self, name: &str) -> Result<(), Error> {
        match self.keys.queue_clash(name) {
            Some(why) => Err(Error::name("queue", name, NameError::Reserved { why })),
            None => Ok(()),
        }
    }

    /// The handle of `name` when it is declared here, or was seen on the
    /// server by this process (adopted); else looks for it on the server
    /// and adopts it when found. `None`: nothing anywhere names it.
    fn known_or_adopted(&self, name: &str) -> Result<Option<Arc<RedisQueue>>, Error> {
        match self.topo.lock().queues.get(name) {
            Some(h) if h.declared.load(SeqCst) || h.adopted.load(SeqCst) => {
                return Ok(Some(h.clone()))
            }
            _ => {}
        }
        dashi_engine::spi::check_name("queue", name)?;
        self.check_queue_name(name)?;
        if !self.exists_on_server(name)? {
            return Ok(None);
        }
        Ok(Some(self.adopt(name)))
    }

    /// Makes `name`, found on the server, known to this process from now
    /// on: in kombu's layout an empty queue leaves no trace on the server,
    /// so a queue seen a moment ago (by a figure, a look-up) must not turn
    /// unknown because its last message was just taken.
    fn adopt(&self, name: &str) -> Arc<RedisQueue> {
        let mut topo = self.topo.lock();
        let h = self.handle(&mut topo, name);
        if !h.adopted.swap(true, SeqCst) {
            self.republish(&topo);
        }
        h
    }

    /// Every key matching `pattern` (of `kind`, when given), by `SCAN`.
    fn scan(&self, pattern: &str, kind: Option<&str>) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::new();
        let mut cursor = String::from("0");
        loop {
            let mut c = Cmd::new("SCAN")
                .arg(cursor.clone())
                .arg("MATCH")
                .arg(pattern.to_owned())
                .arg("COUNT")
                .arg("1000");
            if let Some(k) = kind {
                c = c.arg("TYPE").arg(k.to_owned());
            }
            let reply = self.call_ok("queue discovery", vec![c])?;
            let Some(Frame::Array(parts)) = reply.into_iter().next() else {
                break;
            };
            let [next, Frame::Array(keys)] = &parts[..] else {
                break;
            };
            out.extend(keys.iter().filter_map(resp::bytes).cloned());
            cursor = resp::bytes(next)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "0".into());
            if cursor == "0" {
                break;
            }
        }
        Ok(out)
    }

    /// Queue names: known here, or named in a binding table on the server.
    fn discover(&self) -> Result<Vec<String>, Error> {
        let mut names: std::collections::BTreeSet<String> = self
            .topo
            .lock()
            .queues
            .values()
            .filter(|q| q.declared.load(SeqCst))
            .map(|q| q.name.clone())
            .collect();
        let tables = self.scan(
            &format!("{}_kombu.binding.*", glob_escape(&self.keys.prefix)),
            None,
        )?;
        for chunk in tables.chunks(256) {
            let members = chunk
                .iter()
                .map(|k| Cmd::new("SMEMBERS").arg(k.clone()))
                .collect();
            for set in self.call_ok("queue discovery", members)? {
                if let Frame::Array(ms) = set {
                    for m in ms.iter().filter_map(resp::bytes) {
                        if let Some((_, _, q)) = self.keys.split_member(&String::from_utf8_lossy(m))
                        {
                            names.insert(q.to_owned());
                        }
                    }
                }
            }
        }
        // Queues with messages but no binding: every list under the prefix
        // (a step list names its queue before the separator), and every
        // queue with garbage set aside (its figures say how much).
        let garbage = self.keys.garbage("");
        for k in self.scan(
            &format!("{}*", glob_escape(&self.keys.prefix)),
            Some("list"),
        )? {
            let k = String::from_utf8_lossy(&k);
            if let Some(queue) = k.strip_prefix(&garbage) {
                if !queue.is_empty() {
                    names.insert(queue.to_owned());
                }
                continue;
            }
            if let Some(name) = self.keys.queue_of(&k) {
                names.insert(name.to_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Deletes a queue's lists and this process's bindings of it; returns
    /// how many ready messages it held.
    fn delete(&self, name: &str) -> Result<u64, Error> {
        let (q, bindings) = {
            let topo = self.topo.lock();
            let bindings: Vec<Binding> = topo
                .topology
                .bindings()
                .iter()
                .filter(|b| b.queue == name)
                .cloned()
                .collect();
            (topo.queues.get(name).cloned(), bindings)
        };
        let lists = self.keys.lists(name);
        let mut cmds = vec![Cmd::new("MULTI")];
        for l in &lists {
            cmds.push(Cmd::new("LLEN").arg(l.clone()));
        }
        for b in &bindings {
            let member = self.member_of(b);
            if self.is_fanout(&b.exchange) {
                cmds.push(
                    Cmd::new("SREM")
                        .arg(self.keys.fanout_queues(&b.exchange))
                        .arg(name.to_owned()),
                );
            }
            cmds.push(
                Cmd::new("SREM")
                    .arg(self.keys.binding(&b.exchange))
                    .arg(member.clone()),
            );
            cmds.push(
                Cmd::new("SREM")
                    .arg(self.keys.binding_permanent(&b.exchange))
                    .arg(member),
            );
        }
        let mut del = Cmd::new("DEL");
        for l in &lists {
            del.push(l.clone());
        }
        cmds.push(del);
        cmds.push(Cmd::new("EXEC"));
        let replies = self.call_ok("queue delete", cmds)?;
        let ready = match replies.last() {
            Some(Frame::Array(r)) => r
                .iter()
                .take(lists.len())
                .map(|f| resp::int(f).unwrap_or(0).max(0) as u64)
                .sum(),
            _ => 0,
        };
        {
            let mut topo = self.topo.lock();
            topo.queues.remove(name);
            topo.topology.remove_queue(name);
            topo.local.retain(|b| b.queue != name);
            topo.exclusive.remove(name);
            self.republish(&topo);
        }
        if let Some(q) = q {
            q.state.mark_deleted();
        }
        Ok(ready)
    }

    /// Waits until every one-way command sent so far (acks, re-scores) has
    /// run: a `PING` after them on the same link answers after they did.
    /// Best effort, bounded by the link timeout; nothing to do without a
    /// live link.
    fn flush_one_way(&self) {
        // Never from the link's own core (a notification handler holding
        // the last reference): it would wait for itself.
        if dashi_rt::io::current_core().is_some() {
            return;
        }
        let _ = self.conn.call_if_live(vec![Cmd::new("PING")]);
    }

    /// True when `exchange` is declared here as a fanout exchange.
    fn is_fanout(&self, exchange: &str) -> bool {
        self.topo
            .lock()
            .topology
            .exchange(exchange)
            .is_some_and(|e| e.kind == ExchangeKind::Fanout)
    }

    /// The binding member kombu writes for `b`.
    fn member_of(&self, b: &Binding) -> String {
        let kind = self
            .topo
            .lock()
            .topology
            .exchange(&b.exchange)
            .map(|e| e.kind);
        let pattern = match kind {
            Some(ExchangeKind::Topic) => wire::topic_pattern(&b.routing_key),
            _ => String::new(),
        };
        self.keys.member(&b.routing_key, &pattern, &b.queue)
    }
}

impl Transport for RedisTransport {
    fn scheme(&self) -> &'static str {
        "redis"
    }

    fn implements(&self) -> Implements {
        let mut i = Implements::default();
        i.priorities = true;
        i.fanout = true;
        i.native_leases = true;
        i.durable = true;
        i.multi_process = true;
        i
    }

    fn declare_exchange(&self, ex: &Exchange) -> Result<(), Error> {
        if ex.kind == ExchangeKind::Headers {
            return Err(Error::InvalidArgument(format!(
                "exchange {:?}: headers exchanges are not available on redis://: kombu's \
                 binding table has no place for binding arguments",
                ex.name
            )));
        }
        let changed = self.inner.topo.lock().topology.declare_exchange(ex)?;
        if changed {
            self.inner.refresh_bindings()?;
        }
        Ok(())
    }

    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        {
            let mut topo = self.inner.topo.lock();
            topo.topology.delete_exchange(name, if_unused)?;
            topo.local.retain(|b| b.exchange != name);
            self.inner.republish(&topo);
        }
        self.inner
            .call_ok(
                "exchange delete",
                vec![Cmd::new("DEL")
                    .arg(self.inner.keys.binding(name))
                    .arg(self.inner.keys.binding_permanent(name))
                    .arg(self.inner.keys.fanout_queues(name))],
            )
            .map(|_| ())
    }

    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error> {
        validate_declaration(q)?;
        self.inner.check_queue_name(&q.name)?;
        if q.message_ttl.is_some()
            || q.dead_letter_exchange.is_some()
            || q.max_length != Queue::new("x").max_length
            || q.max_length_bytes != Queue::new("x").max_length_bytes
        {
            return Err(Error::InvalidArgument(format!(
                "queue {:?}: message_ttl, dead-lettering and length limits are not available \
                 on redis:// yet (kombu's layout has no place for them)",
                q.name
            )));
        }
        let inner = &self.inner;
        let handle = {
            let mut topo = inner.topo.lock();
            if let Some(&o) = topo.exclusive.get(&q.name) {
                if o != owner {
                    return Err(Error::Exclusive(q.name.clone()));
                }
            }
            let existing = topo.queues.get(&q.name).cloned();
            let handle = match existing {
                Some(h) if h.declared.load(SeqCst) => {
                    check_redeclare(&h.decl, q)?;
                    h
                }
                _ => {
                    let h = Arc::new(RedisQueue::new(
                        inner.me.clone(),
                        &inner.keys,
                        q.clone(),
                        true,
                    ));
                    topo.queues.insert(q.name.clone(), h.clone());
                    inner.republish(&topo);
                    h
                }
            };
            if q.exclusive {
                topo.exclusive.insert(q.name.clone(), owner);
            }
            handle
        };
        // Notifications for its lists before anyone waits on it.
        if inner.ensure_watch() {
            inner.wake_waiters();
        }
        let depths = handle.depths(inner)?;
        Ok(QueueInfo {
            name: q.name.clone(),
            message_count: depths.iter().sum(),
            consumer_count: handle.state.consumers(),
        })
    }

    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error> {
        let inner = &self.inner;
        let handle = {
            let topo = inner.topo.lock();
            if let Some(&o) = topo.exclusive.get(name) {
                if o != owner {
                    return Err(Error::Exclusive(name.to_owned()));
                }
            }
            topo.queues.get(name).cloned()
        };
        let Some(handle) = handle.filter(|h| h.declared.load(SeqCst)) else {
            return Err(Error::UnknownQueue(name.to_owned()));
        };
        let ready = handle.depths(inner)?.iter().sum();
        check_delete(name, if_unused, if_empty, handle.state.consumers(), ready)?;
        inner.delete(name)
    }

    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error> {
        let inner = &self.inner;
        {
            let topo = inner.topo.lock();
            if let Some(&o) = topo.exclusive.get(name) {
                if o != owner {
                    return Err(Error::Exclusive(name.to_owned()));
                }
            }
        }
        // As in kombu, a queue another process declared is purged by name.
        if inner.known_or_adopted(name)?.is_none() {
            return Err(Error::UnknownQueue(name.to_owned()));
        }
        let lists = inner.keys.lists(name);
        match inner.eval(&inner.scripts.purge, &lists, Vec::new())? {
            Frame::Integer(n) => Ok(n.max(0) as u64),
            other => Err(reply_error(
                "queue purge",
                &format!("the purge script answered {other:?}"),
            )),
        }
    }

    fn bind(&self, binding: Binding) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_queue_name(&binding.queue)?;
        if let Some(why) = inner.keys.separator_clash(&binding.routing_key) {
            return Err(Error::name(
                "binding key",
                &binding.routing_key,
                NameError::Reserved { why },
            ));
        }
        {
            let mut topo = inner.topo.lock();
            // A queue seen on the server (adopted: declared by another
            // process, kombu's included) exists as much as one declared here.
            let exists = topo
                .queues
                .get(&binding.queue)
                .is_some_and(|h| h.declared.load(SeqCst) || h.adopted.load(SeqCst));
            let mut scratch = topo.topology.clone();
            scratch.bind(binding.clone(), |_| exists)?;
            if !topo.local.contains(&binding) {
                topo.local.push(binding.clone());
            }
        }
        let member = inner.member_of(&binding);
        let mut cmds = vec![
            Cmd::new("SADD")
                .arg(inner.keys.binding(&binding.exchange))
                .arg(member.clone()),
            Cmd::new("SADD")
                .arg(inner.keys.binding_permanent(&binding.exchange))
                .arg(member),
        ];
        if inner.is_fanout(&binding.exchange) {
            cmds.push(
                Cmd::new("SADD")
                    .arg(inner.keys.fanout_queues(&binding.exchange))
                    .arg(binding.queue.clone()),
            );
        }
        inner.call_ok("bind", cmds)?;
        inner.refresh_bindings()?;
        if inner.ensure_watch() {
            inner.wake_waiters();
        }
        Ok(())
    }

    fn unbind(&self, binding: &Binding) -> Result<(), Error> {
        let inner = &self.inner;
        {
            let mut topo = inner.topo.lock();
            topo.topology.unbind(binding)?;
            topo.local.retain(|b| b != binding);
        }
        let member = inner.member_of(binding);
        let mut cmds = vec![
            Cmd::new("SREM")
                .arg(inner.keys.binding(&binding.exchange))
                .arg(member.clone()),
            Cmd::new("SREM")
                .arg(inner.keys.binding_permanent(&binding.exchange))
                .arg(member),
        ];
        let still_bound = inner
            .topo
            .lock()
            .local
            .iter()
            .any(|b| b.exchange == binding.exchange && b.queue == binding.queue);
        if inner.is_fanout(&binding.exchange) && !still_bound {
            cmds.push(
                Cmd::new("SREM")
                    .arg(inner.keys.fanout_queues(&binding.exchange))
                    .arg(binding.queue.clone()),
            );
        }
        inner.call_ok("unbind", cmds)?;
        inner.refresh_bindings()?;
        inner.ensure_watch();
        Ok(())
    }

    /// A queue declared here, or one that exists on the server (it has
    /// messages, or a binding names it): as in kombu, consuming a queue
    /// another process declared needs no declaration of one's own.
    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error> {
        {
            let topo = self.inner.topo.lock();
            if let Some(&o) = topo.exclusive.get(name) {
                if o != owner {
                    return Err(Error::Exclusive(name.to_owned()));
                }
            }
        }
        let Some(h) = self.inner.known_or_adopted(name)? else {
            return Err(Error::UnknownQueue(name.to_owned()));
        };
        // Notifications for its lists before anyone waits on it (a queue
        // adopted by a figure has none yet).
        if self.inner.ensure_watch() {
            self.inner.wake_waiters();
        }
        Ok(h)
    }

    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError> {
        match self.publish_async(envelope, mandatory)? {
            Accepted::Confirmed => Ok(()),
            Accepted::Pending { confirm, envelope } => {
                let failure = match confirm.wait_confirm(None) {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(f)) => f,
                    None => StoreFailure::new(
                        dashi_engine::FailureKind::Io { transient: true },
                        "redis publish",
                        "no outcome",
                    ),
                };
                // Refused by the server (out of memory, no permission):
                // certainly not stored.
                if failure.is_refused() {
                    return Err(PublishError::Store {
                        failure,
                        message: Box::new(envelope.into_message()),
                    });
                }
                Err(PublishError::unconfirmed(failure, envelope))
            }
        }
    }

    fn publish_async(&self, envelope: Envelope, mandatory: bool) -> Result<Accepted, PublishError> {
        self.publish_many(vec![(envelope, mandatory)])
            .pop()
            .expect("one result per message")
    }

    fn publish_many(&self, batch: Vec<(Envelope, bool)>) -> Vec<Result<Accepted, PublishError>> {
        self.inner
            .publish_batch(batch)
            .into_iter()
            .map(|r| {
                r.map(|p| match p {
                    Planned::Dropped => Accepted::Confirmed,
                    Planned::Sent(..) => unreachable!("every sent message waits for its batch"),
                    Planned::Pending(envelope, reply, targets) => Accepted::Pending {
                        confirm: Box::new(RedisConfirm(reply, targets)),
                        envelope,
                    },
                })
            })
            .collect()
    }

    fn connection_closed(&self, owner: ConnectionId) {
        self.inner.flush_one_way();
        let gone: Vec<String> = {
            let topo = self.inner.topo.lock();
            topo.exclusive
                .iter()
                .filter(|(_, &o)| o == owner)
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in gone {
            if let Err(e) = self.inner.delete(&name) {
                tracing::warn!(queue = %name, error = %e,
                    "exclusive queue kept: deleting it at close failed");
            }
        }
    }

    fn health(&self) -> Result<(), Error> {
        match self.inner.conn.last_error() {
            Some(e) => Err(link_error("connection", &e)),
            None => Ok(()),
        }
    }

    fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, Error> {
        let unacked = self.inner.unacked_by_queue()?;
        let known = self.inner.topo.lock().queues.contains_key(name);
        if !known
            && !unacked.contains_key(name)
            && !self.inner.discover()?.iter().any(|n| n == name)
        {
            return Ok(None);
        }
        let stats = self.inner.stats_of(name, &unacked)?;
        // Seen: a consumer looking it up next finds it even if its last
        // message went meanwhile (`dashi consume` reads the figures first).
        self.inner.adopt(name);
        Ok(Some(stats))
    }

    /// Every queue this process knows and every queue named in a binding
    /// table on the server (kombu's and Celery's included).
    fn all_queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        let unacked = self.inner.unacked_by_queue()?;
        let names = self.inner.discover()?;
        names
            .iter()
            .map(|n| self.inner.stats_of(n, &unacked))
            .collect()
    }
}
