//! The servers the benchmarks drive, one kind per process:
//! `async-op-bench serve <kind>`. Each binds an ephemeral port on 127.0.0.1,
//! prints `listening <addr>` on stdout, and serves with one actix-web worker
//! (`all` pins the process to one core).
//!
//! | kind | routes |
//! |---|---|
//! | `bare` | `GET /bare-poll`: a static 303 with a `Location` and `Retry-After` of the library's size; `POST /bare-begin`: spawns an empty task and answers the same 303 |
//! | `memory`, `redis` | the library with that store, `Retry-After: 0`, long polling off: `POST /pending` (an operation that never ends), `POST /empty` (one that ends at once, kept 2 s) |
//! | `longpoll` | the library with 30 s long polls, `Retry-After: 0`: `POST /gated?after=G` (ends when the gate passes generation G), `GET /bare-held?after=G` (a plain handler that waits for the same), `POST /fire` (opens the gate, answers the time it did) |
//! | `modes` | the library with its defaults (`Retry-After: 2`, 20 s long polls) and callbacks to 127.0.0.1: `POST /sleep-polling?ms=N` (long polling off), `POST /sleep-long-polling?ms=N` |
//!
//! Every kind also answers `GET /stats` with its RSS, held requests,
//! pending operations and gate generation.

use std::{
    io::Write as _,
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix_web::{
    App, HttpResponse, HttpResponseBuilder, HttpServer, get,
    http::header::{self, HeaderValue},
    post, web,
};
use async_op::{AsyncOps, AsyncOpsBuilder, MemoryStore, async_operation, store::RedisStore};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{flag, sys};

/// The secret every benchmark server signs with.
pub(crate) const SECRET: &str = "async-op-bench: a secret of thirty-two bytes or more";

/// A `Location` as long as the library's (a real state of 260 bytes), for
/// the bare handlers' 303.
const BARE_LOCATION: &str = "/async-response?eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6Ik9rZVVyMXI2QVdnIn0.eyJvcCI6ImlTTml6dHF0LXBhamsxRVNLSmxCWGciLCJzZXEiOjEsIm5iZiI6MTc5NjQxNDMwNCwiaWF0IjoxNzk2NDE0MzAyLCJleHAiOjE3OTY0MTc5MDIsImF1ZCI6ImFzeW5jLW9wIn0.AqomTE4oIBYCdZPUIZUFnSKZN2gcyp7BO2C2ld1I_tQ";

/// The 303 of the bare handlers: the same three headers the library's poll
/// answer has, all static.
fn bare_see_other() -> HttpResponseBuilder {
    let mut res = HttpResponse::SeeOther();
    res.insert_header((header::LOCATION, HeaderValue::from_static(BARE_LOCATION)))
        .insert_header((header::RETRY_AFTER, HeaderValue::from_static("0")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    res
}

/// The baseline of the poll figure: a static 303.
#[get("/bare-poll")]
async fn bare_poll() -> HttpResponse {
    bare_see_other().finish()
}

/// The baseline of the begin figure: reads the body (as the library's begin
/// does, so that the connection stays open), spawns an empty task, answers
/// a 303.
#[post("/bare-begin")]
async fn bare_begin(body: web::Bytes) -> HttpResponse {
    drop(body);
    actix_rt::spawn(async {});
    bare_see_other()
        .insert_header((header::VARY, HeaderValue::from_static("prefer")))
        .finish()
}

/// An operation that never ends: every poll of it is the 303 path.
#[async_operation(post, "/pending")]
async fn pending() -> HttpResponse {
    std::future::pending().await
}

/// An operation that ends at once; its result is kept 2 s, so that a
/// throughput run reaches a steady state of evictions.
#[async_operation(post, "/empty", retention = "2s")]
async fn empty(body: web::Bytes) -> HttpResponse {
    drop(body);
    HttpResponse::Ok().finish()
}

/// The shared event of the latency figure: a generation counter, and the
/// number of bare requests waiting on it.
#[derive(Clone, Default)]
struct Gate(Arc<watch::Sender<u64>>, Arc<AtomicUsize>);

/// Counts one bare request waiting on the gate while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct After {
    after: u64,
}

/// Ends once the gate has passed generation `after` (read from `/stats` by
/// the client before it begins, so no race with the handler's first poll).
#[async_operation(post, "/gated")]
async fn gated(gate: web::Data<Gate>, query: web::Query<After>) -> HttpResponse {
    let mut generation = gate.0.subscribe();
    let after = query.after;
    let _ = generation.wait_for(|now| *now > after).await;
    HttpResponse::Ok().body("done")
}

/// The baseline of figures 3 and 4: a plain actix-web handler that holds
/// its request until the gate passes generation `after`, then answers 200
/// `done`, as a held poll of a gated operation does.
#[get("/bare-held")]
async fn bare_held(gate: web::Data<Gate>, query: web::Query<After>) -> HttpResponse {
    let mut generation = gate.0.subscribe();
    gate.1.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(&gate.1);
    let after = query.after;
    let _ = generation.wait_for(|now| *now > after).await;
    HttpResponse::Ok().body("done")
}

/// Opens the gate: every `/gated` operation waiting on the current
/// generation ends. Answers the wall-clock time (ns) taken just before.
#[post("/fire")]
async fn fire(gate: web::Data<Gate>) -> HttpResponse {
    let fired = sys::unix_nanos();
    gate.0.send_modify(|generation| *generation += 1);
    HttpResponse::Ok().body(fired.to_string())
}

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

/// Sleeps `ms` milliseconds; polls of it are answered at once (long polling
/// off) with `Retry-After: 2`.
#[async_operation(post, "/sleep-polling", long_poll = 0)]
async fn sleep_polling(query: web::Query<Sleep>) -> HttpResponse {
    actix_rt::time::sleep(Duration::from_millis(query.ms)).await;
    HttpResponse::Ok().body("slept")
}

/// Sleeps `ms` milliseconds; polls of it are held (the default 20 s).
#[async_operation(post, "/sleep-long-polling")]
async fn sleep_long_polling(query: web::Query<Sleep>) -> HttpResponse {
    actix_rt::time::sleep(Duration::from_millis(query.ms)).await;
    HttpResponse::Ok().body("slept")
}

#[get("/stats")]
async fn stats(ops: web::Data<AsyncOps>, gate: web::Data<Gate>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "rss_bytes": sys::rss_bytes(),
        "held": ops.held_requests(),
        "pending": ops.pending_operations(),
        "generation": *gate.0.borrow(),
        "bare_held": gate.1.load(Ordering::Relaxed),
    }))
}

/// The kinds of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bare,
    Memory,
    Redis,
    LongPoll,
    Modes,
}

impl Kind {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "bare" => Self::Bare,
            "memory" => Self::Memory,
            "redis" => Self::Redis,
            "longpoll" => Self::LongPoll,
            "modes" => Self::Modes,
            _ => return None,
        })
    }

    fn routes(self, config: &mut web::ServiceConfig) {
        config.service(stats);
        match self {
            Self::Bare => {
                config.service(bare_poll).service(bare_begin);
            }
            Self::Memory | Self::Redis => {
                config.service(pending).service(empty);
            }
            Self::LongPoll => {
                config.service(gated).service(bare_held).service(fire);
            }
            Self::Modes => {
                config.service(sleep_polling).service(sleep_long_polling);
            }
        }
    }
}

/// `serve <kind> [--redis URL] [--prefix P]`.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let kind = args
        .first()
        .and_then(|text| Kind::parse(text))
        .ok_or("serve expects bare, memory, redis, longpoll or modes")?;
    let redis_url = flag(args, "--redis")
        .unwrap_or("redis://127.0.0.1:6379")
        .to_owned();
    let prefix = flag(args, "--prefix")
        .unwrap_or("async-op-bench")
        .to_owned();
    actix_rt::System::new().block_on(async move {
        let builder = AsyncOps::builder().secret(SECRET);
        let builder = match kind {
            Kind::Bare | Kind::Memory => builder.store(MemoryStore::new()),
            Kind::Redis => {
                let store = RedisStore::builder(redis_url)
                    .prefix(prefix)
                    .connect()
                    .await
                    .map_err(|error| format!("redis: {error}"))?;
                builder.store(store)
            }
            Kind::LongPoll | Kind::Modes => builder.store(MemoryStore::new()),
        };
        let ops = configure(kind, builder)
            .build()
            .map_err(|error| format!("configuration: {error}"))?;
        run(kind, ops).await
    })
}

fn configure(kind: Kind, builder: AsyncOpsBuilder) -> AsyncOpsBuilder {
    match kind {
        // Figures 1, 2 and 5: no 503 (`Retry-After: 0`, so `nbf` is now) and
        // no hold (long polling off): every poll is the 303 path.
        Kind::Bare | Kind::Memory | Kind::Redis => builder
            .retry_after(Duration::ZERO)
            .long_poll(Duration::ZERO)
            .retention(Duration::from_secs(120)),
        // Figures 3 and 4: held polls; many pending operations.
        Kind::LongPoll => builder
            .retry_after(Duration::ZERO)
            .long_poll(Duration::from_secs(30))
            .retention(Duration::from_secs(600))
            .max_pending(1_000_000),
        // Figure 6: the defaults, and callbacks to the bench's receiver.
        Kind::Modes => builder
            .callback_allow_hosts(["127.0.0.1"])
            .callback_allow_networks(["127.0.0.1/32"]),
    }
}

async fn run(kind: Kind, ops: AsyncOps) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    let addr = listener.local_addr().map_err(|error| error.to_string())?;
    let gate = Gate::default();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(ops.clone())
            .app_data(web::Data::new(ops.clone()))
            .app_data(web::Data::new(gate.clone()))
            .configure(|config| kind.routes(config))
    })
    .workers(1)
    .backlog(4096)
    .max_connections(100_000)
    .listen(listener)
    .map_err(|error| error.to_string())?
    .run();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}").map_err(|error| error.to_string())?;
    stdout.flush().map_err(|error| error.to_string())?;
    server.await.map_err(|error| error.to_string())
}
