//! Holding requests: long polls, early polls under the `hold` policy, and
//! begins with `Prefer: wait`. One place decides how a held request ends:
//! the awaited event, its time limit, or a graceful shutdown.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

/// How a hold ended.
pub(crate) enum Held<T> {
    /// The awaited event happened.
    Done(T),
    /// The time limit passed first.
    TimedOut,
    /// A graceful shutdown began.
    ShuttingDown,
}

/// The server's lifecycle as far as held requests are concerned.
#[derive(Default)]
pub(crate) struct Lifecycle {
    shutting_down: AtomicBool,
    shutdown: Notify,
    held: AtomicUsize,
}

/// Counts one held request while it lives (also when the client goes away
/// and the request's future is dropped).
struct HeldGuard<'a>(&'a AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::held(-1.0);
    }
}

impl Lifecycle {
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        tracing::info!("async-op: shutting down; held requests are released");
    }

    /// Holds until `event` completes, `limit` passes, or shutdown begins.
    /// No timer loop: one timer and two wake-ups, whichever comes first.
    pub(crate) async fn hold<F: Future>(&self, event: F, limit: Duration) -> Held<F::Output> {
        let shutdown = self.shutdown.notified();
        tokio::pin!(shutdown);
        // Register for the shutdown wake-up before checking the flag, so a
        // shutdown that begins in between is not missed.
        shutdown.as_mut().enable();
        if self.is_shutting_down() {
            return Held::ShuttingDown;
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        crate::metrics::held(1.0);
        let _guard = HeldGuard(&self.held);
        tokio::select! {
            biased;
            output = event => Held::Done(output),
            () = &mut shutdown => Held::ShuttingDown,
            () = tokio::time::sleep(limit) => Held::TimedOut,
        }
    }
}
