//! The poll endpoint: `GET <poll path>?<state>`.
//!
//! The checks run in the order PROTOCOL.md gives: the state (400, 410), then
//! the time (503 + `Retry-After` while too early), then the store (404, the
//! result, 500, 410, or a 303 with a new state while the operation runs).
//! Nothing is looked up for a state that does not verify.
//!
//! The path is hot. Per poll of a running operation it does one signature
//! verification, one store lookup (a shard read lock and an `Arc` clone in
//! the memory store, no allocation), one signing, and builds the `Location`
//! from one `String` that becomes the header value without a copy.

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::{
        Method, StatusCode,
        header::{self, HeaderValue},
    },
};
use bytes::Bytes;

use crate::{
    config::Shared,
    error::ProtocolError,
    state::unix_now,
    store::{OperationId, OperationStatus},
};

/// Answers a request to the poll path.
pub(crate) async fn answer(shared: &Shared, req: &HttpRequest) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ProtocolError::MethodNotAllowed.error_response();
    }
    match poll(shared, req.query_string()).await {
        Ok(res) => res,
        Err(error) => {
            tracing::debug!(%error, "async-op: poll refused");
            error.error_response()
        }
    }
}

async fn poll(shared: &Shared, query: &str) -> Result<HttpResponse, ProtocolError> {
    let now = unix_now();
    let state = shared.codec.verify(query, now)?;
    let span = tracing::debug_span!("async_op.poll", op = %state.op, seq = state.seq);
    let _entered = span.enter();
    if now < state.nbf {
        return Err(ProtocolError::TooEarly {
            retry_after: state.nbf - now,
        });
    }
    let status = shared.store.status(state.op).await?;
    match status {
        None => Err(ProtocolError::OperationNotFound),
        Some(OperationStatus::Running(running)) => {
            tracing::trace!("async-op: still running");
            see_other(
                shared,
                state.op,
                state.seq + 1,
                now,
                running.retry_after,
                running.retention,
            )
        }
        Some(OperationStatus::Finished(response)) => {
            tracing::debug!(
                status = response.status.as_u16(),
                "async-op: result fetched"
            );
            Ok(response.to_response())
        }
        Some(OperationStatus::Failed(kind)) => Err(ProtocolError::OperationFailed(kind)),
        Some(OperationStatus::Cancelled) => Err(ProtocolError::OperationCancelled),
    }
}

/// A `303 See Other` to a new state for `op`: `Location`, `Retry-After` and
/// `Cache-Control: no-store` (a poll answer is never to be reused).
pub(crate) fn see_other(
    shared: &Shared,
    op: OperationId,
    seq: u64,
    now: u64,
    retry_after: u32,
    retention: u32,
) -> Result<HttpResponse, ProtocolError> {
    let location = poll_uri(shared, op, seq, now, retry_after, retention)?;
    let mut res = HttpResponse::new(StatusCode::SEE_OTHER);
    let headers = res.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `<poll path>?<new state>` as a header value.
pub(crate) fn poll_uri(
    shared: &Shared,
    op: OperationId,
    seq: u64,
    now: u64,
    retry_after: u32,
    retention: u32,
) -> Result<HeaderValue, ProtocolError> {
    let nbf = now + u64::from(retry_after);
    let exp = now + u64::from(retention);
    let token = shared.codec.sign(op, seq, now, nbf, exp).map_err(|error| {
        tracing::error!(%error, "async-op: cannot sign a state");
        ProtocolError::SigningFailed
    })?;
    let mut location = String::with_capacity(shared.poll_path.len() + 1 + token.len());
    location.push_str(&shared.poll_path);
    location.push('?');
    location.push_str(&token);
    // The poll path is checked at start-up to be visible ASCII without `?`
    // or `#`, and a compact JWS is base64url and dots: always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from(location)).map_err(|_| ProtocolError::SigningFailed)
}
