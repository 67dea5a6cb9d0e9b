//! The state on the poll path: every way a state can be wrong is answered
//! with the right status and a problem body, and nothing is looked up.

#![allow(missing_docs, clippy::unwrap_used)]

use async_op_tests::{TestServer, begin, client, problem};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const INVALID: &str = "urn:async-op:problem:invalid-state";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// The parts of a real state the server issued.
struct Issued {
    header: Value,
    claims: Value,
    token: String,
}

async fn issued(server: &TestServer) -> Issued {
    let poll = begin(server, "/gated", &json!(null)).await;
    let token = poll.split_once('?').unwrap().1.to_owned();
    let mut parts = token.split('.');
    let header =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    Issued {
        header,
        claims,
        token,
    }
}

/// Signs `claims` under `header` (its `kid` kept) with `secret` and HS256.
fn sign(header: &Value, claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    let mut jwt_header = Header::new(alg);
    jwt_header.kid = header["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(
        &jwt_header,
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

async fn poll(server: &TestServer, query: &str) -> reqwest::Response {
    client()
        .get(server.url(&format!("/async-response?{query}")))
        .send()
        .await
        .unwrap()
}

async fn assert_invalid(server: &TestServer, query: &str, what: &str) {
    let res = poll(server, query).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}");
    problem(res, StatusCode::BAD_REQUEST, INVALID).await;
}

#[actix_web::test]
async fn bad_states_are_400_with_a_problem_body() {
    let server = TestServer::start().await;
    let Issued {
        header,
        claims,
        token,
    } = issued(&server).await;
    let secret = async_op_tests::SECRET.as_bytes();
    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();

    // Sanity: the untouched state is fine (303 after its nbf or 503 before).
    let fine = poll(&server, &token).await.status();
    assert!(fine == StatusCode::SERVICE_UNAVAILABLE || fine == StatusCode::SEE_OTHER);

    let mut tampered_claims = claims.clone();
    tampered_claims["seq"] = json!(7);
    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("someone-else");
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut future_iat = claims.clone();
    future_iat["iat"] = json!(now() + 3600);
    let mut negative_seq = claims.clone();
    negative_seq["seq"] = json!(-1);
    let mut zero_seq = claims.clone();
    zero_seq["seq"] = json!(0);
    let mut bad_op = claims.clone();
    bad_op["op"] = json!("not-an-id");
    let mut no_kid = header.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("another-key");
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": header["kid"]});

    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty query"),
        (
            format!("{h}.{}.{s}", b64(&tampered_claims)),
            "tampered claims, old signature",
        ),
        (
            format!("{h}.{p}.{}", &s[..s.len() - 4]),
            "truncated signature",
        ),
        (token[..token.len() / 2].to_owned(), "truncated state"),
        (format!("{h}.{p}"), "two parts"),
        ("not-a-jws".into(), "not a JWS"),
        (
            sign(
                &header,
                &claims,
                b"a different secret of thirty-two bytes",
                Algorithm::HS256,
            ),
            "wrong key, right kid",
        ),
        (
            sign(&header, &claims, secret, Algorithm::HS384),
            "other algorithm, right key",
        ),
        (
            sign(&header, &other_aud, secret, Algorithm::HS256),
            "wrong audience",
        ),
        (
            sign(&header, &no_aud, secret, Algorithm::HS256),
            "no audience",
        ),
        (
            sign(&header, &future_iat, secret, Algorithm::HS256),
            "iat in the future",
        ),
        (
            sign(&header, &negative_seq, secret, Algorithm::HS256),
            "negative seq",
        ),
        (sign(&header, &zero_seq, secret, Algorithm::HS256), "seq 0"),
        (
            sign(&header, &bad_op, secret, Algorithm::HS256),
            "op is not an id",
        ),
        (sign(&no_kid, &claims, secret, Algorithm::HS256), "no kid"),
        (
            sign(&unknown_kid, &claims, secret, Algorithm::HS256),
            "unknown kid",
        ),
        (
            format!("{}.{p}.", b64(&none_header)),
            "alg none, empty signature",
        ),
        (
            format!("{}.{p}.{s}", b64(&none_header)),
            "alg none, old signature",
        ),
        ("a".repeat(5000), "huge"),
        (format!("{token}&{token}"), "duplicated query"),
    ];
    for (query, what) in &cases {
        assert_invalid(&server, query, what).await;
    }
    server.gate.open();
    server.stop().await;
}

#[actix_web::test]
async fn an_expired_state_is_410() {
    let server = TestServer::start().await;
    let Issued {
        header, mut claims, ..
    } = issued(&server).await;
    let now = now();
    claims["iat"] = json!(now - 100);
    claims["nbf"] = json!(now - 99);
    claims["exp"] = json!(now - 1);
    let expired = sign(
        &header,
        &claims,
        async_op_tests::SECRET.as_bytes(),
        Algorithm::HS256,
    );
    let res = poll(&server, &expired).await;
    problem(res, StatusCode::GONE, "urn:async-op:problem:state-expired").await;
    server.gate.open();
    server.stop().await;
}
