//! Where operations live between begin and the final fetch.
//!
//! An [`OperationStore`] keeps, per operation, whether it is running and, once
//! it has ended, its [`OperationStatus`]: the handler's whole response, a
//! failure, or a cancellation. The middleware talks to the store only through
//! this trait, so that one instance ([`MemoryStore`], the default) and many
//! instances sharing one store behave the same to clients.
//!
//! With the crate feature `redis`, `RedisStore` keeps them in Redis, shared
//! by every instance of an app (the module `redis` says what is kept where).
//!
//! Store methods return a [`StoreFuture`], which is either a value that is
//! ready at once (no allocation: what the in-memory store returns on the hot
//! poll path) or a boxed future (for stores that do I/O).

mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use actix_web::{
    HttpResponse,
    body::{BoxBody, MessageBody},
    http::{
        StatusCode,
        header::{self, HeaderMap, HeaderName, HeaderValue},
    },
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// The identity of one operation: 128 random bits.
///
/// Its text form, used in the state's `op` claim and in logs, is 22 characters
/// of unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId([u8; 16]);

impl OperationId {
    /// A new identity from the operating system's random source.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The identity's raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 22-character text form.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 22 {
            return None;
        }
        let mut bytes = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(16) => Some(Self(bytes)),
            _ => None,
        }
    }

    fn encode<'o>(&self, out: &'o mut [u8; 22]) -> &'o str {
        // 16 bytes always encode to exactly 22 unpadded base64 characters.
        let written = URL_SAFE_NO_PAD.encode_slice(self.0, out).unwrap_or(0);
        std::str::from_utf8(&out[..written]).unwrap_or("")
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; 22]))
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({self})")
    }
}

impl Serialize for OperationId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.encode(&mut [0; 22]))
    }
}

impl<'de> Deserialize<'de> for OperationId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl de::Visitor<'_> for IdVisitor {
            type Value = OperationId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 22-character base64url operation id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OperationId, E> {
                OperationId::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

/// What the store is told when an operation begins: the operation's own
/// settings, which every instance answering its polls must apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOperation {
    /// Seconds a client is asked to wait between polls (`Retry-After`).
    pub retry_after: u32,
    /// Seconds a result is kept after the operation ends, and the lifetime of
    /// every state issued for it.
    pub retention: u32,
    /// Seconds a poll of the running operation is held (0: no long polling).
    pub long_poll: u32,
    /// Whether a follow before `nbf` is held rather than refused.
    pub hold_early: bool,
}

/// The handler's whole response, kept until retention ends.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers, less those that describe one connection or one framing
    /// (`connection`, `transfer-encoding`, `content-length`, ...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

/// Headers that belong to one message's framing or connection, not to the
/// result; the server sets them anew when it answers a poll.
fn is_framing_header(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::CONTENT_LENGTH
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name.as_str() == "keep-alive"
}

impl StoredResponse {
    /// Collects a response's head and whole body, refusing a body of more
    /// than `max_bytes` (without reading more of it than that).
    pub async fn collect_limited<B: MessageBody>(
        res: HttpResponse<B>,
        max_bytes: usize,
    ) -> Result<Self, CollectError> {
        let (res, body) = res.into_parts();
        let body = match actix_web::body::to_bytes_limited(body, max_bytes).await {
            Ok(Ok(body)) => body,
            Ok(Err(error)) => return Err(CollectError::Body(error.into().to_string())),
            Err(_) => return Err(CollectError::TooLarge),
        };
        Ok(Self::from_parts(res.status(), res.headers(), body))
    }

    /// Builds one from a status, headers and a body, dropping framing headers.
    pub fn from_parts(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let headers = headers
            .iter()
            .filter(|(name, _)| !is_framing_header(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Self {
            status,
            headers,
            body,
        }
    }

    /// The response to send for a poll. Cheap: header names and values and
    /// the body are reference-counted or static, not copied.
    pub fn to_response(&self) -> HttpResponse {
        let mut res = HttpResponse::with_body(self.status, BoxBody::new(self.body.clone()));
        let headers = res.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        res
    }
}

/// Why a response could not be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The body is larger than the limit.
    #[error("the response body is larger than the limit")]
    TooLarge,
    /// The body failed while it was read.
    #[error("the response body failed: {0}")]
    Body(String),
}

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler panicked.
    Panicked,
    /// The handler's response body could not be read to its end.
    ResponseBody,
    /// The instance that ran the operation went away before it ended.
    Lost,
    /// The handler's response was larger than the configured limit.
    ResultTooLarge,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Panicked => "the handler panicked",
            Self::ResponseBody => "the handler's response body could not be read",
            Self::Lost => "the operation was lost: the server running it went away",
            Self::ResultTooLarge => "the handler's response is larger than this server keeps",
        })
    }
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler returned a response (whatever its status).
    Finished(StoredResponse),
    /// The handler did not produce a response.
    Failed(FailureKind),
    /// The operation was cancelled before it ended.
    Cancelled,
}

/// What the store knows of an operation.
#[derive(Debug, Clone)]
pub enum OperationStatus {
    /// Still running; polls are answered with a new state.
    Running(NewOperation),
    /// Ended with the handler's response.
    Finished(Arc<StoredResponse>),
    /// Ended without a response.
    Failed(FailureKind),
    /// Cancelled.
    Cancelled,
}

impl OperationStatus {
    /// Whether the operation has ended (in any way).
    pub fn is_ended(&self) -> bool {
        !matches!(self, Self::Running(_))
    }
}

impl From<Outcome> for OperationStatus {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Finished(res) => Self::Finished(Arc::new(res)),
            Outcome::Failed(kind) => Self::Failed(kind),
            Outcome::Cancelled => Self::Cancelled,
        }
    }
}

/// A store that could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's backend did not answer or refused.
    #[error("{0}")]
    Unavailable(String),
    /// An operation with this id exists already.
    #[error("operation {0} exists already")]
    Duplicate(OperationId),
}

/// A begin's claim on an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The key as the client sent it, scoped to the client identity where
    /// one is configured (`<identity>\n<key>`), so that two clients' keys
    /// never meet.
    pub key: String,
    /// A digest of the request (method, path and query, content type and
    /// body): a repeat with another request under the same key is refused.
    pub fingerprint: [u8; 32],
    /// The operation the key is claimed for if it is new.
    pub id: OperationId,
    /// Seconds the claim is kept (the operation's retention).
    pub ttl: u32,
}

/// What became of an [`IdempotencyClaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key was new: it is now bound to the claim's operation.
    Claimed,
    /// The key was seen before, within its ttl.
    Existing {
        /// The operation the key is bound to.
        id: OperationId,
        /// Whether the earlier request had the same fingerprint.
        same_request: bool,
    },
}

/// The future a store method returns: ready at once, or boxed.
#[must_use = "futures do nothing unless polled"]
pub struct StoreFuture<'a, T>(StoreFutureInner<'a, T>);

enum StoreFutureInner<'a, T> {
    Ready(Option<Result<T, StoreError>>),
    Boxed(Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// A future that is ready at once with `result` (no allocation).
    pub fn ready(result: Result<T, StoreError>) -> Self {
        Self(StoreFutureInner::Ready(Some(result)))
    }

    /// A future that runs `fut`.
    pub fn boxed(fut: impl Future<Output = Result<T, StoreError>> + Send + 'a) -> Self {
        Self(StoreFutureInner::Boxed(Box::pin(fut)))
    }
}

impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            StoreFutureInner::Ready(value) => match value.take() {
                Some(value) => Poll::Ready(value),
                None => panic!("StoreFuture polled after completion"),
            },
            StoreFutureInner::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// Where operations are kept. Implementations must be safe to share between
/// actix-web's worker threads.
///
/// The contract, which the shared store test suite checks:
/// - [`create`](Self::create) registers a running operation;
/// - [`finish`](Self::finish) records how it ended, once: a second call for
///   the same operation is ignored (the first outcome stands), and it wakes
///   every [`wait`](Self::wait) for it;
/// - [`status`](Self::status) answers `None` for an unknown operation or one
///   whose retention has ended;
/// - [`wait`](Self::wait) resolves once the operation has ended (at once if it
///   has), without polling in a loop; callers bound it with a timeout;
/// - [`claim_idempotency_key`](Self::claim_idempotency_key) is atomic.
pub trait OperationStore: Send + Sync + 'static {
    /// Registers a new, running operation.
    fn create(&self, id: OperationId, operation: NewOperation) -> StoreFuture<'_, ()>;

    /// Records how an operation ended and keeps that for `retention` seconds.
    fn finish(&self, id: OperationId, outcome: Outcome, retention: u32) -> StoreFuture<'_, ()>;

    /// What is known of an operation now.
    fn status(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>>;

    /// Resolves with the operation's status once it has ended (`None` if it
    /// is unknown).
    fn wait(&self, id: OperationId) -> StoreFuture<'_, Option<OperationStatus>>;

    /// Binds an `Idempotency-Key` to an operation, atomically: of two begins
    /// with the same key, on any instances, exactly one gets
    /// [`ClaimOutcome::Claimed`].
    fn claim_idempotency_key(&self, claim: &IdempotencyClaim) -> StoreFuture<'_, ClaimOutcome>;
}

/// Replaces the password (and user) of a Redis URL with `***`, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}
