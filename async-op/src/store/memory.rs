//! The in-memory store: one process, no I/O.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Arc, Condvar, Mutex, OnceLock, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dashmap::DashMap;
use tokio::sync::Notify;

use super::{
    ClaimOutcome, IdempotencyClaim, NewOperation, OperationId, OperationStatus, OperationStore,
    Outcome, StoreError, StoreFuture,
};

/// The default store: operations in a sharded map in this process.
///
/// - Reads on the poll path take one shard's read lock and clone an `Arc`;
///   they never wait for a running handler.
/// - Waiters (long polls) are woken by the operation's own [`Notify`] when it
///   ends: no timers, no polling loops.
/// - Ended operations are evicted when their retention ends, by a sweeper
///   thread that sleeps until the next expiry (and exits with the store).
///   Running operations are kept while they run.
///
/// Cloning gives another handle to the same store.
///
/// ```
/// use async_op::{AsyncOps, MemoryStore};
///
/// let store = MemoryStore::new();
/// let ops = AsyncOps::builder()
///     .secret("a secret of at least thirty-two bytes!")
///     .store(store.clone())
///     .build()
///     .unwrap();
/// # drop(ops);
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    operations: DashMap<OperationId, Arc<Cell>>,
    idempotency_keys: DashMap<String, KeyBinding>,
    expiries: Arc<Expiries>,
}

/// An `Idempotency-Key` bound to an operation until `expires_at`.
#[derive(Clone, Copy)]
struct KeyBinding {
    id: OperationId,
    fingerprint: [u8; 32],
    expires_at: u64,
}

/// One operation: its outcome once it has one, and the waiters to wake.
struct Cell {
    running: NewOperation,
    outcome: OnceLock<OperationStatus>,
    ended: Notify,
}

impl Cell {
    fn status(&self) -> OperationStatus {
        match self.outcome.get() {
            Some(status) => status.clone(),
            None => OperationStatus::Running(self.running),
        }
    }
}

/// Ended operations ordered by the end of their retention, shared with the
/// sweeper thread.
#[derive(Default)]
struct Expiries {
    queue: Mutex<BinaryHeap<Reverse<(u64, OperationId)>>>,
    changed: Condvar,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the sweeper so that it sees the store is gone and exits.
        self.expiries.changed.notify_all();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store, with its sweeper thread started.
    pub fn new() -> Self {
        let expiries = Arc::new(Expiries::default());
        let inner = Arc::new(Inner {
            operations: DashMap::new(),
            idempotency_keys: DashMap::new(),
            expiries: Arc::clone(&expiries),
        });
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("async-op-sweeper".into())
            .spawn(move || sweep(&weak, &expiries));
        if let Err(error) = spawned {
            // Without the thread, results are still evicted on each finish
            // (see `finish`); memory stays bounded, only less promptly.
            tracing::warn!(%error, "async-op: cannot start the memory store's sweeper thread");
        }
        Self { inner }
    }

    /// The number of operations kept (running or ended, not yet evicted).
    pub fn len(&self) -> usize {
        self.inner.operations.len()
    }

    /// Whether the store keeps no operation.
    pub fn is_empty(&self) -> bool {
        self.inner.operations.is_empty()
    }

    /// Evicts every ended operation whose retention has ended; returns the
    /// time of the next expiry, if any.
    fn evict_expired(inner: &Inner, now: u64) -> Option<u64> {
        let mut queue = inner
            .expiries
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(Reverse((at, id))) = queue.peek().copied() {
            if at > now {
                return Some(at);
            }
            queue.pop();
            inner.operations.remove(&id);
        }
        inner
            .idempotency_keys
            .retain(|_, binding| binding.expires_at > now);
        None
    }
}

/// The sweeper thread: sleeps until the next expiry or until woken by a new
/// earlier one, evicts, and exits once the store is dropped.
fn sweep(store: &Weak<Inner>, expiries: &Expiries) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        let next = MemoryStore::evict_expired(&inner, unix_now());
        drop(inner);
        let wait = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_secs(at.saturating_sub(unix_now()).max(1))
        });
        let queue = expiries
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if store.strong_count() == 0 {
            return;
        }
        // Woken early by `finish` when a new expiry comes first, or by drop.
        let _ = expiries.changed.wait_timeout(queue, wait);
    }
}

impl OperationStore for MemoryStore {
    fn create(&self, id: OperationId, operation: NewOperation) -> StoreFuture<'_, ()> {
        let cell = Arc::new(Cell {
            running: operation,
            outcome: OnceLock::new(),
            ended: Notify::new(),
        });
        let result = match self.inner.operations.entry(id) {
            dashmap::Entry::Occupied(_) => Err(StoreError::Duplicate(id)),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(cell);
                Ok(())
            }
        };
        StoreFuture::ready(result)
    }

    fn finish(&self, id: OperationId, outcome: Outcome, retention: u32) -> StoreFuture<'_, ()> {
        let cell = self.inner.operations.get(&id).map(|cell| Arc::clone(&cell));
        if let Some(cell) = cell {
            if cell.outcome.set(outcome.into()).is_ok() {
                cell.ended.notify_waiters();
                let now = unix_now();
                let at = now + u64::from(retention);
                let mut queue = self
                    .inner
                    .expiries
                    .queue
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let earliest = queue.peek().is_none_or(|Reverse((next, _))| at < *next);
                queue.push(Reverse((at, id)));
                drop(queue);
                if earliest {
                    self.inner.expiries.changed.notify_all();
                }
            }
        }
        StoreFuture::ready(Ok(()))
    }

    fn status(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>> {
        StoreFuture::ready(Ok(self.inner.operations.get(&id).map(|cell| cell.status())))
    }

    fn wait(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>> {
        let Some(cell) = self.inner.operations.get(&id).map(|cell| Arc::clone(&cell)) else {
            return StoreFuture::ready(Ok(None));
        };
        if let Some(status) = cell.outcome.get() {
            return StoreFuture::ready(Ok(Some(status.clone())));
        }
        StoreFuture::boxed(async move {
            let ended = cell.ended.notified();
            tokio::pin!(ended);
            // Register before checking, so a finish in between is not missed.
            ended.as_mut().enable();
            if cell.outcome.get().is_none() {
                ended.await;
            }
            Ok(Some(cell.status()))
        })
    }

    fn claim_idempotency_key(&self, claim: &IdempotencyClaim) -> StoreFuture<'_, ClaimOutcome> {
        StoreFuture::ready(Ok(self.claim(claim)))
    }
}

impl MemoryStore {
    fn claim(&self, claim: &IdempotencyClaim) -> ClaimOutcome {
        let now = unix_now();
        let binding = KeyBinding {
            id: claim.id,
            fingerprint: claim.fingerprint,
            expires_at: now + u64::from(claim.ttl),
        };
        match self.inner.idempotency_keys.entry(claim.key.clone()) {
            dashmap::Entry::Occupied(mut entry) if entry.get().expires_at <= now => {
                entry.insert(binding);
                ClaimOutcome::Claimed
            }
            dashmap::Entry::Occupied(entry) => ClaimOutcome::Existing {
                id: entry.get().id,
                same_request: entry.get().fingerprint == claim.fingerprint,
            },
            dashmap::Entry::Vacant(entry) => {
                entry.insert(binding);
                ClaimOutcome::Claimed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: NewOperation = NewOperation {
        retry_after: 1,
        retention: 60,
        long_poll: 0,
        hold_early: false,
    };

    #[tokio::test]
    async fn wait_is_woken_by_finish() {
        let store = MemoryStore::new();
        let id = OperationId::random();
        store.create(id, RUNNING).await.unwrap();
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait(id).await }
        });
        tokio::task::yield_now().await;
        store.finish(id, Outcome::Cancelled, 60).await.unwrap();
        let status = waiter.await.unwrap().unwrap();
        assert!(matches!(status, Some(OperationStatus::Cancelled)));
    }

    #[tokio::test]
    async fn first_outcome_stands() {
        let store = MemoryStore::new();
        let id = OperationId::random();
        store.create(id, RUNNING).await.unwrap();
        store.finish(id, Outcome::Cancelled, 60).await.unwrap();
        store
            .finish(id, Outcome::Failed(super::super::FailureKind::Panicked), 60)
            .await
            .unwrap();
        assert!(matches!(
            store.status(id).await.unwrap(),
            Some(OperationStatus::Cancelled)
        ));
    }

    #[tokio::test]
    async fn ended_operations_are_evicted_at_retention_end() {
        let store = MemoryStore::new();
        let id = OperationId::random();
        store.create(id, RUNNING).await.unwrap();
        store.finish(id, Outcome::Cancelled, 0).await.unwrap();
        // Retention 0 ends now; eviction is what the sweeper does, called
        // directly here so the test does not depend on its timing.
        MemoryStore::evict_expired(&store.inner, unix_now());
        assert!(store.status(id).await.unwrap().is_none());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn duplicate_ids_are_refused() {
        let store = MemoryStore::new();
        let id = OperationId::random();
        store.create(id, RUNNING).await.unwrap();
        assert!(matches!(
            store.create(id, RUNNING).await,
            Err(StoreError::Duplicate(_))
        ));
    }
}
