//! Cancellation, client binding and the limits, end to end on loopback.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use async_op::{AsyncOpsBuilder, MemoryStore, OperationId, poll::Cancellation};
use async_op_tests::{
    TestServer, begin, claims, client, follow, location, ops_builder, problem, retry_after,
};
use reqwest::{StatusCode, header};
use serde_json::json;

async fn server(configure: impl FnOnce(AsyncOpsBuilder) -> AsyncOpsBuilder) -> TestServer {
    let store = MemoryStore::new();
    TestServer::start_with(configure(ops_builder(&store)), store).await
}

fn op_of(poll: &str) -> OperationId {
    OperationId::parse(claims(poll)["op"].as_str().unwrap()).unwrap()
}

#[actix_web::test]
async fn cancelling_a_running_operation_drops_its_handler() {
    let server = server(|b| b).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    assert_eq!(server.ops.pending_operations(), 1);
    let res = client().delete(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The handler's future was dropped: the operation no longer counts as
    // pending, although its gate never opened.
    async_op_tests::until("the handler is dropped", || {
        server.ops.pending_operations() == 0
    })
    .await;
    // Later polls (also with the same state, at once) are 410.
    let res = follow(&poll, &server.base, 5).await;
    problem(
        res,
        StatusCode::GONE,
        "urn:async-op:problem:operation-cancelled",
    )
    .await;
    // Cancelling again is fine.
    let res = client().delete(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    server.stop().await;
}

#[actix_web::test]
async fn cancelling_a_finished_operation_is_a_conflict_and_keeps_the_result() {
    let server = server(|b| b).await;
    let poll = begin(&server, "/echo", &json!("kept")).await;
    let res = follow(&poll, &server.base, 5).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = client().delete(&poll).send().await.unwrap();
    problem(
        res,
        StatusCode::CONFLICT,
        "urn:async-op:problem:operation-ended",
    )
    .await;
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!("kept")
    );
    server.stop().await;
}

#[actix_web::test]
async fn cancelling_an_unknown_operation_is_404_and_a_bad_state_400() {
    let server = server(|b| b).await;
    let res = client()
        .delete(server.unknown_operation_url())
        .send()
        .await
        .unwrap();
    problem(
        res,
        StatusCode::NOT_FOUND,
        "urn:async-op:problem:operation-not-found",
    )
    .await;
    let res = client()
        .delete(server.url("/async-response?nonsense"))
        .send()
        .await
        .unwrap();
    problem(
        res,
        StatusCode::BAD_REQUEST,
        "urn:async-op:problem:invalid-state",
    )
    .await;
    server.stop().await;
}

#[actix_web::test]
async fn the_application_can_cancel_through_the_api() {
    let server = server(|b| b).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    let op = op_of(&poll);
    assert_eq!(
        server.ops.cancel(op).await.unwrap(),
        Cancellation::Cancelled
    );
    assert_eq!(
        server.ops.cancel(OperationId::random()).await.unwrap(),
        Cancellation::NotFound
    );
    let res = follow(&poll, &server.base, 5).await;
    assert_eq!(res.status(), StatusCode::GONE);
    server.stop().await;
}

#[actix_web::test]
async fn a_cancelled_callback_operation_notifies_its_client() {
    let server = server(|b| {
        b.callback_allow_hosts(["127.0.0.1"])
            .callback_allow_networks(["127.0.0.0/8"])
    })
    .await;
    let mut receiver = async_op_tests::receiver::Receiver::start(vec![]).await;
    let res = client()
        .post(server.url("/gated"))
        .header(
            "prefer",
            format!(r#"respond-async, callback; url="{}/cb""#, receiver.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let poll = server.url(&location(&res));
    let res = client().delete(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let notification = receiver.next().await;
    let fetch = server.url(&format!("/async-response?{}", notification.query));
    let res = client().get(fetch).send().await.unwrap();
    problem(
        res,
        StatusCode::GONE,
        "urn:async-op:problem:operation-cancelled",
    )
    .await;
    server.stop().await;
}

fn bound(builder: AsyncOpsBuilder) -> AsyncOpsBuilder {
    builder.client_identity(|req| {
        req.headers()
            .get("x-client")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

#[actix_web::test]
async fn a_bound_operation_answers_only_its_client() {
    let server = server(bound).await;
    let res = client()
        .post(server.url("/echo"))
        .header("x-client", "alice")
        .json(&json!("alice's"))
        .send()
        .await
        .unwrap();
    let poll = server.url(&location(&res));
    assert_eq!(claims(&poll)["sub"], "alice");
    tokio::time::sleep(Duration::from_secs(retry_after(&res))).await;

    for who in [Some("mallory"), None] {
        let mut request = client().get(&poll);
        if let Some(who) = who {
            request = request.header("x-client", who);
        }
        let res = request.send().await.unwrap();
        let body = problem(res, StatusCode::FORBIDDEN, "urn:async-op:problem:forbidden").await;
        assert!(!body.to_string().contains("alice's"));
        let mut request = client().delete(&poll);
        if let Some(who) = who {
            request = request.header("x-client", who);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    let res = client()
        .get(&poll)
        .header("x-client", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!("alice's")
    );
    server.stop().await;
}

#[actix_web::test]
async fn a_long_identity_binds_through_its_digest() {
    let server = server(bound).await;
    let alice = format!("alice-{}", "x".repeat(2000));
    let res = client()
        .post(server.url("/echo"))
        .header("x-client", &alice)
        .json(&json!("long"))
        .send()
        .await
        .unwrap();
    let poll = server.url(&location(&res));
    let sub = claims(&poll)["sub"].as_str().unwrap().to_owned();
    assert!(sub.starts_with("sha256:") && sub.len() < 60, "{sub}");
    tokio::time::sleep(Duration::from_secs(retry_after(&res))).await;
    let other = client()
        .get(&poll)
        .header("x-client", "alice-x")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let res = client()
        .get(&poll)
        .header("x-client", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    server.stop().await;
}

#[actix_web::test]
async fn an_anonymous_begin_stays_unbound() {
    let server = server(bound).await;
    let poll = begin(&server, "/echo", &json!(1)).await;
    assert!(claims(&poll).get("sub").is_none());
    let res = follow(&poll, &server.base, 5).await;
    assert_eq!(res.status(), StatusCode::OK);
    server.stop().await;
}

#[actix_web::test]
async fn beyond_the_pending_limit_begins_get_503_and_start_nothing() {
    let server = server(|b| b.max_pending(2)).await;
    let first = begin(&server, "/gated", &json!(null)).await;
    begin(&server, "/gated", &json!(null)).await;
    let res = client().post(server.url("/gated")).send().await.unwrap();
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    problem(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "urn:async-op:problem:too-many-operations",
    )
    .await;
    assert_eq!(server.store.len(), 2);
    // The server goes on serving, and once an operation ends there is room.
    let res = client().get(&first).send().await.unwrap();
    assert_ne!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    server.gate.open();
    async_op_tests::until("room again", || server.ops.pending_operations() == 0).await;
    let poll = begin(&server, "/echo", &json!("room")).await;
    assert_eq!(
        follow(&poll, &server.base, 5).await.status(),
        StatusCode::OK
    );
    server.stop().await;
}

#[actix_web::test]
async fn a_result_over_the_size_limit_fails_its_operation_clearly() {
    let server = server(|b| b.max_result_bytes(1000)).await;
    let small = begin(&server, "/sized?bytes=1000", &json!(null)).await;
    let large = begin(&server, "/sized?bytes=1001", &json!(null)).await;
    let res = follow(&small, &server.base, 5).await;
    assert_eq!(res.bytes().await.unwrap().len(), 1000);
    let res = follow(&large, &server.base, 5).await;
    let body = problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("larger"),
        "{body}"
    );
    server.stop().await;
}

#[actix_web::test]
async fn an_overlong_poll_query_is_refused_before_parsing() {
    let server = server(|b| b).await;
    let res = client()
        .get(server.url(&format!("/async-response?{}", "e".repeat(4096))))
        .send()
        .await
        .unwrap();
    let body = problem(
        res,
        StatusCode::BAD_REQUEST,
        "urn:async-op:problem:invalid-state",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("longer"),
        "{body}"
    );
    server.stop().await;
}
