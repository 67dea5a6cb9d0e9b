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
    config::{MAX_HOLD, Shared},
    error::ProtocolError,
    hold::Held,
    metrics,
    state::{State, unix_now},
    store::{NewOperation, OperationId, OperationStatus, Outcome},
};

/// Answers a request to the poll path.
pub(crate) async fn answer(shared: &Shared, req: &HttpRequest) -> HttpResponse {
    let cancel = req.method() == Method::DELETE;
    if !cancel && req.method() != Method::GET && req.method() != Method::HEAD {
        return ProtocolError::MethodNotAllowed.error_response();
    }
    let now = unix_now();
    let result = match shared.codec.verify(req.query_string(), now) {
        Ok(state) => match check_client(shared, req, &state) {
            Err(error) => Err(error),
            Ok(()) if cancel => {
                let span = tracing::info_span!("async_op.cancel", op = %state.op);
                cancel_operation(shared, state.op)
                    .instrument(span)
                    .await
                    .and_then(Cancellation::into_response)
            }
            Ok(()) => {
                let span = tracing::debug_span!("async_op.poll", op = %state.op, seq = state.seq);
                poll(shared, state, now).instrument(span).await
            }
        },
        Err(error) => Err(error),
    };
    match result {
        Ok(res) => {
            metrics::polled(match res.status() {
                StatusCode::SEE_OTHER => "see-other",
                StatusCode::NO_CONTENT if cancel => "cancelled-now",
                _ => "result",
            });
            res
        }
        Err(error) => {
            tracing::debug!(%error, "async-op: poll refused");
            metrics::polled(metrics::problem_name(&error));
            error.error_response()
        }
    }
}

/// With client binding, only the client that began the operation may poll,
/// fetch or cancel it. Checked before anything is looked up, so another
/// client learns nothing, not even whether the operation still runs.
fn check_client(shared: &Shared, req: &HttpRequest, state: &State) -> Result<(), ProtocolError> {
    let Some(owner) = &state.sub else {
        return Ok(());
    };
    if shared.client_subject(req).as_deref() == Some(owner.as_str()) {
        Ok(())
    } else {
        Err(ProtocolError::Forbidden)
    }
}

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancellation {
    /// The operation was running and is now cancelled (or had been
    /// cancelled before): its handler is dropped, polls get `410`.
    Cancelled,
    /// The operation had already ended; its result stays until retention ends.
    AlreadyEnded,
    /// No such operation.
    NotFound,
}

impl Cancellation {
    fn into_response(self) -> Result<HttpResponse, ProtocolError> {
        match self {
            Self::Cancelled => Ok(HttpResponse::NoContent().finish()),
            Self::AlreadyEnded => Err(ProtocolError::OperationEnded),
            Self::NotFound => Err(ProtocolError::OperationNotFound),
        }
    }
}

/// Cancels an operation: records the outcome `Cancelled` (first outcome
/// stands, so a cancel racing the handler's end loses cleanly). The instance
/// running the handler is woken by the store and drops its future.
pub(crate) async fn cancel_operation(
    shared: &Shared,
    op: OperationId,
) -> Result<Cancellation, ProtocolError> {
    let retention = match shared.store.status(op).await? {
        None => return Ok(Cancellation::NotFound),
        Some(OperationStatus::Cancelled) => return Ok(Cancellation::Cancelled),
        Some(OperationStatus::Running(running)) => running.retention,
        Some(_) => return Ok(Cancellation::AlreadyEnded),
    };
    shared
        .store
        .finish(op, Outcome::Cancelled, retention)
        .await?;
    match shared.store.status(op).await? {
        Some(OperationStatus::Cancelled) => {
            tracing::info!("async-op: operation cancelled");
            Ok(Cancellation::Cancelled)
        }
        Some(_) => Ok(Cancellation::AlreadyEnded),
        None => Ok(Cancellation::NotFound),
    }
}

/// The time left until `at` (seconds since the epoch), to the millisecond.
/// A time past what `SystemTime` holds (only a state signed with absurd
/// claims has one) is as far away as a wait can be, not a panic.
fn until(at: u64) -> Duration {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(at))
        .map_or(Duration::MAX, |at| {
            at.duration_since(SystemTime::now()).unwrap_or_default()
        })
}

async fn poll(shared: &Shared, state: State, now: u64) -> Result<HttpResponse, ProtocolError> {
    if now < state.nbf {
        // A request is never held longer than MAX_HOLD: a follow that is
        // earlier than that is refused as under `reject`, even with `hold`.
        if !state.hold || state.nbf - now > u64::from(MAX_HOLD) {
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
            see_other(
                shared,
                state.op,
                // Saturating: a state at `u64::MAX` is answered, not a panic.
                state.seq.saturating_add(1),
                &running,
                state.sub.as_deref(),
            )
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
    sub: Option<&str>,
) -> Result<HttpResponse, ProtocolError> {
    to_poll_uri(StatusCode::SEE_OTHER, shared, op, seq, operation, sub)
}

/// A response of `status` that leads to a new poll URI for `op`: `303` on
/// begin and polls, `202` when a callback was accepted.
pub(crate) fn to_poll_uri(
    status: StatusCode,
    shared: &Shared,
    op: OperationId,
    seq: u64,
    operation: &NewOperation,
    sub: Option<&str>,
) -> Result<HttpResponse, ProtocolError> {
    let location = poll_uri(shared, op, seq, operation, sub)?;
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
    sub: Option<&str>,
) -> Result<HeaderValue, ProtocolError> {
    let now = unix_now();
    let state = State {
        op,
        seq,
        iat: now,
        nbf: now + u64::from(operation.retry_after),
        exp: now + u64::from(operation.retention),
        hold: operation.hold_early,
        sub: sub.map(str::to_owned),
    };
    // One buffer: the poll path, `?`, and the state signed into it.
    let mut location = String::with_capacity(shared.poll_path.len() + 320);
    location.push_str(&shared.poll_path);
    location.push('?');
    shared
        .codec
        .sign_into(&state, &mut location)
        .map_err(|error| {
            tracing::error!(%error, "async-op: cannot sign a state");
            ProtocolError::SigningFailed
        })?;
    // The poll path is checked at start-up to be visible ASCII without `?`
    // or `#`, and a compact JWS is base64url and dots: always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from(location)).map_err(|_| ProtocolError::SigningFailed)
}
