//! Waking consumers when a message arrives, without popping it: Redis
//! client-side caching in broadcast mode. One link holds
//! `CLIENT TRACKING on BCAST PREFIX <queue>...` redirected to a second link
//! subscribed to `__redis__:invalidate`; every write to a list of a
//! watched queue (an `LPUSH` by kombu, Celery or dashi, a restore) arrives
//! there as the key's name, and the queue's waiting consumers look at it.
//! Nothing is taken from the list by waiting, so a kombu consumer blocked in
//! `BRPOP` on the same lists is served exactly as before, and a crash while
//! waiting loses nothing. A timer (`poll_interval`) wakes waiting consumers
//! too, for a notification lost with a connection or a server without
//! tracking (Redis < 6).
//!
//! # Invariants
//! - After the tracking set changes or either link is new, every waiting
//!   consumer is woken once: a message pushed while tracking was being set
//!   up is not left waiting for the timer.
//! - Overlapping prefixes (Redis refuses them) are reduced to the shorter
//!   one; a wake-up for a queue that merely shares a prefix costs one empty
//!   pop, never a missed message.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Weak;

use parking_lot::Mutex;

use crate::conn::Conn;
use crate::link::PushHandler;
use crate::resp::{self, Cmd, Frame};
use crate::transport::Inner;

/// The two links and what they were last set up with.
#[derive(Debug)]
pub(crate) struct Watch {
    sub: Conn,
    track: Conn,
    state: Mutex<Setup>,
    /// Logged once: tracking is not available.
    warned: AtomicBool,
}

#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct Setup {
    /// The subscribed link's client id (the redirect target).
    sub_id: i64,
    sub_generation: u64,
    track_generation: u64,
    prefixes: BTreeSet<String>,
    /// kombu fanout channels subscribed with `PSUBSCRIBE`.
    patterns: BTreeSet<String>,
}

/// The push handler of the subscribed link: wakes the queues whose lists
/// were written.
pub(crate) fn handler(inner: Weak<Inner>) -> PushHandler {
    Box::new(move |frame: Frame| {
        let Some(inner) = inner.upgrade() else { return };
        let Frame::Array(parts) = frame else { return };
        match parts.first().and_then(resp::bytes).map(|b| &b[..]) {
            // ["message", "__redis__:invalidate", [key, ...]]
            Some(b"message") => {
                let Some(Frame::Array(keys)) = parts.get(2) else {
                    return;
                };
                for k in keys {
                    if let Some(k) = resp::bytes(k) {
                        inner.key_written(k);
                    }
                }
            }
            // ["pmessage", pattern, channel, envelope]: kombu's fanout.
            Some(b"pmessage") => {
                if let (Some(pattern), Some(data)) = (
                    parts.get(1).and_then(resp::bytes),
                    parts.get(3).and_then(resp::bytes),
                ) {
                    inner.fanout_received(pattern, data.clone());
                }
            }
            _ => {}
        }
    })
}

impl Watch {
    pub(crate) fn new(sub: Conn, track: Conn) -> Watch {
        Watch {
            sub,
            track,
            state: Mutex::new(Setup::default()),
            warned: AtomicBool::new(false),
        }
    }

    /// The link that holds the tracking state (health-checked with the
    /// others; the subscribed link is not: its replies interleave with
    /// notifications).
    pub(crate) fn track_conn(&self) -> &Conn {
        &self.track
    }

    /// Sets tracking up again when a link is new or the watched queues
    /// changed; true when it did (the caller then wakes every waiter).
    pub(crate) fn ensure(&self, prefixes: BTreeSet<String>, patterns: BTreeSet<String>) -> bool {
        let prefixes = reduce(prefixes);
        let mut st = self.state.lock();
        let Ok((sub, sub_gen)) = self.sub.link() else {
            return false;
        };
        let Ok((_, track_gen)) = self.track.link() else {
            return false;
        };
        if st.sub_generation == sub_gen
            && st.track_generation == track_gen
            && st.prefixes == prefixes
            && st.patterns == patterns
        {
            return false;
        }
        if st.sub_generation != sub_gen {
            // A new subscribed link: learn its id, then subscribe.
            let reply = sub.call_wait(vec![
                Cmd::new("CLIENT").arg("ID"),
                Cmd::new("SUBSCRIBE").arg("__redis__:invalidate"),
            ]);
            match reply.as_deref() {
                Ok([id, Frame::Array(_)]) if resp::int(id).is_some() => {
                    st.sub_id = resp::int(id).unwrap_or(0);
                    st.sub_generation = sub_gen;
                    // Everything the old link held is gone with it.
                    st.track_generation = 0;
                    st.prefixes.clear();
                    st.patterns.clear();
                }
                other => {
                    // What Redis said (a user not allowed `SUBSCRIBE`), or
                    // why the link failed: one line, not the frames.
                    let why = match &other {
                        Ok(frames) => frames
                            .iter()
                            .find_map(|f| match f {
                                Frame::Error(e) => Some(e.to_string()),
                                _ => None,
                            })
                            .unwrap_or_else(|| "an unexpected reply".to_owned()),
                        Err(e) => e.to_string(),
                    };
                    self.warn(&format!("subscribing failed: {why}"));
                    sub.kill();
                    return false;
                }
            }
        }
        let mut changed = false;
        if st.patterns != patterns {
            let gone: Vec<&String> = st.patterns.difference(&patterns).collect();
            let new: Vec<&String> = patterns.difference(&st.patterns).collect();
            match sub.call_wait(pattern_cmds(&gone, &new)) {
                Ok(_) => {
                    st.patterns = patterns;
                    changed = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis fanout subscription failed");
                    return false;
                }
            }
        }
        if st.track_generation == track_gen && st.prefixes == prefixes {
            return changed;
        }
        let mut on = Cmd::new("CLIENT")
            .arg("TRACKING")
            .arg("on")
            .arg("REDIRECT")
            .int(st.sub_id)
            .arg("BCAST");
        for p in &prefixes {
            on.push("PREFIX");
            on.push(p.clone());
        }
        let cmds = vec![Cmd::new("CLIENT").arg("TRACKING").arg("off"), on];
        match self.track.call(cmds) {
            Ok(r) if r.iter().all(|f| !matches!(f, Frame::Error(_))) => {
                st.track_generation = track_gen;
                st.prefixes = prefixes;
                true
            }
            Ok(r) => {
                self.warn(&format!("CLIENT TRACKING refused: {r:?}"));
                // Remember the attempt, so the timer does not resend it.
                st.track_generation = track_gen;
                st.prefixes = prefixes;
                changed
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis tracking setup failed");
                changed
            }
        }
    }

    fn warn(&self, what: &str) {
        if !self.warned.swap(true, SeqCst) {
            tracing::warn!(
                detail = what,
                "redis: key-space notifications unavailable; consumers poll every poll_interval"
            );
        }
    }
}

/// One command per pattern (each answers with one reply, so the replies
/// match the batch one for one).
fn pattern_cmds(gone: &[&String], new: &[&String]) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    for p in gone {
        cmds.push(Cmd::new("PUNSUBSCRIBE").arg((*p).clone()));
    }
    for p in new {
        cmds.push(Cmd::new("PSUBSCRIBE").arg((*p).clone()));
    }
    cmds
}

/// Drops every prefix that another prefix in the set already covers.
fn reduce(prefixes: BTreeSet<String>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for p in prefixes {
        // In sorted order a covering prefix comes first.
        if !out.iter().any(|q| p.starts_with(q.as_str())) {
            out.insert(p);
        }
    }
    out
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.sub.reset();
        self.track.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_prefixes_reduce_to_the_shorter() {
        let set: BTreeSet<String> = ["q", "q1", "a:b", "a", "zz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got: Vec<String> = reduce(set).into_iter().collect();
        assert_eq!(got, ["a", "q", "zz"]);
    }
}
