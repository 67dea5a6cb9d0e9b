//! Callback mode end to end: `202`, the notification to a real receiver on
//! loopback, the fetch; delivery retries, refusals, signing; and the URI
//! checks that keep callbacks from becoming a way into internal networks.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use async_op::{AsyncOpsBuilder, MemoryStore};
use async_op_tests::{
    TestServer, client, follow, location, ops_builder, problem,
    receiver::{Receiver, Step},
    retry_after, until,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Callbacks to loopback allowed, fast retries.
fn callbacks(builder: AsyncOpsBuilder) -> AsyncOpsBuilder {
    builder
        .callback_allow_hosts(["127.0.0.1", "169.254.169.254", "10.0.0.1", "receiver.test"])
        .callback_allow_networks(["127.0.0.0/8"])
        .callback_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

async fn server(configure: impl FnOnce(AsyncOpsBuilder) -> AsyncOpsBuilder) -> TestServer {
    let store = MemoryStore::new();
    TestServer::start_with(configure(callbacks(ops_builder(&store))), store).await
}

async fn begin_with_callback(server: &TestServer, path: &str, callback: &str) -> reqwest::Response {
    client()
        .post(server.url(path))
        .header(
            "prefer",
            format!(r#"respond-async, callback; url="{callback}""#),
        )
        .json(&json!({"n": 7}))
        .send()
        .await
        .unwrap()
}

/// The fetch URI a client builds: the 202's poll path, the notification's query.
fn fetch_uri(server: &TestServer, accepted_location: &str, query: &str) -> String {
    let poll_path = accepted_location.split_once('?').unwrap().0;
    server.url(&format!("{poll_path}?{query}"))
}

#[actix_web::test]
async fn a_full_callback_run() {
    let server = server(|b| b).await;
    let mut receiver = Receiver::start(vec![]).await;
    let res = begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["preference-applied"], "callback");
    assert_eq!(res.headers()[header::VARY], "prefer");
    assert_eq!(retry_after(&res), 1);
    let accepted = location(&res);
    assert!(accepted.starts_with("/async-response?"), "{accepted}");

    let notification = receiver.next().await;
    assert_eq!(notification.method, "GET");
    assert_eq!(notification.path, "/cb");
    assert!(!notification.query.is_empty());
    assert!(
        notification
            .header("webhook-id")
            .unwrap()
            .starts_with("msg_")
    );
    assert!(notification.header("authorization").is_none());
    assert!(
        notification.header("webhook-signature").is_none(),
        "unsigned by default"
    );

    let res = client()
        .get(fetch_uri(&server, &accepted, &notification.query))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"n": 7}));
    until("the delivery is counted", || {
        server.ops.callback_stats().delivered == 1
    })
    .await;
    server.stop().await;
}

#[actix_web::test]
async fn the_client_may_poll_the_202s_location_instead() {
    let server = server(|b| b).await;
    let mut receiver = Receiver::start(vec![]).await;
    let res = begin_with_callback(&server, "/gated", &format!("{}/cb", receiver.base)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let poll = server.url(&location(&res));
    // Polling before the operation ends: the usual answers.
    tokio::time::sleep(Duration::from_secs(retry_after(&res))).await;
    let running = client().get(&poll).send().await.unwrap();
    assert_eq!(running.status(), StatusCode::SEE_OTHER);
    server.gate.open();
    let res = follow(&server.url(&location(&running)), &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    // The notification still comes, and leads to the same result.
    let notification = receiver.next().await;
    let res = client()
        .get(fetch_uri(&server, &location(&running), &notification.query))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "done");
    server.stop().await;
}

#[actix_web::test]
async fn a_receiver_that_fails_at_first_gets_the_notification_once_it_recovers() {
    let server = server(|b| b).await;
    let mut receiver = Receiver::start(vec![
        Step::Answer(503, vec![]),
        Step::Drop,
        Step::Answer(429, vec![("retry-after", "0".into())]),
    ])
    .await;
    let res = begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let attempts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    let id = attempts[0].header("webhook-id").unwrap();
    for attempt in &attempts {
        assert_eq!(
            attempt.header("webhook-id"),
            Some(id),
            "a stable delivery id"
        );
        assert_eq!(attempt.query, attempts[0].query);
    }
    until("the delivery is counted", || {
        server.ops.callback_stats().delivered == 1
    })
    .await;
    let stats = server.ops.callback_stats();
    assert_eq!((stats.attempts, stats.retries, stats.abandoned), (4, 3, 0));
    let res = client()
        .get(fetch_uri(&server, &location(&res), &attempts[3].query))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    server.stop().await;
}

#[actix_web::test]
async fn a_receiver_answering_404_stops_the_retries() {
    let server = server(|b| b).await;
    let mut receiver = Receiver::start(vec![Step::Answer(404, vec![])]).await;
    begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    receiver.next().await;
    until("the delivery is abandoned", || {
        server.ops.callback_stats().abandoned == 1
    })
    .await;
    assert_eq!(server.ops.callback_stats().attempts, 1);
    assert!(receiver.received.try_recv().is_err(), "no second attempt");
    server.stop().await;
}

#[actix_web::test]
async fn a_redirecting_receiver_is_not_followed() {
    let server = server(|b| b).await;
    let mut elsewhere = Receiver::start(vec![]).await;
    let mut receiver = Receiver::start(vec![Step::Answer(
        307,
        vec![("location", format!("{}/elsewhere", elsewhere.base))],
    )])
    .await;
    begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    receiver.next().await;
    until("the delivery is abandoned", || {
        server.ops.callback_stats().abandoned == 1
    })
    .await;
    assert!(
        elsewhere.received.try_recv().is_err(),
        "the redirect was followed"
    );
    server.stop().await;
}

#[actix_web::test]
async fn failed_operations_notify_too() {
    let server = server(|b| b).await;
    let mut receiver = Receiver::start(vec![]).await;
    let res = begin_with_callback(&server, "/panics", &format!("{}/cb", receiver.base)).await;
    let notification = receiver.next().await;
    let res = client()
        .get(fetch_uri(&server, &location(&res), &notification.query))
        .send()
        .await
        .unwrap();
    problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-failed",
    )
    .await;
    server.stop().await;
}

#[actix_web::test]
async fn signed_notifications_verify_the_standard_webhooks_way() {
    let server = server(|b| b.callback_signing_secret(SIGNING_SECRET)).await;
    let mut receiver = Receiver::start(vec![]).await;
    begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    let notification = receiver.next().await;
    let id = notification.header("webhook-id").unwrap();
    let timestamp = notification.header("webhook-timestamp").unwrap();
    let signature = notification.header("webhook-signature").unwrap();
    // Verified as a receiver would: HMAC-SHA256 over "id.timestamp.body"
    // with the base64-decoded part of the secret after "whsec_".
    let key = STANDARD
        .decode(SIGNING_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected);
    let age = async_op_tests::unix_now().abs_diff(timestamp.parse().unwrap());
    assert!(age < 300, "timestamp {timestamp}");
    server.stop().await;
}

#[actix_web::test]
async fn bad_callback_uris_are_refused_and_start_nothing() {
    let server = server(|b| b).await;
    let receiver = Receiver::start(vec![]).await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let refused = [
        (
            "http://not-allowed.example/cb".to_owned(),
            "disallowed host",
        ),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "metadata address",
        ),
        ("http://10.0.0.1/cb".to_owned(), "private address"),
        (
            format!("http://user:secret@127.0.0.1:{port}/cb"),
            "user info",
        ),
        (
            format!("http://127.0.0.1:{port}/cb?mine=1"),
            "a query of its own",
        ),
        (format!("http://127.0.0.1:{port}/cb#part"), "a fragment"),
        (format!("ftp://127.0.0.1:{port}/cb"), "non-http scheme"),
        ("/relative/cb".to_owned(), "not absolute"),
        (
            "http://receiver.test/cb".to_owned(),
            "a host that does not resolve",
        ),
    ];
    for (uri, what) in refused {
        let res = begin_with_callback(&server, "/echo", &uri).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}: {uri}");
        assert_eq!(res.headers()[header::VARY], "prefer");
        let body = problem(
            res,
            StatusCode::BAD_REQUEST,
            "urn:async-op:problem:invalid-callback",
        )
        .await;
        eprintln!("{what}: {}", body["detail"]);
    }
    assert_eq!(server.store.len(), 0, "an operation was started");
    server.stop().await;
}

#[actix_web::test]
async fn callbacks_reach_nothing_until_the_app_allows_it() {
    let store = MemoryStore::new();
    let server = TestServer::start_with(ops_builder(&store), store).await;
    let receiver = Receiver::start(vec![]).await;
    let res = begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    let body = problem(
        res,
        StatusCode::BAD_REQUEST,
        "urn:async-op:problem:invalid-callback",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("not enabled"),
        "{body}"
    );
    // Allowing the host is not enough for loopback: the network must be too.
    let store = MemoryStore::new();
    let server = TestServer::start_with(
        ops_builder(&store).callback_allow_hosts(["127.0.0.1"]),
        store,
    )
    .await;
    let res = begin_with_callback(&server, "/echo", &format!("{}/cb", receiver.base)).await;
    let body = problem(
        res,
        StatusCode::BAD_REQUEST,
        "urn:async-op:problem:invalid-callback",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{body}"
    );
    assert_eq!(server.store.len(), 0);
    server.stop().await;
}

#[actix_web::test]
async fn a_python_http_server_receives_the_notification_and_fetches_with_requests() {
    let server = server(|b| b).await;
    let (stdout, _) = async_op_tests::run_python("callback_receiver.py", &[&server.base]).await;
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("202"), "{stdout}");
    assert_eq!(lines.next(), Some("200"), "{stdout}");
    let report: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(report["request"], json!({"seconds": 0.5, "fail": false}));
    server.stop().await;
}
