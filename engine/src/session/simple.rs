//! Kombu's `SimpleQueue`: `put` and `get` on one named queue.

use std::time::Duration;

use crate::error::{Error, PublishError};
use crate::model::message::Message;
use crate::model::queue::Queue;
use crate::session::channel::Channel;
use crate::session::connection::Connection;
use crate::session::delivery::Delivery;

/// A named queue with `put` / `get`, on its own channel. Messages from `get`
/// must be acked; unacked ones come back when the `SimpleQueue` is dropped.
#[derive(Debug)]
pub struct SimpleQueue {
    channel: Channel,
    name: String,
}

impl SimpleQueue {
    /// Declares `name` (durable, default limits) and opens it.
    pub fn new(conn: &Connection, name: &str) -> Result<SimpleQueue, Error> {
        Self::with_queue(conn, Queue::new(name))
    }

    /// Declares `queue` and opens it.
    pub fn with_queue(conn: &Connection, queue: Queue) -> Result<SimpleQueue, Error> {
        let channel = conn.channel()?;
        channel.queue_declare(&queue)?;
        Ok(SimpleQueue {
            channel,
            name: queue.name,
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a message.
    pub fn put(&self, message: impl Into<Message>) -> Result<(), PublishError> {
        self.channel
            .basic_publish(message.into(), "", &self.name, true)
    }

    /// Takes the next message, waiting up to `timeout`; `Err(Timeout)` when
    /// the queue stayed empty.
    pub fn get(&self, timeout: Duration) -> Result<Delivery, Error> {
        self.channel.get(&self.name, timeout)?.ok_or(Error::Timeout)
    }

    /// Takes the next message without waiting; `Err(Timeout)` when empty.
    pub fn get_nowait(&self) -> Result<Delivery, Error> {
        self.get(Duration::ZERO)
    }

    /// Ready messages in the queue; [`Error::UnknownQueue`] when it is gone,
    /// the transport's error when its figures cannot be read.
    pub fn qsize(&self) -> Result<u64, Error> {
        self.channel
            .shared
            .conn
            .transport
            .queue_stats(&self.name)?
            .map(|s| s.messages)
            .ok_or_else(|| Error::UnknownQueue(self.name.clone()))
    }

    /// Drops every ready message; returns how many.
    pub fn clear(&self) -> Result<u64, Error> {
        self.channel.queue_purge(&self.name)
    }

    /// Closes its channel, restoring unacked messages.
    pub fn close(self) {
        self.channel.close()
    }
}
