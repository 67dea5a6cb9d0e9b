//! [`CallbackReceiver`]: the endpoint a client app mounts to be called back.

use std::{
    fmt,
    sync::{Arc, Weak},
};

use actix_web::{HttpRequest, HttpResponse, Resource, web};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use dashmap::DashMap;
use tokio::sync::oneshot;
use url::Url;

use super::ClientError;

/// Receives the servers' callback notifications, in a client application that
/// runs an actix-web server of its own.
///
/// Build it with the public base URL under which servers reach it, mount
/// [`service`](Self::service) on the client app's `App`, and hand it to
/// requests with [`RequestBuilder::callback`](super::RequestBuilder::callback).
/// Every waiting operation gets its own callback URI, `<base>/<token>` with a
/// random, unguessable token; a notification `GET <base>/<token>?<state>`
/// hands its query string (the state, as-is) to the operation waiting for
/// that token.
///
/// The receiver always answers `204 No Content`, also for tokens it does not
/// know (a duplicate delivery of a notification it already handed over, or
/// one that came after its operation stopped waiting): the server then stops
/// retrying, and nothing is handed over twice.
///
/// Cheap to clone (one `Arc`) and shared by every clone: one receiver serves
/// all the actix-web workers and all the clients that use it.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use async_op::client::CallbackReceiver;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let receiver = CallbackReceiver::new("http://10.0.0.5:9000/async-op-callback")?;
/// let server = HttpServer::new({
///     let receiver = receiver.clone();
///     move || App::new().service(receiver.service())
/// })
/// .bind(("0.0.0.0", 9000))?
/// .run();
/// actix_rt::spawn(server);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CallbackReceiver {
    inner: Arc<Inner>,
}

/// What every clone shares.
struct Inner {
    /// The public base URL, without a trailing slash.
    base: Url,
    /// The route pattern of the notification endpoint: `<base path>/{token}`.
    pattern: String,
    /// The operations waiting for a notification, by token.
    waiters: DashMap<String, oneshot::Sender<String>>,
}

impl fmt::Debug for CallbackReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackReceiver")
            .field("base", &self.inner.base.as_str())
            .field("pending", &self.inner.waiters.len())
            .finish()
    }
}

impl CallbackReceiver {
    /// A receiver whose callback URIs start with `public_base`, the absolute
    /// `http` or `https` URL under which servers reach the client app's
    /// [`service`](Self::service), e.g.
    /// `http://client.example:9000/async-op-callback`.
    ///
    /// The URL must have no user info, query or fragment (servers refuse
    /// such callback URIs), and its path may hold only unreserved characters
    /// (`A-Z a-z 0-9 - . _ ~`) and `/`. A trailing `/` is ignored.
    pub fn new(public_base: impl AsRef<str>) -> Result<Self, ClientError> {
        let text = public_base.as_ref();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(text).map_err(|error| invalid(&error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(invalid(
                "a callback base must be an absolute http or https URL",
            ));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid("a callback base must not have user info"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "a callback base must not have a query or a fragment: the server puts the state in the query",
            ));
        }
        let path = base.path().trim_end_matches('/').to_owned();
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
        {
            return Err(invalid(
                "the path of a callback base may hold only A-Z a-z 0-9 - . _ ~ and /",
            ));
        }
        base.set_path(&path);
        Ok(Self {
            inner: Arc::new(Inner {
                pattern: format!("{path}/{{token}}"),
                base,
                waiters: DashMap::new(),
            }),
        })
    }

    /// The public base URL of the callback URIs (without a trailing `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// How many operations are waiting for a notification now.
    pub fn pending(&self) -> usize {
        self.inner.waiters.len()
    }

    /// The notification endpoint, `GET <base path>/{token}`, for
    /// [`App::service`](actix_web::App::service). Mount it on the `App`
    /// itself, not inside a scope: its path is the base URL's path. Call it
    /// once per worker (in the `HttpServer::new` closure); every call serves
    /// the same receiver.
    pub fn service(&self) -> Resource {
        let receiver = self.clone();
        web::resource(self.inner.pattern.as_str()).route(web::get().to(move |req: HttpRequest| {
            let receiver = receiver.clone();
            async move {
                receiver.notified(&req);
                HttpResponse::NoContent().finish()
            }
        }))
    }

    /// Hands a notification's query over to the operation waiting for its
    /// token, if any.
    fn notified(&self, req: &HttpRequest) {
        let token = req.match_info().get("token").unwrap_or_default();
        let state = req.query_string();
        let delivery = req
            .headers()
            .get("webhook-id")
            .and_then(|id| id.to_str().ok())
            .unwrap_or("-");
        if state.is_empty() {
            tracing::warn!(
                delivery,
                "async-op client: callback notification without a state ignored"
            );
            return;
        }
        match self.inner.waiters.remove(token) {
            Some((_, waiter)) => {
                tracing::debug!(delivery, "async-op client: callback notification received");
                // The waiter may have stopped waiting just now; then nobody
                // needs the state.
                let _ = waiter.send(state.to_owned());
            }
            None => tracing::debug!(
                delivery,
                "async-op client: callback notification for no waiting operation (a duplicate, or too late)"
            ),
        }
    }

    /// Registers a new waiting operation: its own callback URI and the
    /// channel its notification arrives on.
    pub(crate) fn register(&self) -> Result<Registration, ClientError> {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: self.inner.base.to_string(),
                reason: "the callback base cannot have path segments".to_owned(),
            })?
            .pop_if_empty()
            .push(&token);
        let (sender, notification) = oneshot::channel();
        self.inner.waiters.insert(token.clone(), sender);
        Ok(Registration {
            url,
            token,
            notification,
            receiver: Arc::downgrade(&self.inner),
        })
    }
}

/// One operation waiting for its notification. Dropping it unregisters the
/// token, so that a late notification is answered but handed to nobody.
pub(crate) struct Registration {
    /// The operation's own callback URI.
    pub(crate) url: Url,
    token: String,
    notification: oneshot::Receiver<String>,
    /// Weak, so that a receiver that every application clone has dropped is
    /// noticed (its waiters' senders drop with it).
    receiver: Weak<Inner>,
}

impl Registration {
    /// The notification's query string; `None` when the receiver is gone.
    pub(crate) async fn notification(&mut self) -> Option<String> {
        (&mut self.notification).await.ok()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.upgrade() {
            receiver.waiters.remove(&self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bases_are_checked() {
        for bad in [
            "/relative",
            "ftp://host/cb",
            "http://user:pw@host/cb",
            "http://host/cb?x=1",
            "http://host/cb#frag",
            "http://host/c%20b",
            "not a url",
        ] {
            assert!(CallbackReceiver::new(bad).is_err(), "{bad}");
        }
        let receiver = CallbackReceiver::new("http://127.0.0.1:9000/async-op-callback/").unwrap();
        assert_eq!(
            receiver.base_url().as_str(),
            "http://127.0.0.1:9000/async-op-callback"
        );
        assert_eq!(receiver.inner.pattern, "/async-op-callback/{token}");
        let root = CallbackReceiver::new("https://client.example").unwrap();
        assert_eq!(root.inner.pattern, "/{token}");
    }

    #[tokio::test]
    async fn tokens_are_unique_and_unregistered_on_drop() {
        let receiver = CallbackReceiver::new("http://127.0.0.1:9000/cb").unwrap();
        let a = receiver.register().unwrap();
        let b = receiver.register().unwrap();
        assert_ne!(a.url, b.url);
        assert!(a.url.as_str().starts_with("http://127.0.0.1:9000/cb/"));
        assert_eq!(a.url.path_segments().unwrap().count(), 2);
        assert_eq!(receiver.pending(), 2);
        drop(a);
        assert_eq!(receiver.pending(), 1);
        let root = CallbackReceiver::new("http://127.0.0.1:9000/").unwrap();
        let c = root.register().unwrap();
        assert_eq!(c.url.path_segments().unwrap().count(), 1);
        drop(b);
        assert_eq!(receiver.pending(), 0);
    }

    #[tokio::test]
    async fn a_dropped_receiver_is_noticed() {
        let receiver = CallbackReceiver::new("http://127.0.0.1:9000/cb").unwrap();
        let mut registration = receiver.register().unwrap();
        drop(receiver);
        assert_eq!(registration.notification().await, None);
    }
}
