//! # async-op
//!
//! Turns an ordinary actix-web handler into an HTTP-level asynchronous
//! operation. A client begins it with an ordinary request; the server answers
//! at once with `303 See Other` to a poll URI carrying a signed state and a
//! `Retry-After`, and runs the handler in the background. Following the poll
//! URI gives another 303 (with a new state) while the handler runs, and the
//! handler's own response (status, headers, body) once it has finished.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use async_op::{AsyncOps, async_operation};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct ReportRequest {
//!     seconds: u64,
//! }
//!
//! #[derive(Serialize)]
//! struct Report {
//!     seconds: u64,
//! }
//!
//! /// `POST /reports` answers at once; the final poll gets this response.
//! #[async_operation(post, "/reports", retry_after = 2, retention = "1h")]
//! async fn create_report(req: web::Json<ReportRequest>) -> web::Json<Report> {
//!     actix_rt::time::sleep(std::time::Duration::from_secs(req.seconds)).await;
//!     web::Json(Report { seconds: req.seconds })
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let ops = AsyncOps::from_env().expect("async-op configuration");
//!     HttpServer::new(move || App::new().wrap(ops.clone()).service(create_report))
//!         .bind(("127.0.0.1", 8080))?
//!         .run()
//!         .await
//! }
//! ```
//!
//! The modules follow the protocol's concepts: [`config`] (keys, store,
//! defaults), [`state`] (the signed JWT in the query), [`store`] (where
//! operations live), the poll endpoint (in the middleware) and [`error`] (the
//! problem bodies).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod begin;
pub mod callback;
pub mod client;
pub mod config;
pub mod error;
mod hold;
pub mod idempotency;
pub mod metrics;
mod middleware;
pub mod poll;
mod prefer;
pub mod shutdown;
pub mod state;
pub mod store;

pub use async_op_macros::async_operation;

pub use crate::{
    begin::OperationSettings,
    config::{AsyncOps, AsyncOpsBuilder, EarlyPoll},
    error::{ConfigError, InvalidStateReason, ProtocolError},
    middleware::AsyncOpsMiddleware,
    poll::Cancellation,
    store::{MemoryStore, OperationId, OperationStatus, OperationStore},
};

/// What the code that `#[async_operation]` generates uses. Not a public API:
/// it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use actix_web;

    pub use crate::{
        begin::{OperationSettings, begin},
        config::EarlyPoll,
    };
}
