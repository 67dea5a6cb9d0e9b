//! Graceful shutdown: held requests are answered at once when the server
//! stops, instead of holding the stop up until their hold limits pass.
//!
//! actix-web stops gracefully by waiting for requests in flight; a long poll
//! may be held for up to 30 s. [`AsyncOps::shutdown`] answers every held
//! request at once (a poll with a `303` and a fresh state, so that clients
//! move on to another instance or come back after a restart).
//! [`stop_on_signal`] wires this to `SIGINT`/`SIGTERM`:
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! use async_op::AsyncOps;
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let ops = AsyncOps::from_env().expect("async-op configuration");
//!     let server = HttpServer::new({
//!         let ops = ops.clone();
//!         move || App::new().wrap(ops.clone())
//!     })
//!     // async-op handles the signals, so that held polls are released first.
//!     .disable_signals()
//!     .bind(("127.0.0.1", 8080))?
//!     .run();
//!     actix_rt::spawn(async_op::shutdown::stop_on_signal(ops, server.handle()));
//!     server.await
//! }
//! ```

use actix_web::dev::ServerHandle;

use crate::AsyncOps;

/// Waits for `SIGINT` (Ctrl-C) or, on Unix, `SIGTERM`; then releases held
/// requests ([`AsyncOps::shutdown`]) and stops the server gracefully.
pub async fn stop_on_signal(ops: AsyncOps, server: ServerHandle) {
    wait_for_signal().await;
    ops.shutdown();
    server.stop(true).await;
}

#[cfg(unix)]
async fn wait_for_signal() {
    use actix_rt::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = actix_rt::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "async-op: cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = actix_rt::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = actix_rt::signal::ctrl_c().await;
}
