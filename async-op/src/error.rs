//! Errors: the protocol's problem responses ([`ProtocolError`]) and start-up
//! configuration errors ([`ConfigError`]).
//!
//! Every error the protocol itself produces is answered with an
//! `application/problem+json` body (RFC 9457) carrying `type`, `title`,
//! `status` and `detail`. The `type` is a URN of the form
//! `urn:async-op:problem:<name>`; [`ProtocolError::problem_type`] gives it.

use std::fmt;

use actix_web::{
    HttpResponse, ResponseError,
    http::{
        StatusCode,
        header::{self, HeaderValue},
    },
};
use serde::Serialize;

use crate::store::{FailureKind, StoreError};

/// The media type of every problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error of the protocol, answered with a problem body.
///
/// The status, problem type and headers of each variant are fixed; the README
/// lists them. Library code returns these; applications rarely need to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The state in the query is missing, malformed, badly signed, signed
    /// with an unknown key or algorithm, or meant for another audience.
    #[error("the operation state is not valid: {0}")]
    InvalidState(InvalidStateReason),

    /// The state's `exp` has passed: the result is no longer kept.
    #[error("the operation state has expired; the result is no longer kept")]
    StateExpired,

    /// The state was followed before its `nbf` (early-poll policy `reject`).
    #[error("too early: follow this URI again in {retry_after} s")]
    TooEarly {
        /// Whole seconds left until the state may be followed (at least 1).
        retry_after: u64,
    },

    /// The state is valid but the operation is not known here.
    #[error("no such operation (it never existed here, or it is no longer kept)")]
    OperationNotFound,

    /// The operation ended without a response of the handler's own.
    #[error("the operation failed: {0}")]
    OperationFailed(FailureKind),

    /// The operation was cancelled.
    #[error("the operation was cancelled")]
    OperationCancelled,

    /// A cancel came after the operation had ended.
    #[error("the operation has already ended; its result is kept until the state expires")]
    OperationEnded,

    /// With client binding: the state belongs to another client.
    #[error("this operation belongs to another client")]
    Forbidden,

    /// The `Idempotency-Key` header is not a string of 1 to 255 visible
    /// characters.
    #[error("the Idempotency-Key header must be a string of 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,

    /// The `Idempotency-Key` was used before for another request.
    #[error(
        "this Idempotency-Key was used for another request (method, target, content type or body differ)"
    )]
    IdempotencyKeyReused,

    /// A begin with an `Idempotency-Key` has a body too large to fingerprint.
    #[error("the request body is too large for an idempotent begin")]
    RequestTooLarge,

    /// The begin request's body could not be read.
    #[error("the request body could not be read")]
    RequestBodyUnreadable,

    /// Too many operations are pending on this server; nothing was started.
    #[error("too many operations are pending on this server; try again in {retry_after} s")]
    TooManyOperations {
        /// Seconds after which to try again.
        retry_after: u64,
    },

    /// The operation store did not answer; the client may retry.
    #[error("the operation store is unavailable: {0}")]
    StoreUnavailable(#[from] StoreError),

    /// A begin endpoint was reached without the [`AsyncOps`](crate::AsyncOps)
    /// middleware wrapping the app.
    #[error(
        "the async-op middleware does not wrap this endpoint; add `.wrap(AsyncOps)` to the App"
    )]
    MiddlewareMissing,

    /// The callback URI of a begin request was refused (see
    /// [`callback`](crate::callback) for the rules); nothing was started.
    #[error("{0}")]
    InvalidCallback(String),

    /// A new state could not be signed (a key that cannot sign).
    #[error("the server could not sign a new state")]
    SigningFailed,

    /// A method other than `GET`, `HEAD` or `DELETE` was used on the poll path.
    #[error("the poll path answers GET, HEAD and DELETE only")]
    MethodNotAllowed,
}

/// Why a state was refused with `400 Bad Request`.
///
/// The reasons are deliberately coarse: a client learns what kind of fault it
/// made, not which check of the signature failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidStateReason {
    /// The query string is empty.
    Missing,
    /// The query is longer than any state this server issues.
    TooLong,
    /// Not a compact JWS, or its header or claims do not parse.
    Malformed,
    /// The header names no key (`kid`) or one this server does not have.
    UnknownKey,
    /// The header names an algorithm that is not configured for the key
    /// (this includes `none`).
    AlgorithmNotAllowed,
    /// The signature does not verify.
    BadSignature,
    /// The `aud` claim is missing or names another audience.
    WrongAudience,
    /// The claims contradict each other or the clock (`iat` in the future,
    /// `nbf` after `exp`, `seq` 0).
    InconsistentClaims,
}

impl fmt::Display for InvalidStateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "the poll URI has no state in its query",
            Self::TooLong => "the query is longer than any state this server issues",
            Self::Malformed => "the state is not a well-formed compact JWS",
            Self::UnknownKey => "the state names no key, or a key this server does not have",
            Self::AlgorithmNotAllowed => "the state's algorithm is not allowed",
            Self::BadSignature => "the state's signature does not verify",
            Self::WrongAudience => "the state was issued for another audience",
            Self::InconsistentClaims => "the state's claims are inconsistent",
        })
    }
}

impl ProtocolError {
    /// The problem type URI of this error (`urn:async-op:problem:<name>`).
    pub fn problem_type(&self) -> &'static str {
        match self {
            Self::InvalidState(_) => "urn:async-op:problem:invalid-state",
            Self::StateExpired => "urn:async-op:problem:state-expired",
            Self::TooEarly { .. } => "urn:async-op:problem:too-early",
            Self::OperationNotFound => "urn:async-op:problem:operation-not-found",
            Self::OperationFailed(FailureKind::Lost) => "urn:async-op:problem:operation-lost",
            Self::OperationFailed(_) => "urn:async-op:problem:operation-failed",
            Self::OperationCancelled => "urn:async-op:problem:operation-cancelled",
            Self::OperationEnded => "urn:async-op:problem:operation-ended",
            Self::Forbidden => "urn:async-op:problem:forbidden",
            Self::InvalidIdempotencyKey => "urn:async-op:problem:invalid-idempotency-key",
            Self::IdempotencyKeyReused => "urn:async-op:problem:idempotency-key-reused",
            Self::RequestTooLarge => "urn:async-op:problem:request-too-large",
            Self::RequestBodyUnreadable => "urn:async-op:problem:request-body-unreadable",
            Self::TooManyOperations { .. } => "urn:async-op:problem:too-many-operations",
            Self::StoreUnavailable(_) => "urn:async-op:problem:store-unavailable",
            Self::MiddlewareMissing => "urn:async-op:problem:middleware-missing",
            Self::MethodNotAllowed => "urn:async-op:problem:method-not-allowed",
            Self::SigningFailed => "urn:async-op:problem:signing-failed",
            Self::InvalidCallback(_) => "urn:async-op:problem:invalid-callback",
        }
    }

    /// The short, fixed title of this error's problem type.
    pub fn title(&self) -> &'static str {
        match self {
            Self::InvalidState(_) => "Invalid operation state",
            Self::StateExpired => "Operation state expired",
            Self::TooEarly { .. } => "Too early",
            Self::OperationNotFound => "Operation not found",
            Self::OperationFailed(FailureKind::Lost) => "Operation lost",
            Self::OperationFailed(_) => "Operation failed",
            Self::OperationCancelled => "Operation cancelled",
            Self::OperationEnded => "Operation already ended",
            Self::Forbidden => "Forbidden",
            Self::InvalidIdempotencyKey => "Invalid Idempotency-Key",
            Self::IdempotencyKeyReused => "Idempotency-Key reused",
            Self::RequestTooLarge => "Request too large",
            Self::RequestBodyUnreadable => "Request body unreadable",
            Self::TooManyOperations { .. } => "Too many operations",
            Self::StoreUnavailable(_) => "Operation store unavailable",
            Self::MiddlewareMissing => "async-op middleware missing",
            Self::MethodNotAllowed => "Method not allowed",
            Self::SigningFailed => "State signing failed",
            Self::InvalidCallback(_) => "Callback URI refused",
        }
    }

    /// Seconds for a `Retry-After` header, where this error has one.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooEarly { retry_after } | Self::TooManyOperations { retry_after } => {
                Some(*retry_after)
            }
            Self::StoreUnavailable(_) => Some(1),
            _ => None,
        }
    }
}

/// An RFC 9457 problem body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    problem_type: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// Builds an `application/problem+json` response.
///
/// Public for applications that want their own problems to look like the
/// library's (the `quickstart` example uses it for its 422).
pub fn problem_response(
    status: StatusCode,
    problem_type: &str,
    title: &str,
    detail: &str,
) -> HttpResponse {
    let body = Problem {
        problem_type,
        title,
        status: status.as_u16(),
        detail,
    };
    // Serialising a struct of strings and an integer into a Vec cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}

impl ResponseError for ProtocolError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidState(_) | Self::InvalidCallback(_) => StatusCode::BAD_REQUEST,
            Self::StateExpired | Self::OperationCancelled => StatusCode::GONE,
            Self::TooEarly { .. } | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::OperationNotFound => StatusCode::NOT_FOUND,
            Self::OperationFailed(_) | Self::MiddlewareMissing | Self::SigningFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::OperationEnded => StatusCode::CONFLICT,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::InvalidIdempotencyKey | Self::RequestBodyUnreadable => StatusCode::BAD_REQUEST,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyOperations { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let detail = self.to_string();
        let mut res = problem_response(
            self.status_code(),
            self.problem_type(),
            self.title(),
            &detail,
        );
        if let Some(seconds) = self.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::MethodNotAllowed = self {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, DELETE"));
        }
        res
    }
}

/// A configuration that cannot be used; reported at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No signing key was configured: neither a secret nor a key.
    #[error(
        "no signing key: set ASYNC_OP_SECRET (at least 32 bytes) or ASYNC_OP_SIGNING_KEY_FILE, \
         or call AsyncOpsBuilder::secret or AsyncOpsBuilder::signing_key"
    )]
    MissingSecret,

    /// Both a signing secret and a signing key file are configured: there is
    /// exactly one signing key.
    #[error(
        "both ASYNC_OP_SECRET and ASYNC_OP_SIGNING_KEY_FILE are set, but there is exactly one \
         signing key: keep one (an old secret goes to ASYNC_OP_PREVIOUS_SECRETS, an old key file \
         to ASYNC_OP_VERIFICATION_KEY_FILES, so that its states in flight still verify)"
    )]
    ConflictingSigningKeys,

    /// A signing or verification key cannot be used: a PEM that is not a key
    /// of the expected kind, a bad `kid`, or two different keys under one
    /// `kid`.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// The signing secret is shorter than 32 bytes.
    #[error("the signing secret is {len} bytes long; at least 32 bytes are required for HS256")]
    SecretTooShort {
        /// The length that was given.
        len: usize,
    },

    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {name}={value:?} is not valid: {reason}")]
    InvalidEnv {
        /// The variable's name.
        name: &'static str,
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting is out of its range.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The signing key could not be loaded.
    #[error("the signing key cannot be used: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}
