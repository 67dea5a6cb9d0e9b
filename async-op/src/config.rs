//! Configuration: [`AsyncOps`], built with [`AsyncOpsBuilder`] or from the
//! environment.
//!
//! | variable | builder method | default | meaning |
//! |---|---|---|---|
//! | `ASYNC_OP_SECRET` | [`secret`](AsyncOpsBuilder::secret) | none: this or `ASYNC_OP_SIGNING_KEY_FILE` is required | HS256 signing secret, at least 32 bytes |
//! | `ASYNC_OP_PREVIOUS_SECRETS` | [`previous_secret`](AsyncOpsBuilder::previous_secret) | none | comma-separated older secrets, still accepted for verification |
//! | `ASYNC_OP_SIGNING_KEY_FILE` | [`signing_key`](AsyncOpsBuilder::signing_key) | none | instead of `ASYNC_OP_SECRET` (not both): a PKCS#8 PEM private key file, P-256 (ES256) or Ed25519 (EdDSA) |
//! | `ASYNC_OP_SIGNING_ALG` | [`SigningKey::es256_pem`], [`SigningKey::ed25519_pem`] | detected from the key | `ES256` or `EdDSA`: the algorithm the key file must have |
//! | `ASYNC_OP_VERIFICATION_KEY_FILES` | [`verification_key`](AsyncOpsBuilder::verification_key) | none | comma-separated SPKI PEM public key files (P-256 or Ed25519) of older keys, still accepted for verification |
//! | `ASYNC_OP_RETRY_AFTER` | [`retry_after`](AsyncOpsBuilder::retry_after) | `2` | seconds a client waits between polls |
//! | `ASYNC_OP_TTL` | [`retention`](AsyncOpsBuilder::retention) | `1h` | how long results (and states) are kept |
//! | `ASYNC_OP_POLL_PATH` | [`poll_path`](AsyncOpsBuilder::poll_path) | `/async-response` | the one poll path of the app |
//! | `ASYNC_OP_AUDIENCE` | [`audience`](AsyncOpsBuilder::audience) | `async-op` | the states' `aud` |
//! | `ASYNC_OP_LONG_POLL` | [`long_poll`](AsyncOpsBuilder::long_poll) | `20` | seconds a poll of a running operation is held (0: off; at most 30) |
//! | `ASYNC_OP_EARLY_POLL` | [`early_poll`](AsyncOpsBuilder::early_poll) | `reject` | `reject` (503 + `Retry-After`) or `hold` (held until `nbf`) |
//! | `ASYNC_OP_MAX_WAIT` | [`max_wait`](AsyncOpsBuilder::max_wait) | `30` | the cap on `Prefer: wait=N` at begin, in seconds (at most 30) |
//! | `ASYNC_OP_REDIS_URL` | `store_from_env` (async; feature `redis`) | none: in-memory store | the Redis that all instances share (`redis://[:password@]host[:port][/db]`); read only by `store_from_env().await`, not by `from_env` or `with_env` |
//! | `ASYNC_OP_MAX_PENDING` | [`max_pending`](AsyncOpsBuilder::max_pending) | `10000` | operations running on this instance at most; more begins get 503 |
//! | `ASYNC_OP_MAX_RESULT_BYTES` | [`max_result_bytes`](AsyncOpsBuilder::max_result_bytes) | `16777216` | the largest response body kept; a larger one fails the operation |
//! | `ASYNC_OP_CALLBACK_ALLOW` | [`callback_allow_hosts`](AsyncOpsBuilder::callback_allow_hosts) | none: callbacks off | comma-separated callback hosts (`client.example`, `*.hooks.example`) |
//! | `ASYNC_OP_CALLBACK_ALLOW_NETWORKS` | [`callback_allow_networks`](AsyncOpsBuilder::callback_allow_networks) | none | comma-separated networks a callback may reach although internal (`10.0.0.0/8`, `127.0.0.1/32`) |
//! | `ASYNC_OP_CALLBACK_SECRET` | [`callback_signing_secret`](AsyncOpsBuilder::callback_signing_secret) | none: unsigned | Standard Webhooks secret (`whsec_` + base64, at least 24 bytes) |
//! | `ASYNC_OP_CALLBACK_ATTEMPTS` | [`callback_max_attempts`](AsyncOpsBuilder::callback_max_attempts) | `8` | delivery attempts at most |
//! | `ASYNC_OP_CALLBACK_TIMEOUT` | [`callback_attempt_timeout`](AsyncOpsBuilder::callback_attempt_timeout) | `10` | seconds one attempt may take |
//!
//! Durations in the environment are whole seconds (`90`) or a number with a
//! unit: `s`, `m`, `h` or `d` (`90s`, `15m`, `1h`, `7d`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    callback::{CallbackConfig, Callbacks, parse_signing_secret},
    error::{ConfigError, ProtocolError},
    hold::Lifecycle,
    poll::Cancellation,
    state::{KeyAlgorithm, SigningKey, StateCodec, VerificationKey},
    store::OperationId,
    store::{MemoryStore, OperationStore},
};

/// The default `Retry-After` in seconds.
pub const DEFAULT_RETRY_AFTER: u32 = 2;
/// The default retention in seconds (one hour).
pub const DEFAULT_RETENTION: u32 = 3600;
/// The default poll path.
pub const DEFAULT_POLL_PATH: &str = "/async-response";
/// The default audience of states.
pub const DEFAULT_AUDIENCE: &str = "async-op";
/// The longest retention accepted (30 days).
pub const MAX_RETENTION: u32 = 30 * 24 * 3600;
/// The default long-poll hold limit in seconds: well under the 30 to 60 s
/// after which proxies and load balancers commonly cut an idle request.
pub const DEFAULT_LONG_POLL: u32 = 20;
/// The default limit of operations running on one instance.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// The default limit of a kept response body (16 MiB).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;
/// The longest a request is ever held (RFC 6202's advice, and the seed's).
pub const MAX_HOLD: u32 = 30;

/// What a poll that comes before its state's `nbf` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyPoll {
    /// `503 Service Unavailable` with `Retry-After` (the seed's rule).
    #[default]
    Reject,
    /// The request is held until `nbf`, then answered as a poll. Makes
    /// clients that ignore `Retry-After` (browsers, `curl -L`) work.
    Hold,
}

impl std::str::FromStr for EarlyPoll {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "reject" => Ok(Self::Reject),
            "hold" => Ok(Self::Hold),
            _ => Err("expected `reject` or `hold`".into()),
        }
    }
}

/// The middleware and its configuration: keys, store, poll path and
/// defaults. Cheap to clone (one `Arc`); clone it into every worker's `App`.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use async_op::AsyncOps;
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let ops = AsyncOps::from_env().expect("async-op configuration");
///     HttpServer::new(move || App::new().wrap(ops.clone()))
///         .bind(("127.0.0.1", 8080))?
///         .run()
///         .await
/// }
/// ```
#[derive(Clone)]
pub struct AsyncOps {
    pub(crate) shared: Arc<Shared>,
}

/// What every worker shares.
pub(crate) struct Shared {
    pub(crate) codec: StateCodec,
    pub(crate) store: Arc<dyn OperationStore>,
    pub(crate) poll_path: String,
    pub(crate) retry_after: u32,
    pub(crate) retention: u32,
    pub(crate) long_poll: u32,
    pub(crate) early_poll: EarlyPoll,
    pub(crate) max_wait: u32,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) callbacks: Callbacks,
    pub(crate) client_identity: Option<ClientIdentity>,
    pub(crate) max_pending: usize,
    pub(crate) max_result_bytes: usize,
    pub(crate) pending: AtomicUsize,
}

/// Tells who the client of a request is (for example the subject of its
/// `Authorization`), for client binding; `None` for an anonymous request.
pub type ClientIdentity = Arc<dyn Fn(&actix_web::HttpRequest) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for AsyncOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncOps")
            .field("poll_path", &self.shared.poll_path)
            .field("retry_after", &self.shared.retry_after)
            .field("retention", &self.shared.retention)
            .field("codec", &self.shared.codec)
            .finish_non_exhaustive()
    }
}

/// The longest client identity carried in a state as it is; a longer one
/// (or one that looks like a digest) is carried as its digest, so that
/// states stay short whatever identities an application has.
pub const MAX_SUBJECT_LEN: usize = 128;

impl Shared {
    /// The `sub` of the states of operations begun by this request's
    /// client: its identity, or `sha256:<base64url digest>` of a long one.
    pub(crate) fn client_subject(&self, req: &actix_web::HttpRequest) -> Option<String> {
        let identity = self
            .client_identity
            .as_ref()
            .and_then(|identify| identify(req))?;
        if identity.len() <= MAX_SUBJECT_LEN && !identity.starts_with("sha256:") {
            return Some(identity);
        }
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        use sha2::{Digest as _, Sha256};
        Some(format!(
            "sha256:{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(identity.as_bytes()))
        ))
    }
}

impl AsyncOps {
    /// A builder with the defaults and no secret.
    pub fn builder() -> AsyncOpsBuilder {
        AsyncOpsBuilder::default()
    }

    /// The configuration from the environment (see the [module
    /// docs](crate::config) for the variables).
    pub fn from_env() -> Result<Self, ConfigError> {
        AsyncOpsBuilder::from_env()?.build()
    }

    /// The poll path, e.g. `/async-response`.
    pub fn poll_path(&self) -> &str {
        &self.shared.poll_path
    }

    /// The default `Retry-After`, in seconds.
    pub fn retry_after(&self) -> u32 {
        self.shared.retry_after
    }

    /// The default retention, in seconds.
    pub fn retention(&self) -> u32 {
        self.shared.retention
    }

    /// The default long-poll hold limit, in seconds (0: off).
    pub fn long_poll(&self) -> u32 {
        self.shared.long_poll
    }

    /// The default early-poll policy.
    pub fn early_poll(&self) -> EarlyPoll {
        self.shared.early_poll
    }

    /// The number of requests held right now (long polls, early polls held
    /// until their `nbf`, and begins waiting on `Prefer: wait`).
    pub fn held_requests(&self) -> usize {
        self.shared.lifecycle.held()
    }

    /// Starts a graceful shutdown: every held request is answered at once
    /// (a poll with a `303` and a fresh state, a begin with its usual
    /// answer), and no request is held from now on. Call it when the server
    /// begins to stop, so that the stop does not wait for hold limits;
    /// [`stop_on_signal`](crate::shutdown::stop_on_signal) does it for you.
    pub fn shutdown(&self) {
        self.shared.lifecycle.shut_down();
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.lifecycle.is_shutting_down()
    }

    /// Operations running on this instance now.
    pub fn pending_operations(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Cancels an operation, as `DELETE <poll path>?<state>` does: with a
    /// shared store, on whichever instance runs it.
    pub async fn cancel(&self, op: OperationId) -> Result<Cancellation, ProtocolError> {
        crate::poll::cancel_operation(&self.shared, op).await
    }

    /// What callback delivery has done since the server started.
    pub fn callback_stats(&self) -> crate::callback::CallbackStats {
        self.shared.callbacks.stats()
    }

    /// The state codec (for tools and tests that mint or inspect states).
    pub fn codec(&self) -> &StateCodec {
        &self.shared.codec
    }
}

/// Builds an [`AsyncOps`]. Every setting has a default except the secret.
#[derive(Clone)]
pub struct AsyncOpsBuilder {
    secret: Option<Vec<u8>>,
    previous_secrets: Vec<Vec<u8>>,
    signing_key: Option<SigningKey>,
    verification_keys: Vec<VerificationKey>,
    retry_after: u32,
    retention: u32,
    poll_path: String,
    audience: String,
    long_poll: u32,
    early_poll: EarlyPoll,
    max_wait: u32,
    callbacks: CallbackConfig,
    callback_networks: Vec<String>,
    callback_secret: Option<String>,
    client_identity: Option<ClientIdentity>,
    max_pending: usize,
    max_result_bytes: usize,
    store: Option<Arc<dyn OperationStore>>,
}

impl Default for AsyncOpsBuilder {
    fn default() -> Self {
        Self {
            secret: None,
            previous_secrets: Vec::new(),
            signing_key: None,
            verification_keys: Vec::new(),
            retry_after: DEFAULT_RETRY_AFTER,
            retention: DEFAULT_RETENTION,
            poll_path: DEFAULT_POLL_PATH.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            long_poll: DEFAULT_LONG_POLL,
            early_poll: EarlyPoll::Reject,
            max_wait: MAX_HOLD,
            callbacks: CallbackConfig::default(),
            callback_networks: Vec::new(),
            callback_secret: None,
            client_identity: None,
            max_pending: DEFAULT_MAX_PENDING,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            store: None,
        }
    }
}

impl std::fmt::Debug for AsyncOpsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncOpsBuilder")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("previous_secrets", &self.previous_secrets.len())
            .field("signing_key", &self.signing_key)
            .field("verification_keys", &self.verification_keys)
            .field("retry_after", &self.retry_after)
            .field("retention", &self.retention)
            .field("poll_path", &self.poll_path)
            .field("audience", &self.audience)
            .field("long_poll", &self.long_poll)
            .field("early_poll", &self.early_poll)
            .field("max_wait", &self.max_wait)
            .field("callback_hosts", &self.callbacks.allowed_hosts)
            .field("callback_networks", &self.callback_networks)
            .field(
                "callback_secret",
                &self.callback_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

fn env_var(name: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(ConfigError::InvalidEnv {
            name,
            value: value.to_string_lossy().into_owned(),
            reason: "not UTF-8".into(),
        }),
    }
}

/// The longest key file read: a PEM key is a few hundred bytes.
const MAX_KEY_FILE: u64 = 64 * 1024;

fn key_file_error(name: &'static str, path: &str, error: ConfigError) -> ConfigError {
    ConfigError::InvalidEnv {
        name,
        value: path.to_owned(),
        reason: match error {
            ConfigError::InvalidKey(reason) => reason,
            other => other.to_string(),
        },
    }
}

fn read_key_file(name: &'static str, path: &str) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let mut pem = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE + 1).read_to_string(&mut pem))
        .map_err(|error| {
            let reason = format!("cannot read it: {error}");
            key_file_error(name, path, ConfigError::InvalidKey(reason))
        })?;
    if pem.len() as u64 > MAX_KEY_FILE {
        let reason = format!("larger than {MAX_KEY_FILE} bytes: not a PEM key");
        return Err(key_file_error(name, path, ConfigError::InvalidKey(reason)));
    }
    Ok(pem)
}

/// The signing key in the PEM file `path` (`ASYNC_OP_SIGNING_KEY_FILE`), of
/// the algorithm `ASYNC_OP_SIGNING_ALG` names, or whichever it is.
fn signing_key_file(path: &str, algorithm: Option<String>) -> Result<SigningKey, ConfigError> {
    const NAME: &str = "ASYNC_OP_SIGNING_KEY_FILE";
    let algorithm = match algorithm {
        None => None,
        Some(value) => match value.parse() {
            Ok(algorithm @ (KeyAlgorithm::Es256 | KeyAlgorithm::EdDsa)) => Some(algorithm),
            _ => {
                return Err(ConfigError::InvalidEnv {
                    name: "ASYNC_OP_SIGNING_ALG",
                    value,
                    reason: "expected `ES256` or `EdDSA` (an HS256 secret goes in ASYNC_OP_SECRET)"
                        .into(),
                });
            }
        },
    };
    let pem = read_key_file(NAME, path)?;
    match algorithm {
        Some(KeyAlgorithm::Es256) => SigningKey::es256_pem(&pem),
        Some(KeyAlgorithm::EdDsa) => SigningKey::ed25519_pem(&pem),
        _ => SigningKey::from_pem(&pem),
    }
    .map_err(|error| key_file_error(NAME, path, error))
}

/// The verification key in the PEM file `path` (one of
/// `ASYNC_OP_VERIFICATION_KEY_FILES`).
fn verification_key_file(path: &str) -> Result<VerificationKey, ConfigError> {
    const NAME: &str = "ASYNC_OP_VERIFICATION_KEY_FILES";
    let pem = read_key_file(NAME, path)?;
    VerificationKey::from_public_pem(&pem).map_err(|error| key_file_error(NAME, path, error))
}

/// Parses `90`, `90s`, `15m`, `1h` or `7d` into seconds.
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.checked_mul(unit)
}

fn parse_count(name: &'static str, value: String) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(ConfigError::InvalidEnv {
            name,
            value,
            reason: "expected a positive whole number".into(),
        }),
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn env_seconds(name: &'static str, max: u32) -> Result<Option<u32>, ConfigError> {
    let Some(value) = env_var(name)? else {
        return Ok(None);
    };
    match parse_duration_secs(&value).and_then(|s| u32::try_from(s).ok()) {
        Some(seconds) if seconds <= max => Ok(Some(seconds)),
        _ => Err(ConfigError::InvalidEnv {
            name,
            value,
            reason: format!("expected seconds (`90`) or a duration (`15m`, `1h`), at most {max} s"),
        }),
    }
}

impl AsyncOpsBuilder {
    /// A builder with the defaults overridden by the environment variables
    /// that are set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_env()
    }

    /// This builder with its settings overridden by the environment
    /// variables that are set. An application sets its own defaults first,
    /// then lets the environment have the last word:
    ///
    /// ```
    /// use async_op::{AsyncOps, config::EarlyPoll};
    ///
    /// let builder = AsyncOps::builder().early_poll(EarlyPoll::Hold).with_env()?;
    /// # Ok::<(), async_op::ConfigError>(())
    /// ```
    pub fn with_env(self) -> Result<Self, ConfigError> {
        let mut builder = self;
        let key_file = env_var("ASYNC_OP_SIGNING_KEY_FILE")?;
        let algorithm = env_var("ASYNC_OP_SIGNING_ALG")?;
        if let Some(secret) = env_var("ASYNC_OP_SECRET")? {
            if key_file.is_some() {
                return Err(ConfigError::ConflictingSigningKeys);
            }
            builder = builder.secret(secret);
        }
        if let Some(path) = key_file {
            builder = builder.signing_key(signing_key_file(&path, algorithm)?);
        } else if let Some(value) = algorithm {
            return Err(ConfigError::InvalidEnv {
                name: "ASYNC_OP_SIGNING_ALG",
                value,
                reason: "it is the algorithm of ASYNC_OP_SIGNING_KEY_FILE, which is not set".into(),
            });
        }
        if let Some(paths) = env_var("ASYNC_OP_VERIFICATION_KEY_FILES")? {
            builder.verification_keys = split_list(&paths)
                .iter()
                .map(|path| verification_key_file(path))
                .collect::<Result<_, _>>()?;
        }
        if let Some(previous) = env_var("ASYNC_OP_PREVIOUS_SECRETS")? {
            builder.previous_secrets = previous
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect();
        }
        if let Some(seconds) = env_seconds("ASYNC_OP_RETRY_AFTER", 3600)? {
            builder.retry_after = seconds;
        }
        if let Some(seconds) = env_seconds("ASYNC_OP_TTL", MAX_RETENTION)? {
            builder.retention = seconds;
        }
        if let Some(path) = env_var("ASYNC_OP_POLL_PATH")? {
            builder.poll_path = path;
        }
        if let Some(audience) = env_var("ASYNC_OP_AUDIENCE")? {
            builder.audience = audience;
        }
        if let Some(seconds) = env_seconds("ASYNC_OP_LONG_POLL", MAX_HOLD)? {
            builder.long_poll = seconds;
        }
        if let Some(seconds) = env_seconds("ASYNC_OP_MAX_WAIT", MAX_HOLD)? {
            builder.max_wait = seconds;
        }
        if let Some(value) = env_var("ASYNC_OP_MAX_PENDING")? {
            builder.max_pending = parse_count("ASYNC_OP_MAX_PENDING", value)?;
        }
        if let Some(value) = env_var("ASYNC_OP_MAX_RESULT_BYTES")? {
            builder.max_result_bytes = parse_count("ASYNC_OP_MAX_RESULT_BYTES", value)?;
        }
        if let Some(hosts) = env_var("ASYNC_OP_CALLBACK_ALLOW")? {
            builder.callbacks.allowed_hosts = split_list(&hosts);
        }
        if let Some(networks) = env_var("ASYNC_OP_CALLBACK_ALLOW_NETWORKS")? {
            builder.callback_networks = split_list(&networks);
        }
        if let Some(secret) = env_var("ASYNC_OP_CALLBACK_SECRET")? {
            builder.callback_secret = Some(secret);
        }
        if let Some(attempts) = env_var("ASYNC_OP_CALLBACK_ATTEMPTS")? {
            builder.callbacks.max_attempts = attempts
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| ConfigError::InvalidEnv {
                    name: "ASYNC_OP_CALLBACK_ATTEMPTS",
                    value: attempts,
                    reason: "expected a number of attempts from 1 to 100".into(),
                })?;
        }
        if let Some(seconds) = env_seconds("ASYNC_OP_CALLBACK_TIMEOUT", 300)? {
            builder.callbacks.attempt_timeout = Duration::from_secs(seconds.into());
        }
        if let Some(value) = env_var("ASYNC_OP_EARLY_POLL")? {
            builder.early_poll = value.parse().map_err(|reason| ConfigError::InvalidEnv {
                name: "ASYNC_OP_EARLY_POLL",
                value,
                reason,
            })?;
        }
        Ok(builder)
    }

    /// The HS256 signing secret: at least 32 bytes, shared by all instances.
    /// A shorthand for [`signing_key`](Self::signing_key) with
    /// [`SigningKey::hs256`], checked by [`build`](Self::build). There is one
    /// signing key: this replaces a signing key set before.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self.signing_key = None;
        self
    }

    /// Whether a signing key has been set, a secret or a key (by the
    /// environment, [`secret`](Self::secret) or
    /// [`signing_key`](Self::signing_key)).
    pub fn has_secret(&self) -> bool {
        self.secret.is_some() || self.signing_key.is_some()
    }

    /// An older secret whose states are still accepted (key rotation). A
    /// shorthand for [`verification_key`](Self::verification_key) with
    /// [`VerificationKey::hs256`], checked by [`build`](Self::build).
    pub fn previous_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.previous_secrets.push(secret.as_ref().to_vec());
        self
    }

    /// The key new states are signed with: HS256, ES256 or EdDSA (see
    /// [`SigningKey`]). There is one signing key: this replaces a
    /// [`secret`](Self::secret) set before.
    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.signing_key = Some(key);
        self.secret = None;
        self
    }

    /// A key whose states are still accepted besides the signing key's: the
    /// previous signing key, during a rotation (see [rotating
    /// keys](crate::state#rotating-keys)). Each state is checked with the key
    /// its `kid` names and that key's algorithm only.
    pub fn verification_key(mut self, key: VerificationKey) -> Self {
        self.verification_keys.push(key);
        self
    }

    /// Seconds a client is asked to wait between polls (`Retry-After`).
    /// Whole seconds; sub-second parts are dropped.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// How long results, and the states that lead to them, are kept.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = u32::try_from(retention.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// The poll path (default `/async-response`).
    pub fn poll_path(mut self, path: impl Into<String>) -> Self {
        self.poll_path = path.into();
        self
    }

    /// The audience (`aud`) of the states.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// How long a poll of a running operation is held before it is answered
    /// with a 303 (default 20 s; zero turns long polling off). Capped at
    /// [`MAX_HOLD`] (30 s) by [`build`](Self::build).
    pub fn long_poll(mut self, hold: Duration) -> Self {
        self.long_poll = u32::try_from(hold.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// What a poll that comes too early gets (default [`EarlyPoll::Reject`]).
    pub fn early_poll(mut self, policy: EarlyPoll) -> Self {
        self.early_poll = policy;
        self
    }

    /// The longest a begin waits for `Prefer: wait=N` (default and maximum
    /// 30 s; zero ignores the preference).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// The hosts callbacks may go to: exact names or IP literals, or
    /// `*.example.com` for any subdomain. Nothing is allowed by default,
    /// which keeps callbacks off. See [`callback`](crate::callback).
    pub fn callback_allow_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.callbacks.allowed_hosts = hosts
            .into_iter()
            .map(|h| h.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// Networks a callback may reach although they are internal (loopback,
    /// private, link-local, ...), in CIDR form: `10.0.0.0/8`, `::1/128`.
    /// Checked by [`build`](Self::build).
    pub fn callback_allow_networks<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.callback_networks = networks.into_iter().map(Into::into).collect();
        self
    }

    /// Supplies callback URIs from the begin request, for applications that
    /// know their clients' URIs (a registration). Its URI wins over one the
    /// client sends; it is checked like any other.
    pub fn callback_resolver(
        mut self,
        resolver: impl Fn(&actix_web::HttpRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.resolver = Some(Arc::new(resolver));
        self
    }

    /// Signs notifications the Standard Webhooks way with this secret
    /// (`whsec_` followed by base64 of at least 24 bytes).
    pub fn callback_signing_secret(mut self, secret: impl Into<String>) -> Self {
        self.callback_secret = Some(secret.into());
        self
    }

    /// Delivery attempts at most (default 8).
    pub fn callback_max_attempts(mut self, attempts: u32) -> Self {
        self.callbacks.max_attempts = attempts.max(1);
        self
    }

    /// The time one delivery attempt may take (default 10 s).
    pub fn callback_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.callbacks.attempt_timeout = timeout;
        self
    }

    /// The delay before the second attempt (doubled for each further one,
    /// with jitter) and the longest delay (defaults 1 s and 5 min).
    pub fn callback_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.callbacks.first_backoff = first;
        self.callbacks.max_backoff = max.max(first);
        self
    }

    /// Deliveries in flight at most (default 256); more wait for a slot.
    pub fn callback_max_in_flight(mut self, deliveries: usize) -> Self {
        self.callbacks.max_in_flight = deliveries.max(1);
        self
    }

    /// Binds operations to clients: `identify` tells who the client of a
    /// request is (for example the subject of its `Authorization`). The
    /// identity at begin goes into the state as `sub`, and a poll, fetch or
    /// cancel by another identity (or none) gets `403` and learns nothing
    /// else. `Idempotency-Key`s are scoped to the identity too.
    pub fn client_identity(
        mut self,
        identify: impl Fn(&actix_web::HttpRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.client_identity = Some(Arc::new(identify));
        self
    }

    /// Operations running on this instance at most (default 10,000); a
    /// begin beyond it gets `503` + `Retry-After` and starts nothing.
    pub fn max_pending(mut self, operations: usize) -> Self {
        self.max_pending = operations.max(1);
        self
    }

    /// The largest response body kept (default 16 MiB). A handler whose
    /// response is larger fails its operation (`result-too-large`) instead
    /// of filling the memory.
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes.max(1);
        self
    }

    /// The operation store (default: a new [`MemoryStore`]).
    pub fn store(mut self, store: impl OperationStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// This builder with the Redis store named by `ASYNC_OP_REDIS_URL`
    /// (crate feature `redis`), connected now; the builder as it is when the
    /// variable is not set. Separate from [`with_env`](Self::with_env)
    /// because connecting is asynchronous:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), async_op::ConfigError> {
    /// let ops = async_op::AsyncOps::builder()
    ///     .with_env()?
    ///     .store_from_env()
    ///     .await?
    ///     .build()?;
    /// # drop(ops);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Fails with [`ConfigError::InvalidEnv`] (the URL's password hidden) if
    /// the URL does not parse or Redis cannot be reached, and, in a build
    /// without the `redis` feature, if the variable is set at all: an app
    /// meant to share its operations must not quietly keep them to itself.
    pub async fn store_from_env(self) -> Result<Self, ConfigError> {
        let Some(url) = env_var("ASYNC_OP_REDIS_URL")? else {
            return Ok(self);
        };
        #[cfg(feature = "redis")]
        let connected = crate::store::RedisStore::connect(&url)
            .await
            .map(|store| self.store(store))
            .map_err(|error| error.to_string());
        #[cfg(not(feature = "redis"))]
        let connected: Result<Self, String> =
            Err("async-op was built without its `redis` feature".to_owned());
        connected.map_err(|reason| ConfigError::InvalidEnv {
            name: "ASYNC_OP_REDIS_URL",
            value: crate::store::redact_url(&url),
            reason,
        })
    }

    /// Checks the settings and builds the middleware.
    pub fn build(self) -> Result<AsyncOps, ConfigError> {
        let signing = match (self.secret, self.signing_key) {
            (Some(secret), None) => SigningKey::hs256(secret)?,
            (None, Some(key)) => key,
            (None, None) => return Err(ConfigError::MissingSecret),
            (Some(_), Some(_)) => return Err(ConfigError::ConflictingSigningKeys),
        };
        let visible = |c: char| c.is_ascii_graphic() && c != '?' && c != '#';
        if !self.poll_path.starts_with('/') || !self.poll_path.chars().all(visible) {
            return Err(ConfigError::InvalidSetting {
                name: "poll_path",
                reason: format!(
                    "{:?} must be an absolute path of visible ASCII, without query or fragment",
                    self.poll_path
                ),
            });
        }
        if self.retention == 0 || self.retention > MAX_RETENTION {
            return Err(ConfigError::InvalidSetting {
                name: "retention",
                reason: format!("must be between 1 s and {MAX_RETENTION} s"),
            });
        }
        if self.retry_after >= self.retention {
            return Err(ConfigError::InvalidSetting {
                name: "retry_after",
                reason: "must be shorter than the retention".into(),
            });
        }
        for (name, value) in [("long_poll", self.long_poll), ("max_wait", self.max_wait)] {
            if value > MAX_HOLD {
                return Err(ConfigError::InvalidSetting {
                    name,
                    reason: format!(
                        "{value} s is more than the {MAX_HOLD} s a request may be held"
                    ),
                });
            }
        }
        let mut callbacks = self.callbacks;
        for network in &self.callback_networks {
            let parsed = network
                .parse::<ipnet::IpNet>()
                .or_else(|_| network.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::InvalidSetting {
                    name: "callback_allow_networks",
                    reason: format!("{network:?} is not a network in CIDR form (`10.0.0.0/8`)"),
                })?;
            callbacks.allowed_networks.push(parsed);
        }
        if let Some(secret) = &self.callback_secret {
            callbacks.signing_key = Some(parse_signing_secret(secret)?);
        }
        let previous = self
            .previous_secrets
            .iter()
            .map(VerificationKey::hs256)
            .collect::<Result<Vec<_>, _>>()?;
        let codec = StateCodec::new(
            signing,
            previous.into_iter().chain(self.verification_keys),
            &self.audience,
        )?;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn OperationStore>);
        Ok(AsyncOps {
            shared: Arc::new(Shared {
                codec,
                store,
                poll_path: self.poll_path,
                retry_after: self.retry_after,
                retention: self.retention,
                long_poll: self.long_poll,
                early_poll: self.early_poll,
                max_wait: self.max_wait,
                lifecycle: Lifecycle::default(),
                callbacks: Callbacks::new(callbacks),
                client_identity: self.client_identity,
                max_pending: self.max_pending,
                max_result_bytes: self.max_result_bytes,
                pending: AtomicUsize::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Some(90));
        assert_eq!(parse_duration_secs("15m"), Some(900));
        assert_eq!(parse_duration_secs("1h"), Some(3600));
        assert_eq!(parse_duration_secs("2d"), Some(172_800));
        assert_eq!(parse_duration_secs("1x"), None);
        assert_eq!(parse_duration_secs("h"), None);
        assert_eq!(parse_duration_secs("-1"), None);
    }

    #[test]
    fn missing_and_short_secrets_are_refused() {
        assert!(matches!(
            AsyncOps::builder().build(),
            Err(ConfigError::MissingSecret)
        ));
        assert!(matches!(
            AsyncOps::builder().secret("too short").build(),
            Err(ConfigError::SecretTooShort { len: 9 })
        ));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn one_signing_key_the_last_one_set() {
        let pem = include_str!("../../tests/keys/ed25519-a.test-private.pem");
        let key = SigningKey::ed25519_pem(pem).unwrap();
        assert!(AsyncOps::builder().signing_key(key.clone()).has_secret());
        let builder = AsyncOps::builder().secret([7u8; 32]).signing_key(key);
        let ops = builder.clone().build().unwrap();
        assert_eq!(ops.codec().algorithm(), KeyAlgorithm::EdDsa);
        let ops = builder
            .secret([7u8; 32])
            .previous_secret([8u8; 32])
            .build()
            .unwrap();
        assert_eq!(ops.codec().algorithm(), KeyAlgorithm::Hs256);
        assert_eq!(ops.codec().verification_key_ids().len(), 2);
    }

    #[test]
    fn bad_poll_paths_are_refused() {
        let builder = AsyncOps::builder().secret([7u8; 32]);
        assert!(builder.clone().poll_path("relative").build().is_err());
        assert!(builder.clone().poll_path("/a?b").build().is_err());
        assert!(builder.poll_path("/ok").build().is_ok());
    }
}
