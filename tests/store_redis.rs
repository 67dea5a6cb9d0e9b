//! The shared store suite against the Redis store (two stores on one Redis:
//! two instances of an app), and what only a shared store has: leases, lost
//! operations, wake-ups across a lost subscription, Redis going away and
//! coming back, and the keys' times to live.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_op::{
    OperationId, OperationStatus, OperationStore,
    store::{ClaimOutcome, FailureKind, IdempotencyClaim, Outcome, RedisStore, StoreError},
};
use async_op_tests::{
    redis::{PrivateRedis, redis_store, redis_url, unique_prefix},
    store_suite::{RUNNING, WAKE_BOUND, kind},
};

async_op_tests::store_suite!(async_op_tests::redis::store_pair());

/// A bounded wait for a condition on the store, checked every 50 ms.
async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_instance_died_is_reported_lost_within_the_lease() {
    let prefix = unique_prefix("lost");
    let lease = Duration::from_secs(2);
    let a = redis_store(redis_url(), &prefix, lease).await;
    let b = redis_store(redis_url(), &prefix, lease).await;
    let id = OperationId::random();
    a.create(id, RUNNING).await.unwrap();
    assert_eq!(a.leases_held(), 1);
    let mut waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait(id).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err()
    );

    // Dropping the store stops its renewals, as the death of its process
    // would: the lease runs out, and b's waiter, which checks again when
    // the lease it saw would run out, finds the operation lost.
    let died = Instant::now();
    drop(a);
    let status = tokio::time::timeout(lease + WAKE_BOUND, waiter)
        .await
        .expect("the waiter notices the lapsed lease")
        .unwrap()
        .unwrap();
    let noticed = died.elapsed();
    assert!(
        matches!(status, Some(OperationStatus::Failed(FailureKind::Lost))),
        "{}",
        kind(&status)
    );
    assert!(
        noticed <= lease + Duration::from_secs(2),
        "lost noticed {noticed:?} after the death; the bound is the lease ({lease:?})"
    );
    eprintln!("lost noticed {noticed:?} after the death (lease {lease:?})");

    // The outcome stands, also against an instance that comes back late.
    let late = redis_store(redis_url(), &prefix, lease).await;
    late.finish(id, Outcome::Cancelled, 60).await.unwrap();
    for store in [&b, &late] {
        assert!(matches!(
            store.status(id).await.unwrap(),
            Some(OperationStatus::Failed(FailureKind::Lost))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_keeps_its_lease_and_releases_it_at_the_end() {
    let prefix = unique_prefix("live");
    let lease = Duration::from_secs(2);
    let a = redis_store(redis_url(), &prefix, lease).await;
    let b = redis_store(redis_url(), &prefix, lease).await;
    let id = OperationId::random();
    a.create(id, RUNNING).await.unwrap();
    // Two and a half leases: without its renewals the operation would be
    // lost after one.
    let waited = tokio::time::timeout(lease * 5 / 2, b.wait(id)).await;
    assert!(waited.is_err(), "the wait ended while a holds the lease");
    assert!(matches!(
        b.status(id).await.unwrap(),
        Some(OperationStatus::Running(_))
    ));
    a.finish(id, Outcome::Cancelled, 60).await.unwrap();
    assert_eq!(a.leases_held(), 0);

    // Ended on another instance: the renewal sees it and stops.
    let other = OperationId::random();
    a.create(other, RUNNING).await.unwrap();
    b.finish(other, Outcome::Cancelled, 60).await.unwrap();
    eventually(
        "a releases the lease of an operation b ended",
        lease * 3,
        || std::future::ready(a.leases_held() == 0),
    )
    .await;
    assert!(matches!(
        a.status(other).await.unwrap(),
        Some(OperationStatus::Cancelled)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_survive_a_lost_subscription() {
    let redis = PrivateRedis::start();
    let prefix = unique_prefix("resubscribe");
    // Leases far longer than the test's bounds: only a wake-up (or the check
    // after a new subscription) can end these waits in time.
    let lease = Duration::from_secs(60);
    let a = redis_store(&redis.url(), &prefix, lease).await;
    let b = redis_store(&redis.url(), &prefix, lease).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();

    for round in 0..2 {
        let id = OperationId::random();
        a.create(id, RUNNING).await.unwrap();
        let mut waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait(id).await }
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiter)
                .await
                .is_err()
        );
        if round == 0 {
            // Cut every subscription, then end the operation at once: its
            // message is published while b may have no subscription.
            let killed: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .unwrap();
            assert!(killed >= 2, "killed {killed} subscriptions");
        }
        a.finish(id, Outcome::Cancelled, 60).await.unwrap();
        let status = tokio::time::timeout(WAKE_BOUND, waiter)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the waiter was not woken"))
            .unwrap()
            .unwrap();
        assert!(matches!(status, Some(OperationStatus::Cancelled)));
        eventually("b subscribes again", WAKE_BOUND, || {
            std::future::ready(b.is_subscribed())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_service_resumes_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let prefix = unique_prefix("restart");
    let timeout = Duration::from_millis(500);
    let store = RedisStore::builder(redis.url())
        .prefix(&prefix)
        .lease(Duration::from_secs(1))
        .timeout(timeout)
        .connect()
        .await
        .unwrap();
    let running = OperationId::random();
    store.create(running, RUNNING).await.unwrap();

    redis.kill();
    let claim = IdempotencyClaim {
        key: "client\nkey".into(),
        fingerprint: [1; 32],
        id: OperationId::random(),
        ttl: 60,
    };
    let asked = Instant::now();
    assert!(matches!(
        store.status(running).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.create(OperationId::random(), RUNNING).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.claim_idempotency_key(&claim).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.wait(running).await,
        Err(StoreError::Unavailable(_))
    ));
    // Four calls, each bounded by the timeout (with room for a busy machine).
    assert!(asked.elapsed() < timeout * 4 + Duration::from_secs(2));

    redis.restart();
    // The restarted Redis is empty; the renewal of the operation still
    // running here puts it back.
    eventually(
        "the running operation is back after the restart",
        Duration::from_secs(10),
        || async {
            matches!(
                store.status(running).await,
                Ok(Some(OperationStatus::Running(_)))
            )
        },
    )
    .await;
    eventually("subscribed again", Duration::from_secs(10), || {
        std::future::ready(store.is_subscribed())
    })
    .await;
    store.create(OperationId::random(), RUNNING).await.unwrap();
    assert_eq!(
        store.claim_idempotency_key(&claim).await.unwrap(),
        ClaimOutcome::Claimed
    );
    store.finish(running, Outcome::Cancelled, 60).await.unwrap();
    assert!(matches!(
        store.wait(running).await.unwrap(),
        Some(OperationStatus::Cancelled)
    ));
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_documented_times_to_live() {
    let prefix = unique_prefix("ttl");
    let lease = Duration::from_secs(3);
    let store = redis_store(redis_url(), &prefix, lease).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();

    let id = OperationId::random();
    store.create(id, RUNNING).await.unwrap();
    let record = format!("{prefix}:op:{id}");
    let lease_key = format!("{prefix}:lease:{id}");
    // Running: retention + lease for the record, the lease for the lease.
    let ttl = pttl(&mut admin, &record).await;
    assert!((60_000..=63_000).contains(&ttl), "running record: {ttl} ms");
    let ttl = pttl(&mut admin, &lease_key).await;
    assert!((1..=3_000).contains(&ttl), "lease: {ttl} ms");

    // Ended: retention from the end; the lease is gone.
    store.finish(id, Outcome::Cancelled, 30).await.unwrap();
    let ttl = pttl(&mut admin, &record).await;
    assert!((25_000..=30_000).contains(&ttl), "ended record: {ttl} ms");
    assert_eq!(
        pttl(&mut admin, &lease_key).await,
        -2,
        "the lease is deleted"
    );

    // A claim: its ttl; the key is a digest, not the client's text.
    let claim = IdempotencyClaim {
        key: "client\nsome key".into(),
        fingerprint: [3; 32],
        id: OperationId::random(),
        ttl: 20,
    };
    store.claim_idempotency_key(&claim).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("some key"));
    let ttl = pttl(&mut admin, &keys[0]).await;
    assert!((15_000..=20_000).contains(&ttl), "claim: {ttl} ms");
}

#[tokio::test]
async fn connecting_to_no_redis_fails_with_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = RedisStore::builder(format!("redis://:hunter2@127.0.0.1:{port}"))
        .timeout(Duration::from_millis(300))
        .connect()
        .await;
    let Err(StoreError::Unavailable(message)) = result else {
        panic!("connected to nothing");
    };
    assert!(!message.contains("hunter2"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        RedisStore::connect("not a url").await,
        Err(StoreError::Unavailable(_))
    ));
}
