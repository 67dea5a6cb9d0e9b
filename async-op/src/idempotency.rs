//! Idempotent begin: the `Idempotency-Key` request header
//! (draft-ietf-httpapi-idempotency-key-header).
//!
//! A begin that carries `Idempotency-Key` binds the key to its operation
//! for the operation's retention, in the store, so on any instance. A repeat
//! with the same key (from the same client, where client binding is on) gets
//! the existing operation's answer with a fresh state and never runs the
//! handler again; a repeat with the same key but another request (method,
//! path and query, content type, body) is refused with `422`, as the draft
//! says. Keys are 1 to 255 characters, sent as a structured-field string
//! (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`); an unquoted
//! token is accepted too.
//!
//! To fingerprint the body, the middleware reads it (up to
//! [`MAX_FINGERPRINTED_BODY`]) before the handler's extractors run, then
//! hands it on to them unchanged. Requests without the header are not
//! touched.

use actix_web::{
    HttpMessage as _,
    dev::{Payload, ServiceRequest},
    http::header::CONTENT_TYPE,
};
use bytes::BytesMut;
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};

use crate::error::ProtocolError;

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The largest request body fingerprinted (4 MiB); a larger begin with an
/// `Idempotency-Key` gets `413`.
pub const MAX_FINGERPRINTED_BODY: usize = 4 * 1024 * 1024;

/// A begin's key and the fingerprint of its request.
#[derive(Debug, Clone)]
pub(crate) struct RequestKey {
    pub(crate) key: String,
    pub(crate) fingerprint: [u8; 32],
}

/// The key of a header value: a structured-field string, or a bare token.
fn parse_key(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => text,
    };
    let valid = (1..=255).contains(&key.len())
        && key
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    valid.then(|| key.to_owned())
}

/// If the request carries an `Idempotency-Key`, reads its body, computes
/// the fingerprint, puts the body back for the extractors, and records the
/// key in the request's extensions.
pub(crate) async fn prepare(req: &mut ServiceRequest) -> Result<(), ProtocolError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(());
    };
    let key = parse_key(value.as_bytes()).ok_or(ProtocolError::InvalidIdempotencyKey)?;
    let mut hasher = Sha256::new();
    for part in [
        req.method().as_str().as_bytes(),
        req.uri()
            .path_and_query()
            .map_or(b"".as_slice(), |pq| pq.as_str().as_bytes()),
        req.headers()
            .get(CONTENT_TYPE)
            .map_or(b"".as_slice(), |v| v.as_bytes()),
    ] {
        // Length-prefixed, so that parts cannot run into each other.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ProtocolError::RequestBodyUnreadable)?;
        if body.len() + chunk.len() > MAX_FINGERPRINTED_BODY {
            return Err(ProtocolError::RequestTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    hasher.update((body.len() as u64).to_be_bytes());
    hasher.update(&body);
    req.set_payload(Payload::from(body));
    req.extensions_mut().insert(RequestKey {
        key,
        fingerprint: hasher.finalize().into(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn keys() {
        assert_eq!(parse_key(br#""abc-123""#).as_deref(), Some("abc-123"));
        assert_eq!(parse_key(b"abc-123").as_deref(), Some("abc-123"));
        assert_eq!(parse_key(br#""""#), None);
        assert_eq!(parse_key(b""), None);
        assert_eq!(parse_key(br#""unterminated"#), None);
        assert_eq!(parse_key(&[b'a'; 256]), None);
        assert_eq!(parse_key(&[0xff, 0xfe]), None);
        assert_eq!(parse_key(b"has\x01control"), None);
    }
}
