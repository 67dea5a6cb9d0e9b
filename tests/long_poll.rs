//! Long polling, the early-poll hold policy, `Prefer: wait` and graceful
//! shutdown, against a real server on loopback. Every assertion is on what
//! was answered and in which order, never on elapsed time.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_op::{EarlyPoll, MemoryStore};
use async_op_tests::{
    TestServer, begin, claims, client, location, ops_builder, retry_after, unix_now, until,
};
use futures_util::future::join_all;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

async fn server(
    configure: impl FnOnce(async_op::AsyncOpsBuilder) -> async_op::AsyncOpsBuilder,
) -> TestServer {
    let store = MemoryStore::new();
    TestServer::start_with(configure(ops_builder(&store)), store).await
}

/// Waits out the state's `nbf`, as a client honouring `Retry-After` does.
async fn after_nbf(poll: &str) {
    let nbf = claims(poll)["nbf"].as_u64().unwrap();
    while unix_now() < nbf {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_held_poll_is_answered_with_the_result_when_the_operation_finishes() {
    let server = server(|b| b.long_poll(Duration::from_secs(30))).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let held = tokio::spawn(async move { client().get(&poll).send().await.unwrap() });
    until("the poll is held", || server.ops.held_requests() == 1).await;
    let opened = Instant::now();
    server.gate.open();
    let res = held.await.unwrap();
    // A 200 (not the 303 the 30 s hold limit would give) proves the held
    // poll was woken by the completion itself.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    eprintln!("completion to answer: {:?}", opened.elapsed());
    assert_eq!(server.ops.held_requests(), 0);
    server.stop().await;
}

#[actix_web::test]
async fn the_hold_limit_gives_a_303_with_a_new_state() {
    let server = server(|b| b.long_poll(Duration::from_secs(1))).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(retry_after(&res), 1);
    assert_eq!(claims(&location(&res))["seq"], 2);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn the_macro_overrides_the_hold_limit_and_the_early_poll_policy() {
    let server = server(|b| b.long_poll(Duration::from_secs(30))).await;
    let poll = begin(&server, "/gated-short-hold", &json!(null)).await;
    after_nbf(&poll).await;
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "held for 1 s, not 30 s"
    );

    let poll = begin(&server, "/echo-hold", &json!("held")).await;
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn the_hold_policy_answers_an_early_poll_instead_of_503() {
    let server = server(|b| b.early_poll(EarlyPoll::Hold)).await;
    let poll = begin(&server, "/echo", &json!({"n": 1})).await;
    assert_eq!(claims(&poll)["hold"], true);
    // Followed at once, as a browser does: held until nbf, then answered.
    let res = client().get(&poll).send().await.unwrap();
    assert_ne!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"n": 1}));
    server.stop().await;
}

#[actix_web::test]
async fn the_hold_policy_never_holds_longer_than_30_seconds() {
    // A Retry-After longer than the hold limit: an early follow is refused
    // at once, as under `reject`, instead of being held for 40 s.
    let server = server(|b| {
        b.early_poll(EarlyPoll::Hold)
            .retry_after(Duration::from_secs(40))
    })
    .await;
    let res = client()
        .post(server.url("/gated-default-wait"))
        .send()
        .await
        .unwrap();
    let poll = server.url(&location(&res));
    let early = client().get(&poll).send().await.unwrap();
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after(&early) > 30);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn the_reject_policy_is_the_default_and_answers_503() {
    let server = server(|b| b).await;
    let poll = begin(&server, "/echo", &json!(1)).await;
    assert!(claims(&poll).get("hold").is_none());
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    server.stop().await;
}

#[actix_web::test]
async fn prefer_wait_returns_a_quick_result_directly() {
    let server = server(|b| b).await;
    let res = client()
        .post(server.url("/echo"))
        .header("prefer", "wait=5")
        .json(&json!({"quick": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["preference-applied"], "wait=5");
    assert_eq!(res.headers()[header::VARY], "prefer");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"quick": true}));
    server.stop().await;
}

#[actix_web::test]
async fn prefer_wait_gives_the_usual_303_for_a_slow_operation() {
    let server = server(|b| b).await;
    let res = client()
        .post(server.url("/gated"))
        .header("prefer", "respond-async, wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["preference-applied"], "wait=1");
    assert_eq!(res.headers()[header::VARY], "prefer");
    assert_eq!(claims(&location(&res))["seq"], 1);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn prefer_wait_is_capped_by_the_server() {
    let server = server(|b| b.max_wait(Duration::from_secs(1))).await;
    let res = client()
        .post(server.url("/gated"))
        .header("prefer", "wait=600")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["preference-applied"], "wait=1");
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn shutdown_releases_held_polls_at_once() {
    let server = server(|b| b.long_poll(Duration::from_secs(30))).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let held_from = unix_now();
    let held = tokio::spawn(async move { client().get(&poll).send().await.unwrap() });
    until("the poll is held", || server.ops.held_requests() == 1).await;
    server.ops.shutdown();
    let res = held.await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let next = claims(&location(&res));
    assert_eq!(next["seq"], 2);
    // Issued at the shutdown, long before the 30 s hold limit.
    assert!(next["iat"].as_u64().unwrap() < held_from + 30, "{next}");
    // And nothing is held any more: a new poll is answered at once.
    let res = client()
        .get(server.url(&location(&res)))
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), StatusCode::OK);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn a_thousand_held_polls_block_neither_begins_nor_polls() {
    const HELD: usize = 1000;
    let server = server(|b| b.long_poll(Duration::from_secs(30))).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let polls: Vec<_> = (0..HELD)
        .map(|_| {
            let poll = poll.clone();
            tokio::spawn(async move {
                // One client each: one connection each, as real clients have.
                client().get(&poll).send().await.unwrap()
            })
        })
        .collect();
    until("a thousand polls are held", || {
        server.ops.held_requests() == HELD
    })
    .await;

    // With all of them held, another operation runs from begin to result.
    let other = begin(&server, "/echo", &json!("still serving")).await;
    after_nbf(&other).await;
    let res = client().get(&other).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!("still serving"));
    assert_eq!(server.ops.held_requests(), HELD);

    server.gate.open();
    for res in join_all(polls).await {
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(server.ops.held_requests(), 0);
    server.stop().await;
}

#[actix_web::test]
async fn curl_follows_to_the_result_without_a_single_503() {
    let server = server(|b| {
        b.early_poll(EarlyPoll::Hold)
            .retry_after(Duration::from_secs(1))
            .long_poll(Duration::from_secs(1))
    })
    .await;
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-L", "-d", r#"{"seconds":3}"#])
        .args(["-H", "content-type: application/json"])
        .args(["-w", "\n%{http_code} %{num_redirects}"])
        .arg(server.url("/reports"))
        .output()
        .await
        .expect("curl");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (body, summary) = stdout.rsplit_once('\n').unwrap();
    // curl -L stops at the first answer that is not a redirect: a final 200
    // means no 503 came in between.
    let (code, redirects) = summary.split_once(' ').unwrap();
    assert_eq!(code, "200", "{stdout}");
    assert!(redirects.parse::<u32>().unwrap() >= 2, "{stdout}");
    let report: Value = serde_json::from_str(body).unwrap();
    assert_eq!(report["request"], json!({"seconds": 3.0, "fail": false}));
    server.stop().await;
}
