//! Callbacks: `202 Accepted` on begin, then a content-free notification
//! `GET <callback uri>?<state>` when the operation ends.
//!
//! A client asks for a callback on the begin request with
//! `Prefer: respond-async, callback; url="<uri>"`, or the application supplies
//! the client's URI itself through a [resolver](crate::AsyncOpsBuilder::callback_resolver)
//! (registered-client systems); the resolver's URI wins over the client's.
//!
//! # Security (SSRF)
//!
//! A callback makes the server send a request where a client says. So, at
//! begin, before anything starts (a failure is a `400` problem
//! `invalid-callback`):
//!
//! - the URI must be absolute `http` or `https`, without user info, fragment
//!   or query of its own;
//! - its host must be allowed by [`callback_allow_hosts`](crate::AsyncOpsBuilder::callback_allow_hosts)
//!   / `ASYNC_OP_CALLBACK_ALLOW` (exact names, or `*.example.com` for
//!   subdomains). **Nothing is allowed by default**: callbacks are off until
//!   the application names hosts;
//! - the host is resolved, and every address must be public: loopback,
//!   private (RFC 1918, unique-local), link-local (which includes the cloud
//!   metadata address `169.254.169.254`), shared (RFC 6598, which includes
//!   `100.100.100.200`), unspecified, multicast, broadcast and documentation
//!   ranges are refused unless a network containing them is allowed with
//!   [`callback_allow_networks`](crate::AsyncOpsBuilder::callback_allow_networks)
//!   / `ASYNC_OP_CALLBACK_ALLOW_NETWORKS`;
//! - delivery connects to the addresses that were checked (no second DNS
//!   lookup, so DNS rebinding cannot redirect it), ignores proxy settings,
//!   and never follows redirects.
//!
//! # Delivery
//!
//! At least once: any `2xx` is success. Connection errors, timeouts, `408`,
//! `429` and `5xx` are retried with exponential backoff and jitter (a
//! `Retry-After` of the client's is honoured, up to the backoff cap); other
//! answers (`3xx`, other `4xx`) stop the retries. Attempts are bounded, each
//! has a timeout, and none is made after the state's expiry. Every attempt
//! carries the same `webhook-id`, so that a client can drop duplicates; with
//! a signing secret, also `webhook-timestamp` and `webhook-signature` in the
//! [Standard Webhooks](https://www.standardwebhooks.com/) form, over the empty
//! body. Deliveries run in the background, at most
//! [`callback_max_in_flight`](crate::AsyncOpsBuilder::callback_max_in_flight)
//! at once; the rest wait for a slot, and nothing else waits for them.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use actix_web::HttpRequest;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use tokio::sync::Semaphore;
use url::Url;

use crate::{
    config::Shared,
    error::{ConfigError, ProtocolError},
    metrics,
    state::{State, unix_now},
    store::OperationId,
};

/// Supplies a client's callback URI from the begin request (for example
/// from the URI a client registered), or `None` for no callback.
pub type CallbackResolver = Arc<dyn Fn(&HttpRequest) -> Option<String> + Send + Sync>;

/// The shortest Standard Webhooks signing secret accepted, in bytes.
pub const MIN_SIGNING_SECRET_LEN: usize = 24;

/// Callback settings (see the [module docs](self)).
#[derive(Clone)]
pub(crate) struct CallbackConfig {
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) allowed_networks: Vec<IpNet>,
    pub(crate) resolver: Option<CallbackResolver>,
    pub(crate) signing_key: Option<Vec<u8>>,
    pub(crate) max_attempts: u32,
    pub(crate) attempt_timeout: Duration,
    pub(crate) first_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_in_flight: usize,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_networks: Vec::new(),
            resolver: None,
            signing_key: None,
            max_attempts: 8,
            attempt_timeout: Duration::from_secs(10),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_in_flight: 256,
        }
    }
}

/// Parses a Standard Webhooks secret: `whsec_` followed by base64.
pub(crate) fn parse_signing_secret(secret: &str) -> Result<Vec<u8>, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidSetting {
        name: "callback_signing_secret",
        reason: reason.into(),
    };
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| invalid("expected `whsec_` followed by base64"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| invalid("the part after `whsec_` is not base64"))?;
    if key.len() < MIN_SIGNING_SECRET_LEN {
        return Err(invalid(&format!(
            "the secret is {} bytes; at least {MIN_SIGNING_SECRET_LEN} are required",
            key.len()
        )));
    }
    Ok(key)
}

/// A callback URI that passed every check, with the addresses it resolved
/// to: delivery connects to these and nothing else.
#[derive(Debug, Clone)]
pub(crate) struct CallbackTarget {
    url: Url,
    host: String,
    addrs: Vec<SocketAddr>,
}

/// The callback side of the middleware: checks and delivers.
pub(crate) struct Callbacks {
    pub(crate) config: CallbackConfig,
    in_flight: Arc<Semaphore>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    delivered: AtomicU64,
    abandoned: AtomicU64,
}

/// What callback delivery has done since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallbackStats {
    /// Requests sent to callback URIs.
    pub attempts: u64,
    /// Attempts that were followed by another one.
    pub retries: u64,
    /// Notifications a client acknowledged with a 2xx.
    pub delivered: u64,
    /// Notifications given up on (refused, attempts or time exhausted).
    pub abandoned: u64,
}

fn refused(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidCallback(reason.into())
}

/// Whether an address is one a callback may never reach unless allowed.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7 (incl. fd00:ec2::254)
                || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64 can reach v4-internal
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // v4-compatible
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // includes the metadata address 169.254.169.254
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared, RFC 6598 (incl. 100.100.100.200)
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|pattern| {
        if let Some(suffix) = pattern.strip_prefix("*.") {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        } else {
            pattern.eq_ignore_ascii_case(host)
        }
    })
}

impl Callbacks {
    pub(crate) fn new(config: CallbackConfig) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Self {
            config,
            in_flight,
            counters: Counters::default(),
        }
    }

    pub(crate) fn stats(&self) -> CallbackStats {
        let c = &self.counters;
        CallbackStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    /// The callback URI for a begin request, if one is asked for: the
    /// resolver's, else the client's `Prefer: callback; url=...`.
    pub(crate) fn requested(
        &self,
        req: &HttpRequest,
        from_prefer: Option<String>,
    ) -> Option<String> {
        self.config
            .resolver
            .as_ref()
            .and_then(|resolve| resolve(req))
            .or(from_prefer)
    }

    /// Checks a callback URI and resolves its host (see the module docs).
    pub(crate) async fn check(&self, uri: &str) -> Result<CallbackTarget, ProtocolError> {
        let url =
            Url::parse(uri).map_err(|_| refused("the callback URI is not an absolute URI"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(refused("the callback URI must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused("the callback URI must not carry user info"));
        }
        if url.fragment().is_some() {
            return Err(refused("the callback URI must not have a fragment"));
        }
        if url.query().is_some() {
            return Err(refused(
                "the callback URI must not have a query: the server puts the state there",
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(refused("the callback URI has no host")),
        };
        if self.config.allowed_hosts.is_empty() {
            return Err(refused(
                "callbacks are not enabled on this server (no callback host is allowed)",
            ));
        }
        if !host_allowed(&self.config.allowed_hosts, &host) {
            return Err(refused(format!("the callback host {host} is not allowed")));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            _ => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| refused(format!("the callback host {host} does not resolve")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(refused(format!(
                "the callback host {host} does not resolve"
            )));
        }
        for addr in &addrs {
            let ip = addr.ip();
            let allowed = self
                .config
                .allowed_networks
                .iter()
                .any(|net| net.contains(&ip));
            if is_internal(ip) && !allowed {
                return Err(refused(format!(
                    "the callback host {host} resolves to an internal address ({ip}), which is not allowed"
                )));
            }
        }
        Ok(CallbackTarget { url, host, addrs })
    }

    /// Delivers the notification for `op` in the background.
    pub(crate) fn deliver(
        shared: Arc<Shared>,
        op: OperationId,
        target: CallbackTarget,
        retention: u32,
        sub: Option<String>,
    ) {
        actix_rt::spawn(async move {
            let in_flight = Arc::clone(&shared.callbacks.in_flight);
            // The semaphore is never closed, so acquiring only waits.
            let Ok(_slot) = in_flight.acquire_owned().await else {
                return;
            };
            deliver(&shared, op, &target, retention, sub).await;
        });
    }
}

/// Why an attempt did not deliver.
enum AttemptFailed {
    /// Worth another attempt, after at least this long (the client's
    /// `Retry-After`, if it gave one).
    Retry(Option<Duration>),
    /// Not worth another attempt.
    Stop,
}

async fn deliver(
    shared: &Shared,
    op: OperationId,
    target: &CallbackTarget,
    retention: u32,
    sub: Option<String>,
) {
    let config = &shared.callbacks.config;
    let now = unix_now();
    let exp = now + u64::from(retention);
    let state = State {
        op,
        seq: 1,
        iat: now,
        nbf: now,
        exp,
        hold: false,
        sub,
    };
    let Ok(token) = shared.codec.sign(&state) else {
        tracing::error!("async-op: cannot sign the callback's state");
        return;
    };
    let mut url = target.url.clone();
    url.set_query(Some(&token));
    let delivery_id = format!("msg_{op}");
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.attempt_timeout)
        .resolve_to_addrs(&target.host, &target.addrs)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "async-op: cannot build the callback client");
            return;
        }
    };
    let counters = &shared.callbacks.counters;
    let mut backoff = config.first_backoff;
    for attempt in 1..=config.max_attempts {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        metrics::callback_attempt();
        match attempt_once(&client, &url, &delivery_id, config).await {
            Ok(()) => {
                tracing::info!(attempt, delivery = %delivery_id, "async-op: callback delivered");
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::callback_done("delivered");
                return;
            }
            Err(AttemptFailed::Stop) => {
                tracing::warn!(attempt, delivery = %delivery_id, "async-op: callback refused; not retried");
                counters.abandoned.fetch_add(1, Ordering::Relaxed);
                metrics::callback_done("abandoned");
                return;
            }
            Err(AttemptFailed::Retry(asked)) => {
                let jittered = backoff.mul_f64(rand::random_range(0.5..=1.0));
                let delay = asked.unwrap_or(jittered).min(config.max_backoff);
                let left = exp.saturating_sub(unix_now());
                if attempt == config.max_attempts || delay.as_secs() >= left {
                    break;
                }
                tracing::info!(attempt, ?delay, delivery = %delivery_id, "async-op: callback failed; retrying");
                counters.retries.fetch_add(1, Ordering::Relaxed);
                metrics::callback_retry();
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
    tracing::warn!(delivery = %delivery_id, "async-op: callback not delivered; giving up");
    counters.abandoned.fetch_add(1, Ordering::Relaxed);
    metrics::callback_done("abandoned");
}

async fn attempt_once(
    client: &reqwest::Client,
    url: &Url,
    delivery_id: &str,
    config: &CallbackConfig,
) -> Result<(), AttemptFailed> {
    let mut request = client.get(url.clone()).header("webhook-id", delivery_id);
    if let Some(key) = &config.signing_key {
        let timestamp = unix_now().to_string();
        request = request.header("webhook-timestamp", &timestamp).header(
            "webhook-signature",
            sign_webhook(key, delivery_id, &timestamp, b""),
        );
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "async-op: callback attempt failed");
            return Err(AttemptFailed::Retry(None));
        }
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retryable = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
    if !retryable {
        tracing::debug!(%status, "async-op: callback answered with a final failure");
        return Err(AttemptFailed::Stop);
    }
    let asked = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(AttemptFailed::Retry(asked))
}

/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, as Standard
/// Webhooks defines it.
pub fn sign_webhook(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn host_patterns() {
        let patterns = vec!["client.example".to_owned(), "*.hooks.example".to_owned()];
        assert!(host_allowed(&patterns, "client.example"));
        assert!(host_allowed(&patterns, "a.hooks.example"));
        assert!(host_allowed(&patterns, "a.b.hooks.example"));
        assert!(!host_allowed(&patterns, "hooks.example"));
        assert!(!host_allowed(&patterns, "evilhooks.example"));
        assert!(!host_allowed(&patterns, "client.example.evil"));
    }

    #[test]
    fn signing_secret() {
        assert!(parse_signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse_signing_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_signing_secret("whsec_c2hvcnQ=").is_err());
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_signature() {
        let key = parse_signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign_webhook(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
