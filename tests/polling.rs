//! Polling end to end against a real server on loopback: every row of
//! PROTOCOL.md's Begin (polling) and Poll tables that polling owns.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use async_op_tests::{TestServer, begin, claims, client, follow, location, problem, retry_after};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

#[actix_web::test]
async fn begin_answers_303_with_location_and_retry_after() {
    let server = TestServer::start().await;
    let res = client().post(server.url("/gated")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = location(&res);
    assert!(location.starts_with("/async-response?ey"), "{location}");
    assert_eq!(retry_after(&res), 1);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let claims = claims(&location);
    assert_eq!(claims["seq"], 1);
    assert_eq!(claims["aud"], "async-op");
    assert_eq!(
        claims["nbf"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 1
    );
    assert_eq!(server.store.len(), 1);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn early_poll_gets_503_and_the_same_uri_answers_after_the_wait() {
    let server = TestServer::start().await;
    let poll = begin(&server, "/echo", &json!({"hello": "world"})).await;
    let early = client().get(&poll).send().await.unwrap();
    let wait = retry_after(&early);
    assert!((1..=1).contains(&wait), "Retry-After {wait}");
    problem(
        early,
        StatusCode::SERVICE_UNAVAILABLE,
        "urn:async-op:problem:too-early",
    )
    .await;

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let res = client().get(&poll).send().await.unwrap();
    // Answered: the result, or (on a very busy machine) a 303 onwards.
    let res = match res.status() {
        StatusCode::SEE_OTHER => follow(&server.url(&location(&res)), &server.base, 10).await,
        _ => res,
    };
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"hello": "world"})
    );
    server.stop().await;
}

#[actix_web::test]
async fn every_303_carries_a_new_state_and_old_states_stay_valid() {
    let server = TestServer::start().await;
    let first = begin(&server, "/gated", &json!(null)).await;
    let mut seen = vec![first.clone()];
    let mut url = first.clone();
    for seq in 2..=3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let res = client().get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(retry_after(&res), 1);
        let next = location(&res);
        assert_eq!(claims(&next)["seq"], seq);
        assert_eq!(claims(&next)["op"], claims(&first)["op"]);
        url = server.url(&next);
        assert!(!seen.contains(&url), "a 303 repeated a state");
        seen.push(url.clone());
    }
    // A client whose connection dropped retries an earlier URI: still good.
    let again = client().get(&first).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);

    server.gate.open();
    let res = follow(&url, &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-result"], "yes");
    assert_eq!(res.text().await.unwrap(), "done");
    // Every earlier state leads to the same result, as often as asked.
    for url in &seen {
        let res = client().get(url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.text().await.unwrap(), "done");
    }
    server.stop().await;
}

#[actix_web::test]
async fn the_final_poll_returns_the_handlers_response() {
    let server = TestServer::start().await;
    let poll = begin(&server, "/reports", &json!({"seconds": 0.2})).await;
    let res = follow(&poll, &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["request"], json!({"seconds": 0.2, "fail": false}));
    assert_eq!(report["rows"], 200);
    server.stop().await;
}

#[actix_web::test]
async fn the_handlers_error_response_reaches_the_client_as_is() {
    let server = TestServer::start().await;
    let poll = begin(&server, "/reports", &json!({"seconds": 0, "fail": true})).await;
    let res = follow(&poll, &server.base, 10).await;
    let body = problem(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:quickstart:problem:report-failed",
    )
    .await;
    assert_eq!(body["title"], "Report failed");
    server.stop().await;
}

#[actix_web::test]
async fn a_failed_extraction_answers_at_once_and_starts_nothing() {
    let server = TestServer::start().await;
    for body in [r#"{"seconds": "#, r#"{"seconds": -1}"#, r#"{"fail": true}"#] {
        let res = client()
            .post(server.url("/reports"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(res.headers().get(header::LOCATION).is_none());
    }
    assert_eq!(server.store.len(), 0, "an operation was created");
    server.stop().await;
}

#[actix_web::test]
async fn a_panicking_handler_fails_its_operation_only() {
    let server = TestServer::start().await;
    let poll = begin(&server, "/panics", &json!(null)).await;
    let res = follow(&poll, &server.base, 10).await;
    let body = problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("panicked"),
        "{body}"
    );

    // The server goes on serving.
    let poll = begin(&server, "/echo", &json!(1)).await;
    let res = follow(&poll, &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    server.stop().await;
}

#[actix_web::test]
async fn an_unknown_operation_is_404() {
    let server = TestServer::start().await;
    let res = client()
        .get(server.unknown_operation_url())
        .send()
        .await
        .unwrap();
    problem(
        res,
        StatusCode::NOT_FOUND,
        "urn:async-op:problem:operation-not-found",
    )
    .await;
    server.stop().await;
}

#[actix_web::test]
async fn other_methods_on_the_poll_path_are_405() {
    let server = TestServer::start().await;
    let res = client()
        .put(server.url("/async-response?x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[header::ALLOW], "GET, HEAD, DELETE");
    problem(
        res,
        StatusCode::METHOD_NOT_ALLOWED,
        "urn:async-op:problem:method-not-allowed",
    )
    .await;
    server.stop().await;
}
