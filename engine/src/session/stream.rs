//! Async consumption: a `futures_core::Stream` of deliveries that works on any
//! executor (it only uses the task's `Waker`).
//!
//! # Invariants
//! - A stream registers its waker on every queue, its window and the close
//!   notifier before it re-checks, so a poll that returned `Pending` is always
//!   woken by the next message, room in the window, or a close.
//! - A storage failure that left nothing to deliver is an item (`Err`), and
//!   the stream goes on: the next poll tries the queues again.
//! - A stream alone on its queue takes a run per store call and hands it
//!   out before it asks the queues again; the run is its consumer's
//!   (`consumer.rs`), which puts it back at cancel. Where the store can
//!   tell a claim taken back, the run is leased when taken, and a message
//!   of it another process took back meanwhile is skipped: the next one is
//!   tried in the same poll (a poll that stopped there had nothing to wake
//!   it).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::Error;
use crate::session::channel::{ChannelShared, Pending};
use crate::session::consumer::ConsumerShared;
use crate::session::delivery::Delivery;

/// Deliveries of one consumer, as a `Stream`. Dropping it cancels the consumer.
pub struct DeliveryStream {
    consumer: Arc<ConsumerShared>,
    channel: Arc<ChannelShared>,
    regs: Vec<(usize, u64)>,
}

impl fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryStream")
            .field("tag", &self.consumer.tag)
            .finish()
    }
}

const WINDOW: usize = usize::MAX;
const CLOSE: usize = usize::MAX - 1;

impl DeliveryStream {
    pub(crate) fn new(consumer: Arc<ConsumerShared>, channel: Arc<ChannelShared>) -> Self {
        DeliveryStream {
            consumer,
            channel,
            regs: Vec::new(),
        }
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.consumer.tag
    }

    fn unregister(&mut self) {
        for (what, id) in self.regs.drain(..) {
            match what {
                WINDOW => self.consumer.window.notify.unregister(id),
                CLOSE => self.channel.conn.close_notify.unregister(id),
                q => self.consumer.queues[q].unregister(id),
            }
        }
    }

    fn ended(&self) -> bool {
        self.consumer
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            || !self.channel.is_open()
            || self.consumer.orphaned()
    }

    /// The next delivery, handed to the application (a `no_ack` one counts
    /// as acked from here). `None` when nothing is ready, or when the channel
    /// closed as a message was taken (it went back to its queue).
    fn try_take(&self) -> Result<Option<Delivery>, Error> {
        loop {
            let Some((env, queue)) = self.consumer.take_for_stream()? else {
                return Ok(None);
            };
            let Some(d) =
                self.channel
                    .deliver_one(Pending::new(Some(self.consumer.clone()), env, queue))
            else {
                if self.channel.is_open() {
                    // Another process took it back (its lease ran out
                    // while it waited in the run): the next one. Nothing
                    // would wake a poll that stopped here.
                    continue;
                }
                return Ok(None);
            };
            if d.no_ack {
                self.channel.ack_no_ack(&d.slot);
            }
            return Ok(Some(d));
        }
    }
}

impl futures_core::Stream for DeliveryStream {
    type Item = Result<Delivery, Error>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery, Error>>> {
        self.unregister();
        if self.ended() {
            return Poll::Ready(None);
        }
        if let Some(r) = self.try_take().transpose() {
            return Poll::Ready(Some(r));
        }
        let w = cx.waker();
        let mut regs = Vec::with_capacity(self.consumer.queues.len() + 2);
        for (i, q) in self.consumer.queues.iter().enumerate() {
            regs.push((i, q.register(w)));
        }
        regs.push((WINDOW, self.consumer.window.notify.register(w)));
        regs.push((CLOSE, self.channel.conn.close_notify.register(w)));
        self.regs = regs;
        if let Some(r) = self.try_take().transpose() {
            self.unregister();
            return Poll::Ready(Some(r));
        }
        if self.ended() {
            self.unregister();
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl Drop for DeliveryStream {
    fn drop(&mut self) {
        self.unregister();
        let _ = self.channel.cancel_consumer(&self.consumer);
    }
}
