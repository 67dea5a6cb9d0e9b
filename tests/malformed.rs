//! A battery of malformed poll requests against a real server on loopback.
//!
//! One table, one row per case: a short name, the method, the query exactly
//! as it goes on the wire, and the answer expected. Every request the app sees
//! is answered with the right status and an `application/problem+json` body
//! of the right type (HEAD: the same status and headers, no body). A few rows
//! never reach the app: actix-web's HTTP/1 parser refuses them first and
//! answers with its own empty response. Those rows are marked `HttpLayer` and
//! are sent as raw bytes over TCP, since reqwest would encode or refuse them:
//!
//! | what | refused by | status |
//! |---|---|---|
//! | bytes >= 0x80 in the request target (non-UTF-8, and raw UTF-8) | actix-http (`Uri` parse) | 400, empty body |
//! | `"`, `<`, `>` in the request target | actix-http (`Uri` parse) | 400, empty body |
//! | a request target of 64 KiB or more (`Uri`'s own limit) | actix-http (`Uri` parse) | 400, empty body |
//! | NUL, other control bytes, DEL, a space, a tab in the request target | actix-http (`httparse`) | 400, empty body |
//! | a request head over 128 KiB | actix-http (`MAX_BUFFER_SIZE`) | 431, empty body |
//!
//! Everything else reaches the app and gets a problem body: percent-encoded
//! garbage (`%FF%FE`, `%00`, `%zz`), `{`, `}`, `\`, `^`, `|` and the
//! backtick, and queries from 1 KiB to 60 KiB. The app reads the raw query
//! and never percent-decodes it. A fragment in the request target is dropped
//! by actix-http before the app sees the query.
//!
//! Rows whose state is valid after all (RFC-conformant oddities the library
//! accepts: `aud` as an array that names us, an unknown `typ`, an unknown
//! claim, `crit: ["b64"]` with `b64: true`) expect what a valid state of the
//! running operation gets: `303`. States that are validly signed but absurd
//! (`seq` at `u64::MAX`, `nbf` past what `SystemTime` holds with `hold`) must
//! not crash the server: `303`, or held. After the table, the server must
//! still run an operation from begin to result.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{fmt::Write as _, panic::AssertUnwindSafe, time::Duration};

use async_op::OperationId;
use async_op_tests::{SECRET, TestServer, begin, client, follow, problem, unix_now};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use futures_util::FutureExt as _;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Sha256, Sha384, Sha512};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const POLL: &str = "/async-response";
const AUD: &str = "async-op";
const INVALID: &str = "urn:async-op:problem:invalid-state";
const EXPIRED: &str = "urn:async-op:problem:state-expired";
const TOO_EARLY: &str = "urn:async-op:problem:too-early";
const NOT_FOUND: &str = "urn:async-op:problem:operation-not-found";
const FORBIDDEN: &str = "urn:async-op:problem:forbidden";
const NOT_ALLOWED: &str = "urn:async-op:problem:method-not-allowed";
const OTHER_SECRET: &[u8] = b"another secret, also thirty-two bytes long";

/// What goes after the poll path.
enum Query {
    /// No `?` at all.
    Absent,
    /// `?` and this text, sent by reqwest exactly as written (checked).
    Text(String),
    /// `?` and these bytes, sent over a raw TCP connection.
    Raw(Vec<u8>),
    /// This whole request target, sent over a raw TCP connection.
    RawTarget(Vec<u8>),
}

/// The answer a row expects.
enum Expect {
    /// This status and a problem body of this type (for HEAD: this status,
    /// the problem's headers, no body).
    Problem(StatusCode, &'static str),
    /// `405`, a problem body and `Allow: GET, HEAD, DELETE`.
    MethodNotAllowed,
    /// The state is valid: the running operation's `303` to a new state.
    SeeOther,
    /// Refused by actix-http before the app: this status, not a problem.
    HttpLayer(StatusCode),
    /// Held: no answer within a second (and no crash).
    Held,
}

struct Case {
    name: String,
    method: Method,
    query: Query,
    expect: Expect,
}

fn row(name: impl Into<String>, query: impl Into<String>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        method: Method::GET,
        query: Query::Text(query.into()),
        expect,
    }
}

fn bad(name: impl Into<String>, query: impl Into<String>) -> Case {
    row(
        name,
        query,
        Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
    )
}

fn raw(name: &str, query: &[u8], expect: Expect) -> Case {
    Case {
        name: name.into(),
        method: Method::GET,
        query: Query::Raw(query.to_vec()),
        expect,
    }
}

fn with_method(method: Method, mut case: Case) -> Case {
    case.name = format!("{method} {}", case.name);
    case.method = method;
    case
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[derive(Clone, Copy)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

/// The HMAC of `input`, base64url.
fn mac(alg: Alg, secret: &[u8], input: &str) -> String {
    let tag = match alg {
        Alg::Hs256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Alg::Hs384 => {
            let mut mac = Hmac::<Sha384>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Alg::Hs512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    URL_SAFE_NO_PAD.encode(tag)
}

/// `h.p` signed as it stands with `alg` and `secret`: `h.p.sig`.
fn signed_parts(h: &str, p: &str, alg: Alg, secret: &[u8]) -> String {
    let input = format!("{h}.{p}");
    let sig = mac(alg, secret, &input);
    format!("{input}.{sig}")
}

/// A compact JWS of `header` and `claims`, HS256 with the server's secret.
fn jws(header: &Value, claims: &Value) -> String {
    signed_parts(&b64(header), &b64(claims), Alg::Hs256, SECRET.as_bytes())
}

fn set(mut value: Value, key: &str, new: Value) -> Value {
    value[key] = new;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

/// The three parts of a compact JWS.
fn parts(token: &str) -> [String; 3] {
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts.try_into().unwrap()
}

/// What the rows are made from: a running operation and the state the
/// server issued for it.
struct Fixture {
    kid: String,
    op: String,
    issued: String,
    now: u64,
}

impl Fixture {
    fn header(&self) -> Value {
        json!({"typ": "JWT", "alg": "HS256", "kid": self.kid})
    }

    /// Valid claims for the running operation, followable now.
    fn claims(&self) -> Value {
        let now = self.now;
        json!({"op": self.op, "seq": 1, "nbf": now, "iat": now, "exp": now + 3600, "aud": AUD})
    }

    /// A valid state of the running operation with `claims` changed.
    fn claims_with(&self, key: &str, value: Value) -> String {
        jws(&self.header(), &set(self.claims(), key, value))
    }

    /// A valid state of the running operation with `header` changed.
    fn header_with(&self, key: &str, value: Value) -> String {
        jws(&set(self.header(), key, value), &self.claims())
    }

    fn valid(&self) -> String {
        jws(&self.header(), &self.claims())
    }
}

/// A valid state whose signature, base64url, has a `-` or `_`, so that its
/// standard-base64 spelling differs.
fn with_url_safe_signature(fixture: &Fixture) -> String {
    (1..1000)
        .map(|seq| fixture.claims_with("seq", json!(seq)))
        .find(|token| parts(token)[2].contains(['-', '_']))
        .unwrap()
}

/// Claims for the running operation whose base64url has a `-` or `_`: an
/// extra claim of `?` and `>` characters (bits that spell 62 and 63).
fn url_safe_payload_claims(fixture: &Fixture) -> Value {
    (1..16)
        .map(|n| set(fixture.claims(), "x", json!("?>".repeat(n))))
        .find(|claims| b64(claims).contains(['-', '_']))
        .unwrap()
}

/// `[[[...]]]`, `depth` deep: past serde_json's recursion limit of 128.
fn nested(depth: usize) -> Value {
    (1..depth).fold(json!([]), |inner, _| json!([inner]))
}

fn cases(f: &Fixture) -> Vec<Case> {
    let now = f.now;
    let issued = &f.issued;
    let [h, p, s] = parts(issued);
    let valid = f.valid();
    let [vh, vp, vs] = parts(&valid);
    let header = f.header();
    let claims = f.claims();
    let secret = SECRET.as_bytes();
    let unknown_op = OperationId::random().to_string();
    let other_state = f.claims_with("seq", json!(2));
    let [_, op2, os2] = parts(&other_state);
    let alg_header = |alg: &str| b64(&set(header.clone(), "alg", json!(alg)));
    let mut rows = vec![
        // Controls: the hand-made states are what the server signs.
        row("control: valid state", valid.clone(), Expect::SeeOther),
        row(
            "control: unknown operation",
            f.claims_with("op", json!(unknown_op)),
            Expect::Problem(StatusCode::NOT_FOUND, NOT_FOUND),
        ),
        row(
            "control: too early",
            jws(
                &header,
                &set(
                    set(claims.clone(), "nbf", json!(now + 3600)),
                    "exp",
                    json!(now + 7200),
                ),
            ),
            Expect::Problem(StatusCode::SERVICE_UNAVAILABLE, TOO_EARLY),
        ),
        // Nothing there.
        Case {
            name: "no query".into(),
            method: Method::GET,
            query: Query::Absent,
            expect: Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
        },
        bad("empty query", ""),
        // Truncated at the part boundaries and in the middle of each part.
        bad("truncated: header only", h.clone()),
        bad("truncated: header and dot", format!("{h}.")),
        bad("truncated: header.payload", format!("{h}.{p}")),
        bad("truncated: header.payload.", format!("{h}.{p}.")),
        bad("truncated: mid-header", h[..h.len() / 2].to_owned()),
        bad("truncated: mid-payload", format!("{h}.{}", &p[..p.len() / 2])),
        bad(
            "truncated: mid-signature",
            format!("{h}.{p}.{}", &s[..s.len() / 2]),
        ),
        bad(
            "truncated: last signature character",
            issued[..issued.len() - 1].to_owned(),
        ),
        bad("truncated: first character", issued[1..].to_owned()),
        bad("empty header part", format!(".{p}.{s}")),
        bad("empty payload part", format!("{h}..{s}")),
        // Re-signed.
        bad(
            "re-signed: same kid, other secret",
            signed_parts(&vh, &vp, Alg::Hs256, OTHER_SECRET),
        ),
        bad(
            "re-signed: HS384 header and signature, right secret",
            signed_parts(&alg_header("HS384"), &vp, Alg::Hs384, secret),
        ),
        bad(
            "re-signed: HS512 header and signature, right secret",
            signed_parts(&alg_header("HS512"), &vp, Alg::Hs512, secret),
        ),
        bad(
            "re-signed: HS384 signature under an HS256 header",
            signed_parts(&vh, &vp, Alg::Hs384, secret),
        ),
        bad(
            "alg RS256 header, HS256 signature",
            signed_parts(&alg_header("RS256"), &vp, Alg::Hs256, secret),
        ),
        bad(
            "alg ES256 header, HS256 signature",
            signed_parts(&alg_header("ES256"), &vp, Alg::Hs256, secret),
        ),
        bad(
            "alg EdDSA header, HS256 signature",
            signed_parts(&alg_header("EdDSA"), &vp, Alg::Hs256, secret),
        ),
        bad(
            "alg hs256 (lowercase), right signature",
            signed_parts(&alg_header("hs256"), &vp, Alg::Hs256, secret),
        ),
        bad(
            "alg missing, right signature",
            jws(&without(header.clone(), "alg"), &claims),
        ),
        bad("alg null, right signature", f.header_with("alg", json!(null))),
        bad(
            "alg array, right signature",
            f.header_with("alg", json!(["HS256"])),
        ),
        // alg: none, in its spellings, with and without a signature.
        bad("alg none, empty signature", format!("{}.{vp}.", alg_header("none"))),
        bad("alg none, no signature part", format!("{}.{vp}", alg_header("none"))),
        bad(
            "alg none, the original signature",
            format!("{}.{vp}.{vs}", alg_header("none")),
        ),
        bad(
            "alg none, HS256 signature over it",
            signed_parts(&alg_header("none"), &vp, Alg::Hs256, secret),
        ),
        bad("alg None, empty signature", format!("{}.{vp}.", alg_header("None"))),
        bad("alg NONE, empty signature", format!("{}.{vp}.", alg_header("NONE"))),
        bad("alg nOnE, empty signature", format!("{}.{vp}.", alg_header("nOnE"))),
        bad(
            "alg none without kid, empty signature",
            format!("{}.{vp}.", b64(&json!({"alg": "none", "typ": "JWT"}))),
        ),
        // Huge.
        bad("query of 1025 bytes", "a".repeat(1025)),
        bad("query of exactly 1024 bytes", "a".repeat(1024)),
        bad("query of 60 KiB", "a".repeat(60 * 1024)),
        bad(
            "valid state padded past 1024 bytes",
            format!("{valid}{}", ".".repeat(1025 - valid.len())),
        ),
        row(
            "huge header part under the limit, signed",
            f.header_with("pad", json!("p".repeat(500))),
            Expect::SeeOther,
        ),
        bad(
            "huge header part under the limit, other secret",
            signed_parts(
                &b64(&set(header.clone(), "pad", json!("p".repeat(500)))),
                &vp,
                Alg::Hs256,
                OTHER_SECRET,
            ),
        ),
        bad(
            "huge header part over the limit, signed",
            f.header_with("pad", json!("p".repeat(1000))),
        ),
        bad(
            "header nested 200 deep, signed",
            f.header_with("x", nested(200)),
        ),
        row(
            "unknown claim nested 200 deep, signed (skipped without recursion)",
            f.claims_with("x", nested(200)),
            Expect::SeeOther,
        ),
        // Percent-encoded and otherwise encoded garbage: the app reads the
        // raw query.
        bad("percent-encoded non-UTF-8 (%FF%FE)", "%FF%FE%FD"),
        bad("percent-encoded NUL", format!("%00{valid}")),
        bad("percent-encoded overlong UTF-8 dot", "%C0%AE%C0%AE"),
        bad("percent-encoded dots", valid.replace('.', "%2E")),
        bad(
            "state with one character percent-encoded",
            format!("%{:02X}{}", valid.as_bytes()[0], &valid[1..]),
        ),
        bad("whitespace: leading %20", format!("%20{valid}")),
        bad("whitespace: trailing %20", format!("{valid}%20")),
        bad("whitespace: trailing %0A", format!("{valid}%0A")),
        bad("whitespace: leading +", format!("+{valid}")),
        bad("whitespace: trailing %09", format!("{valid}%09")),
        // Duplicated and decorated queries.
        bad("duplicated: state&state", format!("{valid}&{valid}")),
        bad("duplicated: state=state", format!("{valid}={valid}")),
        bad("as a parameter: s=state", format!("s={valid}")),
        bad("with a parameter: state&x=1", format!("{valid}&x=1")),
        bad("trailing =", format!("{valid}=")),
        // aud.
        bad("aud: another string", f.claims_with("aud", json!("other"))),
        bad(
            "aud: array without ours",
            f.claims_with("aud", json!(["other", "another"])),
        ),
        row(
            "aud: array with ours (RFC 7519: accepted)",
            f.claims_with("aud", json!(["other", AUD])),
            Expect::SeeOther,
        ),
        bad("aud: missing", jws(&header, &without(claims.clone(), "aud"))),
        bad("aud: empty string", f.claims_with("aud", json!(""))),
        bad("aud: empty array", f.claims_with("aud", json!([]))),
        bad("aud: null", f.claims_with("aud", json!(null))),
        bad("aud: number", f.claims_with("aud", json!(1))),
        bad("aud: other case", f.claims_with("aud", json!("ASYNC-OP"))),
        bad(
            "aud: duplicate key",
            signed_parts(
                &vh,
                &URL_SAFE_NO_PAD.encode(
                    format!(
                        r#"{{"op":"{}","seq":1,"nbf":{now},"iat":{now},"exp":{},"aud":"{AUD}","aud":"other"}}"#,
                        f.op,
                        now + 3600
                    ),
                ),
                Alg::Hs256,
                secret,
            ),
        ),
        // iat.
        bad(
            "iat: an hour in the future",
            f.claims_with("iat", json!(now + 3600)),
        ),
        row(
            "iat: 5 s in the future (the allowed skew)",
            f.claims_with("iat", json!(now + 5)),
            Expect::SeeOther,
        ),
        bad("iat: missing", jws(&header, &without(claims.clone(), "iat"))),
        bad("iat: negative", f.claims_with("iat", json!(-1))),
        bad("iat: string", f.claims_with("iat", json!(now.to_string()))),
        // seq.
        bad("seq: negative", f.claims_with("seq", json!(-1))),
        bad("seq: zero", f.claims_with("seq", json!(0))),
        bad("seq: float 1.5", f.claims_with("seq", json!(1.5))),
        bad("seq: float 1.0", f.claims_with("seq", json!(1.0))),
        bad("seq: string", f.claims_with("seq", json!("1"))),
        bad("seq: null", f.claims_with("seq", json!(null))),
        bad("seq: missing", jws(&header, &without(claims.clone(), "seq"))),
        bad("seq: 1e30", f.claims_with("seq", json!(1e30))),
        bad(
            "seq: u64::MAX + 1",
            signed_parts(
                &vh,
                &URL_SAFE_NO_PAD.encode(
                    serde_json::to_string(&claims)
                        .unwrap()
                        .replace(r#""seq":1"#, r#""seq":18446744073709551616"#),
                ),
                Alg::Hs256,
                secret,
            ),
        ),
        row(
            "seq: u64::MAX on a running operation",
            f.claims_with("seq", json!(u64::MAX)),
            Expect::SeeOther,
        ),
        // exp and nbf.
        row(
            "exp: an hour ago",
            jws(
                &header,
                &json!({"op": f.op, "seq": 1, "nbf": now - 7200, "iat": now - 7200, "exp": now - 3600, "aud": AUD}),
            ),
            Expect::Problem(StatusCode::GONE, EXPIRED),
        ),
        row(
            "exp: one second ago",
            jws(
                &header,
                &json!({"op": f.op, "seq": 1, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": AUD}),
            ),
            Expect::Problem(StatusCode::GONE, EXPIRED),
        ),
        bad(
            "exp: past, other secret (signature first)",
            signed_parts(
                &vh,
                &b64(&json!({"op": f.op, "seq": 1, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": AUD})),
                Alg::Hs256,
                OTHER_SECRET,
            ),
        ),
        bad(
            "exp: past, wrong aud (aud before exp)",
            jws(
                &header,
                &json!({"op": f.op, "seq": 1, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": "other"}),
            ),
        ),
        row(
            "exp: past, seq 0 (exp before the claim checks)",
            jws(
                &header,
                &json!({"op": f.op, "seq": 0, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": AUD}),
            ),
            Expect::Problem(StatusCode::GONE, EXPIRED),
        ),
        bad("exp: missing", jws(&header, &without(claims.clone(), "exp"))),
        bad("exp: string", f.claims_with("exp", json!((now + 3600).to_string()))),
        bad("exp: float", f.claims_with("exp", json!((now + 3600) as f64 + 0.5))),
        bad("exp: negative", f.claims_with("exp", json!(-1))),
        row(
            "exp: u64::MAX",
            f.claims_with("exp", json!(u64::MAX)),
            Expect::SeeOther,
        ),
        bad("nbf: missing", jws(&header, &without(claims.clone(), "nbf"))),
        bad("nbf: string", f.claims_with("nbf", json!(now.to_string()))),
        bad("nbf after exp", f.claims_with("nbf", json!(now + 7200))),
        row(
            "nbf: u64::MAX (too early for ever)",
            jws(&header, &set(set(claims.clone(), "nbf", json!(u64::MAX)), "exp", json!(u64::MAX))),
            Expect::Problem(StatusCode::SERVICE_UNAVAILABLE, TOO_EARLY),
        ),
        row(
            "nbf: 20 s ahead, hold policy",
            jws(
                &header,
                &set(set(claims.clone(), "nbf", json!(now + 20)), "hold", json!(true)),
            ),
            Expect::Held,
        ),
        row(
            // Further away than the 30 s hold limit: refused at once, even
            // under the hold policy (and no overflow on the way).
            "nbf: past what SystemTime holds, hold policy",
            jws(
                &header,
                &set(
                    set(set(claims.clone(), "nbf", json!(u64::MAX)), "exp", json!(u64::MAX)),
                    "hold",
                    json!(true),
                ),
            ),
            Expect::Problem(StatusCode::SERVICE_UNAVAILABLE, TOO_EARLY),
        ),
        // op.
        bad("op: 21 characters", f.claims_with("op", json!(&f.op[..21]))),
        bad("op: 23 characters", f.claims_with("op", json!(format!("{}A", f.op)))),
        bad("op: empty", f.claims_with("op", json!(""))),
        bad("op: standard base64 alphabet", f.claims_with("op", json!("+/".repeat(11)))),
        bad("op: padding character", f.claims_with("op", json!(format!("{}=", &f.op[..21])))),
        bad(
            "op: non-canonical last character",
            f.claims_with("op", json!(format!("{}B", "A".repeat(21)))),
        ),
        bad("op: 22 bytes of non-ASCII", f.claims_with("op", json!("é".repeat(11)))),
        bad("op: number", f.claims_with("op", json!(12345))),
        bad("op: null", f.claims_with("op", json!(null))),
        bad("op: array", f.claims_with("op", json!([f.op]))),
        bad("op: missing", jws(&header, &without(claims.clone(), "op"))),
        bad(
            "op: duplicate key",
            signed_parts(
                &vh,
                &URL_SAFE_NO_PAD.encode(
                    format!(
                        r#"{{"op":"{}","op":"{}","seq":1,"nbf":{now},"iat":{now},"exp":{},"aud":"{AUD}"}}"#,
                        f.op,
                        unknown_op,
                        now + 3600
                    ),
                ),
                Alg::Hs256,
                secret,
            ),
        ),
        // Other claims.
        bad("hold: string", f.claims_with("hold", json!("yes"))),
        bad("sub: number", f.claims_with("sub", json!(7))),
        row(
            "sub: bound to another client",
            f.claims_with("sub", json!("someone")),
            Expect::Problem(StatusCode::FORBIDDEN, FORBIDDEN),
        ),
        row(
            "unknown extra claim (ignored)",
            f.claims_with("x-extra", json!({"a": [1, 2]})),
            Expect::SeeOther,
        ),
        // Shape: dots and base64.
        bad("extra dot at the end", format!("{valid}.")),
        bad("extra dot at the start", format!(".{valid}")),
        bad("four parts", format!("{vh}.{vp}.{vs}.{vs}")),
        bad("double dot", format!("{vh}..{vp}.{vs}")),
        bad("five parts (JWE shape)", format!("{vh}.{vp}.{vs}.{vp}.{vs}")),
        bad("not a JWS", "not-a-jws"),
        bad("base64 padding on the signature", {
            let sig = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(&vs).unwrap());
            format!("{vh}.{vp}.{sig}")
        }),
        bad("base64 padding on the header, signed as sent", {
            let h = URL_SAFE.encode(serde_json::to_vec(&header).unwrap());
            assert!(h.ends_with('='), "{h}");
            signed_parts(&h, &vp, Alg::Hs256, secret)
        }),
        bad("base64 padding on the payload, signed as sent", {
            let claims = (0..4)
                .map(|n| set(claims.clone(), "x", json!("x".repeat(n))))
                .find(|c| serde_json::to_vec(c).unwrap().len() % 3 != 0)
                .unwrap();
            let p = URL_SAFE.encode(serde_json::to_vec(&claims).unwrap());
            signed_parts(&vh, &p, Alg::Hs256, secret)
        }),
        bad("standard base64 (+/) in the signature", {
            let [h, p, s] = parts(&with_url_safe_signature(f));
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/"))
        }),
        bad("standard base64 (+/) in the payload, signed as sent", {
            let claims = url_safe_payload_claims(f);
            let p = STANDARD_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
            signed_parts(&vh, &p, Alg::Hs256, secret)
        }),
        bad(
            "invalid base64 character in the payload",
            format!("{vh}.{}!.{vs}", &vp[..vp.len() - 1]),
        ),
        // Not an object, not JSON.
        bad("claims: array", jws(&header, &json!([1, 2]))),
        bad("claims: number", jws(&header, &json!(42))),
        bad("claims: null", jws(&header, &json!(null))),
        bad("claims: string", jws(&header, &json!("claims"))),
        bad(
            "claims: not JSON",
            signed_parts(&vh, &URL_SAFE_NO_PAD.encode("op=1&seq=1"), Alg::Hs256, secret),
        ),
        bad(
            "claims: not UTF-8",
            signed_parts(&vh, &URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x7b]), Alg::Hs256, secret),
        ),
        bad(
            "claims: trailing garbage after the object",
            signed_parts(
                &vh,
                &URL_SAFE_NO_PAD.encode(format!("{}x", serde_json::to_string(&claims).unwrap())),
                Alg::Hs256,
                secret,
            ),
        ),
        bad("header: array", jws(&json!(["HS256"]), &claims)),
        bad("header: null", jws(&json!(null), &claims)),
        bad(
            "header: not JSON",
            signed_parts(&URL_SAFE_NO_PAD.encode("alg=HS256"), &vp, Alg::Hs256, secret),
        ),
        // Header fields.
        row(
            "typ: odd string (not checked)",
            f.header_with("typ", json!("at+jwt")),
            Expect::SeeOther,
        ),
        row(
            "typ: missing (not checked)",
            jws(&without(header.clone(), "typ"), &claims),
            Expect::SeeOther,
        ),
        bad("typ: number", f.header_with("typ", json!(1))),
        bad("kid: missing", jws(&without(header.clone(), "kid"), &claims)),
        bad("kid: unknown", f.header_with("kid", json!("another-key"))),
        bad("kid: empty", f.header_with("kid", json!(""))),
        bad("kid: null", f.header_with("kid", json!(null))),
        bad("kid: number", f.header_with("kid", json!(7))),
        bad("kid: array of the right kid", f.header_with("kid", json!([f.kid]))),
        bad("kid: huge, under the limit", f.header_with("kid", json!("k".repeat(500)))),
        bad("kid: huge, over the limit", f.header_with("kid", json!("k".repeat(2000)))),
        bad(
            "kid: right kid with trailing space",
            f.header_with("kid", json!(format!("{} ", f.kid))),
        ),
        bad("crit: [\"exp\"]", f.header_with("crit", json!(["exp"]))),
        bad("crit: unknown extension", f.header_with("crit", json!(["x-custom"]))),
        bad("crit: empty", f.header_with("crit", json!([]))),
        bad("crit: not an array", f.header_with("crit", json!("b64"))),
        row(
            "crit: [\"b64\"] with b64 true (understood)",
            jws(
                &set(set(header.clone(), "crit", json!(["b64"])), "b64", json!(true)),
                &claims,
            ),
            Expect::SeeOther,
        ),
        bad(
            "b64: false with crit (RFC 7797)",
            jws(
                &set(set(header.clone(), "crit", json!(["b64"])), "b64", json!(false)),
                &claims,
            ),
        ),
        bad("b64: false without crit", f.header_with("b64", json!(false))),
        bad(
            "embedded jwk, signed with it",
            signed_parts(
                &b64(&set(
                    header.clone(),
                    "jwk",
                    json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(OTHER_SECRET)}),
                )),
                &vp,
                Alg::Hs256,
                OTHER_SECRET,
            ),
        ),
        // Splices of valid states.
        bad(
            "signature of another valid state spliced",
            format!("{vh}.{vp}.{os2}"),
        ),
        bad(
            "claims of another valid state, this signature",
            format!("{vh}.{op2}.{vs}"),
        ),
        bad(
            "header of the issued state on hand-made claims and signature",
            format!("{h}.{vp}.{os2}"),
        ),
        bad("issued header with hand-made signature", format!("{h}.{p}.{vs}")),
        bad("parts swapped", format!("{vp}.{vh}.{vs}")),
        bad("claims appended to the header", format!("{vh}{vp}.{vp}.{vs}")),
        // The HTTP layer and raw bytes.
        raw(
            "raw: non-UTF-8 bytes in the query",
            b"\xff\xfe\xfd",
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: UTF-8 non-ASCII in the query",
            "\u{e9}t\u{e9}".as_bytes(),
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: NUL byte in the query",
            b"a\x00b",
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: control byte in the query",
            b"a\x01b",
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: DEL in the query",
            b"a\x7fb",
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: space inside the query",
            format!("{valid} x").as_bytes(),
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw(
            "raw: tab after the state",
            format!("{valid}\t").as_bytes(),
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        raw("raw: double quote", b"a\"b", Expect::HttpLayer(StatusCode::BAD_REQUEST)),
        raw("raw: braces", b"a{b}", Expect::Problem(StatusCode::BAD_REQUEST, INVALID)),
        raw("raw: backslash", b"a\\b", Expect::Problem(StatusCode::BAD_REQUEST, INVALID)),
        raw("raw: caret", b"a^b", Expect::Problem(StatusCode::BAD_REQUEST, INVALID)),
        raw("raw: pipe", b"a|b", Expect::Problem(StatusCode::BAD_REQUEST, INVALID)),
        raw("raw: backtick", b"a`b", Expect::Problem(StatusCode::BAD_REQUEST, INVALID)),
        raw("raw: angle brackets", b"a<b>", Expect::HttpLayer(StatusCode::BAD_REQUEST)),
        raw(
            "raw: percent sign not followed by hex",
            format!("%zz{valid}").as_bytes(),
            Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
        ),
        raw(
            "raw: fragment after a valid state (dropped by actix-http)",
            format!("{valid}#fragment").as_bytes(),
            Expect::SeeOther,
        ),
        raw(
            "raw: fragment after garbage",
            b"garbage#fragment",
            Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
        ),
        Case {
            name: "raw: absolute-form target, garbage query".into(),
            method: Method::GET,
            query: Query::RawTarget(b"http://127.0.0.1/async-response?garbage".to_vec()),
            expect: Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
        },
        raw(
            "raw: query of 64 KiB",
            &vec![b'a'; 64 * 1024],
            Expect::HttpLayer(StatusCode::BAD_REQUEST),
        ),
        Case {
            name: "raw: request head over 128 KiB".into(),
            method: Method::GET,
            query: Query::Raw(vec![b'a'; 130 * 1024]),
            expect: Expect::HttpLayer(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        },
        // Methods.
        with_method(Method::HEAD, bad("bad state", "not-a-jws")),
        with_method(
            Method::HEAD,
            Case {
                name: "no query".into(),
                method: Method::HEAD,
                query: Query::Absent,
                expect: Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
            },
        ),
        with_method(
            Method::HEAD,
            row(
                "expired state",
                jws(
                    &header,
                    &json!({"op": f.op, "seq": 1, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": AUD}),
                ),
                Expect::Problem(StatusCode::GONE, EXPIRED),
            ),
        ),
        with_method(
            Method::HEAD,
            row(
                "too early",
                jws(&header, &set(set(claims.clone(), "nbf", json!(now + 3600)), "exp", json!(now + 7200))),
                Expect::Problem(StatusCode::SERVICE_UNAVAILABLE, TOO_EARLY),
            ),
        ),
        with_method(Method::HEAD, row("valid state", valid.clone(), Expect::SeeOther)),
        with_method(Method::DELETE, bad("bad state", "not-a-jws")),
        with_method(Method::DELETE, bad("alg none", format!("{}.{vp}.", alg_header("none")))),
        with_method(
            Method::DELETE,
            bad("other secret", signed_parts(&vh, &vp, Alg::Hs256, OTHER_SECRET)),
        ),
        with_method(
            Method::DELETE,
            Case {
                name: "no query".into(),
                method: Method::DELETE,
                query: Query::Absent,
                expect: Expect::Problem(StatusCode::BAD_REQUEST, INVALID),
            },
        ),
        with_method(
            Method::DELETE,
            row(
                "expired state",
                jws(
                    &header,
                    &json!({"op": f.op, "seq": 1, "nbf": now - 10, "iat": now - 10, "exp": now - 1, "aud": AUD}),
                ),
                Expect::Problem(StatusCode::GONE, EXPIRED),
            ),
        ),
        with_method(Method::PUT, row("bad state", "not-a-jws", Expect::MethodNotAllowed)),
        with_method(
            Method::PUT,
            row("valid state (nothing cancelled)", valid.clone(), Expect::MethodNotAllowed),
        ),
        with_method(Method::POST, row("valid state", valid.clone(), Expect::MethodNotAllowed)),
        with_method(Method::PATCH, row("bad state", "not-a-jws", Expect::MethodNotAllowed)),
        with_method(Method::OPTIONS, row("valid state", valid.clone(), Expect::MethodNotAllowed)),
        with_method(Method::TRACE, row("no state", "", Expect::MethodNotAllowed)),
        with_method(
            Method::from_bytes(b"BREW").unwrap(),
            row("valid state", valid.clone(), Expect::MethodNotAllowed),
        ),
        // Still valid after everything above: nothing was cancelled.
        row("control: valid state, again", valid, Expect::SeeOther),
    ];
    // Truncated to every length (the state the server issued).
    for len in 0..issued.len() {
        rows.push(bad(
            format!("truncated to {len} of {} bytes", issued.len()),
            issued[..len].to_owned(),
        ));
    }
    rows
}

/// Sends `target` with `method` over a fresh TCP connection and reads the
/// answer until the server closes.
async fn raw_request(server: &TestServer, method: &Method, target: &[u8]) -> reqwest::Response {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} ").into_bytes();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    // The server may answer and close before it has read a huge request.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await
        .expect("the server answers a raw request within 10 s");
    parse_answer(&answer)
}

/// An HTTP/1.1 answer (as actix-web writes them: a content length, or no
/// body) as a reqwest response.
fn parse_answer(answer: &[u8]) -> reqwest::Response {
    let text_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(answer)));
    let head = std::str::from_utf8(&answer[..text_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut builder = http::Response::builder().status(status);
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        builder = builder.header(name.trim(), value.trim());
    }
    let body = answer[text_end + 4..].to_vec();
    reqwest::Response::from(builder.body(body).unwrap())
}

async fn send(server: &TestServer, case: &Case) -> Result<reqwest::Response, reqwest::Error> {
    match &case.query {
        Query::Raw(bytes) => {
            let mut target = format!("{POLL}?").into_bytes();
            target.extend_from_slice(bytes);
            Ok(raw_request(server, &case.method, &target).await)
        }
        Query::RawTarget(target) => Ok(raw_request(server, &case.method, target).await),
        Query::Absent | Query::Text(_) => {
            let url = match &case.query {
                Query::Text(query) => {
                    let url = format!("{}{POLL}?{query}", server.base);
                    let parsed = reqwest::Url::parse(&url).unwrap();
                    assert_eq!(
                        parsed.query(),
                        Some(query.as_str()),
                        "reqwest would not send this query as written"
                    );
                    url
                }
                _ => server.url(POLL),
            };
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(
                    if matches!(case.expect, Expect::Held) {
                        1
                    } else {
                        30
                    },
                ))
                .build()
                .unwrap();
            client.request(case.method.clone(), url).send().await
        }
    }
}

/// Sends one row and checks its answer; panics (with the reason) on a
/// mismatch.
async fn check(server: &TestServer, case: &Case) {
    let res = send(server, case).await;
    if let Expect::Held = case.expect {
        let error = res.expect_err("a held request is not answered");
        assert!(error.is_timeout(), "{error}");
        return;
    }
    let res = res.unwrap();
    let head = case.method == Method::HEAD;
    match case.expect {
        Expect::Problem(status, problem_type) if head => {
            assert_eq!(res.status(), status);
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert!(res.bytes().await.unwrap().is_empty(), "HEAD has no body");
            let _ = problem_type;
        }
        Expect::Problem(status, problem_type) => {
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(res.headers().contains_key(header::RETRY_AFTER));
            }
            problem(res, status, problem_type).await;
        }
        Expect::MethodNotAllowed => {
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(res.headers()[header::ALLOW], "GET, HEAD, DELETE");
            if case.method != Method::HEAD {
                problem(res, StatusCode::METHOD_NOT_ALLOWED, NOT_ALLOWED).await;
            }
        }
        Expect::SeeOther => {
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            let location = res.headers()[header::LOCATION].to_str().unwrap();
            assert!(location.starts_with(&format!("{POLL}?")), "{location}");
        }
        Expect::HttpLayer(status) => {
            assert_eq!(res.status(), status);
            assert!(
                res.headers().get(header::CONTENT_TYPE).is_none(),
                "answered by actix-http itself, not by the app"
            );
            assert!(res.bytes().await.unwrap().is_empty());
        }
        Expect::Held => unreachable!(),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[actix_web::test]
async fn malformed_poll_requests_get_the_right_problem() {
    let server = TestServer::start().await;
    let poll_url = begin(&server, "/gated", &json!(null)).await;
    let issued = poll_url.split_once('?').unwrap().1.to_owned();
    let [h, p, _] = parts(&issued);
    let issued_header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h).unwrap()).unwrap();
    let issued_claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
    let fixture = Fixture {
        kid: issued_header["kid"].as_str().unwrap().to_owned(),
        op: issued_claims["op"].as_str().unwrap().to_owned(),
        issued,
        now: unix_now(),
    };

    let cases = cases(&fixture);
    let names: std::collections::HashSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "row names are unique");
    let mut failures = String::new();
    let mut failed = 0;
    for case in &cases {
        let outcome = AssertUnwindSafe(check(&server, case)).catch_unwind().await;
        if let Err(payload) = outcome {
            let mut message = panic_message(&*payload);
            if message.len() > 400 {
                let mut end = 400;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push_str("...");
            }
            let _ = writeln!(failures, "  {}: {message}", case.name);
            failed += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{failed} of {} rows failed:\n{failures}",
        cases.len()
    );

    // The server still runs operations from begin to result.
    server.gate.open();
    let res = follow(&poll_url, &server.base, 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    let body = json!({"after": "the battery", "rows": cases.len()});
    let res = client()
        .post(server.url("/echo"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = follow(
        &server.url(res.headers()[header::LOCATION].to_str().unwrap()),
        &server.base,
        10,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), body);
    server.stop().await;
}
