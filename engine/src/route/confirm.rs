//! The future returned by `publish_confirmed`: a one-shot slot completed by the shard.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::MessageId;
use crate::error::Error;

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const FAILED: u8 = 2;
const SYNC_FAILED: u8 = 3;
const TOO_LARGE: u8 = 4;

/// Completion slot shared between a [`Confirm`] future and the shard holding the message.
#[derive(Debug)]
pub(crate) struct ConfirmSlot {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
    /// With `TOO_LARGE`: the payload's length and the peer's limit.
    len: AtomicUsize,
    len_max: AtomicUsize,
}

impl ConfirmSlot {
    pub(crate) fn new() -> ConfirmSlot {
        ConfirmSlot {
            state: AtomicU8::new(PENDING),
            waker: Mutex::new(None),
            len: AtomicUsize::new(0),
            len_max: AtomicUsize::new(0),
        }
    }

    /// The peer acknowledged the message.
    pub(crate) fn complete(&self) {
        self.finish(ACKED);
    }

    /// The engine shut down before the peer acknowledged the message.
    pub(crate) fn fail(&self) {
        self.finish(FAILED);
    }

    /// An outbox sync failed before this message's record was known to be on disk.
    pub(crate) fn fail_sync(&self) {
        self.finish(SYNC_FAILED);
    }

    /// The message is larger than the peer accepts: it will never be delivered.
    pub(crate) fn fail_too_large(&self, len: usize, len_max: usize) {
        self.len.store(len, Ordering::Relaxed);
        self.len_max.store(len_max, Ordering::Relaxed);
        self.finish(TOO_LARGE);
    }

    fn finish(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves when the peer has acknowledged a message published with
/// [`Engine::publish_confirmed`](crate::Engine::publish_confirmed).
///
/// Works with any executor: it only stores the task's waker, and the shard wakes it.
///
/// # Cancel safety
///
/// Dropping the future does not withdraw the message: it was accepted when the future was
/// created and is still delivered. Only the notification is lost.
#[derive(Debug)]
#[must_use = "a Confirm does nothing unless awaited; the message is sent either way"]
pub struct Confirm {
    id: Option<MessageId>,
    state: Result<Arc<ConfirmSlot>, Option<Error>>,
}

impl Confirm {
    pub(crate) fn pending(id: MessageId, slot: Arc<ConfirmSlot>) -> Confirm {
        Confirm {
            id: Some(id),
            state: Ok(slot),
        }
    }

    pub(crate) fn failed(err: Error) -> Confirm {
        Confirm {
            id: None,
            state: Err(Some(err)),
        }
    }

    /// The id of the message, unless `publish` refused it.
    pub fn id(&self) -> Option<MessageId> {
        self.id
    }

    /// Blocks the calling thread until the peer acknowledges the message, or `timeout` passes;
    /// for code without an executor. Async code awaits the `Confirm` under its executor's
    /// timeout instead.
    ///
    /// # Errors
    ///
    /// What awaiting it would give, or [`Error::Timeout`] (the message is not withdrawn: it is
    /// still delivered; only the wait ended).
    pub fn wait(mut self, timeout: Duration) -> Result<MessageId, Error> {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let deadline = Instant::now() + timeout;
        loop {
            if let Poll::Ready(result) = Pin::new(&mut self).poll(&mut cx) {
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout { waited: timeout });
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

impl Future for Confirm {
    type Output = Result<MessageId, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let slot = match &mut this.state {
            Err(err) => return Poll::Ready(Err(err.take().unwrap_or(Error::ShuttingDown))),
            Ok(slot) => slot,
        };
        let id = this.id.expect("a pending confirm has an id");
        let check = |slot: &ConfirmSlot| match slot.state.load(Ordering::Acquire) {
            ACKED => Some(Ok(id)),
            FAILED => Some(Err(Error::ShuttingDown)),
            SYNC_FAILED => Some(Err(Error::OutboxFailed)),
            // Acquire above pairs with `finish`'s Release: the lengths stored before it are seen.
            TOO_LARGE => Some(Err(Error::PayloadTooLarge {
                len: slot.len.load(Ordering::Relaxed),
                len_max: slot.len_max.load(Ordering::Relaxed),
            })),
            _ => None,
        };
        if let Some(result) = check(slot) {
            return Poll::Ready(result);
        }
        *slot.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // Re-check: the shard may have finished between the first check and the registration.
        match check(slot) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}
