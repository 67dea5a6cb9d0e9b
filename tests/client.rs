//! `async_op::client` against real servers on loopback: polling to the typed
//! result, 503s, final error answers, the deadline and the poll limit; and
//! callback mode with a `CallbackReceiver` in a client app of its own. A few
//! tests use a scripted server (`receiver::Receiver`) for answers the real
//! server never gives.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{net::TcpListener, time::Duration};

use actix_web::{App, HttpServer, dev::ServerHandle, dev::Service as _};
use async_op::{
    AsyncOpsBuilder, MemoryStore,
    client::{CallbackReceiver, Client, ClientError, ProblemDetails},
};
use async_op_examples::reports::{Report, ReportRequest};
use async_op_tests::{
    TestServer, client, location, ops_builder,
    receiver::{Receiver, Step},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

async fn server(configure: impl FnOnce(AsyncOpsBuilder) -> AsyncOpsBuilder) -> TestServer {
    let store = MemoryStore::new();
    TestServer::start_with(configure(ops_builder(&store)), store).await
}

/// A server that may call back loopback addresses.
async fn callback_server() -> TestServer {
    server(|b| {
        b.callback_allow_hosts(["127.0.0.1"])
            .callback_allow_networks(["127.0.0.0/8"])
    })
    .await
}

fn report_request(seconds: f64, fail: bool) -> ReportRequest {
    ReportRequest { seconds, fail }
}

/// A request the client app's server got, and what it answered.
#[derive(Debug)]
struct Seen {
    path_and_query: String,
    webhook_id: Option<String>,
    status: StatusCode,
}

/// The client side of callback mode: an actix-web app on loopback that
/// mounts a `CallbackReceiver` and records every request it answers.
struct ClientApp {
    receiver: CallbackReceiver,
    seen: mpsc::UnboundedReceiver<Seen>,
    handle: ServerHandle,
}

impl ClientApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!(
            "http://{}/async-op-callback",
            listener.local_addr().unwrap()
        );
        let receiver = CallbackReceiver::new(&base).unwrap();
        let (record, seen) = mpsc::unbounded_channel();
        let server = HttpServer::new({
            let receiver = receiver.clone();
            move || {
                let record = record.clone();
                App::new()
                    .wrap_fn(move |req, service| {
                        let path_and_query = req.uri().to_string();
                        let webhook_id = req
                            .headers()
                            .get("webhook-id")
                            .map(|id| id.to_str().unwrap().to_owned());
                        let answer = service.call(req);
                        let record = record.clone();
                        async move {
                            let res = answer.await?;
                            let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
                            let _ = record.send(Seen {
                                path_and_query,
                                webhook_id,
                                status,
                            });
                            Ok(res)
                        }
                    })
                    .service(receiver.service())
            }
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self {
            receiver,
            seen,
            handle,
        }
    }

    /// The next request the app answered (bounded: fails after 60 s).
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(60), self.seen.recv())
            .await
            .expect("a request within 60 s")
            .unwrap()
    }

    /// The origin of the app (`http://127.0.0.1:<port>`).
    fn origin(&self) -> String {
        self.receiver.base_url().origin().ascii_serialization()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// The callback URI in a begin request's `Prefer` header.
fn callback_uri(prefer: &str) -> String {
    let (_, rest) = prefer.split_once("url=\"").unwrap();
    rest.split_once('"').unwrap().0.to_owned()
}

#[actix_web::test]
async fn polling_gets_the_typed_report() {
    let server = TestServer::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .post("/reports")
        .json(&report_request(1.0, false))
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.polls() >= 1, "a 1 s report is not done at once");
    assert!(!res.notified());
    let report: Report = res.json().await.unwrap();
    assert_eq!(
        report,
        Report {
            request: report_request(1.0, false),
            rows: 1000,
            summary: "1000 rows in 1 s".into(),
        }
    );
    server.stop().await;
}

#[actix_web::test]
async fn an_early_follow_gets_503_and_is_sent_again_after_retry_after() {
    // Retry-After: 2, so that a follow within the first second is early
    // whatever the clock's fraction of a second.
    let server = server(|b| b.retry_after(Duration::from_secs(2))).await;
    let begin = client()
        .post(server.url("/reports"))
        .json(&json!({"seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(begin.status(), StatusCode::SEE_OTHER);
    let poll = server.url(&location(&begin));
    // Followed at once, as the client's first request: too early.
    let res = Client::new(&server.base)
        .unwrap()
        .get(&poll)
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // One request after the first, to the same URI: the 503 was waited out
    // and the URI followed again (a 303 would have led to a new state).
    assert_eq!(res.polls(), 1);
    assert_eq!(res.url().as_str(), poll);
    let report: Report = res.json().await.unwrap();
    assert_eq!(report.rows, 0);
    server.stop().await;
}

#[actix_web::test]
async fn a_handlers_422_is_the_final_response_with_its_problem() {
    let server = TestServer::start().await;
    let client = Client::new(&server.base).unwrap();
    let failing = || {
        client
            .post("/reports")
            .json(&report_request(0.0, true))
            .wait()
    };

    let res = failing().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.headers()["content-type"], async_op::error::PROBLEM_JSON);
    let problem: ProblemDetails = res.json().await.unwrap();
    assert_eq!(problem.problem_type, "urn:quickstart:problem:report-failed");
    assert_eq!(problem.title.as_deref(), Some("Report failed"));
    assert_eq!(problem.status, Some(422));
    assert!(problem.detail.unwrap().contains("failed"));

    match failing().await.unwrap().error_for_status().await {
        Err(ClientError::Problem { status, problem }) => {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(problem.problem_type, "urn:quickstart:problem:report-failed");
        }
        other => panic!("expected a problem, got {other:?}"),
    }

    // A success passes error_for_status untouched.
    let ok = client
        .post("/echo")
        .json(&json!({"n": 1}))
        .wait()
        .await
        .unwrap()
        .error_for_status()
        .await
        .unwrap();
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"n": 1}));
    server.stop().await;
}

#[actix_web::test]
async fn a_protocol_error_is_a_final_problem() {
    let server = TestServer::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .get("/async-response?not-a-state")
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.polls(), 0);
    match res.error_for_status().await {
        Err(ClientError::Problem { status, problem }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(problem.problem_type, "urn:async-op:problem:invalid-state");
            assert_eq!(problem.status, Some(400));
        }
        other => panic!("expected a problem, got {other:?}"),
    }
    server.stop().await;
}

#[actix_web::test]
async fn the_deadline_ends_the_wait() {
    let server = TestServer::start().await;
    // Begin, wait 1 s, poll: 303 with Retry-After: 1, which would pass the
    // deadline: the client gives up at once.
    let error = Client::new(&server.base)
        .unwrap()
        .deadline(Duration::from_millis(1500))
        .post("/gated")
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::DeadlineExceeded { deadline } if deadline == Duration::from_millis(1500)),
        "{error:?}"
    );
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn the_poll_limit_ends_the_wait() {
    let server = TestServer::start().await;
    let client = Client::new(&server.base).unwrap().max_polls(100);
    let error = client.post("/gated").max_polls(2).wait().await.unwrap_err();
    assert!(
        matches!(error, ClientError::TooManyPolls { limit: 2 }),
        "{error:?}"
    );
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn prefer_wait_gets_a_quick_result_without_polling() {
    let server = TestServer::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .post("/echo")
        .prefer_wait(5)
        .json(&json!({"quick": true}))
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.polls(), 0);
    assert_eq!(res.headers()["preference-applied"], "wait=5");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"quick": true}));
    server.stop().await;
}

#[actix_web::test]
async fn a_location_to_another_origin_is_refused() {
    let mut scripted = Receiver::start(vec![Step::Answer(
        303,
        vec![(
            "location",
            "http://elsewhere.example/async-response?x".into(),
        )],
    )])
    .await;
    let error = Client::new(&scripted.base)
        .unwrap()
        .post("/reports")
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::BadLocation { ref location, .. } if location.starts_with("http://elsewhere.example/")),
        "{error:?}"
    );
    assert_eq!(scripted.next().await.method, "POST");
    assert!(scripted.received.try_recv().is_err(), "nothing followed");
}

#[actix_web::test]
async fn callback_mode_delivers_the_report() {
    let server = callback_server().await;
    let mut app = ClientApp::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .post("/reports")
        .json(&report_request(1.0, false))
        .callback(&app.receiver)
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.notified(), "the result came through the callback");
    assert_eq!(res.polls(), 1, "one fetch, no polling");
    assert_eq!(
        res.url().path(),
        "/async-response",
        "fetched on the poll path"
    );
    let report: Report = res.json().await.unwrap();
    assert_eq!(report.request, report_request(1.0, false));
    assert_eq!(report.rows, 1000);

    let notification = app.next().await;
    assert!(
        notification
            .path_and_query
            .starts_with("/async-op-callback/"),
        "{notification:?}"
    );
    assert_eq!(notification.status, StatusCode::NO_CONTENT);
    assert!(notification.webhook_id.is_some());
    assert_eq!(app.receiver.pending(), 0);
    app.stop().await;
    server.stop().await;
}

#[actix_web::test]
async fn callback_duplicates_and_unknown_tokens_get_204_and_nothing_else() {
    let server = callback_server().await;
    let mut app = ClientApp::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .post("/echo")
        .json(&json!({"n": 2}))
        .callback(&app.receiver)
        .wait()
        .await
        .unwrap();
    assert!(res.notified());
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"n": 2}));
    let notification = app.next().await;

    // The same notification again, as a retrying server sends it.
    let again = client()
        .get(format!("{}{}", app.origin(), notification.path_and_query))
        .header("webhook-id", notification.webhook_id.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    // A token nobody waits for, and one without a state.
    for path in [
        "/async-op-callback/unknown-token?some-state",
        "/async-op-callback/unknown-token",
    ] {
        let res = client()
            .get(format!("{}{path}", app.origin()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{path}");
    }
    assert_eq!(app.receiver.pending(), 0);
    app.stop().await;
    server.stop().await;
}

#[actix_web::test]
async fn callback_without_a_notification_falls_back_to_polling() {
    let server = callback_server().await;
    // A receiver whose public URL nobody serves: every delivery fails.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/async-op-callback", dead.local_addr().unwrap());
    drop(dead);
    let receiver = CallbackReceiver::new(&base).unwrap();
    let res = Client::new(&server.base)
        .unwrap()
        .post("/echo")
        .json(&json!({"n": 3}))
        .callback(&receiver)
        .callback_timeout(Duration::from_secs(1))
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.notified());
    assert!(res.polls() >= 1);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"n": 3}));
    assert_eq!(receiver.pending(), 0, "the token was unregistered");
    server.stop().await;
}

#[actix_web::test]
async fn callback_to_a_host_the_server_does_not_allow_is_a_400_problem() {
    // The default test server allows no callback host.
    let server = TestServer::start().await;
    let app = ClientApp::start().await;
    let res = Client::new(&server.base)
        .unwrap()
        .post("/echo")
        .json(&json!({"n": 4}))
        .callback(&app.receiver)
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(!res.notified());
    match res.error_for_status().await {
        Err(ClientError::Problem { problem, .. }) => {
            assert_eq!(
                problem.problem_type,
                "urn:async-op:problem:invalid-callback"
            );
        }
        other => panic!("expected a problem, got {other:?}"),
    }
    assert_eq!(app.receiver.pending(), 0);
    app.stop().await;
    server.stop().await;
}

#[actix_web::test]
async fn callback_flow_against_a_scripted_server_with_a_duplicate_notification() {
    let mut scripted = Receiver::start(vec![
        Step::Answer(
            202,
            vec![
                ("location", "/async-response?first-state".into()),
                ("retry-after", "1".into()),
                ("preference-applied", "callback".into()),
            ],
        ),
        Step::Answer(200, vec![("x-result", "yes".into())]),
    ])
    .await;
    let app = ClientApp::start().await;
    let waiting = tokio::spawn({
        let client = Client::new(&scripted.base).unwrap();
        let receiver = app.receiver.clone();
        async move {
            client
                .post("/reports")
                .header("authorization", "Bearer secret")
                .json(&json!({"seconds": 1}))
                .callback(&receiver)
                .wait()
                .await
        }
    });

    let begin = scripted.next().await;
    assert_eq!(begin.method, "POST");
    assert_eq!(begin.path, "/reports");
    let prefer = begin.header("prefer").unwrap();
    assert!(
        prefer.starts_with("respond-async, callback; url=\""),
        "{prefer}"
    );
    let callback = callback_uri(prefer);
    assert!(
        callback.starts_with(&format!("{}/async-op-callback/", app.origin())),
        "{callback}"
    );

    // The notification, twice (a retry): both answered 204.
    for _ in 0..2 {
        let res = client()
            .get(format!("{callback}?the-final-state"))
            .header("webhook-id", "msg_1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    let res = waiting.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.notified());
    assert_eq!(res.headers()["x-result"], "yes");
    // The fetch: the 202's poll path with the notification's query, as-is,
    // with the request's headers but not its body's or its preferences.
    let fetch = scripted.next().await;
    assert_eq!(fetch.method, "GET");
    assert_eq!(fetch.path, "/async-response");
    assert_eq!(fetch.query, "the-final-state");
    assert_eq!(fetch.header("authorization"), Some("Bearer secret"));
    assert_eq!(fetch.header("content-type"), None);
    assert_eq!(fetch.header("prefer"), None);
    assert!(scripted.received.try_recv().is_err(), "fetched once");
    assert_eq!(app.receiver.pending(), 0);
    app.stop().await;
}

#[actix_web::test]
async fn callback_mode_polls_a_server_that_answers_303() {
    let mut scripted = Receiver::start(vec![
        Step::Answer(
            303,
            vec![
                ("location", "/async-response?s1".into()),
                ("retry-after", "0".into()),
            ],
        ),
        Step::Answer(200, vec![]),
    ])
    .await;
    let receiver = CallbackReceiver::new("http://127.0.0.1:9/async-op-callback").unwrap();
    let res = Client::new(&scripted.base)
        .unwrap()
        .post("/reports")
        .json(&json!({"seconds": 1}))
        .callback(&receiver)
        .wait()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.notified());
    assert_eq!(res.polls(), 1);
    assert_eq!(receiver.pending(), 0);
    assert!(scripted.next().await.header("prefer").is_some());
    let poll = scripted.next().await;
    assert_eq!(
        (poll.path.as_str(), poll.query.as_str()),
        ("/async-response", "s1")
    );
}
