//! Publishing from the shard thread: a [`Source`] the application registers on a shard, and
//! the [`ShardCtx`] through which it publishes without crossing threads.
//!
//! A message published through a `ShardCtx` to a peer the shard owns is encoded straight into
//! the peer's session, ready for the next send: no queue slot, no atomic hand-off, no wake-up.
//! It gets its sequence number from the same counter as `Peer::publish` (the peer queue's
//! position), so messages from sources and from other threads interleave exactly once and in
//! order. When the fast path does not apply (another thread's messages wait in the queue, the
//! peer belongs to another shard, the peer has an outbox), `ShardCtx::publish` falls back to
//! the queue, with the same result.

use std::fmt;
use std::time::Instant;

use crate::error::Error;
use crate::proto::id::MessageId;
use crate::route::ShardId;
use crate::route::peer::Peer;

/// Produces messages on a shard thread, called once per loop turn (see [`SourcePoll`]).
///
/// Register it with [`Engine::add_source`](crate::Engine::add_source) on the shard that owns the
/// peer it feeds. Like a [`Handler`](crate::Handler), it runs on the shard thread and must not
/// block; unlike one, it may keep state without locks (`&mut self`).
pub trait Source: Send + 'static {
    /// Publishes what is ready through `ctx`, and says when to be called again.
    fn poll(&mut self, ctx: &mut ShardCtx<'_>) -> SourcePoll;
}

impl fmt::Debug for dyn Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Source")
    }
}

/// When a [`Source`] wants to be polled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// At the next loop turn: the shard does not sleep while a source is ready.
    Ready,
    /// At this instant, or earlier if the shard wakes for something else.
    At(Instant),
    /// Only when the shard wakes for something else (a completion, a message, a command).
    Idle,
    /// Never: the source is dropped.
    Done,
}

/// The shard a [`Source`] runs on, handed to it for the duration of one poll.
pub struct ShardCtx<'a> {
    inner: &'a mut dyn LocalPublish,
}

impl<'a> ShardCtx<'a> {
    pub(crate) fn new(inner: &'a mut dyn LocalPublish) -> ShardCtx<'a> {
        ShardCtx { inner }
    }

    /// Publishes a copy of `payload` to `peer`: into its session if this shard owns it and
    /// nothing published from other threads is waiting, otherwise through its queue as
    /// [`Peer::publish`] does. The message is sent at the end of this loop turn.
    ///
    /// # Errors
    ///
    /// [`Error::Backpressure`] (carrying an empty payload: `payload` is still the caller's)
    /// when the peer holds as many
    /// unacknowledged messages or bytes as its flow limits allow, [`Error::PayloadTooLarge`],
    /// [`Error::ShuttingDown`], and the errors of [`Peer::publish`] on the fallback path.
    pub fn publish(&mut self, peer: &Peer, payload: &[u8]) -> Result<MessageId, Error> {
        self.inner.publish(peer, payload)
    }

    /// Publishes copies of `payloads` to `peer`, in order, as consecutive messages: like
    /// calling [`ShardCtx::publish`] for each, but on the fast path the positions are taken with
    /// one atomic operation for the whole batch instead of one per message. Publishes the
    /// longest prefix the peer's flow limits admit and says how long it was.
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] if any payload is (nothing is published), and the errors of
    /// [`ShardCtx::publish`] when not even the first message is taken, [`Error::Backpressure`]
    /// among them.
    pub fn publish_batch(&mut self, peer: &Peer, payloads: &[&[u8]]) -> Result<Published, Error> {
        self.inner.publish_batch(peer, payloads)
    }

    /// The time the shard read at the start of this loop turn.
    pub fn now(&self) -> Instant {
        self.inner.now()
    }

    /// The shard this runs on.
    pub fn shard(&self) -> ShardId {
        self.inner.shard()
    }
}

impl fmt::Debug for ShardCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardCtx")
            .field("shard", &self.inner.shard())
            .finish()
    }
}

/// What [`ShardCtx::publish_batch`] published: `count` messages from `first` on, with
/// consecutive sequence numbers. `count` may be less than the batch (the flow limits took only
/// a prefix) and is 0 only for an empty batch, `first` then being the next message's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub first: MessageId,
    pub count: usize,
}

/// What the shard provides behind a [`ShardCtx`].
pub(crate) trait LocalPublish {
    fn publish(&mut self, peer: &Peer, payload: &[u8]) -> Result<MessageId, Error>;
    fn publish_batch(&mut self, peer: &Peer, payloads: &[&[u8]]) -> Result<Published, Error>;
    fn now(&self) -> Instant;
    fn shard(&self) -> ShardId;
}
