//! The poll endpoint: `GET <poll path>?<state>`.
//!
//! The checks run in the order PROTOCOL.md gives: the state (400, 410), then
//! the time (503 + `Retry-After` while too early, or a hold until `nbf`),
//! then the store (404, the result, 500, 410, or, while the operation runs,
//! a long poll and then a 303 with a new state). Nothing is looked up for a
//! state that does not verify.
//!
//! The path is hot. Per poll of a running operation without long polling it
//! does one signature verification, one store lookup (a shard read lock and
//! an `Arc` clone in the memory store, no allocation), one signing, and
//! builds the `Location` from one `String` that becomes the header value
//! without a copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::{
        Method, StatusCode,
        header::{self, HeaderValue},
    },
};
use bytes::Bytes;
use tracing::Instrument as _;

use crate::{
    config::Shared,
    error::ProtocolError,
    hold::Held,
    state::{State, unix_now},
    store::{NewOperation, OperationId, OperationStatus},
};

/// Answers a request to the poll path.
pub(crate) async fn answer(shared: &Shared, req: &HttpRequest) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ProtocolError::MethodNotAllowed.error_response();
    }
    let now = unix_now();
    let result = match shared.codec.verify(req.query_string(), now) {
        Ok(state) => {
            let span = tracing::debug_span!("async_op.poll", op = %state.op, seq = state.seq);
            poll(shared, state, now).instrument(span).await
        }
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| {
        tracing::debug!(%error, "async-op: poll refused");
        error.error_response()
    })
}

/// The time left until `at` (seconds since the epoch), to the millisecond.
fn until(at: u64) -> Duration {
    let at = UNIX_EPOCH + Duration::from_secs(at);
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

async fn poll(shared: &Shared, state: State, now: u64) -> Result<HttpResponse, ProtocolError> {
    if now < state.nbf {
        if !state.hold {
            return Err(ProtocolError::TooEarly {
                retry_after: state.nbf - now,
            });
        }
        // Early-poll policy `hold`: wait out the rest of the interval here,
        // then go on as a poll. A shutdown ends the wait early.
        let _ = shared
            .lifecycle
            .hold(std::future::pending::<()>(), until(state.nbf))
            .await;
    }
    let status = match shared.store.status(state.op).await? {
        Some(OperationStatus::Running(running)) if running.long_poll > 0 => {
            let limit = Duration::from_secs(running.long_poll.into());
            match shared
                .lifecycle
                .hold(shared.store.wait(state.op), limit)
                .await
            {
                Held::Done(status) => status?,
                Held::TimedOut | Held::ShuttingDown => Some(OperationStatus::Running(running)),
            }
        }
        status => status,
    };
    match status {
        None => Err(ProtocolError::OperationNotFound),
        Some(OperationStatus::Running(running)) => {
            tracing::trace!("async-op: still running");
            see_other(shared, state.op, state.seq + 1, &running)
        }
        Some(ended) => ended_response(ended),
    }
}

/// The answer for an operation that has ended: the handler's response, or
/// the problem that says why there is none.
pub(crate) fn ended_response(status: OperationStatus) -> Result<HttpResponse, ProtocolError> {
    match status {
        OperationStatus::Finished(response) => {
            tracing::debug!(
                status = response.status.as_u16(),
                "async-op: result fetched"
            );
            Ok(response.to_response())
        }
        OperationStatus::Failed(kind) => Err(ProtocolError::OperationFailed(kind)),
        OperationStatus::Cancelled => Err(ProtocolError::OperationCancelled),
        OperationStatus::Running(_) => Err(ProtocolError::OperationNotFound),
    }
}

/// A `303 See Other` to a new state for `op`: `Location`, `Retry-After` and
/// `Cache-Control: no-store` (a poll answer is never to be reused).
pub(crate) fn see_other(
    shared: &Shared,
    op: OperationId,
    seq: u64,
    operation: &NewOperation,
) -> Result<HttpResponse, ProtocolError> {
    to_poll_uri(StatusCode::SEE_OTHER, shared, op, seq, operation)
}

/// A response of `status` that leads to a new poll URI for `op`: `303` on
/// begin and polls, `202` when a callback was accepted.
pub(crate) fn to_poll_uri(
    status: StatusCode,
    shared: &Shared,
    op: OperationId,
    seq: u64,
    operation: &NewOperation,
) -> Result<HttpResponse, ProtocolError> {
    let location = poll_uri(shared, op, seq, operation)?;
    let mut res = HttpResponse::new(status);
    let headers = res.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(operation.retry_after),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `<poll path>?<new state>` as a header value.
pub(crate) fn poll_uri(
    shared: &Shared,
    op: OperationId,
    seq: u64,
    operation: &NewOperation,
) -> Result<HeaderValue, ProtocolError> {
    let now = unix_now();
    let token = shared
        .codec
        .sign(&State {
            op,
            seq,
            iat: now,
            nbf: now + u64::from(operation.retry_after),
            exp: now + u64::from(operation.retention),
            hold: operation.hold_early,
        })
        .map_err(|error| {
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
