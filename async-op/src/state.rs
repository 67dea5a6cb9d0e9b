//! The state: a compact JWS that carries which operation a URI is for.
//!
//! Every URI the server hands out for an operation (`<poll path>?<state>`)
//! carries a state, signed with the server's current key. It holds only:
//!
//! | claim | meaning |
//! |---|---|
//! | `op` | the operation id (128 random bits, base64url) |
//! | `seq` | the poll number: 1 on begin, +1 on every 303 |
//! | `nbf` | the earliest time the URI may be followed |
//! | `iat` | when the state was issued |
//! | `exp` | the end of retention: the result is not kept after it |
//! | `aud` | the audience, so states of other systems signed with the same key are refused |
//! | `hold` | present (`true`) only when an early follow is held rather than refused |
//! | `sub` | present only with client binding: the identity of the client that began the operation |
//!
//! and the header carries `alg`, `typ: JWT` and `kid`, the id of the key that
//! signed it. It never carries the request, the result or anything secret.
//!
//! Checks on the way in, in this order: the query length; the header parses
//! and names a known `kid`; the algorithm is the one configured for that key
//! (so `none` never is); the signature; the claims parse; `aud`; `exp`
//! (exactly: the leeway is 0, and a state whose `exp` has passed is answered
//! `410`); then `iat` not in the future and `1 <= seq`, `nbf <= exp`.
//! `nbf` is checked by the caller, which decides between `503` and holding.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind as JwtErrorKind,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::{ConfigError, InvalidStateReason, ProtocolError},
    store::OperationId,
};

/// The shortest HMAC secret accepted, in bytes (the output size of SHA-256,
/// as RFC 7518 section 3.2 requires for HS256).
pub const MIN_SECRET_LEN: usize = 32;

/// The longest query accepted on the poll path. States this library issues
/// are about 250 bytes; anything much longer is refused before any parsing.
pub const MAX_STATE_LEN: usize = 1024;

/// How far in the future an `iat` may be (clock skew between instances).
const IAT_SKEW: u64 = 5;

/// The current time in whole seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The content of a state: what [`StateCodec::sign`] signs and
/// [`StateCodec::verify`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    /// The operation this state is for.
    pub op: OperationId,
    /// The poll number (1 on begin).
    pub seq: u64,
    /// Not to be followed before this time (seconds since the epoch).
    pub nbf: u64,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch): the end of retention.
    pub exp: u64,
    /// Whether a follow before `nbf` is held (early-poll policy `hold`)
    /// rather than refused with 503.
    #[serde(default)]
    pub hold: bool,
    /// The identity of the client that began the operation, with client
    /// binding; only that client may poll, fetch or cancel.
    #[serde(default)]
    pub sub: Option<String>,
}

/// The claims as they are signed.
#[derive(Serialize)]
struct SignedClaims<'a> {
    op: OperationId,
    seq: u64,
    nbf: u64,
    iat: u64,
    exp: u64,
    aud: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hold: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// One verification key.
struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

/// Signs and verifies states: the current signing key and every key a state
/// may still be signed with, by `kid`.
pub struct StateCodec {
    header: Header,
    signing_key: EncodingKey,
    audience: String,
    verifying: HashMap<String, VerifyingKey>,
}

impl std::fmt::Debug for StateCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCodec")
            .field("kid", &self.header.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The key id of an HMAC secret: the first 8 bytes of its SHA-256, base64url.
/// Instances that share a secret derive the same id without configuring one,
/// and the id reveals nothing usable about the secret.
fn hmac_key_id(secret: &[u8]) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let digest = Sha256::digest(secret);
    URL_SAFE_NO_PAD.encode(&digest[..8])
}

fn validation(algorithm: Algorithm, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    // Leeway 0: `exp` is the end of retention, exactly. Clock skew between
    // instances is handled where it matters (`iat`, below).
    validation.leeway = 0;
    validation.validate_exp = true;
    // `nbf` is checked by the poll path itself: too early is a 503 (or a
    // hold), not an invalid state.
    validation.validate_nbf = false;
    validation.validate_aud = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud"]);
    validation
}

impl StateCodec {
    /// A codec that signs with HS256 and `secret` (at least
    /// [`MIN_SECRET_LEN`] bytes), and verifies with the same secret and each
    /// of `previous` (for key rotation).
    pub fn hs256(secret: &[u8], previous: &[Vec<u8>], audience: &str) -> Result<Self, ConfigError> {
        for key in std::iter::once(secret).chain(previous.iter().map(Vec::as_slice)) {
            if key.len() < MIN_SECRET_LEN {
                return Err(ConfigError::SecretTooShort { len: key.len() });
            }
        }
        let kid = hmac_key_id(secret);
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        header.kid = Some(kid);
        let mut verifying = HashMap::new();
        for key in std::iter::once(secret).chain(previous.iter().map(Vec::as_slice)) {
            verifying.insert(
                hmac_key_id(key),
                VerifyingKey {
                    key: DecodingKey::from_secret(key)?,
                    validation: validation(Algorithm::HS256, audience),
                },
            );
        }
        Ok(Self {
            header,
            signing_key: EncodingKey::from_secret(secret)?,
            audience: audience.to_owned(),
            verifying,
        })
    }

    /// The id of the key new states are signed with.
    pub fn current_key_id(&self) -> &str {
        self.header.kid.as_deref().unwrap_or("")
    }

    /// The audience (`aud`) of the states this codec issues and accepts.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs a state.
    pub fn sign(&self, state: &State) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = SignedClaims {
            op: state.op,
            seq: state.seq,
            nbf: state.nbf,
            iat: state.iat,
            exp: state.exp,
            aud: &self.audience,
            hold: state.hold,
            sub: state.sub.as_deref(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.signing_key)
    }

    /// Verifies a state as found in a query string, at time `now`.
    ///
    /// Does not check `nbf`: the caller decides what too early means.
    pub fn verify(&self, token: &str, now: u64) -> Result<State, ProtocolError> {
        use InvalidStateReason as Reason;
        let invalid = |reason| ProtocolError::InvalidState(reason);
        if token.is_empty() {
            return Err(invalid(Reason::Missing));
        }
        if token.len() > MAX_STATE_LEN {
            return Err(invalid(Reason::TooLong));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid(Reason::Malformed))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(invalid(Reason::UnknownKey))?;
        let data =
            jsonwebtoken::decode::<State>(token, &key.key, &key.validation).map_err(|error| {
                match error.kind() {
                    JwtErrorKind::ExpiredSignature => ProtocolError::StateExpired,
                    JwtErrorKind::InvalidAlgorithm => invalid(Reason::AlgorithmNotAllowed),
                    JwtErrorKind::InvalidSignature => invalid(Reason::BadSignature),
                    JwtErrorKind::InvalidAudience => invalid(Reason::WrongAudience),
                    JwtErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        invalid(Reason::WrongAudience)
                    }
                    _ => invalid(Reason::Malformed),
                }
            })?;
        let state = data.claims;
        if state.iat > now + IAT_SKEW || state.seq == 0 || state.nbf > state.exp {
            return Err(invalid(Reason::InconsistentClaims));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn codec() -> StateCodec {
        StateCodec::hs256(SECRET, &[], "async-op").unwrap()
    }

    fn state(now: u64) -> State {
        State {
            op: OperationId::random(),
            seq: 1,
            nbf: now,
            iat: now,
            exp: now + 60,
            hold: false,
            sub: None,
        }
    }

    #[test]
    fn round_trip() {
        let codec = codec();
        let op = OperationId::random();
        let now = unix_now();
        for hold in [false, true] {
            let state = State {
                op,
                seq: 3,
                nbf: now + 2,
                iat: now,
                exp: now + 60,
                hold,
                sub: hold.then(|| "client-7".to_owned()),
            };
            let token = codec.sign(&state).unwrap();
            assert_eq!(codec.verify(&token, now).unwrap(), state);
        }
        let token = codec.sign(&state(now)).unwrap();
        assert!(token.len() < 300, "state is {} bytes", token.len());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            StateCodec::hs256(b"short", &[], "a"),
            Err(ConfigError::SecretTooShort { len: 5 })
        ));
    }

    #[test]
    fn expiry_is_exact() {
        let codec = codec();
        let now = unix_now();
        let token = codec
            .sign(&State {
                iat: now - 10,
                nbf: now - 10,
                exp: now - 1,
                ..state(now)
            })
            .unwrap();
        assert!(matches!(
            codec.verify(&token, now),
            Err(ProtocolError::StateExpired)
        ));
    }

    #[test]
    fn previous_keys_verify() {
        let old = b"an older secret of thirty-two bytes!".to_vec();
        let old_codec = StateCodec::hs256(&old, &[], "async-op").unwrap();
        let codec = StateCodec::hs256(SECRET, &[old], "async-op").unwrap();
        let now = unix_now();
        let token = old_codec.sign(&state(now)).unwrap();
        assert!(codec.verify(&token, now).is_ok());
        assert_ne!(codec.current_key_id(), old_codec.current_key_id());
    }
}
