//! The contract of `OperationStore`, checked against every store.
//!
//! Each check takes two handles `a` and `b` on one store: two instances of
//! an app. For the memory store they are clones of one store; for the Redis
//! store, two stores connected to the same Redis with the same prefix, so
//! that what `a` does must be seen, and wake waiters, on `b`.
//!
//! [`store_suite!`](crate::store_suite) turns the checks into tests:
//!
//! ```ignore
//! async_op_tests::store_suite!(async {
//!     let store = async_op::MemoryStore::new();
//!     (store.clone(), store)
//! });
//! ```

use std::time::{Duration, Instant};

use actix_web::http::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};
use async_op::{
    OperationId, OperationStatus, OperationStore,
    store::{
        ClaimOutcome, FailureKind, IdempotencyClaim, NewOperation, Outcome, StoreError,
        StoredResponse,
    },
};
use bytes::Bytes;
use futures_util::future::join_all;

/// A running operation's settings.
pub const RUNNING: NewOperation = NewOperation {
    retry_after: 1,
    retention: 60,
    long_poll: 20,
    hold_early: true,
};

/// How long a woken waiter may take to return. Shorter than the Redis
/// store's default lease (10 s), after which a waiter checks again on its
/// own: a wait that ends within this bound was ended by the wake-up.
pub const WAKE_BOUND: Duration = Duration::from_secs(5);

/// How long eviction at the end of retention may take to be seen: the memory
/// store sweeps in whole seconds, Redis expires keys when they are read.
pub const EVICTION_BOUND: Duration = Duration::from_secs(10);

/// Generates one test per check of this suite, each with a fresh pair of
/// handles from `$pair` (an expression of a future of `(S, S)`).
#[macro_export]
macro_rules! store_suite {
    ($pair:expr) => {
        $crate::store_suite!(@tests $pair;
            running_operations_are_seen_by_every_instance,
            unknown_operations_are_none,
            duplicate_ids_are_refused,
            outcomes_are_kept_byte_for_byte,
            the_first_outcome_stands,
            concurrent_finishes_agree_on_one_outcome,
            wait_is_woken_by_a_finish_on_another_instance,
            every_waiter_is_woken,
            wait_returns_at_once_for_ended_and_unknown_operations,
            exactly_one_of_concurrent_claims_wins,
            a_repeat_with_another_request_is_told_apart,
            claims_end_with_their_ttl,
            ended_operations_are_evicted_when_retention_ends,
        );
    };
    (@tests $pair:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (a, b) = $pair.await;
                $crate::store_suite::$check(&a, &b).await;
            }
        )*
    };
}

/// A name for an outcome, to compare statuses.
pub fn kind(status: &Option<OperationStatus>) -> String {
    match status {
        None => "unknown".into(),
        Some(OperationStatus::Running(_)) => "running".into(),
        Some(OperationStatus::Finished(res)) => format!(
            "finished {} {:?}",
            res.status,
            String::from_utf8_lossy(&res.body)
        ),
        Some(OperationStatus::Failed(kind)) => format!("failed {kind:?}"),
        Some(OperationStatus::Cancelled) => "cancelled".into(),
    }
}

fn response(body: &'static [u8]) -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED,
        headers: vec![
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("a=1"),
            ),
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("b=2"),
            ),
            (
                HeaderName::from_static("x-latin1"),
                HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            ),
        ],
        body: Bytes::from_static(body),
    }
}

async fn created<S: OperationStore>(store: &S) -> OperationId {
    let id = OperationId::random();
    store.create(id, RUNNING).await.unwrap();
    id
}

pub async fn running_operations_are_seen_by_every_instance<S: OperationStore>(a: &S, b: &S) {
    let id = created(a).await;
    for store in [a, b] {
        match store.status(id).await.unwrap() {
            Some(OperationStatus::Running(operation)) => assert_eq!(operation, RUNNING),
            other => panic!("expected running, got {}", kind(&other)),
        }
    }
}

pub async fn unknown_operations_are_none<S: OperationStore>(a: &S, b: &S) {
    assert!(a.status(OperationId::random()).await.unwrap().is_none());
    assert!(b.status(OperationId::random()).await.unwrap().is_none());
}

pub async fn duplicate_ids_are_refused<S: OperationStore>(a: &S, b: &S) {
    let id = created(a).await;
    for store in [a, b] {
        assert!(matches!(
            store.create(id, RUNNING).await,
            Err(StoreError::Duplicate(dup)) if dup == id
        ));
    }
}

pub async fn outcomes_are_kept_byte_for_byte<S: OperationStore>(a: &S, b: &S) {
    let finished = created(a).await;
    a.finish(finished, Outcome::Finished(response(b"\x00binary\xff")), 60)
        .await
        .unwrap();
    match b.status(finished).await.unwrap() {
        Some(OperationStatus::Finished(res)) => {
            let expected = response(b"\x00binary\xff");
            assert_eq!(res.status, expected.status);
            assert_eq!(res.headers, expected.headers);
            assert_eq!(res.body, expected.body);
        }
        other => panic!("expected finished, got {}", kind(&other)),
    }

    for failure in [
        FailureKind::Panicked,
        FailureKind::ResponseBody,
        FailureKind::Lost,
        FailureKind::ResultTooLarge,
    ] {
        let id = created(a).await;
        a.finish(id, Outcome::Failed(failure), 60).await.unwrap();
        assert!(matches!(
            b.status(id).await.unwrap(),
            Some(OperationStatus::Failed(kind)) if kind == failure
        ));
    }

    let cancelled = created(a).await;
    b.finish(cancelled, Outcome::Cancelled, 60).await.unwrap();
    assert!(matches!(
        a.status(cancelled).await.unwrap(),
        Some(OperationStatus::Cancelled)
    ));
}

pub async fn the_first_outcome_stands<S: OperationStore>(a: &S, b: &S) {
    let id = created(a).await;
    a.finish(id, Outcome::Cancelled, 60).await.unwrap();
    b.finish(id, Outcome::Failed(FailureKind::Panicked), 60)
        .await
        .unwrap();
    a.finish(id, Outcome::Finished(response(b"late")), 60)
        .await
        .unwrap();
    for store in [a, b] {
        assert!(matches!(
            store.status(id).await.unwrap(),
            Some(OperationStatus::Cancelled)
        ));
    }
}

pub async fn concurrent_finishes_agree_on_one_outcome<S: OperationStore>(a: &S, b: &S) {
    let id = created(a).await;
    let finishes = (0..16).map(|n| {
        let store = if n % 2 == 0 { a } else { b };
        let outcome = match n % 3 {
            0 => Outcome::Cancelled,
            1 => Outcome::Failed(FailureKind::Panicked),
            _ => Outcome::Finished(response(b"done")),
        };
        store.finish(id, outcome, 60)
    });
    for result in join_all(finishes).await {
        result.unwrap();
    }
    let seen_by_a = kind(&a.status(id).await.unwrap());
    let seen_by_b = kind(&b.status(id).await.unwrap());
    assert_eq!(seen_by_a, seen_by_b);
    assert_ne!(seen_by_a, "running");
    assert_ne!(seen_by_a, "unknown");
}

pub async fn wait_is_woken_by_a_finish_on_another_instance<S: OperationStore + Clone>(
    a: &S,
    b: &S,
) {
    let id = created(a).await;
    let mut waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait(id).await }
    });
    // It waits while the operation runs.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err(),
        "wait returned while the operation runs"
    );
    a.finish(id, Outcome::Finished(response(b"woken")), 60)
        .await
        .unwrap();
    let status = tokio::time::timeout(WAKE_BOUND, waiter)
        .await
        .expect("the waiter is woken by the finish")
        .unwrap()
        .unwrap();
    assert!(matches!(status, Some(OperationStatus::Finished(res)) if res.body == "woken"));
}

pub async fn every_waiter_is_woken<S: OperationStore + Clone>(a: &S, b: &S) {
    let id = created(a).await;
    let waiters: Vec<_> = (0..20)
        .map(|n| {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.wait(id).await })
        })
        .collect();
    b.finish(id, Outcome::Cancelled, 60).await.unwrap();
    let all = tokio::time::timeout(WAKE_BOUND, join_all(waiters))
        .await
        .expect("every waiter is woken");
    for status in all {
        assert!(matches!(
            status.unwrap().unwrap(),
            Some(OperationStatus::Cancelled)
        ));
    }
}

pub async fn wait_returns_at_once_for_ended_and_unknown_operations<S: OperationStore>(
    a: &S,
    b: &S,
) {
    assert!(b.wait(OperationId::random()).await.unwrap().is_none());
    let id = created(a).await;
    a.finish(id, Outcome::Failed(FailureKind::Panicked), 60)
        .await
        .unwrap();
    let status = tokio::time::timeout(WAKE_BOUND, b.wait(id))
        .await
        .expect("an ended operation is not waited for")
        .unwrap();
    assert!(matches!(
        status,
        Some(OperationStatus::Failed(FailureKind::Panicked))
    ));
}

fn claim(key: &str, fingerprint: u8, ttl: u32) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.to_owned(),
        fingerprint: [fingerprint; 32],
        id: OperationId::random(),
        ttl,
    }
}

fn unique_key() -> String {
    format!("client\nkey-{}", OperationId::random())
}

pub async fn exactly_one_of_concurrent_claims_wins<S: OperationStore>(a: &S, b: &S) {
    let key = unique_key();
    let claims: Vec<_> = (0..32).map(|_| claim(&key, 7, 60)).collect();
    let outcomes = join_all(claims.iter().enumerate().map(|(n, claim)| {
        let store = if n % 2 == 0 { a } else { b };
        store.claim_idempotency_key(claim)
    }))
    .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    let winners: Vec<_> = claims
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == ClaimOutcome::Claimed)
        .map(|(claim, _)| claim.id)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        match outcome {
            ClaimOutcome::Claimed => {}
            ClaimOutcome::Existing { id, same_request } => {
                assert_eq!(*id, winners[0]);
                assert!(same_request);
            }
        }
    }
}

pub async fn a_repeat_with_another_request_is_told_apart<S: OperationStore>(a: &S, b: &S) {
    let key = unique_key();
    let first = claim(&key, 1, 60);
    assert_eq!(
        a.claim_idempotency_key(&first).await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        b.claim_idempotency_key(&claim(&key, 1, 60)).await.unwrap(),
        ClaimOutcome::Existing {
            id: first.id,
            same_request: true
        }
    );
    assert_eq!(
        b.claim_idempotency_key(&claim(&key, 2, 60)).await.unwrap(),
        ClaimOutcome::Existing {
            id: first.id,
            same_request: false
        }
    );
    // Another client's key of the same text is another key.
    let other = IdempotencyClaim {
        key: key.replacen("client", "other client", 1),
        ..claim(&key, 1, 60)
    };
    assert_eq!(
        a.claim_idempotency_key(&other).await.unwrap(),
        ClaimOutcome::Claimed
    );
}

pub async fn claims_end_with_their_ttl<S: OperationStore>(a: &S, b: &S) {
    let key = unique_key();
    assert_eq!(
        a.claim_idempotency_key(&claim(&key, 1, 1)).await.unwrap(),
        ClaimOutcome::Claimed
    );
    let deadline = Instant::now() + EVICTION_BOUND;
    loop {
        let again = claim(&key, 1, 60);
        match b.claim_idempotency_key(&again).await.unwrap() {
            ClaimOutcome::Claimed => break,
            ClaimOutcome::Existing { .. } => {}
        }
        assert!(
            Instant::now() < deadline,
            "the claim was still held {EVICTION_BOUND:?} after its 1 s ttl"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn ended_operations_are_evicted_when_retention_ends<S: OperationStore>(a: &S, b: &S) {
    let id = created(a).await;
    let kept = created(a).await;
    a.finish(id, Outcome::Finished(response(b"short")), 1)
        .await
        .unwrap();
    a.finish(kept, Outcome::Cancelled, 60).await.unwrap();
    let deadline = Instant::now() + EVICTION_BOUND;
    while b.status(id).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the result was still kept {EVICTION_BOUND:?} after its 1 s retention"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.wait(id).await.unwrap().is_none());
    // Only that one: another operation's result is still there.
    assert!(matches!(
        b.status(kept).await.unwrap(),
        Some(OperationStatus::Cancelled)
    ));
}
