//! Many servers sharing one Redis (PROTOCOL.md, "Many servers"): real
//! actix-web servers, each with its own `AsyncOps` and its own `RedisStore`,
//! and the same secret. Any server answers any poll; a long poll held by one
//! wakes when another finishes; an operation whose server was killed is
//! reported lost within the lease; Redis going away gives 503s, and its
//! return resumes service.
//!
//! Assertions are on what was answered and in which order. The two bounds
//! that are about time (the lost operation) are the documented bounds, with
//! room for a busy machine.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use async_op::store::RedisStore;
use async_op_tests::{
    claims, client, follow, location, problem,
    redis::{
        Node, PrivateRedis, TEST_REDIS_URL, cluster_builder, redis_store, redis_url, unique_prefix,
    },
    retry_after, unix_now, until,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Two servers, A and B, on the shared Redis with a prefix of their own.
async fn two_nodes(test: &str, lease: Duration, long_poll: Duration) -> (Node, Node) {
    let prefix = unique_prefix(test);
    let a = redis_store(redis_url(), &prefix, lease).await;
    let b = redis_store(redis_url(), &prefix, lease).await;
    (
        Node::start(cluster_builder(a).long_poll(long_poll)).await,
        Node::start(cluster_builder(b).long_poll(long_poll)).await,
    )
}

/// Begins on `node` and returns the poll URI's path and query.
async fn begin(node: &Node, path: &str, body: &Value) -> String {
    let res = client()
        .post(node.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    location(&res)
}

/// Waits out the state's `nbf`, as a client honouring `Retry-After` does.
async fn after_nbf(poll: &str) {
    let nbf = claims(poll)["nbf"].as_u64().unwrap();
    while unix_now() < nbf {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn begun_on_one_server_polled_and_cancelled_on_another() {
    let (a, b) = two_nodes("any-server", Duration::from_secs(10), Duration::ZERO).await;

    // Begun on A, followed on B to the result.
    let poll = begin(&a, "/echo", &json!({"from": "a"})).await;
    let res = follow(&b.url(&poll), &b.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"from": "a"}));

    // Running on A: B answers with a new state; once A's handler ends, B
    // answers with its whole response.
    let poll = begin(&a, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let res = client().get(b.url(&poll)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let next = location(&res);
    assert_eq!(claims(&next)["seq"], 2);
    a.gate.open();
    let res = follow(&b.url(&next), &b.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-result"], "yes");
    assert_eq!(res.text().await.unwrap(), "done");
    // And A answers the same.
    let res = client().get(a.url(&poll)).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "done");

    // Cancelled on B while it runs on A.
    let (a2, b2) = two_nodes("cancel", Duration::from_secs(10), Duration::ZERO).await;
    let poll = begin(&a2, "/gated", &json!(null)).await;
    let res = client().delete(b2.url(&poll)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    after_nbf(&poll).await;
    let res = client().get(a2.url(&poll)).send().await.unwrap();
    problem(
        res,
        StatusCode::GONE,
        "urn:async-op:problem:operation-cancelled",
    )
    .await;

    for node in [a, b, a2, b2] {
        node.stop().await;
    }
}

#[actix_web::test]
async fn a_long_poll_held_on_one_server_returns_when_another_finishes() {
    // Leases far longer than the 30 s hold: only the wake-up through Redis
    // can answer the held poll with the result.
    let (a, b) = two_nodes(
        "long-poll",
        Duration::from_secs(120),
        Duration::from_secs(30),
    )
    .await;
    let poll = begin(&a, "/gated", &json!(null)).await;
    after_nbf(&poll).await;
    let held = tokio::spawn({
        let url = b.url(&poll);
        async move { client().get(url).send().await.unwrap() }
    });
    until("the poll is held on B", || b.ops.held_requests() == 1).await;
    assert_eq!(a.ops.held_requests(), 0);
    let opened = Instant::now();
    a.gate.open();
    let res = held.await.unwrap();
    // A 200, not the 303 that the 30 s hold limit gives.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    eprintln!("finish on A to answer on B: {:?}", opened.elapsed());
    assert_eq!(b.ops.held_requests(), 0);
    a.stop().await;
    b.stop().await;
}

/// Server A as a process of its own (`async-op-cluster-node`), killed with
/// SIGKILL when dropped.
struct ChildNode {
    child: Child,
    base: String,
}

impl ChildNode {
    async fn start(envs: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_async-op-cluster-node"));
        command
            .env_remove("ASYNC_OP_REDIS_URL")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the node starts within 30 s")
            .unwrap()
            .expect("the node prints LISTENING");
        let base = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no drop, no finish, no goodbye; its leases stop being renewed.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

#[actix_web::test]
async fn an_operation_whose_server_was_killed_is_reported_lost() {
    let prefix = unique_prefix("killed");
    let lease = Duration::from_secs(2);
    let a = ChildNode::start(&[
        (TEST_REDIS_URL, redis_url().to_owned()),
        ("NODE_PREFIX", prefix.clone()),
        ("NODE_LEASE_MS", lease.as_millis().to_string()),
        ("NODE_LONG_POLL", "30".into()),
    ])
    .await;
    let b_store = redis_store(redis_url(), &prefix, lease).await;
    let b = Node::start(cluster_builder(b_store).long_poll(Duration::from_secs(30))).await;

    // Two operations on A that never end by themselves: one long-polled on
    // B (held for up to 30 s), one polled on B every second (its handler
    // holds polls for 1 s only).
    let res = client().post(a.url("/gated")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let held_poll = location(&res);
    let res = client()
        .post(a.url("/gated-short-hold"))
        .send()
        .await
        .unwrap();
    let polled = location(&res);
    after_nbf(&held_poll).await;
    after_nbf(&polled).await;
    let res = client().get(b.url(&polled)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "running while A lives");
    let polled = location(&res);

    let held = tokio::spawn({
        let url = b.url(&held_poll);
        async move { client().get(url).send().await.unwrap() }
    });
    until("the poll is held on B", || b.ops.held_requests() == 1).await;

    a.kill().await;
    let killed = Instant::now();

    // The held poll: answered when the lease runs out, long before its 30 s.
    let res = held.await.unwrap();
    let noticed = killed.elapsed();
    problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-lost",
    )
    .await;
    assert!(
        noticed <= lease + Duration::from_secs(2),
        "the held poll learnt of the loss {noticed:?} after the kill (lease {lease:?})"
    );

    // The polled one: within the lease plus one poll.
    let res = follow(&b.url(&polled), &b.base, 10).await;
    let noticed = killed.elapsed();
    problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-lost",
    )
    .await;
    assert!(
        noticed <= lease + Duration::from_secs(1 + 1 + 3),
        "the poller learnt of the loss {noticed:?} after the kill \
         (lease {lease:?} + Retry-After 1 s + hold 1 s)"
    );

    // It stays lost.
    let res = client().get(b.url(&held_poll)).send().await.unwrap();
    problem(
        res,
        StatusCode::INTERNAL_SERVER_ERROR,
        "urn:async-op:problem:operation-lost",
    )
    .await;
    b.stop().await;
}

#[actix_web::test]
async fn a_server_configured_from_the_environment_shares_its_operations() {
    // ASYNC_OP_REDIS_URL through AsyncOpsBuilder::store_from_env, as an app
    // would configure it: default prefix and lease.
    let a = ChildNode::start(&[
        ("ASYNC_OP_REDIS_URL", redis_url().to_owned()),
        ("ASYNC_OP_SECRET", async_op_tests::SECRET.to_owned()),
        ("ASYNC_OP_RETRY_AFTER", "1".into()),
        ("ASYNC_OP_LONG_POLL", "0".into()),
    ])
    .await;
    let b_store = RedisStore::connect(redis_url()).await.unwrap();
    let b = Node::start(cluster_builder(b_store)).await;
    let res = client()
        .post(a.url("/echo"))
        .json(&json!("from the environment"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = follow(&b.url(&location(&res)), &b.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!("from the environment")
    );
    a.kill().await;
    b.stop().await;

    // A Redis that cannot be reached stops the start, without its password.
    let output = Command::new(env!("CARGO_BIN_EXE_async-op-cluster-node"))
        .env("ASYNC_OP_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
        .env("ASYNC_OP_SECRET", async_op_tests::SECRET)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ASYNC_OP_REDIS_URL"), "{stderr}");
    assert!(stderr.contains("redis://***@127.0.0.1:1/0"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Asserts a `503` with `Retry-After` and the store-unavailable problem.
async fn store_unavailable(res: reqwest::Response) {
    assert!(res.headers().contains_key(header::RETRY_AFTER), "{res:?}");
    assert!(retry_after(&res) >= 1);
    problem(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "urn:async-op:problem:store-unavailable",
    )
    .await;
}

#[actix_web::test]
async fn redis_going_away_gives_503s_and_its_return_resumes_service() {
    let mut redis = PrivateRedis::start();
    let prefix = unique_prefix("redis-restart");
    let store = |prefix: String, url: String| async move {
        RedisStore::builder(url)
            .prefix(prefix)
            .lease(Duration::from_secs(2))
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap()
    };
    let a = Node::start(cluster_builder(store(prefix.clone(), redis.url()).await)).await;
    let b = Node::start(cluster_builder(store(prefix, redis.url()).await)).await;
    let poll = begin(&a, "/gated", &json!(null)).await;
    after_nbf(&poll).await;

    redis.kill();
    let res = client().post(a.url("/echo")).json(&1).send().await.unwrap();
    store_unavailable(res).await;
    let res = client().get(b.url(&poll)).send().await.unwrap();
    store_unavailable(res).await;

    redis.restart();
    // A new begin works again once the connection is back (each try is
    // either refused with 503 or accepted).
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_poll = loop {
        let res = client().post(a.url("/echo")).json(&2).send().await.unwrap();
        match res.status() {
            StatusCode::SEE_OTHER => break location(&res),
            StatusCode::SERVICE_UNAVAILABLE => store_unavailable(res).await,
            other => panic!("unexpected {other} while Redis returns"),
        }
        assert!(
            Instant::now() < deadline,
            "no begin accepted after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let res = follow(&b.url(&new_poll), &b.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!(2));

    // The operation begun before the restart (Redis came back empty) is put
    // back by A's lease renewal, and its result reaches B.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = client().get(b.url(&poll)).send().await.unwrap();
        match res.status() {
            StatusCode::SEE_OTHER => break,
            StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other} for the operation in flight"),
        }
        assert!(
            Instant::now() < deadline,
            "the operation in flight did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.gate.open();
    let res = follow(&b.url(&poll), &b.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    a.stop().await;
    b.stop().await;
}

#[actix_web::test]
async fn the_same_idempotency_key_on_two_servers_starts_one_operation() {
    let (a, b) = two_nodes("idempotency", Duration::from_secs(10), Duration::ZERO).await;
    let keyed = |node: &Node, body: Value| {
        client()
            .post(node.url("/counted"))
            .header("idempotency-key", "\"order-4711\"")
            .json(&body)
    };
    let on_a = keyed(&a, json!({"order": 4711})).send().await.unwrap();
    assert_eq!(on_a.status(), StatusCode::SEE_OTHER);
    let on_b = keyed(&b, json!({"order": 4711})).send().await.unwrap();
    assert_eq!(on_b.status(), StatusCode::SEE_OTHER);
    let op_a = claims(&location(&on_a))["op"].clone();
    assert_eq!(
        claims(&location(&on_b))["op"],
        op_a,
        "B answered with A's operation"
    );

    // The result, fetched from B, is the one operation's; the handler ran
    // once, on A, and never on B.
    let res = follow(&b.url(&location(&on_b)), &b.base, 10).await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"order": 4711}));
    assert_eq!((a.runs.count(), b.runs.count()), (1, 0));

    // The same key with another body is refused, on either server.
    let other = keyed(&b, json!({"order": 4712})).send().await.unwrap();
    problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:async-op:problem:idempotency-key-reused",
    )
    .await;
    a.stop().await;
    b.stop().await;
}
