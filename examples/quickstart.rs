//! `quickstart`: a report service whose `POST /reports` is an asynchronous
//! operation.
//!
//! ```text
//! cargo run --bin quickstart
//! curl -i -d '{"seconds":3}' -H 'content-type: application/json' localhost:8080/reports
//! ```
//!
//! Listens on `ASYNC_OP_BIND` (default `127.0.0.1:8080`) and reads the
//! middleware's `ASYNC_OP_*` variables. Without `ASYNC_OP_SECRET` it makes a
//! random secret for this run, and says so. With `ASYNC_OP_REDIS_URL` it
//! keeps operations in that Redis, so that several instances (sharing the
//! secret) serve the same operations. Its one default of its own is
//! the early-poll policy `hold` (`ASYNC_OP_EARLY_POLL=reject` restores the
//! library's default), so that browsers and `curl -L`, which follow a 303 at
//! once, work too. Open <http://127.0.0.1:8080/> for a page that uses it;
//! `GET /metrics` serves the library's metrics in Prometheus' text format.

use actix_web::{App, HttpServer, middleware::Logger};
use async_op::{AsyncOps, EarlyPoll};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tracing_subscriber::EnvFilter;

/// The middleware from the environment, with a random secret if none is set.
/// With `ASYNC_OP_REDIS_URL` set, operations live in that Redis, shared
/// with every other instance that has the same secret.
async fn configuration() -> Result<AsyncOps, async_op::ConfigError> {
    let mut builder = AsyncOps::builder()
        .early_poll(EarlyPoll::Hold)
        .with_env()?
        .store_from_env()
        .await?;
    if !builder.has_secret() {
        let secret: [u8; 32] = rand::random();
        builder = builder.secret(URL_SAFE_NO_PAD.encode(secret));
        tracing::warn!(
            "ASYNC_OP_SECRET is not set: using a random secret for this run \
             (states will not survive a restart, nor work across instances)"
        );
    }
    builder.build()
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let ops = configuration().await?;
    let metrics = async_op_examples::prometheus::install()?;
    let bind = std::env::var("ASYNC_OP_BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let server = HttpServer::new({
        let ops = ops.clone();
        move || {
            App::new()
                .wrap(ops.clone())
                .wrap(Logger::default())
                .configure(async_op_examples::reports::configure)
                .configure(async_op_examples::prometheus::configure(metrics.clone()))
        }
    })
    // async-op handles SIGINT and SIGTERM, releasing held polls first.
    .disable_signals()
    .bind(&bind)
    .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
    for addr in server.addrs() {
        println!("quickstart listening on http://{addr} (POST /reports, GET /, GET /metrics)");
    }
    let server = server.run();
    actix_rt::spawn(async_op::shutdown::stop_on_signal(ops, server.handle()));
    server.await?;
    Ok(())
}
