//! The Redis store: many instances of an app sharing their operations.
//!
//! Enabled by the crate feature `redis`. Every instance connects its own
//! [`RedisStore`] to the same Redis (and uses the same signing keys), so that
//! any instance answers any poll, a long poll held by one instance wakes when
//! another finishes the operation, and an operation whose instance died is
//! reported failed (`operation lost`) instead of pending forever.
//!
//! # What is kept where
//!
//! Every key starts with the store's prefix (default `async-op`, see
//! [`RedisStoreBuilder::prefix`]); `<id>` is the operation id's 22-character
//! text form.
//!
//! | key | value | time to live |
//! |---|---|---|
//! | `<prefix>:op:<id>` | the operation record: running (with its [`NewOperation`]) or ended (with its outcome) | running: retention + lease, renewed with the lease; ended: retention, from the end |
//! | `<prefix>:lease:<id>` | the token of the instance running the operation | the lease (default 10 s), renewed every third of it while the operation runs; deleted when it ends |
//! | `<prefix>:idem:<digest>` | an `Idempotency-Key` binding: operation id and request fingerprint (the key itself is stored as its SHA-256) | the claim's ttl (the retention) |
//!
//! and one pub/sub channel, `<prefix>:ended`, on which every instance
//! publishes the id of each operation that ends.
//!
//! Records are a compact binary encoding (see `encode_outcome`): the first
//! byte names the kind of record, so that the Lua scripts can tell a running
//! record from an ended one without decoding it.
//!
//! Every change of a record is one Lua script, atomic in Redis:
//! - **create**: `SET NX` of the running record and of the lease, or
//!   [`StoreError::Duplicate`];
//! - **finish**: writes the outcome only if the record does not hold one
//!   already (the first outcome stands, whichever instance ends it first),
//!   deletes the lease and publishes the id;
//! - **status**: reads the record; a running record whose lease is gone is
//!   turned into `Failed(Lost)` on the spot (again only if nothing else
//!   ended it first) and its end is published;
//! - **claim**: `SET NX PX` of the binding, or the existing binding.
//!
//! # Leases, and how soon a lost operation is reported
//!
//! The instance that creates an operation holds its lease and renews it
//! every lease/3 from a task of its own, until the operation ends on any
//! instance or the store is dropped. When the instance dies, its lease runs
//! out at most one lease length later. From then on:
//! - a poll gets `500 operation-lost` at once (the status check turns the
//!   record into `Failed(Lost)`): a client polling every `Retry-After`
//!   seconds is told within **lease + `Retry-After`** of the death;
//! - a held long poll is answered with it when the lease would have run out:
//!   each waiter sleeps until the remaining time to live of the lease it saw,
//!   then checks again (one timer at a time, no polling loop), so it is told
//!   within **lease** of the death (plus a few milliseconds).
//!
//! A renewal also puts a running record back if it is missing (Redis
//! restarted without persistence): operations in flight on live instances
//! come back within lease/3 of Redis' return.
//!
//! # Wake-ups
//!
//! Each store holds one dedicated pub/sub connection subscribed to
//! `<prefix>:ended`, and a local map from operation id to the waiters of this
//! instance. A waiter registers in that map before it checks the status, so
//! an end published between the check and the wait is not missed. The
//! subscription is renewed after a disconnection (with backoff, up to 2 s
//! between attempts) and checked with a `PING` every lease length; after
//! each new subscription every local waiter checks its operation's status
//! again, since an end may have been published while no one listened.
//!
//! # When Redis is down or slow
//!
//! Every Redis call is bounded by the store's timeout (default 2 s, see
//! [`RedisStoreBuilder::timeout`]); a call that fails or times out is a
//! [`StoreError::Unavailable`], which the middleware answers with `503`,
//! `Retry-After` and a `store-unavailable` problem. Nothing panics. The
//! connection (a [`redis::aio::ConnectionManager`]) reconnects on the next
//! call after a failure, so service resumes by itself when Redis returns.
//! If `finish` cannot reach Redis, the outcome is lost and the operation is
//! reported `operation-lost` once its lease runs out; so is an operation
//! whose instance cannot renew its lease for longer than the lease (its
//! handler is then dropped, as for a cancellation). When Redis restarts
//! empty, running operations come back (see above) but ended ones and
//! `Idempotency-Key` bindings are gone: polls for them get `404`.
//!
//! Redis must keep what it is given until its time to live: use a
//! `maxmemory-policy` of `noeviction` (an evicted lease reads as a dead
//! instance, an evicted record as an unknown operation).

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use actix_web::http::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt as _;
use redis::{
    Client, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig, PubSub},
};
use sha2::{Digest as _, Sha256};
use tokio::{runtime::Handle, sync::Notify, task::AbortHandle};

use super::{
    ClaimOutcome, FailureKind, IdempotencyClaim, NewOperation, OperationId, OperationStatus,
    OperationStore, Outcome, StoreError, StoreFuture, StoredResponse, redact_url,
};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "async-op";
/// The default lease of a running operation: an operation whose instance
/// died is reported lost at most this long after the death (plus one poll).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The default bound on every Redis call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest lease accepted; shorter ones are raised to it.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// How long after a lease's time to live a waiter checks again: Redis
/// expires a key when it is read past its time, so a few milliseconds for
/// the clocks and the round trip suffice.
const LEASE_SLACK: Duration = Duration::from_millis(20);
/// The first and the longest wait between two attempts to subscribe again.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(50);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

// Record kinds: the first byte of every operation record.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const FAILED: u8 = 2;
const CANCELLED: u8 = 3;

/// KEYS: record, lease. ARGV: running record, record ttl (s), owner token,
/// lease (ms). 1: created; 0: the id exists.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
";

/// KEYS: record, lease. ARGV: outcome record, retention (ms), channel, id.
/// The first outcome stands: a record that has ended is left alone. A
/// missing record (Redis lost it) is written, so that the result of an
/// operation that outlived a Redis restart can still be fetched.
/// 1: recorded; 0: it had ended already.
const FINISH: &str = r"
local rec = redis.call('GET', KEYS[1])
if rec and string.byte(rec, 1) ~= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// KEYS: record, lease. ARGV: the `Failed(Lost)` record, channel, id.
/// Returns {record or false, lease ms left, or -2 without a lease, or -3
/// when the operation was found lost just now}. A running record whose
/// lease is gone becomes `Failed(Lost)`, kept for its retention (bytes 6 to
/// 9 of a running record, big-endian seconds), and its end is published.
const STATUS: &str = r"
local rec = redis.call('GET', KEYS[1])
if not rec then return {false, -2} end
if string.byte(rec, 1) ~= 0 then return {rec, -2} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl ~= -2 then return {rec, ttl} end
local b1, b2, b3, b4 = string.byte(rec, 6, 9)
local retention = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
if retention < 1 then retention = 1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', retention)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {ARGV[1], -3}
";

/// KEYS: record, lease. ARGV: running record, record ttl (s), owner token,
/// lease (ms). Renews the lease of a running operation and puts its record
/// back if it is missing. 1: renewed; 0: the operation has ended.
const RENEW: &str = r"
local rec = redis.call('GET', KEYS[1])
if rec and string.byte(rec, 1) ~= 0 then return 0 end
if rec then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
";

/// KEYS: binding. ARGV: binding, ttl (ms). Nil: claimed; else the binding
/// that holds the key.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
";

/// The scripts, hashed once per store ([`Script`] sends `EVALSHA` and loads
/// the script when Redis does not know it, e.g. after a restart).
struct Scripts {
    create: Script,
    finish: Script,
    status: Script,
    renew: Script,
    claim: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            create: Script::new(CREATE),
            finish: Script::new(FINISH),
            status: Script::new(STATUS),
            renew: Script::new(RENEW),
            claim: Script::new(CLAIM),
        }
    }
}

/// A store in Redis, shared by every instance of an app (crate feature
/// `redis`). See the [module docs](self) for what is kept where, the lease
/// and what happens when Redis is down.
///
/// Cloning gives another handle to the same store (one connection, one
/// subscription). The store's background tasks (lease renewals, the
/// subscription) run on the Tokio runtime that connected it, which must
/// keep running: the one of `#[actix_web::main]` does.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use async_op::{AsyncOps, store::RedisStore};
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let store = RedisStore::connect("redis://127.0.0.1:6379")
///         .await
///         .expect("redis");
///     let ops = AsyncOps::builder()
///         .secret("the same secret, on every instance, 32+ bytes")
///         .store(store)
///         .build()
///         .expect("async-op configuration");
///     HttpServer::new(move || App::new().wrap(ops.clone()))
///         .bind(("0.0.0.0", 8080))?
///         .run()
///         .await
/// }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    keys: Keys,
    lease: Duration,
    timeout: Duration,
    /// This instance's token, the value of the leases it holds.
    owner: String,
    /// The local waiters, shared with the subscription task.
    waiters: Arc<Waiters>,
    /// The renewal task of each operation this instance runs.
    renewals: Arc<DashMap<OperationId, AbortHandle>>,
    subscribed: Arc<AtomicBool>,
    health: Arc<Health>,
    listener: AbortHandle,
    runtime: Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without the store nothing renews: the leases of operations still
        // running here run out, and other instances report them lost.
        self.listener.abort();
        for renewal in self.renewals.iter() {
            renewal.value().abort();
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.keys.prefix)
            .field("lease", &self.inner.lease)
            .field("timeout", &self.inner.timeout)
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

/// Key names.
#[derive(Clone)]
struct Keys {
    prefix: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}:ended"),
        }
    }

    fn record(&self, id: OperationId) -> String {
        format!("{}:op:{id}", self.prefix)
    }

    fn lease(&self, id: OperationId) -> String {
        format!("{}:lease:{id}", self.prefix)
    }

    /// The key of an `Idempotency-Key` binding: the key's SHA-256, so that
    /// a long or odd client key makes neither a long nor an odd Redis key.
    fn claim(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        format!("{}:idem:{}", self.prefix, URL_SAFE_NO_PAD.encode(digest))
    }
}

/// Builds a [`RedisStore`]: key prefix, lease and timeout.
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    lease: Duration,
    timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key and of the channel (default `async-op`). Apps
    /// that share one Redis but not their operations use different ones.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease of a running operation (default 10 s, at least 1 s): how
    /// long after its instance dies an operation is reported lost. Shorter
    /// means sooner reports and more renewals (one call per running
    /// operation every third of it). Keep it well above the timeout, so that
    /// a slow renewal does not let a live operation's lease run out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(MIN_LEASE);
        self
    }

    /// The bound on every Redis call (default 2 s, at least 10 ms); a call
    /// that takes longer fails with [`StoreError::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// Connects, subscribes to the wake-up channel and starts the store's
    /// background task. Fails with [`StoreError::Unavailable`] if the URL
    /// does not parse or Redis cannot be reached within a few timeouts.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let runtime = Handle::try_current().map_err(|_| {
            StoreError::Unavailable("the Redis store must be connected on a Tokio runtime".into())
        })?;
        let client = Client::open(self.url.as_str()).map_err(|error| {
            StoreError::Unavailable(format!("the Redis URL is not valid: {error}"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let keys = Keys::new(&self.prefix);
        // Three connection attempts with their backoff, then the
        // subscription: bounded as a whole.
        let deadline = self.timeout * 4 + Duration::from_secs(1);
        let connected = tokio::time::timeout(deadline, async {
            let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
            let pubsub = subscribe(&client, &keys.channel).await?;
            Ok::<_, RedisError>((conn, pubsub))
        })
        .await;
        let (conn, pubsub) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to Redis: {error}"
                )));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to Redis within {deadline:?}"
                )));
            }
        };
        let waiters = Arc::new(Waiters::default());
        let subscribed = Arc::new(AtomicBool::new(true));
        let listener = runtime.spawn(listen(
            Subscription {
                client,
                channel: keys.channel.clone(),
                waiters: Arc::clone(&waiters),
                subscribed: Arc::clone(&subscribed),
                timeout: self.timeout,
                heartbeat: self.lease,
            },
            pubsub,
        ));
        tracing::info!(prefix = %keys.prefix, lease = ?self.lease, "async-op: Redis store connected");
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                scripts: Arc::new(Scripts::new()),
                keys,
                lease: self.lease,
                timeout: self.timeout,
                owner: OperationId::random().to_string(),
                waiters,
                renewals: Arc::new(DashMap::new()),
                subscribed,
                health: Arc::new(Health::default()),
                listener: listener.abort_handle(),
                runtime,
            }),
        })
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`)
    /// with the default prefix, lease and timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for the Redis at `url`, to set the prefix, lease or timeout
    /// before connecting.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            lease: DEFAULT_LEASE,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// The lease of running operations.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The bound on every Redis call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether the wake-up subscription is connected now (for health
    /// checks). While it is not, long polls still end, at the latest when
    /// the lease they saw would have run out.
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// The number of operations whose lease this instance renews.
    pub fn leases_held(&self) -> usize {
        self.inner.renewals.len()
    }
}

impl Inner {
    /// Runs one Redis call within the timeout.
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        bounded(&self.health, self.timeout, what, call).await
    }

    async fn create(&self, id: OperationId, operation: NewOperation) -> Result<(), StoreError> {
        let record = encode_running(&operation);
        let record_ttl = self.running_record_ttl(&operation);
        let lease_ms = millis(self.lease);
        let mut conn = self.conn.clone();
        let created: i64 = self
            .call(
                "create",
                self.scripts
                    .create
                    .key(self.keys.record(id))
                    .key(self.keys.lease(id))
                    .arg(&record[..])
                    .arg(record_ttl)
                    .arg(&self.owner)
                    .arg(lease_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        if created == 0 {
            return Err(StoreError::Duplicate(id));
        }
        self.spawn_renewal(id, record, record_ttl);
        Ok(())
    }

    /// A running record outlives its lease by the retention: an instance
    /// that dies leaves a record that reads as lost, not unknown, for as
    /// long as the states issued for it live.
    fn running_record_ttl(&self, operation: &NewOperation) -> u64 {
        u64::from(operation.retention.max(1)) + self.lease.as_secs().max(1)
    }

    fn spawn_renewal(&self, id: OperationId, record: Vec<u8>, record_ttl: u64) {
        let renewal = Renewal {
            id,
            conn: self.conn.clone(),
            scripts: Arc::clone(&self.scripts),
            record_key: self.keys.record(id),
            lease_key: self.keys.lease(id),
            record,
            record_ttl,
            owner: self.owner.clone(),
            lease: self.lease,
            // A renewal slower than the time to the next one is of no use.
            timeout: self.timeout.min(self.lease / 3),
            renewals: Arc::clone(&self.renewals),
            health: Arc::clone(&self.health),
        };
        let task = self.runtime.spawn(renewal.run());
        self.renewals.insert(id, task.abort_handle());
    }

    async fn finish(
        &self,
        id: OperationId,
        outcome: &Outcome,
        retention: u32,
    ) -> Result<(), StoreError> {
        // Stop renewing first: if the outcome cannot be recorded, the lease
        // runs out and the operation is reported lost rather than running.
        if let Some((_, renewal)) = self.renewals.remove(&id) {
            renewal.abort();
        }
        let record = encode_outcome(outcome);
        let retention_ms = (u64::from(retention) * 1000).max(1);
        let mut conn = self.conn.clone();
        let recorded: i64 = self
            .call(
                "finish",
                self.scripts
                    .finish
                    .key(self.keys.record(id))
                    .key(self.keys.lease(id))
                    .arg(&record[..])
                    .arg(retention_ms)
                    .arg(&self.keys.channel)
                    .arg(id.to_string())
                    .invoke_async(&mut conn),
            )
            .await?;
        if recorded == 0 {
            tracing::debug!(op = %id, "async-op: the operation had ended already; its first outcome stands");
        }
        // Local waiters need not wait for the message to come back.
        self.waiters.wake(id);
        Ok(())
    }

    /// The status, and the lease's time left while the operation runs.
    async fn status(
        &self,
        id: OperationId,
    ) -> Result<(Option<OperationStatus>, Option<Duration>), StoreError> {
        let mut conn = self.conn.clone();
        let (record, lease_ms): (Option<Vec<u8>>, i64) = self
            .call(
                "status",
                self.scripts
                    .status
                    .key(self.keys.record(id))
                    .key(self.keys.lease(id))
                    .arg(&encode_outcome(&Outcome::Failed(FailureKind::Lost))[..])
                    .arg(&self.keys.channel)
                    .arg(id.to_string())
                    .invoke_async(&mut conn),
            )
            .await?;
        let Some(record) = record else {
            return Ok((None, None));
        };
        let status = decode(Bytes::from(record)).map_err(|error| {
            tracing::error!(op = %id, %error, "async-op: unreadable operation record in Redis");
            StoreError::Unavailable(format!("the operation record is unreadable: {error}"))
        })?;
        let lease_left = match lease_ms {
            ms if ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
            // -1: a lease without a time to live, which this store never
            // writes; check again after one lease.
            -1 => Some(self.lease),
            _ => None,
        };
        if lease_ms == -3 {
            tracing::warn!(op = %id, "async-op: operation lost: the lease of the instance running it ran out");
        }
        Ok((Some(status), lease_left))
    }

    async fn wait(&self, id: OperationId) -> Result<Option<OperationStatus>, StoreError> {
        let waiter = self.waiters.register(id);
        loop {
            let woken = waiter.notify.notified();
            tokio::pin!(woken);
            // Register before checking, so that an end published between
            // the check and the wait is not missed.
            woken.as_mut().enable();
            let (status, lease_left) = self.status(id).await?;
            match status {
                Some(OperationStatus::Running(_)) => {}
                ended_or_unknown => return Ok(ended_or_unknown),
            }
            // Check again when the end is published, or when the lease seen
            // now would run out if its holder stopped renewing it.
            let lease_left = lease_left.unwrap_or(self.lease);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(lease_left + LEASE_SLACK) => {}
            }
        }
    }

    async fn claim(&self, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
        let mut binding = Vec::with_capacity(48);
        binding.extend_from_slice(claim.id.as_bytes());
        binding.extend_from_slice(&claim.fingerprint);
        let ttl_ms = (u64::from(claim.ttl) * 1000).max(1);
        let mut conn = self.conn.clone();
        let existing: Option<Vec<u8>> = self
            .call(
                "claim",
                self.scripts
                    .claim
                    .key(self.keys.claim(&claim.key))
                    .arg(&binding[..])
                    .arg(ttl_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        let Some(existing) = existing else {
            return Ok(ClaimOutcome::Claimed);
        };
        let (id, fingerprint) = existing
            .split_first_chunk::<16>()
            .filter(|(_, fingerprint)| fingerprint.len() == 32)
            .ok_or_else(|| {
                StoreError::Unavailable("an Idempotency-Key binding is unreadable".into())
            })?;
        Ok(ClaimOutcome::Existing {
            id: OperationId(*id),
            same_request: fingerprint == claim.fingerprint,
        })
    }
}

impl OperationStore for RedisStore {
    fn create(&self, id: OperationId, operation: NewOperation) -> StoreFuture<'_, ()> {
        StoreFuture::boxed(self.inner.create(id, operation))
    }

    fn finish(&self, id: OperationId, outcome: Outcome, retention: u32) -> StoreFuture<'_, ()> {
        StoreFuture::boxed(async move { self.inner.finish(id, &outcome, retention).await })
    }

    fn status(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>> {
        StoreFuture::boxed(async move { Ok(self.inner.status(id).await?.0) })
    }

    fn wait(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>> {
        StoreFuture::boxed(self.inner.wait(id))
    }

    fn claim_idempotency_key(&self, claim: &IdempotencyClaim) -> StoreFuture<'_, ClaimOutcome> {
        let claim = claim.clone();
        StoreFuture::boxed(async move { self.inner.claim(&claim).await })
    }
}

/// Whether the last Redis call succeeded: an outage is logged once as a
/// warning when it begins and once when it ends, every failed call in
/// between at debug level.
struct Health {
    up: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
        }
    }
}

impl Health {
    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("async-op: Redis answers again");
        }
    }

    fn failed(&self, what: &'static str, error: &dyn fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(%error, call = what, "async-op: Redis is unavailable; answering 503 until it returns");
        } else {
            tracing::debug!(%error, call = what, "async-op: Redis call failed");
        }
    }
}

/// Runs `call` within `timeout`; a failure or a timeout is
/// [`StoreError::Unavailable`]. The error sent on to clients (in a problem's
/// `detail`) says what failed, not where Redis is.
async fn bounded<T>(
    health: &Health,
    timeout: Duration,
    what: &'static str,
    call: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => {
            health.succeeded();
            Ok(value)
        }
        Ok(Err(error)) => {
            health.failed(what, &error);
            let reason = if error.is_io_error() || error.is_unrecoverable_error() {
                "Redis cannot be reached"
            } else {
                "Redis refused the call"
            };
            Err(StoreError::Unavailable(format!("{reason} ({what})")))
        }
        Err(_) => {
            let message = format!("Redis did not answer within {} ms", timeout.as_millis());
            health.failed(what, &message);
            Err(StoreError::Unavailable(format!("{message} ({what})")))
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The renewal of one running operation's lease.
struct Renewal {
    id: OperationId,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    record_key: String,
    lease_key: String,
    record: Vec<u8>,
    record_ttl: u64,
    owner: String,
    lease: Duration,
    timeout: Duration,
    renewals: Arc<DashMap<OperationId, AbortHandle>>,
    health: Arc<Health>,
}

impl Renewal {
    /// Renews every lease/3 until the operation has ended (on any instance).
    /// Aborted by `finish` on this instance and when the store is dropped.
    async fn run(mut self) {
        let period = self.lease / 3;
        let lease_ms = millis(self.lease);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let renewed: Result<i64, _> = bounded(
                &self.health,
                self.timeout,
                "renew lease",
                self.scripts
                    .renew
                    .key(&self.record_key)
                    .key(&self.lease_key)
                    .arg(&self.record[..])
                    .arg(self.record_ttl)
                    .arg(&self.owner)
                    .arg(lease_ms)
                    .invoke_async(&mut self.conn),
            )
            .await;
            match renewed {
                Ok(0) => break,
                Ok(_) => {}
                // Logged by `bounded`; the next tick tries again, and puts
                // the record back if Redis lost it meanwhile.
                Err(_) => {}
            }
        }
        tracing::debug!(op = %self.id, "async-op: the operation ended elsewhere; lease released");
        self.renewals.remove(&self.id);
    }
}

/// The waiters of this instance, by operation.
#[derive(Default)]
struct Waiters {
    by_op: DashMap<OperationId, WaitersOf>,
}

struct WaitersOf {
    notify: Arc<Notify>,
    count: usize,
}

/// One waiter's registration; removes the entry with the last waiter.
struct Waiter<'a> {
    waiters: &'a Waiters,
    id: OperationId,
    notify: Arc<Notify>,
}

impl Waiters {
    fn register(&self, id: OperationId) -> Waiter<'_> {
        let mut entry = self.by_op.entry(id).or_insert_with(|| WaitersOf {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        entry.count += 1;
        let notify = Arc::clone(&entry.notify);
        drop(entry);
        Waiter {
            waiters: self,
            id,
            notify,
        }
    }

    /// Wakes the waiters of one operation; they check its status again.
    fn wake(&self, id: OperationId) {
        if let Some(entry) = self.by_op.get(&id) {
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every waiter (after a new subscription: ends may have been
    /// published while no one listened).
    fn wake_all(&self) {
        for entry in self.by_op.iter() {
            entry.notify.notify_waiters();
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut entry) = self.waiters.by_op.entry(self.id) {
            entry.get_mut().count -= 1;
            if entry.get().count == 0 {
                entry.remove();
            }
        }
    }
}

/// What the subscription task needs.
struct Subscription {
    client: Client,
    channel: String,
    waiters: Arc<Waiters>,
    subscribed: Arc<AtomicBool>,
    timeout: Duration,
    heartbeat: Duration,
}

async fn subscribe(client: &Client, channel: &str) -> Result<PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// The subscription task: wakes local waiters for every published end,
/// subscribes again after a disconnection, and lives as long as the store.
async fn listen(sub: Subscription, first: PubSub) {
    let mut pubsub = Some(first);
    let mut backoff = RESUBSCRIBE_MIN;
    let mut failures = 0u32;
    loop {
        if let Some(connected) = pubsub.take() {
            sub.subscribed.store(true, Ordering::Release);
            if failures > 0 {
                tracing::info!("async-op: Redis wake-up channel subscribed again");
            }
            failures = 0;
            backoff = RESUBSCRIBE_MIN;
            // Ends published while no one listened: every waiter checks.
            sub.waiters.wake_all();
            relay(&sub, connected).await;
            sub.subscribed.store(false, Ordering::Release);
            tracing::warn!("async-op: Redis wake-up channel lost; subscribing again");
            // Wake waiters now too: they check, and sleep again until their
            // lease timer or the next subscription.
            sub.waiters.wake_all();
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
        match tokio::time::timeout(sub.timeout, subscribe(&sub.client, &sub.channel)).await {
            Ok(Ok(connected)) => pubsub = Some(connected),
            Ok(Err(error)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%error, "async-op: cannot subscribe to the Redis wake-up channel");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("async-op: subscribing to the Redis wake-up channel timed out");
                }
            }
        }
    }
}

/// Relays published ends to local waiters until the connection is lost (the
/// stream ends, or a `PING` every heartbeat goes unanswered).
async fn relay(sub: &Subscription, pubsub: PubSub) {
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + sub.heartbeat, sub.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return };
                let id = std::str::from_utf8(message.get_payload_bytes())
                    .ok()
                    .and_then(OperationId::parse);
                if let Some(id) = id {
                    sub.waiters.wake(id);
                }
            }
            _ = heartbeat.tick() => {
                let pong = tokio::time::timeout(sub.timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

// The records.
//
// A hand-written binary layout rather than serde: bodies are arbitrary
// bytes (JSON would need base64, a third larger, and escaping), the layout
// is a dozen lines each way with no new dependency, and the Lua scripts read
// the kind (first byte) and a running record's retention (bytes 6 to 9)
// without decoding anything else. Integers are big-endian.
//
// running:   0, retry_after u32, retention u32, long_poll u32, hold_early u8
// finished:  1, status u16, header count u32,
//            per header: name length u32, name, value length u32, value;
//            then the body (the rest)
// failed:    2, kind u8 (1 panicked, 2 response body, 3 lost, 4 too large)
// cancelled: 3
//
// A later format would take new kind bytes, so that instances of two
// versions sharing one Redis can tell the formats apart.

fn encode_running(operation: &NewOperation) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.push(RUNNING);
    out.extend_from_slice(&operation.retry_after.to_be_bytes());
    out.extend_from_slice(&operation.retention.to_be_bytes());
    out.extend_from_slice(&operation.long_poll.to_be_bytes());
    out.push(u8::from(operation.hold_early));
    out
}

fn failure_code(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Panicked => 1,
        FailureKind::ResponseBody => 2,
        FailureKind::Lost => 3,
        FailureKind::ResultTooLarge => 4,
    }
}

fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Finished(response) => {
            let headers: usize = response
                .headers
                .iter()
                .map(|(name, value)| 8 + name.as_str().len() + value.len())
                .sum();
            let mut out = Vec::with_capacity(7 + headers + response.body.len());
            out.push(FINISHED);
            out.extend_from_slice(&response.status.as_u16().to_be_bytes());
            put_len(&mut out, response.headers.len());
            for (name, value) in &response.headers {
                put_len(&mut out, name.as_str().len());
                out.extend_from_slice(name.as_str().as_bytes());
                put_len(&mut out, value.len());
                out.extend_from_slice(value.as_bytes());
            }
            out.extend_from_slice(&response.body);
            out
        }
        Outcome::Failed(kind) => vec![FAILED, failure_code(*kind)],
        Outcome::Cancelled => vec![CANCELLED],
    }
}

/// Appends a length as a u32. Header names and values are far shorter than
/// 4 GiB (the http crate caps names at 64 KiB, and servers cap header
/// sections at a few dozen KiB), and so is any header count.
fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// Reads records; every read is checked, a short record is an error.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, len: usize) -> Result<Bytes, &'static str> {
        let end = self.at.checked_add(len).ok_or("length overflow")?;
        if end > self.bytes.len() {
            return Err("record too short");
        }
        let taken = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let taken = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&taken);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, &'static str> {
        usize::try_from(self.u32()?).map_err(|_| "length overflow")
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.bytes.slice(self.at..);
        self.at = self.bytes.len();
        rest
    }

    fn end(&self) -> Result<(), &'static str> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

fn decode(bytes: Bytes) -> Result<OperationStatus, &'static str> {
    let mut reader = Reader { bytes, at: 0 };
    let status = match reader.u8()? {
        RUNNING => OperationStatus::Running(NewOperation {
            retry_after: reader.u32()?,
            retention: reader.u32()?,
            long_poll: reader.u32()?,
            hold_early: reader.u8()? != 0,
        }),
        FINISHED => {
            let status = StatusCode::from_u16(u16::from_be_bytes(reader.array()?))
                .map_err(|_| "invalid status code")?;
            let count = reader.len()?;
            // Each header takes at least 8 bytes: a bogus count cannot make
            // this allocate more than the record's size.
            let mut headers = Vec::with_capacity(count.min(reader.bytes.len() / 8));
            for _ in 0..count {
                let len = reader.len()?;
                let name = HeaderName::from_bytes(&reader.take(len)?)
                    .map_err(|_| "invalid header name")?;
                let len = reader.len()?;
                let value = HeaderValue::from_maybe_shared(reader.take(len)?)
                    .map_err(|_| "invalid header value")?;
                headers.push((name, value));
            }
            let body = reader.rest();
            OperationStatus::Finished(Arc::new(StoredResponse {
                status,
                headers,
                body,
            }))
        }
        FAILED => OperationStatus::Failed(match reader.u8()? {
            1 => FailureKind::Panicked,
            2 => FailureKind::ResponseBody,
            3 => FailureKind::Lost,
            4 => FailureKind::ResultTooLarge,
            _ => return Err("unknown failure kind"),
        }),
        CANCELLED => OperationStatus::Cancelled,
        _ => return Err("unknown record kind"),
    };
    reader.end()?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn round_trip(outcome: Outcome) -> OperationStatus {
        decode(Bytes::from(encode_outcome(&outcome))).unwrap()
    }

    #[test]
    fn running_records_round_trip_and_keep_the_retention_where_lua_reads_it() {
        let operation = NewOperation {
            retry_after: 2,
            retention: 0x0102_0304,
            long_poll: 20,
            hold_early: true,
        };
        let record = encode_running(&operation);
        assert_eq!(record.len(), 14);
        assert_eq!(record[0], RUNNING);
        // Lua's string.byte(rec, 6, 9): 1-based bytes 6 to 9.
        assert_eq!(&record[5..9], &[1, 2, 3, 4]);
        match decode(Bytes::from(record)).unwrap() {
            OperationStatus::Running(decoded) => assert_eq!(decoded, operation),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finished_responses_round_trip_byte_for_byte() {
        let response = StoredResponse {
            status: StatusCode::from_u16(299).unwrap(),
            headers: vec![
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("a=1"),
                ),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("b=2"),
                ),
                (
                    HeaderName::from_static("x-bytes"),
                    HeaderValue::from_bytes(b"caf\xe9").unwrap(),
                ),
                (
                    HeaderName::from_static("x-empty"),
                    HeaderValue::from_static(""),
                ),
            ],
            body: Bytes::from_static(b"\x00\x01binary\xff"),
        };
        match round_trip(Outcome::Finished(response.clone())) {
            OperationStatus::Finished(decoded) => {
                assert_eq!(decoded.status, response.status);
                assert_eq!(decoded.headers, response.headers);
                assert_eq!(decoded.body, response.body);
            }
            other => panic!("{other:?}"),
        }
        let empty = StoredResponse {
            status: StatusCode::NO_CONTENT,
            headers: Vec::new(),
            body: Bytes::new(),
        };
        assert!(matches!(
            round_trip(Outcome::Finished(empty)),
            OperationStatus::Finished(res) if res.status == StatusCode::NO_CONTENT && res.body.is_empty()
        ));
    }

    #[test]
    fn failures_and_cancellations_round_trip() {
        for kind in [
            FailureKind::Panicked,
            FailureKind::ResponseBody,
            FailureKind::Lost,
            FailureKind::ResultTooLarge,
        ] {
            assert!(matches!(
                round_trip(Outcome::Failed(kind)),
                OperationStatus::Failed(k) if k == kind
            ));
        }
        assert!(matches!(
            round_trip(Outcome::Cancelled),
            OperationStatus::Cancelled
        ));
        assert_eq!(encode_outcome(&Outcome::Cancelled), [CANCELLED]);
    }

    #[test]
    fn malformed_records_are_refused_not_panicked_on() {
        let good = encode_outcome(&Outcome::Finished(StoredResponse {
            status: StatusCode::OK,
            headers: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("b"),
            )],
            body: Bytes::from_static(b"body"),
        }));
        // Every truncation inside the head is an error, never a panic.
        for len in 0..good.len() - 4 {
            assert!(
                decode(Bytes::copy_from_slice(&good[..len])).is_err(),
                "{len}"
            );
        }
        for bad in [
            &[9u8][..],
            &[FAILED, 0],
            &[FAILED, 1, 0],
            &[CANCELLED, 0],
            &[FINISHED, 0, 1, 0, 0, 0, 0],
            &[FINISHED, 0, 200, 0xff, 0xff, 0xff, 0xff],
            &[RUNNING, 0, 0],
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:secret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@a@db/1"), "rediss://***@db/1");
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact_url("redis://db/0?x=a@b"), "redis://db/0?x=a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn claim_keys_are_digests() {
        let keys = Keys::new("p");
        let key = keys.claim("client\nkey with spaces and a very long tail ...");
        assert!(key.starts_with("p:idem:"));
        assert_eq!(key.len(), "p:idem:".len() + 43);
        assert_ne!(key, keys.claim("client\nother"));
    }
}
