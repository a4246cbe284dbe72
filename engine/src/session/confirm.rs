//! Publisher confirms: pipelined publishing. A publish hands its message to
//! the transport and returns a [`Confirm`] before the transport's durability
//! point; the confirm resolves when that point is reached, so many publishes
//! share one sync (or, for a networked transport, one round trip).
//!
//! # Invariants
//! - A confirm resolves once (under its lock); the window share it took is
//!   released exactly then, whoever observes the outcome first (its
//!   [`Confirm`], [`crate::Channel::wait_for_confirms`], or a publisher
//!   waiting for room).
//! - A failed confirm hands its message back exactly once: to its
//!   [`Confirm`] while the application holds it, else (the confirm was
//!   dropped) through `wait_for_confirms`.
//! - When half the window awaits its confirms, the oldest is asked for (a
//!   transport that holds back syncs to group publishes starts one), so the
//!   next group is written while the other half fills.
//! - The window counts every publish awaiting its confirm. A publish that
//!   would go past it waits for the oldest outstanding confirm, or fails
//!   with [`PublishError::Full`] on a non-blocking channel; a single message
//!   larger than the byte window goes through when nothing else is in flight.
//! - Every failed publish is reported: through its [`Confirm`], or, when
//!   that was dropped unread, by the next `wait_for_confirms` (failed
//!   confirms stay tracked until one of them hands the message back).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{ConfirmsError, Error, PublishError, StoreFailure};
use crate::transport::{Accepted, Envelope, PendingConfirm};

/// Default window of a channel: publishes awaiting their confirm at once.
pub const DEFAULT_CONFIRM_WINDOW: usize = 4096;
/// Default window of a channel: body bytes awaiting their confirm at once.
pub const DEFAULT_CONFIRM_WINDOW_BYTES: usize = 64 << 20;

/// How a channel pipelines publishes (see [`crate::Connection::channel_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Publishes awaiting their confirm at once; `None` = the connection's
    /// `confirm_window`.
    pub confirm_window: Option<usize>,
    /// Body bytes awaiting their confirm at once; `None` = the connection's
    /// `confirm_window_bytes`.
    pub confirm_window_bytes: Option<usize>,
    /// A publish into a full window fails with [`PublishError::Full`] (the
    /// message handed back) instead of waiting for room.
    pub nonblocking: bool,
}

impl ChannelOptions {
    /// The connection's defaults, blocking.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the window in messages (at least 1).
    pub fn confirm_window(mut self, messages: usize) -> Self {
        self.confirm_window = Some(messages);
        self
    }

    /// Sets the window in body bytes (at least 1).
    pub fn confirm_window_bytes(mut self, bytes: usize) -> Self {
        self.confirm_window_bytes = Some(bytes);
        self
    }

    /// Makes a full window an error instead of a wait.
    pub fn nonblocking(mut self, yes: bool) -> Self {
        self.nonblocking = yes;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.confirm_window == Some(0) || self.confirm_window_bytes == Some(0) {
            return Err(Error::InvalidArgument(
                "confirm_window and confirm_window_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What is in flight on a channel; shared with each confirm so that the one
/// that resolves it releases its share.
#[derive(Debug, Default)]
struct InFlight {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl InFlight {
    fn release(&self, size: usize) {
        self.messages.fetch_sub(1, SeqCst);
        self.bytes.fetch_sub(size, SeqCst);
    }
}

struct State {
    outcome: Option<Result<(), StoreFailure>>,
    /// The message until the confirm resolves `Ok` or its failure is handed
    /// back.
    envelope: Option<Envelope>,
    /// The application holds the [`Confirm`].
    held: bool,
    /// The failure was handed back through the [`Confirm`].
    taken: bool,
}

struct Shared {
    pending: Box<dyn PendingConfirm>,
    size: usize,
    in_flight: Arc<InFlight>,
    state: Mutex<State>,
}

impl Shared {
    fn resolve(&self, r: Result<(), StoreFailure>) {
        let mut st = self.state.lock();
        if st.outcome.is_some() {
            return;
        }
        if r.is_ok() {
            st.envelope = None;
        }
        st.outcome = Some(r);
        drop(st);
        self.in_flight.release(self.size);
    }

    fn is_resolved(&self) -> bool {
        self.state.lock().outcome.is_some()
    }

    /// Confirmed, or failed with the failure handed back: nothing left to
    /// report.
    fn forgettable(&self) -> bool {
        let st = self.state.lock();
        matches!(st.outcome, Some(Ok(()))) || st.taken
    }

    /// Waits until resolved or `deadline`; true when resolved.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_resolved() {
            return true;
        }
        match self.pending.wait_confirm(deadline) {
            Some(r) => {
                self.resolve(r);
                true
            }
            None => false,
        }
    }

    /// The outcome for the [`Confirm`] (resolved): its failure, once.
    fn take(&self) -> Result<(), PublishError> {
        let mut st = self.state.lock();
        match &st.outcome {
            Some(Err(f)) if !st.taken => {
                let failure = f.clone();
                st.taken = true;
                Err(hand_back(failure, st.envelope.take()))
            }
            _ => Ok(()),
        }
    }
}

/// A failed confirm's error, its message handed back (a failed confirm
/// keeps its envelope until this takes it, once).
fn hand_back(failure: StoreFailure, envelope: Option<Envelope>) -> PublishError {
    let envelope = envelope.unwrap_or_else(|| Envelope::new(Default::default(), "", ""));
    if failure.is_refused() {
        // Certainly not stored: no "may or may not".
        return PublishError::refused(failure, envelope);
    }
    PublishError::unconfirmed(failure, envelope)
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirm")
            .field("pending", &self.pending)
            .field("resolved", &self.is_resolved())
            .finish()
    }
}

/// The confirm of one publish: resolves `Ok(())` when the message reached
/// the transport's durability point (memory:// at once; local:// at its
/// commit with `fsync=never`, at the `fdatasync` that covers it with
/// `fsync=always`, at the next timer sync with `fsync=interval`), or
/// `Err(PublishError::Unconfirmed)` with the message handed back when the
/// transport cannot tell whether it was stored.
///
/// Wait on it with [`Confirm::wait`] or [`Confirm::wait_timeout`], or
/// `.await` it (it is a `Future` on any executor). Dropping it does not
/// cancel the publish: the channel keeps tracking it, and
/// [`crate::Channel::wait_for_confirms`] reports it (with its message if it
/// failed).
#[must_use = "a publish is confirmed only when its Confirm resolves Ok (or wait_for_confirms says so)"]
pub struct Confirm {
    inner: Option<Arc<Shared>>,
    done: bool,
}

impl fmt::Debug for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Confirm(confirmed)"),
            Some(s) => s.fmt(f),
        }
    }
}

impl Confirm {
    fn confirmed() -> Self {
        Confirm {
            inner: None,
            done: false,
        }
    }

    /// True once the outcome is known, without blocking. Asking counts as
    /// wanting it: a transport that holds back its syncs to group publishes
    /// starts one now (a loop over `is_resolved` always ends).
    pub fn is_resolved(&self) -> bool {
        match &self.inner {
            None => true,
            Some(s) => s.wait(Some(Instant::now())),
        }
    }

    /// Blocks until the outcome is known.
    pub fn wait(mut self) -> Result<(), PublishError> {
        match self.inner.take() {
            None => Ok(()),
            Some(s) => {
                s.wait(None);
                let r = s.take();
                release_handle(&s);
                r
            }
        }
    }

    /// Blocks up to `timeout`: `Ok(outcome)` when it is known in time,
    /// `Err(self)` (still pending, nothing lost) when not.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<(), PublishError>, Confirm> {
        let deadline = Instant::now().checked_add(timeout);
        match &self.inner {
            None => Ok(Ok(())),
            Some(s) if s.wait(deadline) => {
                let s = self.inner.take().expect("checked above");
                let r = s.take();
                release_handle(&s);
                Ok(r)
            }
            Some(_) => Err(self),
        }
    }
}

fn release_handle(s: &Shared) {
    s.state.lock().held = false;
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            release_handle(&s);
        }
    }
}

impl Future for Confirm {
    type Output = Result<(), PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            // Polled after it completed: it stays pending (`FusedFuture`).
            return Poll::Pending;
        }
        let Some(s) = self.inner.clone() else {
            self.done = true;
            return Poll::Ready(Ok(()));
        };
        if !s.is_resolved() {
            match s.pending.poll_confirm(cx.waker()) {
                Poll::Ready(r) => s.resolve(r),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.inner = None;
        self.done = true;
        let r = s.take();
        release_handle(&s);
        Poll::Ready(r)
    }
}

impl futures_core::future::FusedFuture for Confirm {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Tracked confirms, oldest first, and the length at which the next sweep
/// forgets those that no longer need tracking.
struct Tracked {
    list: VecDeque<Arc<Shared>>,
    sweep_at: usize,
}

impl std::ops::Deref for Tracked {
    type Target = VecDeque<Arc<Shared>>;
    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl std::ops::DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.list
    }
}

/// Tracked confirms below this many are never swept.
const SWEEP_MIN: usize = 1024;

/// A channel's publishes awaiting their confirm, and its window.
pub(crate) struct Confirms {
    max_messages: usize,
    max_bytes: usize,
    nonblocking: bool,
    in_flight: Arc<InFlight>,
    /// Oldest first: every pending confirm, and failed ones until
    /// `wait_for_confirms` reports them.
    tracked: Mutex<Tracked>,
}

impl Confirms {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, nonblocking: bool) -> Self {
        Confirms {
            max_messages,
            max_bytes,
            nonblocking,
            in_flight: Arc::default(),
            tracked: Mutex::new(Tracked {
                list: VecDeque::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }

    /// Takes a window share for a message of `size` bytes without waiting;
    /// `Err((messages, bytes))` in flight when it does not fit.
    fn try_admit(&self, size: usize) -> Result<(), (usize, usize)> {
        let f = &self.in_flight;
        let m = f.messages.load(SeqCst);
        let b = f.bytes.load(SeqCst);
        if m == 0 || (m < self.max_messages && b.saturating_add(size) <= self.max_bytes) {
            f.messages.fetch_add(1, SeqCst);
            f.bytes.fetch_add(size, SeqCst);
            // Half the window awaits its confirms: ask for the oldest now,
            // so the transport's next sync (or flush) runs while the other
            // half fills.
            let half_m = (self.max_messages / 2).max(1);
            let half_b = self.max_bytes / 2;
            if m + 1 == half_m || (b < half_b && b + size >= half_b) {
                self.nudge();
            }
            Ok(())
        } else {
            Err((m, b))
        }
    }

    /// Asks the transport for the oldest unresolved confirm's outcome,
    /// without waiting.
    fn nudge(&self) {
        let oldest = self
            .tracked
            .lock()
            .iter()
            .find(|c| !c.is_resolved())
            .cloned();
        if let Some(c) = oldest {
            c.wait(Some(Instant::now()));
        }
    }

    /// [`Confirms::try_admit`] as a yes/no.
    pub(crate) fn try_admit_now(&self, size: usize) -> bool {
        self.try_admit(size).is_ok()
    }

    /// Takes a window share, waiting for the oldest confirms while it is
    /// full (or failing at once on a non-blocking channel).
    pub(crate) fn admit(&self, size: usize) -> Result<(), (usize, usize)> {
        loop {
            let full = match self.try_admit(size) {
                Ok(()) => return Ok(()),
                Err(full) => full,
            };
            if self.nonblocking {
                return Err(full);
            }
            let oldest = self
                .tracked
                .lock()
                .iter()
                .find(|c| !c.is_resolved())
                .cloned();
            match oldest {
                Some(c) => {
                    c.wait(None);
                }
                // Another thread resolved it between our looks.
                None => std::thread::yield_now(),
            }
        }
    }

    /// Gives back a share taken by [`Confirms::admit`] for a publish that
    /// did not go pending.
    pub(crate) fn unadmit(&self, size: usize) {
        self.in_flight.release(size);
    }

    /// The confirm of a publish the transport accepted (with a share taken).
    pub(crate) fn track(&self, accepted: Accepted, size: usize) -> Confirm {
        match accepted {
            Accepted::Confirmed => {
                self.in_flight.release(size);
                Confirm::confirmed()
            }
            Accepted::Pending { confirm, envelope } => {
                let s = Arc::new(Shared {
                    pending: confirm,
                    size,
                    in_flight: self.in_flight.clone(),
                    state: Mutex::new(State {
                        outcome: None,
                        envelope: Some(envelope),
                        held: true,
                        taken: false,
                    }),
                });
                let mut t = self.tracked.lock();
                // Forget those at the front that are confirmed or whose
                // failure went back through their `Confirm` (other failures
                // wait for wait_for_confirms).
                while t.front().is_some_and(|c| c.forgettable()) {
                    t.pop_front();
                }
                // A failure nobody read yet at the front keeps what follows
                // from being forgotten there: sweep the whole list once it
                // doubled since the last sweep (amortized O(1) per publish).
                if t.list.len() >= t.sweep_at {
                    t.list.retain(|c| !c.forgettable());
                    t.sweep_at = 2 * t.list.len() + SWEEP_MIN;
                }
                t.push_back(s.clone());
                Confirm {
                    inner: Some(s),
                    done: false,
                }
            }
        }
    }

    /// Publishes awaiting their confirm now.
    pub(crate) fn outstanding(&self) -> usize {
        self.in_flight.messages.load(SeqCst)
    }

    /// Waits until every tracked publish resolved (see
    /// [`crate::Channel::wait_for_confirms`]).
    pub(crate) fn wait_all(&self, timeout: Duration) -> Result<(), ConfirmsError> {
        let deadline = Instant::now().checked_add(timeout);
        let all: Vec<Arc<Shared>> = self.tracked.lock().iter().cloned().collect();
        let mut outstanding = 0;
        for c in &all {
            if !c.wait(deadline) {
                outstanding += 1;
            }
        }
        if outstanding > 0 {
            return Err(ConfirmsError::Timeout { outstanding });
        }
        // Every one of `all` resolved. Forget the confirmed ones and the
        // failures already handed back through their `Confirm`; report the
        // failures of dropped confirms (with their messages, then forget
        // them) and count those a held `Confirm` will hand back (kept: if
        // that confirm is dropped unread, a later call hands it back).
        let mut failed = Vec::new();
        let mut reported_to_confirms = 0;
        let mut keep = Vec::new();
        for c in &all {
            let mut st = c.state.lock();
            if let Some(Err(f)) = &st.outcome {
                if st.taken {
                    continue;
                }
                if st.held {
                    reported_to_confirms += 1;
                    keep.push(c.clone());
                } else {
                    let failure = f.clone();
                    st.taken = true;
                    failed.push(hand_back(failure, st.envelope.take()));
                }
            }
        }
        self.tracked.lock().retain(|c| {
            !all.iter().any(|a| Arc::ptr_eq(a, c)) || keep.iter().any(|k| Arc::ptr_eq(k, c))
        });
        if failed.is_empty() && reported_to_confirms == 0 {
            Ok(())
        } else {
            Err(ConfirmsError::Failed {
                failed,
                reported_to_confirms,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;
    use crate::model::message::Message;
    use std::task::Waker;

    /// A confirm whose outcome is known from the start.
    #[derive(Debug)]
    struct Known(Result<(), StoreFailure>);

    impl PendingConfirm for Known {
        fn poll_confirm(&self, _: &Waker) -> Poll<Result<(), StoreFailure>> {
            Poll::Ready(self.0.clone())
        }
        fn wait_confirm(&self, _: Option<Instant>) -> Option<Result<(), StoreFailure>> {
            Some(self.0.clone())
        }
    }

    fn publish(c: &Confirms, outcome: Result<(), StoreFailure>) -> Confirm {
        c.admit(1).unwrap();
        c.track(
            Accepted::Pending {
                confirm: Box::new(Known(outcome)),
                envelope: Envelope::new(Message::new("m"), "", "q"),
            },
            1,
        )
    }

    #[test]
    fn tracking_stays_bounded_behind_a_failure_nobody_read() {
        let c = Confirms::new(8, 1 << 20, false);
        let failed = publish(
            &c,
            Err(StoreFailure::new(
                FailureKind::Io { transient: false },
                "sync",
                "EIO",
            )),
        );
        assert!(failed.is_resolved());
        drop(failed);
        for _ in 0..50_000 {
            let ok = publish(&c, Ok(()));
            assert!(ok.is_resolved());
            drop(ok);
        }
        let tracked = c.tracked.lock().len();
        assert!(tracked < 3 * SWEEP_MIN, "{tracked} confirms tracked");
        // The failure is still handed back, once.
        match c.wait_all(Duration::ZERO) {
            Err(ConfirmsError::Failed {
                failed,
                reported_to_confirms: 0,
            }) => assert_eq!(failed.len(), 1),
            other => panic!("{other:?}"),
        }
        c.wait_all(Duration::ZERO).unwrap();
        assert_eq!(c.outstanding(), 0);
    }
}
