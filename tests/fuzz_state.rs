//! Property tests of the state, on the stable toolchain (proptest).
//!
//! - `StateCodec::verify` never panics: on arbitrary strings, on arbitrary
//!   JSON headers and claims signed with the right key, and on mutations of
//!   valid states (bytes flipped, inserted, deleted, replaced, truncated,
//!   parts swapped or spliced from another valid state). A mutated state is
//!   never accepted: only the untouched token verifies.
//! - `sign` then `verify` gives back the same `State`, for any operation,
//!   `seq >= 1`, consistent times, `hold`, and `sub` (unicode included).
//! - The time and claim checks of `verify` match a model of README's rules
//!   exactly, boundaries included (`exp` with leeway 0, `iat` 5 s ahead).
//! - The same mutations of ES256 and EdDSA states (and splices across
//!   algorithms) are refused, and so is algorithm confusion: an ES256 or
//!   EdDSA kid under `HS256` keyed with the public key, `none`, or another
//!   algorithm.
//! - The `Prefer` header of a begin request, whatever its bytes, never makes
//!   the server fail: the parser is crate-private, so it is driven through a
//!   real server on loopback.
//!
//! Cases per property: `PROPTEST_CASES` (default 2,000, so that `cargo test`
//! stays fast: about 3 s); the HTTP property runs a twentieth of that, and
//! the ES256/EdDSA property a hundredth (at least 100 each). CI runs a
//! larger count for a bounded time, optimised but with overflow checks on
//! (an overflow is a panic to find, not a wrap to miss), building first so
//! that the time limit bounds the run alone:
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true cargo test --release -p async-op-tests --test fuzz_state --no-run
//! CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true PROPTEST_CASES=1500000 timeout 300 cargo test --release -p async-op-tests --test fuzz_state
//! ```
//!
//! On the 2-core machine the run takes about 130 s, after a release build
//! of 5 to 7 minutes. Without that build, the debug build of
//! `cargo test --workspace` runs `PROPTEST_CASES=100000` in about the same
//! time. A failing case is kept in `tests/fuzz_state.proptest-regressions`
//! and tried first on the next run: commit it with the fix.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::OnceLock,
    time::Duration,
};

use async_op::{
    InvalidStateReason, OperationId, ProtocolError,
    state::{SigningKey, State, StateCodec, VerificationKey},
};
use async_op_tests::{SECRET, TestServer, unix_now};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner},
};
use serde_json::{Map, Value, json};
use sha2::Sha256;

const AUD: &str = "async-op";

/// `PROPTEST_CASES`, or 2,000.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        // Failing cases are kept in `tests/fuzz_state.proptest-regressions`
        // and tried first on the next run: commit that file with the fix.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

fn codec() -> &'static StateCodec {
    static CODEC: OnceLock<StateCodec> = OnceLock::new();
    CODEC.get_or_init(|| StateCodec::hs256(SECRET.as_bytes(), &[], AUD).unwrap())
}

fn kid() -> &'static str {
    codec().current_key_id()
}

fn test_key(name: &str) -> String {
    let path = format!("{}/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// One codec per algorithm (HS256, ES256, EdDSA), each signing with its own
/// key and verifying all three: a kid selects the key, and the key its
/// algorithm.
fn all_codecs() -> &'static [StateCodec; 3] {
    static CODECS: OnceLock<[StateCodec; 3]> = OnceLock::new();
    CODECS.get_or_init(|| {
        let verification = || {
            [
                VerificationKey::hs256(SECRET).unwrap(),
                VerificationKey::es256_public_pem(&test_key("es256-a.test-public.pem")).unwrap(),
                VerificationKey::ed25519_public_pem(&test_key("ed25519-a.test-public.pem"))
                    .unwrap(),
            ]
        };
        let codec = |signing| StateCodec::new(signing, verification(), AUD).unwrap();
        [
            codec(SigningKey::hs256(SECRET).unwrap()),
            codec(SigningKey::es256_pem(&test_key("es256-a.test-private.pem")).unwrap()),
            codec(SigningKey::ed25519_pem(&test_key("ed25519-a.test-private.pem")).unwrap()),
        ]
    })
}

/// Cases for the properties of the asymmetric algorithms, whose signatures
/// cost up to a millisecond each here: a hundredth (at least 100).
fn asymmetric_cases() -> u32 {
    (cases() / 100).max(100)
}

/// Runs `test` on `cases` values of `strategy`, as `proptest!` does, but
/// with this count: the macro lets `PROPTEST_CASES` override any count.
fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        ..config()
    });
    if let Err(error) = runner.run(&strategy, test) {
        panic!("{error}");
    }
}

/// `h.p` signed with HS256 and the codec's secret: `h.p.sig`.
fn sign_parts(h: &str, p: &str) -> String {
    let input = format!("{h}.{p}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn operation_id() -> impl Strategy<Value = OperationId> {
    any::<[u8; 16]>().prop_map(|bytes| OperationId::parse(&URL_SAFE_NO_PAD.encode(bytes)).unwrap())
}

/// A client identity: ASCII, unicode, empty; short enough that the state
/// stays under `MAX_STATE_LEN` (see `long_identities_make_states_too_long`).
fn identity() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[ -~]{0,64}",
        "\\PC{0,32}",
        any::<String>().prop_map(|s| s.chars().take(32).collect()),
    ])
}

/// A state valid at `now`: times consistent, anywhere in `u64`.
fn valid_state() -> impl Strategy<Value = (State, u64)> {
    (0..=u64::MAX - 10)
        .prop_flat_map(|now| {
            (
                operation_id(),
                1..=u64::MAX,
                now..=u64::MAX,
                0..=now + 5,
                any::<bool>(),
                identity(),
                Just(now),
            )
        })
        .prop_flat_map(|(op, seq, exp, iat, hold, sub, now)| {
            (0..=exp).prop_map(move |nbf| {
                (
                    State {
                        op,
                        seq,
                        nbf,
                        iat,
                        exp,
                        hold,
                        sub: sub.clone(),
                    },
                    now,
                )
            })
        })
}

/// A state valid now, as the server issues them (times near the clock),
/// and for at least an hour, however long the run.
fn realistic_state() -> impl Strategy<Value = State> {
    let now = unix_now();
    (
        operation_id(),
        1..=1_000_000u64,
        0..=60u64,
        3_600..=30 * 86_400u64,
        any::<bool>(),
        identity(),
    )
        .prop_map(move |(op, seq, retry, retention, hold, sub)| State {
            op,
            seq,
            nbf: now + retry.min(retention),
            iat: now,
            exp: now + retention,
            hold,
            sub,
        })
}

proptest! {
    #![proptest_config(config())]

    /// `sign` then `verify` gives the same state back.
    #[test]
    fn round_trip((state, now) in valid_state()) {
        let token = codec().sign(&state).unwrap();
        prop_assert!(token.len() <= async_op::state::MAX_STATE_LEN, "{} bytes", token.len());
        prop_assert_eq!(codec().verify(&token, now).unwrap(), state.clone());
        // Exactly up to `exp`, and not a second after.
        prop_assert_eq!(codec().verify(&token, state.exp).unwrap(), state.clone());
        if let Some(after) = state.exp.checked_add(1) {
            prop_assert!(matches!(codec().verify(&token, after), Err(ProtocolError::StateExpired)));
        }
    }
}

/// Time and claim checks: a model of README's rules.
#[derive(Debug)]
struct Times {
    now: u64,
    seq: u64,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// `base` moved by a small amount, or anywhere: boundaries are likely.
fn near(base: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (-8i64..=8).prop_map(move |delta| base.saturating_add_signed(delta)),
        1 => any::<u64>(),
        1 => Just(0),
        1 => Just(u64::MAX),
    ]
}

fn times() -> impl Strategy<Value = Times> {
    prop_oneof![Just(unix_now()), any::<u64>(), Just(0), Just(u64::MAX)].prop_flat_map(|now| {
        (
            near(now),
            near(now),
            near(now),
            prop_oneof![Just(0u64), Just(1), any::<u64>()],
        )
            .prop_map(move |(iat, nbf, exp, seq)| Times {
                now,
                seq,
                iat,
                nbf,
                exp,
            })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn claim_checks_match_the_model(times in times(), op in operation_id()) {
        let Times { now, seq, iat, nbf, exp } = times;
        let state = State { op, seq, nbf, iat, exp, hold: false, sub: None };
        let token = codec().sign(&state).unwrap();
        let result = codec().verify(&token, now);
        if exp < now {
            prop_assert!(matches!(result, Err(ProtocolError::StateExpired)), "{:?}", result);
        } else if iat > now.saturating_add(5) || seq == 0 || nbf > exp {
            prop_assert!(
                matches!(result, Err(ProtocolError::InvalidState(InvalidStateReason::InconsistentClaims))),
                "{:?}",
                result
            );
        } else {
            prop_assert_eq!(result.unwrap(), state);
        }
    }

    /// Arbitrary strings: never a panic, never accepted.
    #[test]
    fn arbitrary_strings_are_refused(
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_.=+/%-]{0,1100}",
            "[A-Za-z0-9_-]{0,400}\\.[A-Za-z0-9_-]{0,400}\\.[A-Za-z0-9_-]{0,100}",
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ],
        now in prop_oneof![Just(unix_now()), any::<u64>()],
    ) {
        prop_assert!(codec().verify(&token, now).is_err());
    }
}

/// JSON made of the names and values a state is made of, and others.
fn json_value() -> impl Strategy<Value = Value> {
    let now = unix_now();
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (now - 10..now + 10).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,24}".prop_map(Value::from),
        Just(json!(AUD)),
        Just(json!("HS256")),
        Just(json!("none")),
        Just(json!(kid())),
        Just(json!("b64")),
        operation_id().prop_map(|op| json!(op.to_string())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "op", "seq", "nbf", "iat", "exp", "aud", "hold", "sub", "alg", "kid", "typ", "crit",
            "b64", "jwk", "cty",
        ])
        .prop_map(str::to_owned),
        "[a-z]{1,6}",
    ]
}

/// `base` with some members set to arbitrary JSON or removed, or replaced
/// by arbitrary JSON altogether.
fn edited(base: Value) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::collection::vec((key(), prop::option::of(json_value())), 0..4).prop_map(
            move |edits| {
                let mut object: Map<String, Value> = base.as_object().unwrap().clone();
                for (key, value) in edits {
                    match value {
                        Some(value) => object.insert(key, value),
                        None => object.remove(&key),
                    };
                }
                Value::Object(object)
            }
        ),
        1 => json_value(),
    ]
}

fn header() -> Value {
    json!({"typ": "JWT", "alg": "HS256", "kid": kid()})
}

fn claims(op: OperationId) -> Value {
    let now = unix_now();
    json!({"op": op.to_string(), "seq": 1, "nbf": now, "iat": now, "exp": now + 60, "aud": AUD})
}

fn signed_json() -> impl Strategy<Value = (Value, Value)> {
    operation_id().prop_flat_map(|op| (edited(header()), edited(claims(op))))
}

/// The audience claim names ours (a string, or an array that holds it).
fn names_us(aud: &Value) -> bool {
    match aud {
        Value::String(aud) => aud == AUD,
        Value::Array(auds) => auds.iter().any(|aud| aud == AUD),
        _ => false,
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary JSON, signed with the right key: never a panic, and
    /// whatever is accepted obeys every rule.
    #[test]
    fn signed_arbitrary_json_is_checked((header, claims) in signed_json()) {
        let token = sign_parts(&b64(&header), &b64(&claims));
        let now = unix_now();
        if let Ok(state) = codec().verify(&token, now) {
            prop_assert_eq!(&header["alg"], "HS256");
            prop_assert_eq!(&header["kid"], kid());
            // `crit: null` counts as absent (serde's `Option`); harmless.
            prop_assert!(
                header.get("crit").is_none_or(|crit| crit.is_null() || crit == &json!(["b64"])),
                "{}",
                header
            );
            prop_assert!(header.get("b64").is_none_or(|b64| b64 == &json!(true)), "{}", header);
            prop_assert!(names_us(&claims["aud"]), "{}", claims);
            prop_assert_eq!(&claims["op"], &json!(state.op.to_string()));
            prop_assert_eq!(&claims["seq"], &json!(state.seq));
            prop_assert_eq!(&claims["exp"], &json!(state.exp));
            prop_assert_eq!(&claims["nbf"], &json!(state.nbf));
            prop_assert_eq!(&claims["iat"], &json!(state.iat));
            prop_assert!(state.seq >= 1 && state.nbf <= state.exp && state.exp >= now);
            prop_assert!(state.iat <= now + 5);
        }
    }
}

/// One change to a token.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Replace(Index, u8),
    Truncate(Index),
    /// Part `i` of the token replaced by part `j` of another valid token.
    Splice(usize, usize),
    /// Parts `i` and `j` swapped.
    Swap(usize, usize),
    /// Part `i` written twice.
    Repeat(usize),
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b".=-_+/ %A0\"\\{}".to_vec()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, 1 << bit)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (0..3usize, 0..3usize).prop_map(|(i, j)| Mutation::Splice(i, j)),
        1 => (0..3usize, 0..3usize).prop_map(|(i, j)| Mutation::Swap(i, j)),
        1 => (0..3usize).prop_map(Mutation::Repeat),
    ]
}

fn mutate(token: &[u8], other: &str, mutation: &Mutation) -> Vec<u8> {
    let mut bytes = token.to_vec();
    let parts = |bytes: &[u8]| -> Vec<Vec<u8>> {
        bytes.split(|b| *b == b'.').map(<[u8]>::to_vec).collect()
    };
    match mutation {
        Mutation::Flip(at, mask) if !bytes.is_empty() => bytes[at.index(token.len())] ^= mask,
        Mutation::Insert(at, byte) => bytes.insert(at.index(token.len() + 1), *byte),
        Mutation::Delete(at) if !bytes.is_empty() => {
            bytes.remove(at.index(token.len()));
        }
        Mutation::Replace(at, byte) if !bytes.is_empty() => bytes[at.index(token.len())] = *byte,
        Mutation::Truncate(at) => bytes.truncate(at.index(token.len() + 1)),
        Mutation::Splice(i, j) => {
            let mut mine = parts(&bytes);
            let theirs = parts(other.as_bytes());
            if *i < mine.len() && *j < theirs.len() {
                mine[*i].clone_from(&theirs[*j]);
            }
            bytes = mine.join(&b'.');
        }
        Mutation::Swap(i, j) => {
            let mut mine = parts(&bytes);
            if *i < mine.len() && *j < mine.len() {
                mine.swap(*i, *j);
            }
            bytes = mine.join(&b'.');
        }
        Mutation::Repeat(i) => {
            let mut mine = parts(&bytes);
            if *i < mine.len() {
                let part = mine[*i].clone();
                mine.insert(*i, part);
            }
            bytes = mine.join(&b'.');
        }
        _ => {}
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    /// Mutations of valid states: never a panic, never accepted unless the
    /// token is the untouched one.
    #[test]
    fn mutated_states_are_refused(
        state in realistic_state(),
        other in realistic_state(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let now = unix_now();
        let token = codec().sign(&state).unwrap();
        let other = codec().sign(&other).unwrap();
        prop_assert_eq!(codec().verify(&token, now).unwrap(), state);
        let mut bytes = token.clone().into_bytes();
        for mutation in &mutations {
            bytes = mutate(&bytes, &other, mutation);
        }
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        if let Ok(accepted) = codec().verify(&mutated, now) {
            prop_assert!(
                mutated == token || mutated == other,
                "accepted a mutated state {:?} (from {:?}): {:?}",
                mutated,
                token,
                accepted
            );
        }
    }
}

/// The same for every algorithm, with splices across algorithms: a state
/// of one key never verifies under another key's kid.
#[test]
fn mutated_states_of_every_algorithm_are_refused() {
    let strategy = (
        0..3usize,
        0..3usize,
        realistic_state(),
        realistic_state(),
        prop::collection::vec(mutation(), 0..4),
    );
    check(
        asymmetric_cases(),
        strategy,
        |(signer, other_signer, state, other, mutations)| {
            let now = unix_now();
            let codec = &all_codecs()[signer];
            let token = codec.sign(&state).unwrap();
            let other = all_codecs()[other_signer].sign(&other).unwrap();
            for verifier in all_codecs() {
                prop_assert_eq!(verifier.verify(&token, now).unwrap(), state.clone());
            }
            let mut bytes = token.clone().into_bytes();
            for mutation in &mutations {
                bytes = mutate(&bytes, &other, mutation);
            }
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            if let Ok(accepted) = codec.verify(&mutated, now) {
                prop_assert!(
                    mutated == token || mutated == other,
                    "accepted a mutated state {:?} (from {:?}): {:?}",
                    mutated,
                    token,
                    accepted
                );
            }
            Ok(())
        },
    );
}

/// Algorithm confusion, every combination: the header of an ES256 or EdDSA
/// state with another `alg` (`HS256`/`HS384`/`HS512` keyed with the public
/// key's PEM, its DER or its raw bytes as the HMAC secret; `none`; the
/// other asymmetric algorithms) is refused by every codec, signed or not.
#[test]
fn algorithm_confusion_is_refused() {
    let now = unix_now();
    for (signer, public) in [
        (1, "es256-a.test-public.pem"),
        (2, "ed25519-a.test-public.pem"),
    ] {
        let state = State {
            op: OperationId::random(),
            seq: 1,
            nbf: now,
            iat: now,
            exp: now + 3600,
            hold: false,
            sub: None,
        };
        let token = all_codecs()[signer].sign(&state).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let (h, p) = (parts[0], parts[1]);
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        let pem = test_key(public);
        let der = {
            let body: String = pem
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        };
        // The raw key after the SPKI prefix: the P-256 point, or 32 bytes.
        let raw = der[der.len() - if signer == 1 { 65 } else { 32 }..].to_vec();
        for alg in [
            "HS256", "HS384", "HS512", "ES256", "ES384", "EdDSA", "RS256", "PS256", "none",
        ] {
            if header["alg"] == alg {
                continue;
            }
            let mut header = header.clone();
            header["alg"] = json!(alg);
            let input = format!("{}.{p}", b64(&header));
            for secret in [pem.as_bytes(), &der, &raw] {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
                mac.update(input.as_bytes());
                let forged = format!(
                    "{input}.{}",
                    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
                );
                for forged in [forged, format!("{input}."), format!("{input}.{}", parts[2])] {
                    for verifier in all_codecs() {
                        assert!(
                            verifier.verify(&forged, now).is_err(),
                            "{alg} accepted: {forged}"
                        );
                    }
                }
            }
        }
    }
}

/// A state signed with an identity of `len` ASCII bytes: past about 570
/// bytes (HS256; about 540 with ES256 or EdDSA) the state no longer fits
/// `MAX_STATE_LEN`, and every poll of it would be refused. This is why the
/// middleware carries an identity over `MAX_SUBJECT_LEN` (128 bytes) as its
/// digest (tests/lifecycle.rs checks that end to end).
#[test]
fn long_identities_make_states_too_long() {
    let now = unix_now();
    let fits = |len: usize| {
        let state = State {
            op: OperationId::random(),
            seq: u64::MAX,
            nbf: u64::MAX,
            iat: now,
            exp: u64::MAX,
            hold: true,
            sub: Some("x".repeat(len)),
        };
        let token = codec().sign(&state).unwrap();
        token.len() <= async_op::state::MAX_STATE_LEN
    };
    assert!(fits(64));
    assert!(!fits(1024));
}

/// The test server's base URL: a server on its own thread (the property
/// runner is synchronous), for the whole test binary.
fn server_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = TestServer::start().await;
                tx.send(server.base.clone()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
}

/// `POST /echo` with a `Prefer` header of these bytes; the status and
/// content type of the answer.
fn begin_with_prefer(value: &[u8]) -> (u16, String) {
    let base = server_base();
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 2\r\nconnection: close\r\nprefer: "
    )
    .into_bytes();
    request.extend_from_slice(value);
    request.extend_from_slice(b"\r\n\r\n{}");
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type)
}

/// Bytes a header value may hold (no CR, LF or NUL), with the pieces of
/// `Prefer` syntax over-represented.
fn prefer_value() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "wait",
            "wait=",
            "=",
            ",",
            ";",
            "\"",
            "\\",
            " ",
            "\t",
            "respond-async",
            "callback",
            "url=",
            "url=\"",
            "return=minimal",
            "handling=strict",
            "WAIT",
            "0",
            "1",
            "30",
            "99999999999999999999",
            "-1",
            "1.5",
            "http://client.example/cb",
        ])
        .prop_map(|piece| piece.as_bytes().to_vec()),
        "[ -~]{1,8}".prop_map(String::into_bytes),
        prop::collection::vec(0x80u8..=0xff, 1..4),
        (1..=99u32).prop_map(|n| format!("wait={n}").into_bytes()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| {
        let mut value = pieces.concat();
        // Leading and trailing whitespace are not part of a field value.
        while value.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            value.remove(0);
        }
        while value.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            value.pop();
        }
        value
    })
}

/// Whatever the `Prefer` header, the begin is answered: 303, the result
/// (200, with `wait`), or a 400 problem (a refused callback); never a 5xx,
/// never a dropped connection. A twentieth of the cases (at least 100).
#[test]
fn prefer_header_never_breaks_a_begin() {
    check((cases() / 20).max(100), prefer_value(), |value| {
        let (status, content_type) = begin_with_prefer(&value);
        prop_assert!(
            matches!(status, 200 | 303 | 400),
            "Prefer: {:?} got {}",
            String::from_utf8_lossy(&value),
            status
        );
        if status == 400 {
            prop_assert_eq!(content_type, "application/problem+json");
        }
        Ok(())
    });
}
