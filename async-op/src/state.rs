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
//!
//! # Keys
//!
//! A [`StateCodec`] signs with one [`SigningKey`] and verifies with it and
//! any number of [`VerificationKey`]s (the keys states in flight may still
//! be signed with, during a rotation), each under its `kid` and with its own
//! algorithm only ([`KeyAlgorithm`]):
//!
//! - `HS256`, a secret of at least [`MIN_SECRET_LEN`] bytes shared by every
//!   instance (the default);
//! - `ES256` (P-256) and `EdDSA` (Ed25519), from PEM files: a PKCS#8 private
//!   key to sign, SPKI public keys to verify.
//!
//! A key's `kid` is derived from the key unless one is set with `with_kid`:
//! the first 8 bytes of the SHA-256 of the HMAC secret, or of the public
//! key's SubjectPublicKeyInfo DER, base64url (11 characters). Instances
//! configured with the same key agree on its id without configuring one,
//! and the private and public halves of a key pair give the same id:
//!
//! ```sh
//! openssl pkey -pubin -in public.pem -outform DER \
//!   | openssl dgst -sha256 -binary | head -c 8 | basenc --base64url | tr -d =
//! ```
//!
//! A state whose header names a `kid` is checked with that key's algorithm
//! and nothing else: an `HS256` state under an `ES256` key's `kid` (whatever
//! its HMAC key, the public key included) is refused, and so is `none`.
//!
//! # Rotating keys
//!
//! With several instances, a new key goes in in three steps, so that no
//! state ever reaches an instance that cannot verify it: (1) add the new key
//! as a verification key on every instance; (2) make it the signing key on
//! every instance, the old one becoming a verification key; (3) one retention
//! period later (`exp` is the end of retention: no state of the old key is
//! valid any more), remove the old key. A state signed with a removed key is
//! answered `400` (`invalid-state`).
//!
//! Costs per state, signed or verified, on one core: `HS256` a few
//! microseconds, `EdDSA` about 40 µs, `ES256` about 150 µs. Every `303` of
//! a poll verifies one state and signs another.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind as JwtErrorKind,
};
use p256::elliptic_curve::sec1::ToSec1Point;
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
/// are about 250 bytes (HS256) or 300 bytes (ES256, EdDSA); anything much
/// longer is refused before any parsing.
pub const MAX_STATE_LEN: usize = 1024;

/// The longest `kid` accepted for a key, in bytes.
pub const MAX_KID_LEN: usize = 64;

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

/// The signature algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// `HS256`: HMAC-SHA-256 with a secret that every instance shares (the
    /// default).
    Hs256,
    /// `ES256`: ECDSA on the P-256 curve with SHA-256.
    Es256,
    /// `EdDSA`: Ed25519.
    EdDsa,
}

impl KeyAlgorithm {
    /// The algorithm's name in a JWS header: `HS256`, `ES256` or `EdDSA`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    /// Parses a JWS algorithm name (`HS256`, `ES256`, `EdDSA`), ignoring
    /// ASCII case.
    fn from_str(text: &str) -> Result<Self, String> {
        [Self::Hs256, Self::Es256, Self::EdDsa]
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| "expected `HS256`, `ES256` or `EdDSA`".into())
    }
}

/// A key id derived from a key: the first 8 bytes of the SHA-256 of its
/// material, base64url. Instances that share a key derive the same id
/// without configuring one, and the id reveals nothing usable about the key.
fn derived_key_id(digest: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(&digest[..8])
}

/// The label of the first PEM block in `pem` (`PRIVATE KEY`, `PUBLIC KEY`,
/// `EC PRIVATE KEY`, ...), if there is one.
fn pem_label(pem: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN ";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let rest = pem.get(start..)?;
    rest.get(..rest.find("-----")?)
}

/// Why `pem` is not `expected`, with a hint where the PEM label tells more
/// than the parser's error.
fn pem_error(
    expected: &str,
    wanted_label: &str,
    pem: &str,
    error: impl fmt::Display,
) -> ConfigError {
    let why = match pem_label(pem) {
        None => "no PEM block (`-----BEGIN ...-----`) found".to_owned(),
        Some(label) if label == wanted_label => error.to_string(),
        Some("EC PRIVATE KEY") => "this is a SEC1 `EC PRIVATE KEY`; convert it to PKCS#8 with \
                                   `openssl pkcs8 -topk8 -nocrypt -in <file>`"
            .to_owned(),
        Some("ENCRYPTED PRIVATE KEY") => {
            "the key is encrypted; decrypt it with `openssl pkcs8 -in <file>`".to_owned()
        }
        Some(label) => format!("found a `{label}` PEM block, expected `{wanted_label}`"),
    };
    ConfigError::InvalidKey(format!("not {expected}: {why}"))
}

const ES256_PRIVATE: &str = "a P-256 (ES256) private key in PKCS#8 PEM";
const ED25519_PRIVATE: &str = "an Ed25519 (EdDSA) private key in PKCS#8 PEM";
const ES256_PUBLIC: &str = "a P-256 (ES256) public key in SPKI PEM";
const ED25519_PUBLIC: &str = "an Ed25519 (EdDSA) public key in SPKI PEM";

/// A key that verifies states: an HMAC secret, or the public key of an
/// ES256 or EdDSA key pair, under its `kid`.
///
/// The key of a [`SigningKey`] verifies too; further verification keys are
/// the keys that states in flight may still be signed with (previous keys,
/// during a rotation). A state is checked with the key its header's `kid`
/// names, and with that key's algorithm only.
///
/// ```
/// use async_op::state::{KeyAlgorithm, VerificationKey};
///
/// let key = VerificationKey::hs256("an older secret, thirty-two bytes or more")?;
/// assert_eq!(key.algorithm(), KeyAlgorithm::Hs256);
/// assert_eq!(key.kid().len(), 11);
/// # Ok::<(), async_op::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct VerificationKey {
    kid: String,
    algorithm: KeyAlgorithm,
    /// The SHA-256 of the key material (the secret, or the public key's
    /// SPKI DER): tells the same key twice from two keys under one `kid`.
    digest: [u8; 32],
    key: DecodingKey,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    fn new(algorithm: KeyAlgorithm, material: &[u8], key: DecodingKey) -> Self {
        let digest: [u8; 32] = Sha256::digest(material).into();
        Self {
            kid: derived_key_id(&digest),
            algorithm,
            digest,
            key,
        }
    }

    /// An HS256 secret (at least [`MIN_SECRET_LEN`] bytes). Its `kid` is the
    /// first 8 bytes of the secret's SHA-256, base64url.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort { len: secret.len() });
        }
        Ok(Self::new(
            KeyAlgorithm::Hs256,
            secret,
            DecodingKey::from_secret(secret)?,
        ))
    }

    /// A P-256 public key for ES256, in SPKI PEM (`-----BEGIN PUBLIC
    /// KEY-----`, what `openssl pkey -pubout` writes). Its `kid` is the first
    /// 8 bytes of the SHA-256 of its SPKI DER (with the point uncompressed),
    /// base64url: the same as the [`SigningKey`] of the private key derives.
    pub fn es256_public_pem(pem: &str) -> Result<Self, ConfigError> {
        let public = p256::PublicKey::from_public_key_pem(pem)
            .map_err(|error| pem_error(ES256_PUBLIC, "PUBLIC KEY", pem, error))?;
        Self::es256(&public)
    }

    fn es256(public: &p256::PublicKey) -> Result<Self, ConfigError> {
        let spki = public.to_public_key_der().map_err(|error| {
            ConfigError::InvalidKey(format!("cannot encode a P-256 public key: {error}"))
        })?;
        // jsonwebtoken's ES256 verifier takes the SEC1 point.
        let point = public.to_sec1_point(false);
        Ok(Self::new(
            KeyAlgorithm::Es256,
            spki.as_bytes(),
            DecodingKey::from_ec_der(point.as_bytes()),
        ))
    }

    /// An Ed25519 public key for EdDSA, in SPKI PEM (`-----BEGIN PUBLIC
    /// KEY-----`). Its `kid` is derived as for
    /// [`es256_public_pem`](Self::es256_public_pem).
    pub fn ed25519_public_pem(pem: &str) -> Result<Self, ConfigError> {
        let public = ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map_err(|error| pem_error(ED25519_PUBLIC, "PUBLIC KEY", pem, error))?;
        Self::ed25519(&public)
    }

    fn ed25519(public: &ed25519_dalek::VerifyingKey) -> Result<Self, ConfigError> {
        let spki = public.to_public_key_der().map_err(|error| {
            ConfigError::InvalidKey(format!("cannot encode an Ed25519 public key: {error}"))
        })?;
        // jsonwebtoken's EdDSA verifier takes the 32 bytes of the key itself
        // (and slices the first 32 bytes of what it is given: always 32 here).
        Ok(Self::new(
            KeyAlgorithm::EdDsa,
            spki.as_bytes(),
            DecodingKey::from_ed_der(public.as_bytes()),
        ))
    }

    /// A public key in SPKI PEM, P-256 (ES256) or Ed25519 (EdDSA): whichever
    /// it is.
    pub fn from_public_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::es256_public_pem(pem)
            .or_else(|_| Self::ed25519_public_pem(pem))
            .map_err(|error| match error {
                ConfigError::InvalidKey(_) if pem_label(pem) == Some("PUBLIC KEY") => {
                    ConfigError::InvalidKey(
                        "not a P-256 (ES256) or Ed25519 (EdDSA) public key in SPKI PEM".into(),
                    )
                }
                other => other,
            })
    }

    /// This key under `kid` instead of its derived id: 1 to [`MAX_KID_LEN`]
    /// visible ASCII characters (checked when the codec is built). Every
    /// instance must configure the same `kid` for the key.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// The key id (`kid`) states signed with this key carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}

/// The key new states are signed with: an HMAC secret (HS256), or the
/// private key of an ES256 or EdDSA key pair. It verifies states too, under
/// its `kid`.
///
/// ```no_run
/// use async_op::{AsyncOps, state::{SigningKey, VerificationKey}};
///
/// let pem = std::fs::read_to_string("/etc/async-op/es256-private.pem").unwrap();
/// let ops = AsyncOps::builder()
///     .signing_key(SigningKey::es256_pem(&pem)?)
///     // States signed with the previous secret still verify.
///     .verification_key(VerificationKey::hs256("the previous secret, 32 bytes or more")?)
///     .build()?;
/// # Ok::<(), async_op::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    key: EncodingKey,
    public: VerificationKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .field("algorithm", &self.public.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HS256 secret (at least [`MIN_SECRET_LEN`] bytes), shared by every
    /// instance. Its `kid` is the first 8 bytes of the secret's SHA-256,
    /// base64url.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        let public = VerificationKey::hs256(secret)?;
        Ok(Self {
            key: EncodingKey::from_secret(secret)?,
            public,
        })
    }

    /// A P-256 private key for ES256, in PKCS#8 PEM (`-----BEGIN PRIVATE
    /// KEY-----`, what `openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256` writes). The public key is derived from it;
    /// its `kid` is the first 8 bytes of the SHA-256 of the public key's SPKI
    /// DER, base64url (see [`VerificationKey::es256_public_pem`]).
    pub fn es256_pem(private_pem: &str) -> Result<Self, ConfigError> {
        let secret = p256::SecretKey::from_pkcs8_pem(private_pem)
            .map_err(|error| pem_error(ES256_PRIVATE, "PRIVATE KEY", private_pem, error))?;
        // Re-encoded, so that jsonwebtoken gets the PKCS#8 DER its signer
        // parses, whatever optional fields the file had.
        let der = secret.to_pkcs8_der().map_err(|error| {
            ConfigError::InvalidKey(format!("cannot encode a P-256 private key: {error}"))
        })?;
        Ok(Self {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public: VerificationKey::es256(&secret.public_key())?,
        })
    }

    /// An Ed25519 private key for EdDSA, in PKCS#8 PEM (`-----BEGIN PRIVATE
    /// KEY-----`, what `openssl genpkey -algorithm ED25519` writes). The
    /// public key and `kid` are derived as for [`es256_pem`](Self::es256_pem).
    pub fn ed25519_pem(private_pem: &str) -> Result<Self, ConfigError> {
        let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
            .map_err(|error| pem_error(ED25519_PRIVATE, "PRIVATE KEY", private_pem, error))?;
        let der = secret.to_pkcs8_der().map_err(|error| {
            ConfigError::InvalidKey(format!("cannot encode an Ed25519 private key: {error}"))
        })?;
        Ok(Self {
            key: EncodingKey::from_ed_der(der.as_bytes()),
            public: VerificationKey::ed25519(&secret.verifying_key())?,
        })
    }

    /// A private key in PKCS#8 PEM, P-256 (ES256) or Ed25519 (EdDSA):
    /// whichever it is.
    pub fn from_pem(private_pem: &str) -> Result<Self, ConfigError> {
        Self::es256_pem(private_pem)
            .or_else(|_| Self::ed25519_pem(private_pem))
            .map_err(|error| match error {
                ConfigError::InvalidKey(_) if pem_label(private_pem) == Some("PRIVATE KEY") => {
                    ConfigError::InvalidKey(
                        "not a P-256 (ES256) or Ed25519 (EdDSA) private key in PKCS#8 PEM".into(),
                    )
                }
                other => other,
            })
    }

    /// This key under `kid` instead of its derived id: 1 to [`MAX_KID_LEN`]
    /// visible ASCII characters (checked when the codec is built). Instances
    /// that verify with this key's public half must use the same `kid`.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.public.kid = kid.into();
        self
    }

    /// The key id (`kid`) of the states this key signs.
    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.public.algorithm
    }

    /// The key that verifies what this key signs (for an HS256 key, the
    /// secret itself), under the same `kid`: what other instances keep
    /// after the rotation that retires this key.
    pub fn verification_key(&self) -> VerificationKey {
        self.public.clone()
    }
}

/// One verification key, ready for `verify`.
struct VerifyingKey {
    algorithm: KeyAlgorithm,
    digest: [u8; 32],
    key: DecodingKey,
    validation: Validation,
}

/// Signs and verifies states: the current signing key and every key a state
/// may still be signed with, by `kid`, each with its own algorithm only.
pub struct StateCodec {
    header: Header,
    /// `header`, serialised and base64url-encoded once: every state this
    /// codec signs starts with it.
    header_segment: String,
    /// The header segment each verification key's states start with, when
    /// this codec (or an instance sharing its keys) signed them. A state
    /// whose header is one of these needs no header parsing.
    known_headers: Vec<(String, String)>,
    algorithm: KeyAlgorithm,
    signing_key: EncodingKey,
    audience: String,
    verifying: HashMap<String, VerifyingKey>,
}

impl fmt::Debug for StateCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCodec")
            .field("kid", &self.header.kid)
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("verification_kids", &self.verification_key_ids())
            .finish_non_exhaustive()
    }
}

fn validation(algorithm: Algorithm, audience: &str) -> Validation {
    // One algorithm per key: a state whose header names another one (an
    // HS256 state under an ES256 key's kid, `none`) is refused.
    let mut validation = Validation::new(algorithm);
    // Leeway 0: `exp` is the end of retention, exactly. Clock skew between
    // instances is handled where it matters (`iat`, below).
    validation.leeway = 0;
    // `exp` is required here but compared in `verify`, against the caller's
    // `now` and after `aud` (jsonwebtoken would use its own clock, and check
    // `exp` before `aud`).
    validation.validate_exp = false;
    // `nbf` is checked by the poll path itself: too early is a 503 (or a
    // hold), not an invalid state.
    validation.validate_nbf = false;
    validation.validate_aud = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud"]);
    validation
}

fn check_kid(kid: &str) -> Result<(), ConfigError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::InvalidKey(format!(
            "the kid {kid:?} is not 1 to {MAX_KID_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Room for a typical state (about 250 bytes) and a poll path.
const STATE_CAPACITY: usize = 320;

/// The header of the states a key signs: `typ`, `alg` and `kid`.
fn canonical_header(algorithm: KeyAlgorithm, kid: &str) -> Header {
    let mut header = Header::new(algorithm.jwt());
    header.typ = Some("JWT".into());
    header.kid = Some(kid.to_owned());
    header
}

/// A header as the first segment of a compact JWS, encoded the way
/// `jsonwebtoken::encode` encodes it.
fn encode_header(header: &Header) -> Result<String, ConfigError> {
    let json = serde_json::to_vec(header)
        .map_err(|error| ConfigError::InvalidKey(format!("cannot encode a header: {error}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

impl StateCodec {
    /// A codec that signs with `signing` and verifies with it and each of
    /// `verification` (previous keys, during a rotation), with the states'
    /// audience `audience`.
    ///
    /// Fails if a `kid` is not 1 to [`MAX_KID_LEN`] visible ASCII characters,
    /// if two different keys have the same `kid` (the same key twice is
    /// fine), or if the signing key cannot sign.
    pub fn new(
        signing: SigningKey,
        verification: impl IntoIterator<Item = VerificationKey>,
        audience: &str,
    ) -> Result<Self, ConfigError> {
        let mut verifying = HashMap::new();
        for key in std::iter::once(signing.public.clone()).chain(verification) {
            check_kid(&key.kid)?;
            match verifying.entry(key.kid) {
                Entry::Occupied(entry) => {
                    let known: &VerifyingKey = entry.get();
                    if known.algorithm != key.algorithm || known.digest != key.digest {
                        return Err(ConfigError::InvalidKey(format!(
                            "two different keys have the kid {:?}",
                            entry.key()
                        )));
                    }
                }
                Entry::Vacant(entry) => {
                    entry.insert(VerifyingKey {
                        algorithm: key.algorithm,
                        digest: key.digest,
                        key: key.key,
                        validation: validation(key.algorithm.jwt(), audience),
                    });
                }
            }
        }
        let algorithm = signing.algorithm();
        let header = canonical_header(algorithm, &signing.public.kid);
        let header_segment = encode_header(&header)?;
        let known_headers = verifying
            .iter()
            .map(|(kid, key)| {
                encode_header(&canonical_header(key.algorithm, kid))
                    .map(|segment| (segment, kid.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let codec = Self {
            header,
            header_segment,
            known_headers,
            algorithm,
            signing_key: signing.key,
            audience: audience.to_owned(),
            verifying,
        };
        codec.check_signing_key()?;
        Ok(codec)
    }

    /// A codec that signs with HS256 and `secret` (at least
    /// [`MIN_SECRET_LEN`] bytes), and verifies with the same secret and each
    /// of `previous` (for key rotation).
    pub fn hs256(secret: &[u8], previous: &[Vec<u8>], audience: &str) -> Result<Self, ConfigError> {
        let signing = SigningKey::hs256(secret)?;
        let previous = previous
            .iter()
            .map(VerificationKey::hs256)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(signing, previous, audience)
    }

    /// Signs a probe with the signing key and verifies it with the key of its
    /// `kid`, once at start-up: a key that cannot sign is a configuration
    /// error, not a 500 on every request.
    fn check_signing_key(&self) -> Result<(), ConfigError> {
        let message = b"async-op signing key check";
        let signature =
            jsonwebtoken::crypto::sign(message, &self.signing_key, self.algorithm.jwt())?;
        let verified = self
            .verifying
            .get(self.current_key_id())
            .map(|known| {
                jsonwebtoken::crypto::verify(&signature, message, &known.key, known.algorithm.jwt())
            })
            .transpose()?;
        match verified {
            Some(true) => Ok(()),
            _ => Err(ConfigError::InvalidKey(
                "the signing key's signature does not verify with its own public key".into(),
            )),
        }
    }

    /// The id of the key new states are signed with.
    pub fn current_key_id(&self) -> &str {
        self.header.kid.as_deref().unwrap_or("")
    }

    /// The algorithm new states are signed with.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The ids of every key a state may be signed with (the signing key's
    /// among them), sorted.
    pub fn verification_key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.verifying.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// The audience (`aud`) of the states this codec issues and accepts.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs a state.
    pub fn sign(&self, state: &State) -> Result<String, jsonwebtoken::errors::Error> {
        let mut token = String::with_capacity(STATE_CAPACITY);
        self.sign_into(state, &mut token)?;
        Ok(token)
    }

    /// Signs a state and appends it to `out` (the poll path builds its
    /// `Location` this way, in one buffer). The header segment is encoded
    /// once, at start-up; per state only the claims are serialised.
    pub fn sign_into(
        &self,
        state: &State,
        out: &mut String,
    ) -> Result<(), jsonwebtoken::errors::Error> {
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
        let claims = serde_json::to_vec(&claims).map_err(jsonwebtoken::errors::Error::from)?;
        let start = out.len();
        out.reserve(self.header_segment.len() + claims.len() * 4 / 3 + 100);
        out.push_str(&self.header_segment);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, out);
        let signature = jsonwebtoken::crypto::sign(
            &out.as_bytes()[start..],
            &self.signing_key,
            self.header.alg,
        )?;
        out.push('.');
        out.push_str(&signature);
        Ok(())
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
        // The states this codec issues carry one of a few known headers:
        // find the key by comparing bytes, and parse a header only when it
        // is not one of them.
        let header_segment = token.split('.').next().unwrap_or("");
        let known_kid = self
            .known_headers
            .iter()
            .find(|(segment, _)| segment == header_segment)
            .map(|(_, kid)| kid.as_str());
        let key = match known_kid {
            Some(kid) => self.verifying.get(kid),
            None => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| invalid(Reason::Malformed))?;
                header.kid.and_then(|kid| self.verifying.get(&kid))
            }
        }
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
        if state.exp < now {
            return Err(ProtocolError::StateExpired);
        }
        if state.iat > now.saturating_add(IAT_SKEW) || state.seq == 0 || state.nbf > state.exp {
            return Err(invalid(Reason::InconsistentClaims));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    // Test-only keys (see tests/keys/README.md), with the kids that
    // `openssl pkey -pubin -outform DER | openssl dgst -sha256` gives.
    const ES256_A: &str = include_str!("../../tests/keys/es256-a.test-private.pem");
    const ES256_A_PUBLIC: &str = include_str!("../../tests/keys/es256-a.test-public.pem");
    const ES256_A_KID: &str = "-Cu2DPguNGk";
    const ES256_B: &str = include_str!("../../tests/keys/es256-b.test-private.pem");
    const ES256_B_KID: &str = "fnlsONa-ySM";
    const ED25519_A: &str = include_str!("../../tests/keys/ed25519-a.test-private.pem");
    const ED25519_A_PUBLIC: &str = include_str!("../../tests/keys/ed25519-a.test-public.pem");
    const ED25519_A_KID: &str = "vRZ7QKPDOqg";
    const P384: &str = include_str!("../../tests/keys/p384.test-private.pem");
    const ES256_A_SEC1: &str = include_str!("../../tests/keys/es256-a.test-sec1-private.pem");

    fn codec_with(signing: SigningKey, verification: Vec<VerificationKey>) -> StateCodec {
        StateCodec::new(signing, verification, "async-op").unwrap()
    }

    fn reason(result: Result<State, ProtocolError>) -> InvalidStateReason {
        match result {
            Err(ProtocolError::InvalidState(reason)) => reason,
            other => panic!("expected an invalid state, got {other:?}"),
        }
    }

    #[test]
    fn key_ids_are_derived_from_the_key() {
        // The HS256 kid: the first 8 bytes of the secret's SHA-256.
        assert_eq!(codec().current_key_id(), "PrG9Q5lH63Y");
        // Asymmetric kids: of the public key's SPKI DER, from either half.
        for (private, public, kid, algorithm) in [
            (ES256_A, ES256_A_PUBLIC, ES256_A_KID, KeyAlgorithm::Es256),
            (
                ED25519_A,
                ED25519_A_PUBLIC,
                ED25519_A_KID,
                KeyAlgorithm::EdDsa,
            ),
        ] {
            let signing = SigningKey::from_pem(private).unwrap();
            assert_eq!((signing.kid(), signing.algorithm()), (kid, algorithm));
            let verification = VerificationKey::from_public_pem(public).unwrap();
            assert_eq!(
                (verification.kid(), verification.algorithm()),
                (kid, algorithm)
            );
            assert_eq!(signing.verification_key().kid(), kid);
        }
        assert_eq!(SigningKey::es256_pem(ES256_B).unwrap().kid(), ES256_B_KID);
        let explicit = SigningKey::es256_pem(ES256_A).unwrap().with_kid("2025-06");
        assert_eq!(codec_with(explicit, vec![]).current_key_id(), "2025-06");
    }

    #[test]
    fn asymmetric_round_trips() {
        let now = unix_now();
        for private in [ES256_A, ED25519_A] {
            let signer = codec_with(SigningKey::from_pem(private).unwrap(), vec![]);
            let state = State {
                sub: Some("client-7".into()),
                hold: true,
                ..state(now)
            };
            let token = signer.sign(&state).unwrap();
            assert!(token.len() < 400, "state is {} bytes", token.len());
            assert_eq!(signer.verify(&token, now).unwrap(), state);
            // A verifier holding the public key only.
            let public = if private == ES256_A {
                ES256_A_PUBLIC
            } else {
                ED25519_A_PUBLIC
            };
            let verifier = codec_with(
                SigningKey::es256_pem(ES256_B).unwrap(),
                vec![VerificationKey::from_public_pem(public).unwrap()],
            );
            assert_eq!(verifier.verify(&token, now).unwrap(), state);
        }
    }

    #[test]
    fn a_kid_verifies_with_its_own_algorithm_only() {
        let now = unix_now();
        let hs_kid = codec().current_key_id().to_owned();
        let codec = codec_with(
            SigningKey::es256_pem(ES256_A).unwrap(),
            vec![
                VerificationKey::ed25519_public_pem(ED25519_A_PUBLIC).unwrap(),
                VerificationKey::hs256(SECRET).unwrap(),
            ],
        );
        let forged = |signing: SigningKey| codec_with(signing, vec![]).sign(&state(now)).unwrap();
        // HS256 with the public key as the HMAC secret, under the ES256 kid:
        // the classic confusion.
        let hs_as_es = forged(
            SigningKey::hs256(ES256_A_PUBLIC)
                .unwrap()
                .with_kid(ES256_A_KID),
        );
        assert_eq!(
            reason(codec.verify(&hs_as_es, now)),
            InvalidStateReason::AlgorithmNotAllowed
        );
        // EdDSA under the ES256 kid, ES256 under the EdDSA and HS256 kids.
        let ed_as_es = forged(
            SigningKey::ed25519_pem(ED25519_A)
                .unwrap()
                .with_kid(ES256_A_KID),
        );
        assert_eq!(
            reason(codec.verify(&ed_as_es, now)),
            InvalidStateReason::AlgorithmNotAllowed
        );
        for kid in [ED25519_A_KID, &hs_kid] {
            let es_as_other = forged(SigningKey::es256_pem(ES256_B).unwrap().with_kid(kid));
            assert_eq!(
                reason(codec.verify(&es_as_other, now)),
                InvalidStateReason::AlgorithmNotAllowed
            );
        }
        // The right algorithm, another key: a bad signature.
        let other_key = forged(
            SigningKey::es256_pem(ES256_B)
                .unwrap()
                .with_kid(ES256_A_KID),
        );
        assert_eq!(
            reason(codec.verify(&other_key, now)),
            InvalidStateReason::BadSignature
        );
        // `alg: none` under each kid.
        let token = codec.sign(&state(now)).unwrap();
        let claims = token.split('.').nth(1).unwrap();
        for kid in [ES256_A_KID, ED25519_A_KID, &hs_kid] {
            let header = format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#);
            let none = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(header));
            assert!(matches!(
                codec.verify(&none, now),
                Err(ProtocolError::InvalidState(_))
            ));
        }
    }

    #[test]
    fn odd_signatures_never_panic() {
        let now = unix_now();
        for private in [ES256_A, ED25519_A] {
            let codec = codec_with(SigningKey::from_pem(private).unwrap(), vec![]);
            let token = codec.sign(&state(now)).unwrap();
            let (message, _) = token.rsplit_once('.').unwrap();
            for len in 0..130 {
                for byte in [0x00, 0x01, 0x7f, 0xff] {
                    let signature = URL_SAFE_NO_PAD.encode(vec![byte; len]);
                    let odd = format!("{message}.{signature}");
                    assert!(codec.verify(&odd, now).is_err(), "{len} x {byte}");
                }
            }
        }
    }

    #[test]
    fn removed_keys_no_longer_verify() {
        let now = unix_now();
        let old = codec_with(SigningKey::es256_pem(ES256_A).unwrap(), vec![]);
        let token = old.sign(&state(now)).unwrap();
        let rotating = codec_with(
            SigningKey::ed25519_pem(ED25519_A).unwrap(),
            vec![VerificationKey::es256_public_pem(ES256_A_PUBLIC).unwrap()],
        );
        assert!(rotating.verify(&token, now).is_ok());
        assert_eq!(
            rotating.verification_key_ids(),
            [ES256_A_KID, ED25519_A_KID]
        );
        let rotated = codec_with(SigningKey::ed25519_pem(ED25519_A).unwrap(), vec![]);
        assert_eq!(
            reason(rotated.verify(&token, now)),
            InvalidStateReason::UnknownKey
        );
    }

    #[test]
    fn key_sets_are_checked() {
        let es = || SigningKey::es256_pem(ES256_A).unwrap();
        // The same key twice is one key.
        assert!(StateCodec::hs256(SECRET, &[SECRET.to_vec()], "a").is_ok());
        assert!(StateCodec::new(es(), [es().verification_key()], "a").is_ok());
        // Two keys under one kid are refused.
        let clash = VerificationKey::ed25519_public_pem(ED25519_A_PUBLIC)
            .unwrap()
            .with_kid(ES256_A_KID);
        assert!(matches!(
            StateCodec::new(es(), [clash], "a"),
            Err(ConfigError::InvalidKey(_))
        ));
        for kid in ["", "with space", &"k".repeat(MAX_KID_LEN + 1), "é"] {
            assert!(
                matches!(
                    StateCodec::new(es().with_kid(kid), [], "a"),
                    Err(ConfigError::InvalidKey(_))
                ),
                "{kid:?}"
            );
        }
        assert!(matches!(
            VerificationKey::hs256(b"short"),
            Err(ConfigError::SecretTooShort { len: 5 })
        ));
    }

    #[test]
    fn unusable_pems_are_refused_with_a_reason() {
        let refused = |result: Result<SigningKey, ConfigError>| match result {
            Err(ConfigError::InvalidKey(reason)) => reason,
            other => panic!("expected an invalid key, got {other:?}"),
        };
        assert!(refused(SigningKey::es256_pem(ES256_A_PUBLIC)).contains("`PUBLIC KEY`"));
        assert!(refused(SigningKey::es256_pem(ES256_A_SEC1)).contains("openssl pkcs8 -topk8"));
        assert!(refused(SigningKey::from_pem(ES256_A_SEC1)).contains("openssl pkcs8 -topk8"));
        assert!(refused(SigningKey::es256_pem(P384)).contains("P-256"));
        assert!(refused(SigningKey::from_pem(P384)).contains("P-256 (ES256) or Ed25519"));
        assert!(refused(SigningKey::es256_pem(ED25519_A)).contains("P-256"));
        assert!(refused(SigningKey::ed25519_pem(ES256_A)).contains("Ed25519"));
        assert!(refused(SigningKey::from_pem("")).contains("no PEM block"));
        assert!(matches!(
            VerificationKey::from_public_pem(ES256_A),
            Err(ConfigError::InvalidKey(_))
        ));
        assert!(matches!(
            VerificationKey::es256_public_pem(ED25519_A_PUBLIC),
            Err(ConfigError::InvalidKey(_))
        ));
    }

    #[test]
    fn mangled_pems_never_panic() {
        for pem in [ES256_A, ED25519_A, ES256_A_PUBLIC, ED25519_A_PUBLIC, P384] {
            for end in 0..pem.len() {
                let _ = SigningKey::from_pem(&pem[..end]);
                let _ = VerificationKey::from_public_pem(&pem[..end]);
            }
            let bytes = pem.as_bytes();
            for at in 0..bytes.len() {
                let mut mangled = bytes.to_vec();
                mangled[at] = if mangled[at] == b'A' { b'B' } else { b'A' };
                let mangled = String::from_utf8(mangled).unwrap();
                let _ = SigningKey::from_pem(&mangled);
                let _ = VerificationKey::from_public_pem(&mangled);
            }
        }
    }

    #[test]
    fn algorithm_names() {
        for algorithm in [
            KeyAlgorithm::Hs256,
            KeyAlgorithm::Es256,
            KeyAlgorithm::EdDsa,
        ] {
            assert_eq!(algorithm.name().parse::<KeyAlgorithm>(), Ok(algorithm));
        }
        assert_eq!("eddsa".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::EdDsa));
        assert!("RS256".parse::<KeyAlgorithm>().is_err());
        assert!("none".parse::<KeyAlgorithm>().is_err());
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
