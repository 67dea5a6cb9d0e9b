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
//! random secret for this run, and says so.

use actix_web::{App, HttpServer, middleware::Logger};
use async_op::{AsyncOps, AsyncOpsBuilder};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tracing_subscriber::EnvFilter;

/// The middleware from the environment, with a random secret if none is set.
fn configuration() -> Result<AsyncOps, async_op::ConfigError> {
    let mut builder = AsyncOpsBuilder::from_env()?;
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
    let ops = configuration()?;
    let bind = std::env::var("ASYNC_OP_BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let server = HttpServer::new(move || {
        App::new()
            .wrap(ops.clone())
            .wrap(Logger::default())
            .configure(async_op_examples::reports::configure)
    })
    .bind(&bind)
    .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
    for addr in server.addrs() {
        println!("quickstart listening on http://{addr} (POST /reports)");
    }
    server.run().await?;
    Ok(())
}
