//! One Redis connection, owned by one runtime core and driven through its
//! io_uring. Any thread sends a batch of commands with [`Link::call`]: the
//! batch goes into the link's inbox (a lock and a push) and, when no flush
//! is pending, one task is sent to the core to move the inbox into the
//! output buffer; everything moved during one turn of the core goes out in
//! one `send`. While batches already sent wait for replies, the flush is
//! held until the last of them arrives (one flush per round trip), except
//! after a [`Link::call_urgent`] batch (a pop a consumer will wait on),
//! which flushes the inbox on the core's next turn. Replies
//! are matched FIFO and handed back per batch through an [`Outcome`] any
//! thread can wait on or poll.
//!
//! # Invariants
//! - Replies match commands in order: the output buffer only ever holds
//!   whole commands, and each batch waits for exactly as many replies as it
//!   has commands.
//! - A link that failed (reset, EOF, a reply that is not RESP, a call that
//!   timed out) is dead for good: every batch waiting on it fails with
//!   [`LinkError::Lost`], which says whether its commands may have run, and
//!   nothing is sent on it again. The owner connects a new one.
//! - The socket is shut down when the link dies, so no reply can reach a
//!   later batch.
//! - A batch in the inbox is either flushed to the core or failed as not
//!   sent: the inbox is drained after `scheduled` is cleared, and a caller
//!   that finds the link dead after pushing drains it itself. A held flush
//!   keeps `scheduled` set; the driver runs it when `waiting` empties, an
//!   urgent batch runs it at once, and a link that dies first fails the
//!   inbox as not sent. Any flush sends the whole inbox in order, so an
//!   urgent batch never passes a batch pushed before it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dashi_rt::{io as rio, Runtime};
use parking_lot::{Condvar, Mutex};

use crate::resp::{self, Cmd, Frame};

/// Where a Redis server listens.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Addr {
    /// `host:port`.
    Tcp(String, u16),
    /// A Unix socket path.
    Unix(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Addr::Tcp(h, p) => write!(f, "{h}:{p}"),
            Addr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// What a link needs to log in: credentials and database. The password is
/// never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: u32,
    pub(crate) name: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The connection failed or timed out. `sent`: the batch was handed to
    /// the socket, so the server may have run it.
    Lost { detail: String, sent: bool },
    /// The server refused the login (a wrong password, an unknown db).
    Login(String),
    /// The connection belongs to the process this one was forked from
    /// (nothing was sent).
    Forked,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(d) => write!(f, "cannot connect: {d}"),
            LinkError::Lost { detail, .. } => write!(f, "connection lost: {detail}"),
            LinkError::Login(d) => write!(f, "login refused: {d}"),
            LinkError::Forked => f.write_str(FORKED),
        }
    }
}

impl LinkError {
    /// True when the server may have run the commands.
    pub(crate) fn maybe_ran(&self) -> bool {
        matches!(self, LinkError::Lost { sent: true, .. })
    }
}

pub(crate) type Reply = Result<Vec<Frame>, LinkError>;

/// The replies of one batch, once they are known: any thread waits for
/// them ([`Outcome::wait`]) or polls them ([`Outcome::poll`]).
#[derive(Default)]
pub(crate) struct Outcome {
    state: Mutex<OutcomeState>,
    cv: Condvar,
}

#[derive(Default)]
struct OutcomeState {
    reply: Option<Reply>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("known", &self.state.lock().reply.is_some())
            .finish()
    }
}

impl Outcome {
    fn done(r: Reply) -> Arc<Outcome> {
        let o = Arc::new(Outcome::default());
        o.complete(r);
        o
    }

    /// Sets the replies (the first completion wins) and wakes the waiter.
    fn complete(&self, r: Reply) {
        let waker = {
            let mut st = self.state.lock();
            if st.reply.is_some() {
                return;
            }
            st.reply = Some(r);
            st.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The replies (taken: a second call sees `None`), waiting until
    /// `deadline` at most.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Reply> {
        let mut st = self.state.lock();
        loop {
            if let Some(r) = st.reply.take() {
                return Some(r);
            }
            match deadline {
                None => self.cv.wait(&mut st),
                Some(d) => {
                    if self.cv.wait_until(&mut st, d).timed_out() {
                        return st.reply.take();
                    }
                }
            }
        }
    }

    /// The replies if known (taken), else `waker` is woken when they are.
    pub(crate) fn poll(&self, waker: &Waker) -> Poll<Reply> {
        let mut st = self.state.lock();
        match st.reply.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(waker.clone());
                Poll::Pending
            }
        }
    }
}

/// Commands made on the core when their batch is flushed (see
/// [`Link::call_deferred`]).
pub(crate) type Deferred = Box<dyn FnOnce() -> Vec<Cmd> + Send>;

/// One entry of the inbox.
enum Batch {
    /// Commands and where their replies go (`None`: nobody reads them).
    Now(Vec<Cmd>, Option<Arc<Outcome>>),
    /// Commands made at flush time.
    Later(Deferred, Arc<Outcome>),
}

/// What any thread shares with the core about one link.
struct Shared {
    /// Batches not yet moved to the core; `None`: one-way commands, whose
    /// replies nobody reads.
    inbox: Mutex<Vec<Batch>>,
    /// A flush task is on its way to the core.
    scheduled: AtomicBool,
    dead: AtomicBool,
    /// The server answered `READONLY`: it is a replica now (a failover
    /// demoted it), and a failover list should be walked again.
    demoted: AtomicBool,
}

impl Shared {
    /// Fails every batch still in the inbox (they were never sent).
    fn fail_inbox(&self, why: &str) {
        self.fail_inbox_with(&LinkError::Lost {
            detail: why.to_owned(),
            sent: false,
        });
    }

    /// Fails every batch still in the inbox with `e`.
    fn fail_inbox_with(&self, e: &LinkError) {
        fail_unsent(std::mem::take(&mut *self.inbox.lock()), e);
    }
}

/// Fails batches that never reached the socket.
fn fail_unsent(batches: Vec<Batch>, e: &LinkError) {
    for b in batches {
        let o = match b {
            Batch::Now(_, o) => o,
            Batch::Later(_, o) => Some(o),
        };
        if let Some(o) = o {
            o.complete(Err(e.clone()));
        }
    }
}

/// Called on the core with every frame that answers no command (pub/sub
/// messages on a subscribed link).
pub(crate) type PushHandler = Box<dyn Fn(Frame) + Send>;

/// A handle to one connection, usable from any thread.
pub(crate) struct Link {
    rt: Arc<Runtime>,
    core: usize,
    id: u64,
    shared: Arc<Shared>,
    shut: Shut,
    pub(crate) addr: Addr,
    timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("core", &self.core)
            .field("dead", &self.is_dead())
            .finish()
    }
}

/// A second handle on the socket, to shut it down from any thread.
enum Shut {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Shut {
    fn shutdown(&self) {
        let _ = match self {
            Shut::Tcp(s) => s.shutdown(Shutdown::Both),
            Shut::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Why a link does nothing in a forked child.
pub(crate) const FORKED: &str = "this connection was opened by the process this one was forked \
     from, and does nothing here (its socket is the parent's): open a new connection in this \
     process";

thread_local! {
    /// The links this core drives.
    static LINKS: RefCell<HashMap<u64, Rc<CoreLink>>> = RefCell::new(HashMap::new());
}

impl Link {
    /// Connects, logs in (AUTH, SELECT, CLIENT SETNAME) with blocking calls
    /// on this thread, then hands the socket to core `core`. Every step is
    /// bounded by `timeout`.
    pub(crate) fn connect(
        rt: &Arc<Runtime>,
        core: usize,
        addr: &Addr,
        login: &Login,
        timeout: Duration,
        push: Option<PushHandler>,
    ) -> Result<Link, LinkError> {
        let connect_err = |e: io::Error| LinkError::Connect(format!("{addr}: {e}"));
        let (fd, shut, core_shut): (OwnedFd, Shut, Shut) = match addr {
            Addr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut stream = None;
                for sa in (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?
                {
                    match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let mut s = stream.ok_or_else(|| connect_err(last))?;
                s.set_nodelay(true).map_err(connect_err)?;
                handshake(&mut s, login, timeout, addr)?;
                let shut = Shut::Tcp(s.try_clone().map_err(connect_err)?);
                let core_shut = Shut::Tcp(s.try_clone().map_err(connect_err)?);
                (s.into(), shut, core_shut)
            }
            Addr::Unix(path) => {
                let mut s = UnixStream::connect(path).map_err(connect_err)?;
                handshake(&mut s, login, timeout, addr)?;
                let shut = Shut::Unix(s.try_clone().map_err(connect_err)?);
                let core_shut = Shut::Unix(s.try_clone().map_err(connect_err)?);
                (s.into(), shut, core_shut)
            }
        };
        let id = NEXT_LINK.fetch_add(1, SeqCst);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            demoted: AtomicBool::new(false),
        });
        let fd = Arc::new(fd);
        let core_shared = shared.clone();
        // The driver runs for the link's life; its handle is not kept: a
        // link ends when its socket does.
        let started = rt.spawn(core, move || {
            let link = Rc::new(CoreLink {
                fd,
                shut: core_shut,
                out: RefCell::new(Vec::new()),
                waiting: RefCell::new(VecDeque::new()),
                driver: RefCell::new(None),
                failed: RefCell::new(None),
                held: std::cell::Cell::new(false),
                shared: core_shared,
                push,
            });
            LINKS.with(|l| l.borrow_mut().insert(id, link.clone()));
            drive(link, id)
        });
        drop(started);
        // The watchdog: a batch unanswered for `timeout` ends the link.
        let watched = rt.spawn(core, move || watchdog(id, timeout));
        drop(watched);
        Ok(Link {
            rt: rt.clone(),
            core,
            id,
            shared,
            shut,
            addr: addr.clone(),
            timeout,
        })
    }

    /// True once the link failed; a new one must be connected.
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(SeqCst)
    }

    /// True once the server answered a command with `READONLY` (it is a
    /// replica now).
    pub(crate) fn is_demoted(&self) -> bool {
        self.shared.demoted.load(SeqCst)
    }

    /// Ends the link: waiting batches fail as lost.
    pub(crate) fn kill(&self) {
        self.shared.dead.store(true, SeqCst);
        // Never in a forked child: the socket is the parent's too, and a
        // shutdown acts on it there as well (closing the child's copy, as
        // dropping it does, leaves the parent's alone).
        if self.rt.started_here() {
            self.shut.shutdown();
        }
        self.shared.fail_inbox("the connection was closed");
    }

    /// Sends `cmds` as one batch; the outcome is one reply per command
    /// (error replies included, as frames).
    pub(crate) fn call(&self, cmds: Vec<Cmd>) -> Arc<Outcome> {
        if cmds.is_empty() {
            return Outcome::done(Ok(Vec::new()));
        }
        let outcome = Arc::new(Outcome::default());
        self.push(Batch::Now(cmds, Some(outcome.clone())));
        outcome
    }

    /// [`Link::call`] for a batch somebody is about to wait on (a pop): it
    /// goes out on the core's next turn even while earlier batches wait
    /// for their replies, with whatever the inbox holds before it (so the
    /// order of commands is kept), instead of being held for one flush per
    /// round trip.
    pub(crate) fn call_urgent(&self, cmds: Vec<Cmd>) -> Arc<Outcome> {
        if cmds.is_empty() {
            return Outcome::done(Ok(Vec::new()));
        }
        let outcome = Arc::new(Outcome::default());
        self.push_as(Batch::Now(cmds, Some(outcome.clone())), true);
        outcome
    }

    /// A batch whose commands `make` builds on the core when the batch is
    /// flushed, so that whatever joins it until then goes out with it (one
    /// outcome for many publishes). `make` is dropped unrun when the link
    /// dies first; the outcome then fails as not sent.
    pub(crate) fn call_deferred(&self, make: Deferred) -> Arc<Outcome> {
        let outcome = Arc::new(Outcome::default());
        self.push(Batch::Later(make, outcome.clone()));
        outcome
    }

    /// Sends commands whose replies nobody reads (acks, re-scores): the
    /// one-way commands of one flush with the same name and key are merged
    /// into one variadic command (`HDEL unacked f1 f2 ...`), sent where the
    /// first of them stood, so any batch sent after one of them sees it run. `false` when the link is already dead (they
    /// were not sent).
    pub(crate) fn send_oneway(&self, cmds: Vec<Cmd>) -> bool {
        if self.is_dead() {
            return false;
        }
        self.push(Batch::Now(cmds, None));
        true
    }

    fn push(&self, batch: Batch) {
        self.push_as(batch, false);
    }

    /// Puts `batch` in the inbox and sees that a flush is on its way: one
    /// task per flush, or (`urgent`) a task that flushes now even when one
    /// is already on its way or held.
    fn push_as(&self, batch: Batch, urgent: bool) {
        self.shared.inbox.lock().push(batch);
        let id = self.id;
        if !self.rt.started_here() {
            self.shared.fail_inbox_with(&LinkError::Forked);
        } else if self.is_dead() {
            self.shared.fail_inbox("the connection is closed");
        } else if urgent {
            // Marks a flush as on its way, so a push meanwhile joins it.
            self.shared.scheduled.store(true, SeqCst);
            drop(self.rt.spawn(self.core, move || flush_urgent(id)));
        } else if !self.shared.scheduled.swap(true, SeqCst) {
            drop(self.rt.spawn(self.core, move || flush(id)));
        }
    }

    /// [`Link::call`] and waits for the replies, at most the link's timeout
    /// (then the link is killed: a late reply must not reach a later batch).
    pub(crate) fn call_wait(&self, cmds: Vec<Cmd>) -> Reply {
        let o = self.call(cmds);
        self.finish(&o)
    }

    /// Waits for an outcome from [`Link::call`] (see [`Link::call_wait`]).
    pub(crate) fn finish(&self, o: &Outcome) -> Reply {
        // The core's watchdog enforces the timeout; this bound covers a
        // core that stopped.
        let deadline = Instant::now() + self.timeout * 2 + Duration::from_secs(1);
        match o.wait(Some(deadline)) {
            Some(r) => {
                if r.is_err() {
                    self.kill();
                }
                r
            }
            None => {
                self.kill();
                Err(LinkError::Lost {
                    detail: format!("no reply from {} within {:?}", self.addr, self.timeout),
                    sent: true,
                })
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Logs in with blocking calls: `AUTH` (when a password is set), `SELECT`
/// (when the db is not 0) and `CLIENT SETNAME`.
fn handshake<S: Read + Write + SetTimeouts>(
    s: &mut S,
    login: &Login,
    timeout: Duration,
    addr: &Addr,
) -> Result<(), LinkError> {
    let lost = |e: io::Error| LinkError::Connect(format!("{addr}: {e}"));
    s.set_timeouts(Some(timeout)).map_err(lost)?;
    let mut cmds = Vec::new();
    if let Some(p) = &login.password {
        let mut c = Cmd::new("AUTH");
        if let Some(u) = &login.user {
            c.push(u.clone());
        }
        c.push(p.clone());
        cmds.push(c);
    }
    if login.db != 0 {
        cmds.push(Cmd::new("SELECT").int(i64::from(login.db)));
    }
    if !login.name.is_empty() {
        cmds.push(Cmd::new("CLIENT").arg("SETNAME").arg(login.name.clone()));
    }
    let mut out = Vec::new();
    for c in &cmds {
        c.encode(&mut out);
    }
    s.write_all(&out).map_err(lost)?;
    let mut buf = BytesMut::with_capacity(256);
    let mut chunk = [0u8; 256];
    let mut answered = 0;
    while answered < cmds.len() {
        match resp::decode(&mut buf).map_err(LinkError::Connect)? {
            // The name only shows in `CLIENT LIST`: a user without the
            // right to set it (an ACL without `client|setname`, which kombu
            // does not need) logs in all the same.
            Some(Frame::Error(e))
                if answered + 1 == cmds.len()
                    && !login.name.is_empty()
                    && e.starts_with("NOPERM") =>
            {
                tracing::warn!(%addr, error = %e, "the connection goes unnamed");
                answered += 1;
            }
            Some(Frame::Error(e)) => {
                return Err(LinkError::Login(format!("{addr}: {e}")));
            }
            Some(_) => answered += 1,
            None => {
                let n = loop {
                    match s.read(&mut chunk) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // The socket timeout ran out (EAGAIN, which used to
                        // be all the error said).
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Err(LinkError::Connect(format!(
                                "{addr}: no answer to the login within {} s (a server \
                                 that is stopped, or not Redis)",
                                timeout.as_secs_f64()
                            )));
                        }
                        r => break r.map_err(lost)?,
                    }
                };
                if n == 0 {
                    return Err(LinkError::Connect(format!(
                        "{addr}: the server closed the connection during login"
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    // The core's operations wait without a socket timeout.
    s.set_timeouts(None).map_err(lost)?;
    Ok(())
}

/// Socket timeouts for the blocking login.
trait SetTimeouts {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
}

impl SetTimeouts for TcpStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

impl SetTimeouts for UnixStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// The core's side of a link.
struct CoreLink {
    fd: Arc<OwnedFd>,
    /// Shuts the socket down when the link fails on the core, so the
    /// `recv` in flight completes.
    shut: Shut,
    /// Encoded commands not yet handed to the socket.
    out: RefCell<Vec<u8>>,
    /// Batches awaiting replies, oldest first.
    waiting: RefCell<VecDeque<Waiting>>,
    /// The driver, woken when `out` gets bytes.
    driver: RefCell<Option<Waker>>,
    /// Why the link died, once it did.
    failed: RefCell<Option<String>>,
    /// A flush waits for the replies of the batches before it (its
    /// `scheduled` flag stays set, so pushes meanwhile join it).
    held: std::cell::Cell<bool>,
    shared: Arc<Shared>,
    push: Option<PushHandler>,
}

struct Waiting {
    want: usize,
    got: Vec<Frame>,
    /// When the batch's bytes went to the socket.
    sent: Option<Instant>,
    slot: Arc<Outcome>,
}

impl CoreLink {
    /// Marks the link dead and fails every waiting batch.
    fn fail(&self, why: String) {
        if self.failed.borrow().is_none() {
            tracing::debug!(reason = %why, "redis link closed");
            *self.failed.borrow_mut() = Some(why.clone());
        }
        self.shared.dead.store(true, SeqCst);
        self.shut.shutdown();
        let waiting: Vec<Waiting> = self.waiting.borrow_mut().drain(..).collect();
        for w in waiting {
            w.slot.complete(Err(LinkError::Lost {
                detail: why.clone(),
                sent: w.sent.is_some(),
            }));
        }
        self.shared.fail_inbox(&why);
        self.out.borrow_mut().clear();
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    fn on_frame(&self, frame: Frame) {
        // On a subscribed link, messages interleave with command replies:
        // they are told apart by their kind, not by their order.
        if let Some(p) = &self.push {
            if is_message(&frame) {
                p(frame);
                return;
            }
        }
        if matches!(&frame, Frame::Error(e) if e.starts_with("READONLY")) {
            self.shared.demoted.store(true, SeqCst);
        }
        let mut waiting = self.waiting.borrow_mut();
        match waiting.front_mut() {
            Some(w) => {
                w.got.push(frame);
                if w.got.len() == w.want {
                    let w = waiting.pop_front().expect("front exists");
                    drop(waiting);
                    w.slot.complete(Ok(w.got));
                }
            }
            None => {
                drop(waiting);
                match &self.push {
                    Some(p) => p(frame),
                    None => self.fail("a reply that answers no command".into()),
                }
            }
        }
    }
}

/// A pub/sub message (`message`, `pmessage`), as opposed to a reply.
fn is_message(frame: &Frame) -> bool {
    let Frame::Array(parts) = frame else {
        return false;
    };
    matches!(
        parts.first().and_then(resp::bytes).map(|b| &b[..]),
        Some(b"message" | b"pmessage")
    )
}

/// Moves the inbox of link `id` into its output buffer (on its core),
/// or, while earlier batches still wait for their replies, holds it until
/// they come (the driver flushes then): like a group commit, everything
/// pushed during one round trip goes out as one flush, so a pipelining
/// publisher makes one variadic `LPUSH` per round trip, not one per
/// message, and the core and Redis each handle one read and one write per
/// round trip. Redis runs a connection's commands in order, so holding them
/// changes no outcome; a batch pushed to an idle link goes out at once.
async fn flush(id: u64) {
    let Some(link) = LINKS.with(|l| l.borrow().get(&id).cloned()) else {
        return;
    };
    if link.failed.borrow().is_none() && !link.waiting.borrow().is_empty() {
        link.held.set(true);
        return;
    }
    flush_now(&link);
}

/// Flushes the inbox of link `id` now, held or not (see
/// [`Link::call_urgent`]). A flush task that runs after it finds an empty
/// inbox or holds what came since.
async fn flush_urgent(id: u64) {
    let Some(link) = LINKS.with(|l| l.borrow().get(&id).cloned()) else {
        return;
    };
    link.held.set(false);
    flush_now(&link);
}

/// Flushes a held inbox once every batch before it has its replies.
fn release_held(link: &CoreLink) {
    if link.held.get() && link.waiting.borrow().is_empty() {
        link.held.set(false);
        flush_now(link);
    }
}

fn flush_now(link: &CoreLink) {
    // Cleared before draining: a batch pushed after the drain schedules
    // the next flush.
    link.shared.scheduled.store(false, SeqCst);
    let batches = std::mem::take(&mut *link.shared.inbox.lock());
    if let Some(why) = link.failed.borrow().clone() {
        fail_unsent(
            batches,
            &LinkError::Lost {
                detail: why,
                sent: false,
            },
        );
        return;
    }
    // One-way commands are merged and sent where the first of them stood:
    // every batch sent after any of them sees them run.
    let mut oneway: Vec<Cmd> = Vec::new();
    let mut first_oneway = None;
    let mut rest: Vec<(Vec<Cmd>, Arc<Outcome>)> = Vec::new();
    for b in batches {
        match b {
            Batch::Now(cmds, Some(slot)) => rest.push((cmds, slot)),
            Batch::Now(cmds, None) => {
                first_oneway.get_or_insert(rest.len());
                for c in cmds {
                    match oneway.iter_mut().find(|o| o.merges_with(&c)) {
                        Some(o) => o.absorb(c),
                        None => oneway.push(c),
                    }
                }
            }
            Batch::Later(make, slot) => {
                let cmds = make();
                if cmds.is_empty() {
                    slot.complete(Ok(Vec::new()));
                } else {
                    rest.push((cmds, slot));
                }
            }
        }
    }
    {
        let mut out = link.out.borrow_mut();
        let mut waiting = link.waiting.borrow_mut();
        let mut send = |cmds: &[Cmd], slot: Arc<Outcome>| {
            // A batch of nothing waits for no reply (it would hold the FIFO).
            if cmds.is_empty() {
                slot.complete(Ok(Vec::new()));
                return;
            }
            for c in cmds {
                c.encode(&mut out);
            }
            waiting.push_back(Waiting {
                want: cmds.len(),
                got: Vec::with_capacity(cmds.len()),
                sent: None,
                slot,
            });
        };
        for (i, (cmds, slot)) in rest.into_iter().enumerate() {
            if first_oneway == Some(i) {
                send(&std::mem::take(&mut oneway), Arc::new(Outcome::default()));
            }
            send(&cmds, slot);
        }
        if !oneway.is_empty() {
            send(&oneway, Arc::new(Outcome::default()));
        }
    }
    let driver = link.driver.borrow().clone();
    if let Some(w) = driver {
        w.wake();
    }
}

/// Ends link `id` when its oldest batch has waited `timeout` for replies.
async fn watchdog(id: u64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(1));
    loop {
        if rio::idle(tick).await.is_err() {
            return;
        }
        let Some(link) = LINKS.with(|l| l.borrow().get(&id).cloned()) else {
            return;
        };
        if link.failed.borrow().is_some() {
            return;
        }
        let late = link
            .waiting
            .borrow()
            .front()
            .and_then(|w| w.sent)
            .is_some_and(|at| at.elapsed() >= timeout);
        if late {
            link.fail(format!("no reply within {timeout:?}"));
            return;
        }
    }
}

type IoFuture = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;

const READ_CHUNK: usize = 64 << 10;

/// The link's driver: keeps one `recv` in flight, and one `send` whenever
/// there are bytes to send, until the link dies.
async fn drive(link: Rc<CoreLink>, id: u64) {
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut recv: Option<IoFuture> = None;
    let mut send: Option<IoFuture> = None;
    let mut spare: Vec<u8> = Vec::new();
    // The receive buffer goes back and forth between the ring and here
    // (made and zeroed once, not once per `recv`).
    let mut rbuf: Option<Vec<u8>> = Some(vec![0u8; READ_CHUNK]);
    std::future::poll_fn(|cx| {
        loop {
            if link.failed.borrow().is_some() {
                return Poll::Ready(());
            }
            *link.driver.borrow_mut() = Some(cx.waker().clone());
            let mut progressed = false;
            if send.is_none() {
                let mut out = link.out.borrow_mut();
                if !out.is_empty() {
                    let mut buf = std::mem::take(&mut spare);
                    std::mem::swap(&mut buf, &mut out);
                    drop(out);
                    let now = Instant::now();
                    for w in link.waiting.borrow_mut().iter_mut() {
                        w.sent.get_or_insert(now);
                    }
                    let fd = link.fd.clone();
                    send = Some(Box::pin(async move { rio::send(&fd, buf).await }));
                }
            }
            if let Some(f) = send.as_mut() {
                if let Poll::Ready((res, mut buf)) = f.as_mut().poll(cx) {
                    send = None;
                    progressed = true;
                    match res {
                        Ok(n) if n == buf.len() => {
                            buf.clear();
                            spare = buf;
                        }
                        Ok(n) => {
                            // A partial send: the rest goes ahead of
                            // anything appended since.
                            buf.drain(..n);
                            let mut out = link.out.borrow_mut();
                            buf.extend_from_slice(&out);
                            *out = buf;
                        }
                        Err(e) => {
                            link.fail(format!("send: {e}"));
                            continue;
                        }
                    }
                }
            }
            if recv.is_none() {
                let fd = link.fd.clone();
                let buf = rbuf
                    .take()
                    .filter(|b| b.len() == READ_CHUNK)
                    .unwrap_or_else(|| vec![0u8; READ_CHUNK]);
                recv = Some(Box::pin(async move { rio::recv(&fd, buf).await }));
            }
            if let Some(f) = recv.as_mut() {
                if let Poll::Ready((res, buf)) = f.as_mut().poll(cx) {
                    recv = None;
                    progressed = true;
                    let buf = rbuf.insert(buf);
                    match res {
                        Ok(0) => {
                            link.fail("the server closed the connection".into());
                            continue;
                        }
                        Ok(n) => {
                            input.extend_from_slice(&buf[..n]);
                            loop {
                                match resp::decode(&mut input) {
                                    Ok(Some(frame)) => link.on_frame(frame),
                                    Ok(None) => break,
                                    Err(e) => {
                                        link.fail(e);
                                        break;
                                    }
                                }
                            }
                            release_held(&link);
                        }
                        Err(e) => {
                            link.fail(format!("recv: {e}"));
                            continue;
                        }
                    }
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    // In-flight operations keep the descriptor until their completions.
    drop(recv);
    drop(send);
    LINKS.with(|l| l.borrow_mut().remove(&id));
}
