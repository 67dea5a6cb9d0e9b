//! A client for asynchronous operations: begin one, and get its final
//! response by polling or by being called back.
//!
//! [`Client`] sends the begin request and drives the operation to its end
//! with [`RequestBuilder::wait`]. The final [`Response`] is the handler's own
//! response, whatever its status; [`Response::error_for_status`] turns a
//! `4xx`/`5xx` answer into a [`ClientError`], with the body's
//! [`ProblemDetails`] when it is `application/problem+json`.
//!
//! # Polling
//!
//! ```no_run
//! use async_op::client::{Client, ClientError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Report {
//!     rows: u64,
//! }
//!
//! # async fn run() -> Result<(), ClientError> {
//! let report: Report = Client::new("http://127.0.0.1:8080")?
//!     .post("/reports")
//!     .json(&serde_json::json!({ "seconds": 3 }))
//!     .wait() // follows 303s, honours Retry-After and 503s
//!     .await?
//!     .error_for_status() // a 4xx/5xx answer becomes an error
//!     .await?
//!     .json()
//!     .await?;
//! println!("{} rows", report.rows);
//! # Ok(())
//! # }
//! ```
//!
//! What [`wait`](RequestBuilder::wait) does with each answer:
//!
//! | answer | what the client does |
//! |---|---|
//! | `303 See Other` | waits `Retry-After` (whole seconds or an HTTP-date; 1 s if absent), then `GET`s the `Location` |
//! | `503 Service Unavailable` with `Retry-After` | waits, then sends the same request again (a follow that came too early; on the begin request, a server that starts nothing now) |
//! | `202 Accepted`, when a callback was asked for | waits for the notification (see below) |
//! | anything else | the final [`Response`] |
//!
//! It is bounded by a deadline (default [`DEFAULT_DEADLINE`]) and a number
//! of requests after the begin request (default [`DEFAULT_MAX_POLLS`]); see
//! [`Client::deadline`] and [`Client::max_polls`]. A `Location` that leads
//! to another origin (scheme, host and port) than the request that got it is
//! refused with [`ClientError::BadLocation`], since headers set on the
//! request are sent on every poll.
//!
//! A poll URI the application kept (to resume an operation after a restart,
//! say) is driven in the same way: `client.get(poll_uri).wait()`.
//!
//! # Callbacks
//!
//! A client application that runs an actix-web server of its own can be
//! called back instead of polling: mount a [`CallbackReceiver`] and pass it
//! to [`RequestBuilder::callback`]. The begin request then carries
//! `Prefer: respond-async, callback; url="<base>/<token>"`; the server
//! answers `202 Accepted` and, when the operation ends, sends
//! `GET <base>/<token>?<state>`; the client then fetches
//! `<poll path>?<state>` (the path of the 202's `Location`) and treats that
//! like a poll. If the notification does not come within
//! [`callback_timeout`](Client::callback_timeout), the client falls back to
//! polling the 202's `Location`; a server that does not do callbacks (it
//! answers `303`, or the final response) is simply polled.
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! use async_op::client::{CallbackReceiver, Client};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The URL under which the server reaches this app.
//! let receiver = CallbackReceiver::new("http://10.0.0.5:9000/async-op-callback")?;
//! let server = HttpServer::new({
//!     let receiver = receiver.clone();
//!     move || App::new().service(receiver.service())
//! })
//! .bind(("0.0.0.0", 9000))?
//! .run();
//! actix_rt::spawn(server);
//!
//! let response = Client::new("http://10.0.0.4:8080")?
//!     .post("/reports")
//!     .json(&serde_json::json!({ "seconds": 30 }))
//!     .callback(&receiver)
//!     .wait()
//!     .await?;
//! println!("{}: {}", response.status(), response.text().await?);
//! # Ok(())
//! # }
//! ```
//!
//! The server must allow the callback's host (see
//! [`callback`](crate::callback)); one that refuses it answers the begin
//! request with a `400` problem, which is the final response.

mod receiver;

use std::{
    error::Error as StdError,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    redirect,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::time::Instant;
use url::Url;

pub use self::receiver::CallbackReceiver;
use self::receiver::Registration;

/// The default overall deadline of [`RequestBuilder::wait`]: one hour (the
/// server's default retention).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

/// The default number of requests [`RequestBuilder::wait`] makes after the
/// begin request.
pub const DEFAULT_MAX_POLLS: u32 = 3600;

/// The default time a callback-mode operation waits for its notification
/// before it falls back to polling: five minutes.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(300);

/// The wait before a follow when an answer has no (usable) `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The largest intermediate body (303, 503) read to keep the connection.
const DRAIN_LIMIT: u64 = 16 * 1024;

/// What can go wrong while beginning, driving or reading an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A base URL, or a path joined to it, is not a usable URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL or path as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A header name or value given to [`RequestBuilder::header`] is not
    /// valid.
    #[error("invalid request header: {0}")]
    InvalidHeader(#[source] Box<dyn StdError + Send + Sync>),

    /// The body given to [`RequestBuilder::json`] could not be serialised.
    #[error("the request body cannot be serialised as JSON: {0}")]
    Encode(#[source] serde_json::Error),

    /// The HTTP transport failed: connecting, sending, or reading a body.
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),

    /// A `303` or `202` came without a `Location` the client can follow.
    #[error("the server's Location cannot be followed ({reason}): {location:?}")]
    BadLocation {
        /// The `Location` header as received (empty when there was none).
        location: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The operation did not end within the allowed number of requests.
    #[error("the operation did not end within {limit} polls")]
    TooManyPolls {
        /// The limit that was reached.
        limit: u32,
    },

    /// The operation did not end before the deadline (or the next wait
    /// would have passed it).
    #[error("the operation did not end within the deadline of {deadline:?}")]
    DeadlineExceeded {
        /// The deadline that was set.
        deadline: Duration,
    },

    /// Every clone of the [`CallbackReceiver`] was dropped while an
    /// operation waited for its notification.
    #[error("the callback receiver was dropped while an operation waited for its notification")]
    CallbackReceiverGone,

    /// A body could not be decoded as the JSON the caller asked for.
    #[error("the response body cannot be decoded as the requested JSON: {0}")]
    Decode(#[source] serde_json::Error),

    /// [`Response::error_for_status`]: a `4xx`/`5xx` answer with an
    /// `application/problem+json` body.
    #[error("{status}: {problem}")]
    Problem {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// Its problem body.
        problem: Box<ProblemDetails>,
    },

    /// [`Response::error_for_status`]: a `4xx`/`5xx` answer without a
    /// problem body.
    #[error("the server answered {status}{}", snippet(body))]
    Status {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The body, as text (invalid UTF-8 replaced).
        body: String,
    },
}

/// An RFC 9457 problem body (`application/problem+json`), as the library's
/// server and many others send for errors.
///
/// Every member is optional in the RFC; a missing `type` means
/// `about:blank`. Members beyond the standard ones are kept in
/// [`extensions`](Self::extensions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemDetails {
    /// The problem type URI, e.g. `urn:async-op:problem:state-expired`.
    #[serde(rename = "type", default = "about_blank")]
    pub problem_type: String,
    /// A short, fixed summary of the problem type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The HTTP status the server gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What happened this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI of this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Any other members.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// The start of an error body, for a message: `": <text>"`, or nothing.
fn snippet(body: &str) -> String {
    const MAX: usize = 200;
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    match body.char_indices().nth(MAX) {
        Some((end, _)) => format!(": {}...", &body[..end]),
        None => format!(": {body}"),
    }
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl std::fmt::Display for ProblemDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title.as_deref().unwrap_or(&self.problem_type))?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// The bounds of one [`RequestBuilder::wait`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    deadline: Duration,
    max_polls: u32,
    callback_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            max_polls: DEFAULT_MAX_POLLS,
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
        }
    }
}

/// A client of asynchronous operations on one server.
///
/// Cheap to clone: the HTTP connection pool is shared.
///
/// ```no_run
/// use std::time::Duration;
///
/// use async_op::client::Client;
///
/// # fn run() -> Result<(), async_op::client::ClientError> {
/// let client = Client::new("https://reports.example")?
///     .deadline(Duration::from_secs(600))
///     .max_polls(500);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    limits: Limits,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`),
    /// with an HTTP client of its own that does not follow redirects.
    pub fn new(base_url: impl AsRef<str>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()?;
        Self::with_http(http, base_url)
    }

    /// A client of the server at `base_url` that sends its requests with
    /// `http` (for its proxy, TLS, timeout or default-header settings).
    ///
    /// `http` **must not follow redirects** (build it with
    /// `.redirect(reqwest::redirect::Policy::none())`): the client follows
    /// each `303` itself, after the `Retry-After` wait.
    pub fn with_http(
        http: reqwest::Client,
        base_url: impl AsRef<str>,
    ) -> Result<Self, ClientError> {
        let text = base_url.as_ref();
        let base = Url::parse(text).map_err(|error| ClientError::InvalidUrl {
            url: text.to_owned(),
            reason: error.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(ClientError::InvalidUrl {
                url: text.to_owned(),
                reason: "the base URL must be an absolute http or https URL".to_owned(),
            });
        }
        Ok(Self {
            http,
            base,
            limits: Limits::default(),
        })
    }

    /// The overall time limit of each [`RequestBuilder::wait`], from the
    /// begin request to the final answer's headers (default
    /// [`DEFAULT_DEADLINE`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.limits.deadline = deadline;
        self
    }

    /// How many requests each [`RequestBuilder::wait`] may make after the
    /// begin request: follows of `303`s, repeats after `503`s and the fetch
    /// after a notification (default [`DEFAULT_MAX_POLLS`]).
    pub fn max_polls(mut self, max_polls: u32) -> Self {
        self.limits.max_polls = max_polls;
        self
    }

    /// How long an operation begun in callback mode waits for its
    /// notification before it falls back to polling (default
    /// [`DEFAULT_CALLBACK_TIMEOUT`]). The deadline still applies.
    pub fn callback_timeout(mut self, timeout: Duration) -> Self {
        self.limits.callback_timeout = timeout;
        self
    }

    /// The base URL that request paths are resolved against.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// A request with `method` to `path`, resolved against the base URL as
    /// a link is (`/reports` replaces the base's path; an absolute URL is
    /// taken as it is).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let (url, error) = match self.base.join(path) {
            Ok(url) => (url, None),
            Err(error) => (
                self.base.clone(),
                Some(ClientError::InvalidUrl {
                    url: path.to_owned(),
                    reason: error.to_string(),
                }),
            ),
        };
        RequestBuilder {
            client: self.clone(),
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            prefer_wait: None,
            callback: None,
            limits: self.limits,
            error,
        }
    }

    /// A `GET` request to `path`.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A `POST` request to `path`.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A `PUT` request to `path`.
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    /// A `PATCH` request to `path`.
    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// A `DELETE` request to `path`.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }
}

/// A begin request being built; [`wait`](Self::wait) sends it and drives
/// the operation to its end.
///
/// Errors in the building (a bad header, a body that does not serialise) are
/// reported by [`wait`](Self::wait).
#[derive(Debug)]
#[must_use = "a request does nothing until `.wait()` is awaited"]
pub struct RequestBuilder {
    client: Client,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    prefer_wait: Option<u32>,
    callback: Option<CallbackReceiver>,
    limits: Limits,
    error: Option<ClientError>,
}

impl RequestBuilder {
    /// Adds a header (appended to any of the same name).
    ///
    /// Headers are sent on the begin request and on every poll of the
    /// operation (except `Content-*` headers, which describe the begin
    /// request's body, and `Prefer`): a server may bind an operation to the
    /// credentials that began it.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: StdError + Send + Sync + 'static,
        V: TryInto<HeaderValue>,
        V::Error: StdError + Send + Sync + 'static,
    {
        let header = name
            .try_into()
            .map_err(|error| ClientError::InvalidHeader(Box::new(error)))
            .and_then(|name| {
                value
                    .try_into()
                    .map(|value| (name, value))
                    .map_err(|error| ClientError::InvalidHeader(Box::new(error)))
            });
        match header {
            Ok((name, value)) => {
                self.headers.append(name, value);
            }
            Err(error) => self.fail(error),
        }
        self
    }

    /// Adds every header of `headers`, as [`header`](Self::header) does.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        let mut name = None;
        for (next, value) in headers {
            // Repeated values of one name come with `None`.
            if next.is_some() {
                name = next;
            }
            if let Some(name) = &name {
                self.headers.append(name.clone(), value);
            }
        }
        self
    }

    /// The request body, as it is.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON request body; sets `Content-Type: application/json` unless a
    /// content type was set.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(body) => {
                if !self.headers.contains_key(header::CONTENT_TYPE) {
                    self.headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                self.body = Some(body.into());
            }
            Err(error) => self.fail(ClientError::Encode(error)),
        }
        self
    }

    /// Asks the server to answer the begin request with the final response
    /// if the operation ends within `seconds` (RFC 7240 `Prefer: wait=N`;
    /// the server caps it). Otherwise the operation goes on as usual.
    pub fn prefer_wait(mut self, seconds: u32) -> Self {
        self.prefer_wait = Some(seconds);
        self
    }

    /// Asks to be called back through `receiver` instead of polling (see the
    /// [module docs](self#callbacks)).
    pub fn callback(mut self, receiver: &CallbackReceiver) -> Self {
        self.callback = Some(receiver.clone());
        self
    }

    /// This request's deadline, instead of the client's
    /// ([`Client::deadline`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.limits.deadline = deadline;
        self
    }

    /// This request's poll limit, instead of the client's
    /// ([`Client::max_polls`]).
    pub fn max_polls(mut self, max_polls: u32) -> Self {
        self.limits.max_polls = max_polls;
        self
    }

    /// This request's callback timeout, instead of the client's
    /// ([`Client::callback_timeout`]).
    pub fn callback_timeout(mut self, timeout: Duration) -> Self {
        self.limits.callback_timeout = timeout;
        self
    }

    /// Keeps the first error of the building.
    fn fail(&mut self, error: ClientError) {
        self.error.get_or_insert(error);
    }

    /// Sends the begin request and drives the operation to its end: the
    /// final answer, whatever its status (see the [module docs](self) for
    /// what is followed and what is final).
    ///
    /// Errors are the client's own: transport failures, a `Location` that
    /// cannot be followed, the deadline or the poll limit. A `4xx`/`5xx`
    /// final answer is a [`Response`]; see [`Response::error_for_status`].
    pub async fn wait(self) -> Result<Response, ClientError> {
        let Self {
            client,
            method,
            url,
            headers,
            body,
            prefer_wait,
            callback,
            limits,
            error,
        } = self;
        if let Some(error) = error {
            return Err(error);
        }
        let mut registration = match callback {
            Some(receiver) => Some(receiver.register()?),
            None => None,
        };

        let mut begin_headers = headers.clone();
        if let Some(registration) = &registration {
            let value = format!(r#"respond-async, callback; url="{}""#, registration.url);
            begin_headers.append(PREFER, header_value(value)?);
        }
        if let Some(seconds) = prefer_wait {
            begin_headers.append(PREFER, header_value(format!("wait={seconds}"))?);
        }
        let poll_headers = poll_headers(&headers);

        let mut run = Run {
            http: &client.http,
            headers: poll_headers,
            started: Instant::now(),
            limits,
            polls: 0,
            notified: false,
        };

        // The request to send next: the begin request until a Location says
        // otherwise.
        let mut next: Option<Url> = None;
        let mut wait = Duration::ZERO;
        let mut first = true;
        loop {
            run.pause(wait).await?;
            if !first {
                run.count_poll()?;
            }
            first = false;
            let response = match &next {
                None => {
                    let mut request = run
                        .http
                        .request(method.clone(), url.clone())
                        .headers(begin_headers.clone());
                    if let Some(body) = &body {
                        request = request.body(body.clone());
                    }
                    tracing::debug!(%method, %url, "async-op client: begin request");
                    run.send(request).await?
                }
                Some(poll) => {
                    tracing::debug!(url = %poll, poll = run.polls, "async-op client: poll");
                    run.send(run.http.get(poll.clone()).headers(run.headers.clone()))
                        .await?
                }
            };
            let status = response.status();
            match status {
                StatusCode::SEE_OTHER => {
                    let location = location(&response)?;
                    wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                    tracing::debug!(%location, ?wait, "async-op client: 303, running");
                    drain(response).await;
                    // Polling now: a callback is not coming.
                    registration = None;
                    next = Some(location);
                }
                StatusCode::SERVICE_UNAVAILABLE
                    if response.headers().contains_key(header::RETRY_AFTER) =>
                {
                    wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                    tracing::debug!(
                        ?wait,
                        "async-op client: 503, trying again after Retry-After"
                    );
                    drain(response).await;
                }
                // Accepted for a callback: a 202 with a Location to poll
                // instead. (A 202 without one is some other kind of answer.)
                StatusCode::ACCEPTED
                    if next.is_none()
                        && registration.is_some()
                        && response.headers().contains_key(header::LOCATION) =>
                {
                    let location = location(&response)?;
                    let retry = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                    let accepted_at = Instant::now();
                    tracing::debug!(%location, "async-op client: 202, waiting for the callback");
                    drain(response).await;
                    let notification = match registration.take() {
                        Some(mut registration) => run.notification(&mut registration).await?,
                        None => None,
                    };
                    match notification {
                        Some(state) => {
                            run.notified = true;
                            let mut fetch = location;
                            fetch.set_query(Some(&state));
                            tracing::debug!(url = %fetch, "async-op client: notified, fetching");
                            next = Some(fetch);
                            wait = Duration::ZERO;
                        }
                        None => {
                            tracing::debug!(
                                "async-op client: no callback within the timeout, polling"
                            );
                            next = Some(location);
                            wait = retry.saturating_sub(accepted_at.elapsed());
                        }
                    }
                }
                _ => {
                    tracing::debug!(%status, polls = run.polls, "async-op client: final answer");
                    return Ok(Response {
                        inner: response,
                        polls: run.polls,
                        notified: run.notified,
                    });
                }
            }
        }
    }
}

/// One [`RequestBuilder::wait`] in progress.
struct Run<'a> {
    http: &'a reqwest::Client,
    /// The headers sent on polls.
    headers: HeaderMap,
    started: Instant,
    limits: Limits,
    polls: u32,
    notified: bool,
}

impl Run<'_> {
    fn deadline_exceeded(&self) -> ClientError {
        ClientError::DeadlineExceeded {
            deadline: self.limits.deadline,
        }
    }

    /// The time left before the deadline (zero when it has passed).
    fn remaining(&self) -> Duration {
        self.limits.deadline.saturating_sub(self.started.elapsed())
    }

    /// Waits `wait`, or fails at once if that would pass the deadline.
    async fn pause(&self, wait: Duration) -> Result<(), ClientError> {
        if wait >= self.remaining() {
            return Err(self.deadline_exceeded());
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Counts one more request after the begin request.
    fn count_poll(&mut self) -> Result<(), ClientError> {
        if self.polls >= self.limits.max_polls {
            return Err(ClientError::TooManyPolls {
                limit: self.limits.max_polls,
            });
        }
        self.polls += 1;
        Ok(())
    }

    /// Sends a request, within the deadline.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        match tokio::time::timeout(self.remaining(), request.send()).await {
            Ok(response) => Ok(response?),
            Err(_) => Err(self.deadline_exceeded()),
        }
    }

    /// Waits for the notification, up to the callback timeout: its state, or
    /// `None` when it did not come in time.
    async fn notification(
        &self,
        registration: &mut Registration,
    ) -> Result<Option<String>, ClientError> {
        let remaining = self.remaining();
        let timeout = self.limits.callback_timeout.min(remaining);
        match tokio::time::timeout(timeout, registration.notification()).await {
            Ok(Some(state)) => Ok(Some(state)),
            Ok(None) => Err(ClientError::CallbackReceiverGone),
            Err(_) if timeout >= remaining => Err(self.deadline_exceeded()),
            Err(_) => Ok(None),
        }
    }
}

/// `Prefer` (RFC 7240).
const PREFER: HeaderName = HeaderName::from_static("prefer");

/// A header value built from text the client made itself.
fn header_value(text: String) -> Result<HeaderValue, ClientError> {
    HeaderValue::try_from(text).map_err(|error| ClientError::InvalidHeader(Box::new(error)))
}

/// The headers sent on polls: the request's, less those that describe its
/// body and its preferences.
fn poll_headers(headers: &HeaderMap) -> HeaderMap {
    let mut polls = headers.clone();
    polls.remove(PREFER);
    let content: Vec<HeaderName> = polls
        .keys()
        .filter(|name| name.as_str().starts_with("content-"))
        .cloned()
        .collect();
    for name in content {
        polls.remove(name);
    }
    polls
}

/// The `Location` of a `303` or `202`, resolved against the URL that
/// answered; it must stay on that URL's origin.
fn location(response: &reqwest::Response) -> Result<Url, ClientError> {
    let bad = |location: &str, reason| ClientError::BadLocation {
        location: location.to_owned(),
        reason,
    };
    let value = response
        .headers()
        .get(header::LOCATION)
        .ok_or_else(|| bad("", "no Location header"))?;
    let text = value.to_str().map_err(|_| {
        bad(
            &String::from_utf8_lossy(value.as_bytes()),
            "not visible ASCII",
        )
    })?;
    let url = response
        .url()
        .join(text)
        .map_err(|_| bad(text, "not a URI reference"))?;
    if url.origin() != response.url().origin() {
        return Err(bad(text, "it leads to another origin"));
    }
    Ok(url)
}

/// The wait a `Retry-After` asks for: whole seconds or an HTTP-date. `None`
/// when there is none, or it cannot be read.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date: actix_web::http::header::HttpDate = text.parse().ok()?;
    Some(
        SystemTime::from(date)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Reads a small intermediate body to its end, so that the connection can
/// be used again; a large or slow one is dropped (closing the connection).
async fn drain(response: reqwest::Response) {
    if response
        .content_length()
        .is_some_and(|length| length <= DRAIN_LIMIT)
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), response.bytes()).await;
    }
}

/// The final answer of an operation: the handler's own response (or the
/// server's problem, for an operation that failed, expired or is unknown).
#[derive(Debug)]
pub struct Response {
    inner: reqwest::Response,
    polls: u32,
    notified: bool,
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The URL that gave this answer (the last poll URI, or the begin
    /// request's URL).
    pub fn url(&self) -> &Url {
        self.inner.url()
    }

    /// How many requests were made after the begin request.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// Whether a callback notification was received for the operation.
    pub fn notified(&self) -> bool {
        self.notified
    }

    /// The body.
    pub async fn bytes(self) -> Result<Bytes, ClientError> {
        Ok(self.inner.bytes().await?)
    }

    /// The body as text, decoded by the `Content-Type`'s charset (UTF-8 by
    /// default).
    pub async fn text(self) -> Result<String, ClientError> {
        Ok(self.inner.text().await?)
    }

    /// The body, decoded from JSON: the operation's typed result. The status
    /// is not looked at; call [`error_for_status`](Self::error_for_status)
    /// first to turn error answers into errors.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        let body = self.inner.bytes().await?;
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    /// `Ok(self)` for an answer below `400`; otherwise reads the body and
    /// fails with [`ClientError::Problem`] (an `application/problem+json`
    /// body) or [`ClientError::Status`] (any other).
    pub async fn error_for_status(self) -> Result<Self, ClientError> {
        let status = self.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(self);
        }
        let is_problem = self
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| {
                media
                    .trim()
                    .eq_ignore_ascii_case(crate::error::PROBLEM_JSON)
            });
        let body = self.inner.bytes().await?;
        if is_problem {
            if let Ok(problem) = serde_json::from_slice::<ProblemDetails>(&body) {
                return Err(ClientError::Problem {
                    status,
                    problem: Box::new(problem),
                });
            }
        }
        Err(ClientError::Status {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The underlying `reqwest` response, for streaming the body.
    pub fn into_inner(self) -> reqwest::Response {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 0 ")])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        // A date in the past: no wait.
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )])),
            Some(Duration::ZERO)
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        let date = actix_web::http::header::HttpDate::from(later).to_string();
        let wait = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }

    #[test]
    fn polls_carry_the_requests_headers_but_not_its_body_or_preferences() {
        let polls = poll_headers(&headers(&[
            ("authorization", "Bearer x"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("prefer", "wait=3"),
            ("accept", "application/json"),
        ]));
        let mut names: Vec<_> = polls.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "authorization"]);
    }

    #[test]
    fn paths_are_resolved_against_the_base() {
        let client = Client::new("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(
            client.post("/reports").url.as_str(),
            "http://127.0.0.1:8080/reports"
        );
        assert_eq!(
            client.post("reports").url.as_str(),
            "http://127.0.0.1:8080/api/reports"
        );
        assert!(client.get("http://[::1").error.is_some());
        assert!(Client::new("/relative").is_err());
        assert!(Client::new("mailto:a@b.example").is_err());
    }

    #[test]
    fn building_errors_are_kept_for_wait() {
        let client = Client::new("http://127.0.0.1:8080").unwrap();
        let request = client.post("/reports").header("bad header", "x");
        assert!(matches!(request.error, Some(ClientError::InvalidHeader(_))));
        let request = client
            .post("/reports")
            .json(&serde_json::json!({"seconds": 1}));
        assert_eq!(request.headers[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn problem_details_decode_with_defaults_and_extensions() {
        let problem: ProblemDetails =
            serde_json::from_str(r#"{"title":"Oops","status":409,"balance":30}"#).unwrap();
        assert_eq!(problem.problem_type, "about:blank");
        assert_eq!(problem.title.as_deref(), Some("Oops"));
        assert_eq!(problem.status, Some(409));
        assert_eq!(problem.detail, None);
        assert_eq!(problem.extensions["balance"], 30);
        assert_eq!(problem.to_string(), "Oops");
    }

    #[test]
    fn status_errors_show_the_start_of_the_body() {
        let error = ClientError::Status {
            status: StatusCode::BAD_REQUEST,
            body: "bad seconds\n".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "the server answered 400 Bad Request: bad seconds"
        );
        let error = ClientError::Status {
            status: StatusCode::BAD_GATEWAY,
            body: "é".repeat(300),
        };
        assert!(
            error
                .to_string()
                .ends_with(&format!("{}...", "é".repeat(200)))
        );
        let error = ClientError::Status {
            status: StatusCode::BAD_GATEWAY,
            body: String::new(),
        };
        assert_eq!(error.to_string(), "the server answered 502 Bad Gateway");
    }

    #[test]
    fn the_wait_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let receiver = CallbackReceiver::new("http://127.0.0.1:9000/cb").unwrap();
        let client = Client::new("http://127.0.0.1:8080").unwrap();
        let wait = client.post("/reports").callback(&receiver).wait();
        is_send(&wait);
    }
}
