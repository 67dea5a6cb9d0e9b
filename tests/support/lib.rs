//! Test support: real actix-web servers on loopback, and an HTTP client that
//! does not follow redirects, so that every protocol step can be seen.

#![forbid(unsafe_code)]
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

pub mod receiver;
pub mod redis;
pub mod store_suite;

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use async_op::{AsyncOps, AsyncOpsBuilder, MemoryStore, async_operation};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{StatusCode, header};
use serde_json::Value;
use tokio::sync::watch;

/// The secret every test server signs with.
pub const SECRET: &str = "test secret, thirty-two bytes or more";

/// A builder with the test secret, `Retry-After: 1`, no long polling,
/// and the given store: the plain polling of the seed.
pub fn ops_builder(store: &MemoryStore) -> AsyncOpsBuilder {
    AsyncOps::builder()
        .secret(SECRET)
        .retry_after(Duration::from_secs(1))
        .long_poll(Duration::ZERO)
        .store(store.clone())
}

/// A gate that handlers wait on, opened by the test: operations end exactly
/// when the test says so, without sleeps.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Waits for the gate, then answers 200 `done`.
#[async_operation(post, "/gated", retry_after = 1)]
async fn gated(gate: web::Data<Gate>) -> HttpResponse {
    gate.wait().await;
    HttpResponse::Ok()
        .insert_header(("x-result", "yes"))
        .body("done")
}

/// Waits for the gate, holding polls for 1 s at most (the macro's own
/// override of the middleware's long-poll setting).
#[async_operation(post, "/gated-short-hold", retry_after = 1, long_poll = 1)]
async fn gated_short_hold(gate: web::Data<Gate>) -> HttpResponse {
    gate.wait().await;
    HttpResponse::Ok().body("done")
}

/// Answers at once with the JSON it was given; early polls are held.
#[async_operation(post, "/echo-hold", retry_after = 1, early_poll = "hold")]
async fn echo_hold(body: web::Json<Value>) -> web::Json<Value> {
    body
}

/// Counts the handler runs of `/counted`.
#[derive(Clone, Default)]
pub struct Runs(Arc<std::sync::atomic::AtomicUsize>);

impl Runs {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Counts its runs, then answers with the JSON it was given.
#[async_operation(post, "/counted", retry_after = 1)]
async fn counted(runs: web::Data<Runs>, body: web::Json<Value>) -> web::Json<Value> {
    runs.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    body
}

/// Answers with a body of `?bytes=N` bytes.
#[async_operation(post, "/sized", retry_after = 1)]
async fn sized(query: web::Query<std::collections::HashMap<String, usize>>) -> HttpResponse {
    let bytes = query.get("bytes").copied().unwrap_or(0);
    HttpResponse::Ok().body(vec![b'x'; bytes])
}

/// Waits for the gate, with the middleware's own `Retry-After`.
#[async_operation(post, "/gated-default-wait")]
async fn gated_default_wait(gate: web::Data<Gate>) -> HttpResponse {
    gate.wait().await;
    HttpResponse::Ok().body("done")
}

/// Panics.
#[async_operation(post, "/panics", retry_after = 1)]
async fn panics() -> HttpResponse {
    panic!("the handler gave up");
}

/// Answers at once with the JSON it was given.
#[async_operation(post, "/echo", retry_after = 1)]
async fn echo(body: web::Json<Value>) -> web::Json<Value> {
    body
}

/// The test endpoints, plus the quickstart example's.
pub fn test_app(config: &mut web::ServiceConfig) {
    config
        .service(gated)
        .service(gated_short_hold)
        .service(gated_default_wait)
        .service(echo_hold)
        .service(sized)
        .service(counted)
        .service(panics)
        .service(echo)
        .configure(async_op_examples::reports::configure);
}

/// One instance of the test app on an ephemeral loopback port, with any
/// store.
pub struct Node {
    pub base: String,
    pub ops: AsyncOps,
    pub gate: Gate,
    pub runs: Runs,
    handle: ServerHandle,
}

impl Node {
    /// Starts the test app with `builder`.
    pub async fn start(builder: AsyncOpsBuilder) -> Self {
        let ops = builder.build().expect("test configuration");
        let gate = Gate::default();
        let runs = Runs::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new({
            let ops = ops.clone();
            let gate = gate.clone();
            let runs = runs.clone();
            move || {
                App::new()
                    .wrap(ops.clone())
                    .app_data(web::Data::new(gate.clone()))
                    .app_data(web::Data::new(runs.clone()))
                    .configure(test_app)
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
            base,
            ops,
            gate,
            runs,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A poll URL with a valid state for an operation that never existed.
    pub fn unknown_operation_url(&self) -> String {
        let now = unix_now();
        let state = self
            .ops
            .codec()
            .sign(&async_op::state::State {
                op: async_op::OperationId::random(),
                seq: 1,
                nbf: now,
                iat: now,
                exp: now + 60,
                hold: false,
                sub: None,
            })
            .unwrap();
        self.url(&format!("/async-response?{state}"))
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Runs one of the Python scripts in `tests/python/` with `args`; fails the
/// test (with its output) unless it exits 0. Returns stdout and stderr.
pub async fn run_python(script: &str, args: &[&str]) -> (String, String) {
    let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .await
        .expect("python3 with `requests` installed (pip install requests)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// The test app with a memory store the test can look into.
pub struct TestServer {
    node: Node,
    pub store: MemoryStore,
}

impl std::ops::Deref for TestServer {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl TestServer {
    /// Starts the test app with the default test configuration.
    pub async fn start() -> Self {
        let store = MemoryStore::new();
        Self::start_with(ops_builder(&store), store).await
    }

    /// Starts the test app with `builder` (whose store must be `store`).
    pub async fn start_with(builder: AsyncOpsBuilder, store: MemoryStore) -> Self {
        Self {
            node: Node::start(builder).await,
            store,
        }
    }

    pub async fn stop(self) {
        self.node.stop().await;
    }
}

/// Waits until `condition` holds, checking every few milliseconds; fails the
/// test after 30 s. For conditions that have no event to wait on (a gauge
/// reaching a count), never for timing assertions.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The current time in seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client that does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Location` of a response.
pub fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get(header::LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `Retry-After` of a response, in seconds.
pub fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()
        .get(header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

/// Asserts a problem response and returns its body.
pub async fn problem(res: reqwest::Response, status: StatusCode, problem_type: &str) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], problem_type, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    body
}

/// The claims of a state, read without checking (tests only).
pub fn claims(location: &str) -> Value {
    let state = location.split_once('?').unwrap().1;
    let payload = state.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Begins an operation with a JSON body and returns the 303's poll URL.
pub async fn begin(server: &TestServer, path: &str, body: &Value) -> String {
    let res = client()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    server.url(&location(&res))
}

/// Follows a poll URL as a well-behaved client does: waits `Retry-After`
/// before each follow, follows 303s, and returns the first other answer.
/// Bounded: fails the test after `max_polls` polls.
pub async fn follow(start: &str, base: &str, max_polls: usize) -> reqwest::Response {
    let client = client();
    let mut url = start.to_owned();
    let mut wait = 1;
    for _ in 0..max_polls {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let res = client.get(&url).send().await.unwrap();
        match res.status() {
            StatusCode::SEE_OTHER => {
                wait = retry_after(&res);
                url = format!("{base}{}", location(&res));
            }
            StatusCode::SERVICE_UNAVAILABLE if res.headers().contains_key(header::RETRY_AFTER) => {
                wait = retry_after(&res);
            }
            _ => return res,
        }
    }
    panic!("no answer after {max_polls} polls");
}
