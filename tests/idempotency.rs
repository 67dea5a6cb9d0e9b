//! Idempotent begin with `Idempotency-Key`, on one instance. (Across
//! instances sharing Redis: tests/cluster.rs.)

#![allow(missing_docs, clippy::unwrap_used)]

use async_op::{AsyncOpsBuilder, MemoryStore};
use async_op_tests::{TestServer, claims, client, follow, location, ops_builder, problem};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server(configure: impl FnOnce(AsyncOpsBuilder) -> AsyncOpsBuilder) -> TestServer {
    let store = MemoryStore::new();
    TestServer::start_with(configure(ops_builder(&store)), store).await
}

async fn begin_keyed(
    server: &TestServer,
    key: &str,
    body: &Value,
    who: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .post(server.url("/counted"))
        .header("idempotency-key", format!("\"{key}\""))
        .json(body);
    if let Some(who) = who {
        request = request.header("x-client", who);
    }
    request.send().await.unwrap()
}

fn op(res: &reqwest::Response) -> String {
    claims(&location(res))["op"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn a_repeat_gets_the_same_operation_and_the_handler_runs_once() {
    let server = server(|b| b).await;
    let first = begin_keyed(&server, "key-1", &json!({"a": 1}), None).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let repeat = begin_keyed(&server, "key-1", &json!({"a": 1}), None).await;
    assert_eq!(repeat.status(), StatusCode::SEE_OTHER);
    assert_eq!(op(&first), op(&repeat));
    // A state minted for the repeat (within the same second it may equal
    // the first, which is just as valid).
    assert!(
        claims(&location(&repeat))["iat"].as_u64() >= claims(&location(&first))["iat"].as_u64()
    );
    let res = follow(&server.url(&location(&repeat)), &server.base, 5).await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"a": 1}));
    assert_eq!(server.runs.count(), 1);
    // Another key is another operation.
    let other = begin_keyed(&server, "key-2", &json!({"a": 1}), None).await;
    assert_ne!(op(&first), op(&other));
    server.stop().await;
}

#[actix_web::test]
async fn concurrent_repeats_start_one_operation() {
    let server = server(|b| b).await;
    let body = json!(1);
    let answers = join_all((0..20).map(|_| begin_keyed(&server, "racing", &body, None))).await;
    let ops: std::collections::HashSet<_> = answers.iter().map(op).collect();
    assert_eq!(ops.len(), 1, "{ops:?}");
    let res = follow(&server.url(&location(&answers[0])), &server.base, 5).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.runs.count(), 1);
    server.stop().await;
}

#[actix_web::test]
async fn a_repeat_with_another_body_is_refused() {
    let server = server(|b| b).await;
    begin_keyed(&server, "key-1", &json!({"a": 1}), None).await;
    let res = begin_keyed(&server, "key-1", &json!({"a": 2}), None).await;
    problem(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:async-op:problem:idempotency-key-reused",
    )
    .await;
    assert_eq!(server.store.len(), 1);
    server.stop().await;
}

#[actix_web::test]
async fn keys_are_scoped_to_the_client_identity() {
    let server = server(|b| {
        b.client_identity(|req| {
            req.headers()
                .get("x-client")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    })
    .await;
    let alice = begin_keyed(&server, "shared-key", &json!(1), Some("alice")).await;
    let bob = begin_keyed(&server, "shared-key", &json!(1), Some("bob")).await;
    assert_ne!(op(&alice), op(&bob));
    let alice_again = begin_keyed(&server, "shared-key", &json!(1), Some("alice")).await;
    assert_eq!(op(&alice), op(&alice_again));
    server.stop().await;
}

#[actix_web::test]
async fn malformed_keys_are_400_and_start_nothing() {
    let server = server(|b| b).await;
    for key in [
        "\"\"",
        &format!("\"{}\"", "k".repeat(256)),
        "\"unterminated",
    ] {
        let res = client()
            .post(server.url("/counted"))
            .header("idempotency-key", key)
            .json(&json!(1))
            .send()
            .await
            .unwrap();
        problem(
            res,
            StatusCode::BAD_REQUEST,
            "urn:async-op:problem:invalid-idempotency-key",
        )
        .await;
    }
    assert_eq!(server.store.len(), 0);
    server.stop().await;
}
