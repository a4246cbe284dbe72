//! A connection that heals: the current [`Link`] to the first server of the
//! failover list that answers, connected again on the next call after it
//! fails, with capped exponential backoff between failed attempts.
//!
//! # Invariants
//! - Nothing is sent twice behind the caller's back: a batch is retried on
//!   a new link only when the old one failed before the batch reached its
//!   socket ([`LinkError::maybe_ran`] false).
//! - While the servers cannot be reached, calls fail at once with the last
//!   connect error until the backoff has passed (no connect storm).
//! - In a list of several servers, a replica is not kept: one that says so
//!   (`ROLE`) is passed over at connect, and a link whose server answered
//!   `READONLY` (demoted by a failover) is left on the next call; batches
//!   already on it finish there. A list of one server keeps its server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashi_engine::{Error, FailureKind, StoreFailure};
use dashi_rt::Runtime;
use parking_lot::Mutex;

use crate::link::{Link, LinkError, Outcome, PushHandler};
use crate::options::Server;
use crate::resp::{Cmd, Frame};

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A self-healing connection over the failover list.
pub(crate) struct Conn {
    rt: Arc<Runtime>,
    core: usize,
    servers: Vec<Server>,
    timeout: Duration,
    state: Mutex<State>,
    /// Makes the push handler of each new link (subscribed links).
    push: Option<Box<dyn Fn() -> PushHandler + Send + Sync>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("servers", &self.servers)
            .field("core", &self.core)
            .finish()
    }
}

#[derive(Default)]
struct State {
    link: Option<Arc<Link>>,
    /// Server tried next (the list is walked on every reconnect).
    next: usize,
    /// No connect before this, after failures.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<LinkError>,
    /// Links made so far (a new one means state kept by the server for the
    /// old one, e.g. subscriptions, is gone).
    generation: u64,
}

impl Conn {
    pub(crate) fn new(
        rt: Arc<Runtime>,
        core: usize,
        servers: Vec<Server>,
        timeout: Duration,
        push: Option<Box<dyn Fn() -> PushHandler + Send + Sync>>,
    ) -> Conn {
        Conn {
            rt,
            core,
            servers,
            timeout,
            state: Mutex::new(State::default()),
            push,
        }
    }

    /// The live link and its generation, connecting one if needed.
    pub(crate) fn link(&self) -> Result<(Arc<Link>, u64), LinkError> {
        self.check_here()?;
        let mut st = self.state.lock();
        if let Some(l) = &st.link {
            // A server of a failover list that turned replica (a failover
            // demoted it; it answers writes with `READONLY`) is left for
            // the next one, which may be the one promoted. Batches still
            // on its link finish there.
            let demoted = self.servers.len() > 1 && l.is_demoted();
            if !l.is_dead() && !demoted {
                return Ok((l.clone(), st.generation));
            }
            if demoted {
                tracing::warn!("redis: the server answered READONLY (a replica now): trying the next one of the failover list");
                st.next = st.next.wrapping_add(1);
            }
            st.link = None;
        }
        if let (Some(at), Some(e)) = (st.retry_at, &st.last_error) {
            if Instant::now() < at {
                return Err(e.clone());
            }
        }
        let mut last = None;
        for _ in 0..self.servers.len() {
            let server = &self.servers[st.next % self.servers.len()];
            let push = self.push.as_ref().map(|f| f());
            match Link::connect(
                &self.rt,
                self.core,
                &server.addr,
                &server.login,
                self.timeout,
                push,
            ) {
                Ok(l) if self.servers.len() > 1 && is_replica(&l) => {
                    // Writes there fail with `READONLY`: a failover list
                    // goes on to the server that took over.
                    l.kill();
                    st.next = st.next.wrapping_add(1);
                    last = Some(LinkError::Connect(format!(
                        "{} is a read-only replica",
                        server.addr
                    )));
                }
                Ok(l) => {
                    let l = Arc::new(l);
                    st.link = Some(l.clone());
                    st.retry_at = None;
                    st.backoff = Duration::ZERO;
                    st.last_error = None;
                    st.generation += 1;
                    if st.generation > 1 {
                        tracing::info!(server = %server.addr, "redis reconnected");
                    }
                    return Ok((l, st.generation));
                }
                Err(e) => {
                    tracing::debug!(server = %server.addr, error = %e, "redis connect failed");
                    st.next = st.next.wrapping_add(1);
                    // A refused login will not change by retrying another
                    // server of the same deployment soon.
                    let login = matches!(e, LinkError::Login(_));
                    last = Some(e);
                    if login {
                        break;
                    }
                }
            }
        }
        let e = last.unwrap_or_else(|| LinkError::Connect("no server configured".into()));
        st.backoff = (st.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        st.retry_at = Some(Instant::now() + st.backoff);
        st.last_error = Some(e.clone());
        Err(e)
    }

    /// The last connect error while the servers cannot be reached.
    pub(crate) fn last_error(&self) -> Option<LinkError> {
        let st = self.state.lock();
        match &st.link {
            Some(l) if !l.is_dead() => None,
            _ => st.last_error.clone(),
        }
    }

    /// Drops the current link (the next call connects anew).
    pub(crate) fn reset(&self) {
        if let Some(l) = self.state.lock().link.take() {
            l.kill();
        }
    }

    /// Sends a batch and waits for its replies. Retried once on a fresh
    /// link when the first failed before sending.
    pub(crate) fn call(&self, cmds: Vec<Cmd>) -> Result<Vec<Frame>, LinkError> {
        for attempt in 0..2 {
            let (link, _) = self.link()?;
            match link.call_wait(cmds.clone()) {
                Err(e) if !e.maybe_ran() && attempt == 0 => continue,
                r => return r,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// [`Conn::call`] on the current link only, if it is alive (never
    /// connects): `None` without one.
    pub(crate) fn call_if_live(&self, cmds: Vec<Cmd>) -> Option<Result<Vec<Frame>, LinkError>> {
        let link = self.state.lock().link.clone().filter(|l| !l.is_dead())?;
        Some(link.call_wait(cmds))
    }

    /// [`Link::call_deferred`] on the current link (connecting one if needed).
    /// `Err` (nothing sent) in a process forked from the one that opened
    /// the connection: its links' sockets are the parent's, driven by the
    /// parent's runtime core, which does not run here.
    pub(crate) fn check_here(&self) -> Result<(), LinkError> {
        if self.rt.started_here() {
            return Ok(());
        }
        Err(LinkError::Forked)
    }

    pub(crate) fn start_deferred(
        &self,
        make: crate::link::Deferred,
    ) -> Result<Arc<Outcome>, LinkError> {
        let (link, _) = self.link()?;
        Ok(link.call_deferred(make))
    }

    /// [`Conn::start`] with [`Link::call_urgent`]: not held behind
    /// replies still to come.
    pub(crate) fn start_urgent(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<(Arc<Link>, Arc<Outcome>), LinkError> {
        let (link, _) = self.link()?;
        let h = link.call_urgent(cmds);
        Ok((link, h))
    }

    /// Sends a batch without waiting: the link it went on and the handle
    /// of its replies.
    pub(crate) fn start(&self, cmds: Vec<Cmd>) -> Result<(Arc<Link>, Arc<Outcome>), LinkError> {
        let (link, _) = self.link()?;
        let h = link.call(cmds);
        Ok((link, h))
    }
}

impl Conn {
    /// Sends commands whose replies nobody reads (see
    /// [`Link::send_oneway`]); `Err` when no link could take them.
    pub(crate) fn send_oneway(&self, cmds: Vec<Cmd>) -> Result<(), LinkError> {
        let (link, _) = self.link()?;
        if link.send_oneway(cmds) {
            Ok(())
        } else {
            Err(LinkError::Lost {
                detail: "the connection is closed".into(),
                sent: false,
            })
        }
    }
}

/// True when the server says it is a replica (`ROLE`); false when it is a
/// primary or will not say (a user not allowed `ROLE` is taken at its
/// word: its writes tell).
fn is_replica(l: &Link) -> bool {
    match l.call_wait(vec![Cmd::new("ROLE")]) {
        Ok(frames) => match frames.first() {
            Some(Frame::Array(parts)) => matches!(
                parts.first().and_then(crate::resp::bytes).map(|b| &b[..]),
                Some(b"slave" | b"replica")
            ),
            _ => false,
        },
        Err(_) => false,
    }
}

/// A link failure as a storage failure (`what` names the operation).
pub(crate) fn store_failure(what: &str, e: &LinkError) -> StoreFailure {
    let kind = match e {
        LinkError::Login(_) => FailureKind::Io { transient: false },
        // A caller's mistake: no retry here can help.
        LinkError::Forked => FailureKind::Invalid,
        _ => FailureKind::Io { transient: true },
    };
    StoreFailure::new(kind, format!("redis {what}"), e)
}

/// A link failure as an [`Error`].
pub(crate) fn link_error(what: &str, e: &LinkError) -> Error {
    Error::Store(store_failure(what, e))
}

/// An error reply to a command as an [`Error`]: out of memory is a full
/// store, a server still loading its data or a read-only replica are
/// transient, the rest are not.
pub(crate) fn reply_error(what: &str, text: &str) -> Error {
    Error::Store(reply_failure(what, text))
}

/// [`reply_error`] as a [`StoreFailure`].
pub(crate) fn reply_failure(what: &str, text: &str) -> StoreFailure {
    let kind = if text.starts_with("OOM") {
        FailureKind::NoSpace
    } else if text.starts_with("LOADING")
        || text.starts_with("READONLY")
        || text.starts_with("BUSY")
        || text.starts_with("TRYAGAIN")
        || text.starts_with("MASTERDOWN")
    {
        FailureKind::Io { transient: true }
    } else {
        FailureKind::Io { transient: false }
    };
    StoreFailure::new(kind, format!("redis {what}"), text)
}
