//! Keys (PROTOCOL.md, "State"): states signed with ES256 and EdDSA end to
//! end, rotation from one key to another (and from HS256 to ES256) with the
//! states in flight still valid, a removed key's states refused, and no
//! algorithm confusion: a state is checked with the algorithm of the key its
//! `kid` names, and nothing else. Then the environment variables that
//! configure keys, read by a child process (a test may not set variables).
//!
//! The keys are the test-only keys of `tests/keys/`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use async_op::{
    AsyncOps, MemoryStore, OperationId,
    state::{KeyAlgorithm, SigningKey, State, StateCodec, VerificationKey},
};
use async_op_tests::{
    SECRET, TestServer, begin, claims, client, follow, location, ops_builder, problem, unix_now,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const INVALID: &str = "urn:async-op:problem:invalid-state";
const ES256_A_KID: &str = "-Cu2DPguNGk";
const ES256_B_KID: &str = "fnlsONa-ySM";
const ED25519_A_KID: &str = "vRZ7QKPDOqg";
const PREVIOUS_SECRET: &str = "a previous secret of thirty-two bytes or more";

fn key_path(name: &str) -> String {
    format!("{}/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pem(name: &str) -> String {
    std::fs::read_to_string(key_path(name)).unwrap()
}

fn es256_a() -> SigningKey {
    SigningKey::es256_pem(&pem("es256-a.test-private.pem")).unwrap()
}

fn es256_b() -> SigningKey {
    SigningKey::es256_pem(&pem("es256-b.test-private.pem")).unwrap()
}

fn ed25519_a() -> SigningKey {
    SigningKey::ed25519_pem(&pem("ed25519-a.test-private.pem")).unwrap()
}

fn es256_a_public() -> VerificationKey {
    VerificationKey::es256_public_pem(&pem("es256-a.test-public.pem")).unwrap()
}

/// The JOSE header of the state in a poll URI, read without checking.
fn header(poll: &str) -> Value {
    let state = poll.split_once('?').unwrap().1;
    let encoded = state.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap()
}

fn assert_signed_with(poll: &str, alg: &str, kid: &str) {
    let header = header(poll);
    assert_eq!(header["alg"], alg, "{header}");
    assert_eq!(header["kid"], kid, "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
}

/// A server whose signing key is `signing` and which also verifies
/// `verification`: the test configuration otherwise.
async fn server(signing: SigningKey, verification: Vec<VerificationKey>) -> TestServer {
    let store = MemoryStore::new();
    let builder = verification
        .into_iter()
        .fold(ops_builder(&store).signing_key(signing), |builder, key| {
            builder.verification_key(key)
        });
    TestServer::start_with(builder, store).await
}

/// A state for `op`, signed with `codec`, good from now on.
fn mint(codec: &StateCodec, op: OperationId) -> String {
    let now = unix_now();
    codec
        .sign(&State {
            op,
            seq: 1,
            nbf: now,
            iat: now,
            exp: now + 60,
            hold: false,
            sub: None,
        })
        .unwrap()
}

/// The operation id of the state in a poll URI.
fn op_of(poll: &str) -> OperationId {
    serde_json::from_value(claims(poll)["op"].clone()).unwrap()
}

async fn get(server: &TestServer, query: &str) -> reqwest::Response {
    client()
        .get(server.url(&format!("/async-response?{query}")))
        .send()
        .await
        .unwrap()
}

/// The `detail` of each reason a state is refused for, as far as these tests
/// tell them apart.
const UNKNOWN_KEY: &str = "a key this server does not have";
const ALGORITHM: &str = "algorithm is not allowed";
const SIGNATURE: &str = "signature does not verify";
const MALFORMED: &str = "not a well-formed compact JWS";

async fn assert_invalid(server: &TestServer, query: &str, what: &str, detail: &str) {
    let res = get(server, query).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}");
    let body = problem(res, StatusCode::BAD_REQUEST, INVALID).await;
    let told = body["detail"].as_str().unwrap();
    assert!(told.contains(detail), "{what}: {told}");
}

/// Begins `/gated`, polls once (a 303 with a new state while the handler
/// runs), opens the gate and follows to the end: every state on the way is
/// signed with `alg` under `kid`.
async fn polling_run(server: TestServer, alg: &str, kid: &str) {
    let poll = begin(&server, "/gated", &json!(null)).await;
    assert_signed_with(&poll, alg, kid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = client().get(&poll).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let next = location(&res);
    assert_signed_with(&next, alg, kid);
    assert_eq!(claims(&next)["seq"], 2);
    server.gate.open();
    let res = follow(&server.url(&next), &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-result"], "yes");
    assert_eq!(res.text().await.unwrap(), "done");
    server.stop().await;
}

#[actix_web::test]
async fn a_polling_run_signed_with_es256() {
    let server = server(es256_a(), vec![]).await;
    assert_eq!(server.ops.codec().algorithm(), KeyAlgorithm::Es256);
    polling_run(server, "ES256", ES256_A_KID).await;
}

#[actix_web::test]
async fn a_polling_run_signed_with_eddsa() {
    let server = server(ed25519_a(), vec![]).await;
    assert_eq!(server.ops.codec().algorithm(), KeyAlgorithm::EdDsa);
    polling_run(server, "EdDSA", ED25519_A_KID).await;
}

#[actix_web::test]
async fn a_state_signed_with_the_previous_key_is_accepted() {
    // K2 signs; K1, the previous key, verifies (its public half only).
    let server = server(es256_b(), vec![es256_a_public()]).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    assert_signed_with(&poll, "ES256", ES256_B_KID);
    // A state for the same operation as an instance still on K1 signed it.
    let previous = StateCodec::new(es256_a(), [], "async-op").unwrap();
    let state = mint(&previous, op_of(&poll));
    let res = get(&server, &state).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // The answer moves the client on to a state signed with K2.
    let next = location(&res);
    assert_signed_with(&next, "ES256", ES256_B_KID);
    server.gate.open();
    let res = follow(&server.url(&next), &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    server.stop().await;
}

#[actix_web::test]
async fn a_state_signed_with_a_removed_key_is_400() {
    // K1 has been removed: only K2 is left.
    let server = server(es256_b(), vec![]).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    let removed = StateCodec::new(es256_a(), [], "async-op").unwrap();
    assert_invalid(
        &server,
        &mint(&removed, op_of(&poll)),
        "removed key",
        UNKNOWN_KEY,
    )
    .await;
    // The removed key under the kid of the current one: a bad signature.
    let forged = StateCodec::new(es256_a().with_kid(ES256_B_KID), [], "async-op").unwrap();
    assert_invalid(
        &server,
        &mint(&forged, op_of(&poll)),
        "other key, kid of K2",
        SIGNATURE,
    )
    .await;
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn a_state_under_an_asymmetric_kid_is_checked_with_that_algorithm_only() {
    let server = server(es256_a(), vec![]).await;
    let poll = begin(&server, "/gated", &json!(null)).await;
    let token = poll.split_once('?').unwrap().1.to_owned();
    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let claims = claims(&poll);
    let public_pem = pem("es256-a.test-public.pem");

    // The same claims re-signed under the ES256 key's kid with HS256: with
    // the test secret, and with the public key as the HMAC secret.
    let hs256 = |secret: &[u8], alg: Algorithm| {
        let mut header = Header::new(alg);
        header.kid = Some(ES256_A_KID.into());
        let key = EncodingKey::from_secret(secret).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let b64 = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
    let none = b64(&json!({"alg": "none", "typ": "JWT", "kid": ES256_A_KID}));
    let hs_header = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": ES256_A_KID}));
    let eddsa = StateCodec::new(ed25519_a().with_kid(ES256_A_KID), [], "async-op").unwrap();

    let cases: Vec<(String, &str, &str)> = vec![
        (
            hs256(SECRET.as_bytes(), Algorithm::HS256),
            "HS256 with the secret",
            ALGORITHM,
        ),
        (
            hs256(public_pem.as_bytes(), Algorithm::HS256),
            "HS256 with the public key",
            ALGORITHM,
        ),
        (
            hs256(public_pem.as_bytes(), Algorithm::HS512),
            "HS512 with the public key",
            ALGORITHM,
        ),
        (
            format!("{hs_header}.{p}.{s}"),
            "alg HS256, the ES256 signature",
            ALGORITHM,
        ),
        (
            mint(&eddsa, op_of(&poll)),
            "EdDSA under the ES256 kid",
            ALGORITHM,
        ),
        (
            format!("{none}.{p}."),
            "alg none, empty signature",
            MALFORMED,
        ),
        (
            format!("{none}.{p}.{s}"),
            "alg none, the ES256 signature",
            MALFORMED,
        ),
        (
            format!("{h}.{p}.{}", &s[..s.len() - 2]),
            "truncated signature",
            SIGNATURE,
        ),
        (
            format!("{h}.{p}.{}", "A".repeat(s.len())),
            "zero signature",
            SIGNATURE,
        ),
    ];
    for (query, what, detail) in &cases {
        assert_invalid(&server, query, what, detail).await;
    }
    // Sanity: the untouched state is fine (503 before its nbf, 303 after).
    let fine = get(&server, &token).await.status();
    assert!(fine == StatusCode::SERVICE_UNAVAILABLE || fine == StatusCode::SEE_OTHER);
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn rotation_from_hs256_to_es256_keeps_states_in_flight() {
    // Two instances sharing a store, mid-rotation: A still signs with the
    // HS256 secret; B signs with ES256 and keeps the secret to verify.
    let store = MemoryStore::new();
    let a = TestServer::start_with(ops_builder(&store), store.clone()).await;
    let b = TestServer::start_with(
        ops_builder(&store)
            .signing_key(es256_a())
            .previous_secret(SECRET),
        store.clone(),
    )
    .await;
    let poll = begin(&a, "/gated", &json!(null)).await;
    let hs256_kid = a.ops.codec().current_key_id().to_owned();
    assert_signed_with(&poll, "HS256", &hs256_kid);
    let query = poll.split_once('?').unwrap().1.to_owned();

    // B takes A's HS256 state and answers with an ES256 one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = get(&b, &query).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let next = location(&res);
    assert_signed_with(&next, "ES256", ES256_A_KID);

    // Once the rotation is over (the secret dropped), the HS256 state is
    // refused; the ES256 one still leads to the result.
    let c = TestServer::start_with(ops_builder(&store).signing_key(es256_a()), store.clone()).await;
    assert_invalid(
        &c,
        &query,
        "HS256 state after the secret was dropped",
        UNKNOWN_KEY,
    )
    .await;
    a.gate.open();
    let res = follow(&c.url(&next), &c.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    for server in [a, b, c] {
        server.stop().await;
    }
}

// The environment. `AsyncOps::from_env` runs in a child process: this test
// binary, running `env_child` only, with the variables of the case.

const KEY_VARIABLES: [&str; 5] = [
    "ASYNC_OP_SECRET",
    "ASYNC_OP_PREVIOUS_SECRETS",
    "ASYNC_OP_SIGNING_KEY_FILE",
    "ASYNC_OP_SIGNING_ALG",
    "ASYNC_OP_VERIFICATION_KEY_FILES",
];

/// Prints what `AsyncOps::from_env` made of the environment, when run as
/// the child of [`from_env`]; does nothing otherwise.
#[test]
fn env_child() {
    if std::env::var_os("ASYNC_OP_KEYS_TEST_CHILD").is_none() {
        return;
    }
    match AsyncOps::from_env() {
        Ok(ops) => {
            let codec = ops.codec();
            println!(
                "from_env: {} {} {:?}",
                codec.algorithm(),
                codec.current_key_id(),
                codec.verification_key_ids()
            );
        }
        Err(error) => println!("from_env: error: {error}"),
    }
}

/// What `AsyncOps::from_env` makes of the key variables `vars` (the others
/// unset): `<alg> <kid> [<kids verified>]` or `error: <message>`.
fn from_env(vars: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["env_child", "--exact", "--nocapture", "--test-threads=1"]);
    for name in KEY_VARIABLES {
        command.env_remove(name);
    }
    command
        .env("ASYNC_OP_KEYS_TEST_CHILD", "1")
        .envs(vars.iter().copied());
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| Some(line.split_once("from_env: ")?.1))
        .unwrap_or_else(|| {
            panic!(
                "the child answered nothing: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

#[test]
fn the_environment_configures_keys() {
    let es256_a = key_path("es256-a.test-private.pem");
    let ed25519_a = key_path("ed25519-a.test-private.pem");
    let publics = format!(
        "{}, {}",
        key_path("es256-b.test-public.pem"),
        key_path("ed25519-a.test-public.pem")
    );
    let hs256_kid = VerificationKey::hs256(SECRET).unwrap().kid().to_owned();
    let previous_kid = VerificationKey::hs256(PREVIOUS_SECRET)
        .unwrap()
        .kid()
        .to_owned();

    // `<alg> <kid> [<every kid verified, sorted>]`, as the child prints it.
    let answer = |alg: &str, kid: &str, also: &[&str]| {
        let mut kids: Vec<&str> = also.iter().copied().chain([kid]).collect();
        kids.sort_unstable();
        format!("{alg} {kid} {kids:?}")
    };

    // A key file, its algorithm detected or named.
    assert_eq!(
        from_env(&[("ASYNC_OP_SIGNING_KEY_FILE", &es256_a)]),
        answer("ES256", ES256_A_KID, &[])
    );
    assert_eq!(
        from_env(&[
            ("ASYNC_OP_SIGNING_KEY_FILE", &ed25519_a),
            ("ASYNC_OP_SIGNING_ALG", "EdDSA"),
        ]),
        answer("EdDSA", ED25519_A_KID, &[])
    );
    // Verification key files, next to a secret or a key file.
    assert_eq!(
        from_env(&[
            ("ASYNC_OP_SECRET", SECRET),
            ("ASYNC_OP_VERIFICATION_KEY_FILES", &publics),
        ]),
        answer("HS256", &hs256_kid, &[ES256_B_KID, ED25519_A_KID])
    );
    assert_eq!(
        from_env(&[
            ("ASYNC_OP_SIGNING_KEY_FILE", &es256_a),
            // Not the test secret: it has a comma, and the list is comma-separated.
            ("ASYNC_OP_PREVIOUS_SECRETS", PREVIOUS_SECRET),
            ("ASYNC_OP_VERIFICATION_KEY_FILES", &publics),
        ]),
        answer(
            "ES256",
            ES256_A_KID,
            &[&previous_kid, ES256_B_KID, ED25519_A_KID]
        )
    );

    // What is refused, and how it is told.
    let refused = |vars: &[(&str, &str)], words: &[&str]| {
        let answer = from_env(vars);
        assert!(answer.starts_with("error: "), "{vars:?}: {answer}");
        for word in words {
            assert!(answer.contains(word), "{vars:?}: {answer} lacks {word:?}");
        }
    };
    refused(&[], &["no signing key", "ASYNC_OP_SIGNING_KEY_FILE"]);
    refused(
        &[
            ("ASYNC_OP_SECRET", SECRET),
            ("ASYNC_OP_SIGNING_KEY_FILE", &es256_a),
        ],
        &[
            "both ASYNC_OP_SECRET and ASYNC_OP_SIGNING_KEY_FILE",
            "exactly one",
        ],
    );
    refused(
        &[
            ("ASYNC_OP_SIGNING_KEY_FILE", &es256_a),
            ("ASYNC_OP_SIGNING_ALG", "EdDSA"),
        ],
        &["ASYNC_OP_SIGNING_KEY_FILE", "Ed25519"],
    );
    refused(
        &[
            ("ASYNC_OP_SIGNING_KEY_FILE", &es256_a),
            ("ASYNC_OP_SIGNING_ALG", "HS256"),
        ],
        &["ASYNC_OP_SIGNING_ALG", "ES256` or `EdDSA"],
    );
    refused(
        &[
            ("ASYNC_OP_SECRET", SECRET),
            ("ASYNC_OP_SIGNING_ALG", "ES256"),
        ],
        &["ASYNC_OP_SIGNING_ALG", "not set"],
    );
    refused(
        &[(
            "ASYNC_OP_SIGNING_KEY_FILE",
            &key_path("es256-a.test-public.pem"),
        )],
        &["ASYNC_OP_SIGNING_KEY_FILE", "`PUBLIC KEY`"],
    );
    refused(
        &[(
            "ASYNC_OP_SIGNING_KEY_FILE",
            &key_path("es256-a.test-sec1-private.pem"),
        )],
        &["openssl pkcs8 -topk8"],
    );
    refused(
        &[(
            "ASYNC_OP_SIGNING_KEY_FILE",
            &key_path("p384.test-private.pem"),
        )],
        &["P-256 (ES256) or Ed25519 (EdDSA)"],
    );
    refused(
        &[("ASYNC_OP_SIGNING_KEY_FILE", &key_path("no-such-key.pem"))],
        &["ASYNC_OP_SIGNING_KEY_FILE", "cannot read"],
    );
    refused(
        &[
            ("ASYNC_OP_SECRET", SECRET),
            ("ASYNC_OP_VERIFICATION_KEY_FILES", &es256_a),
        ],
        &["ASYNC_OP_VERIFICATION_KEY_FILES", "public key"],
    );
}
