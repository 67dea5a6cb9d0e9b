//! In-process measurements: the memory of pending operations in a
//! `MemoryStore` (figure 4), and timings of the poll path's parts with
//! prototypes of faster ones (the profiling notes of BENCHMARKS.md).

use std::{hint::black_box, time::Instant};

use actix_web::{
    HttpResponse,
    http::{
        StatusCode,
        header::{self, HeaderValue},
    },
};
use async_op::{
    MemoryStore, OperationId, OperationStore as _,
    state::{State, StateCodec},
    store::NewOperation,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures_util::FutureExt as _;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::{flag, number_flag, serve::SECRET, sys};

const POLL_PATH: &str = "/async-response";
const AUDIENCE: &str = "async-op";

/// A pending operation as the benchmark servers register them.
const RUNNING: NewOperation = NewOperation {
    retry_after: 2,
    retention: 3600,
    long_poll: 20,
    hold_early: false,
};

fn text<E: std::fmt::Display>(error: E) -> String {
    error.to_string()
}

fn current_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(text)
}

/// `mem-store [--ops N]`: the RSS of this process before and after `N`
/// pending operations are registered in a `MemoryStore` (results excluded:
/// none has ended). Prints one JSON object.
pub(crate) fn mem_store_main(args: &[String]) -> Result<(), String> {
    let ops: usize = number_flag(args, "--ops", 100_000)?;
    current_thread()?.block_on(async move {
        let store = MemoryStore::new();
        // Warm up what is allocated once (the random generator, the map's
        // shards) with one operation, which is counted below as well.
        store
            .create(OperationId::random(), RUNNING)
            .await
            .map_err(text)?;
        let before = sys::rss_bytes();
        let mut steps = Vec::new();
        for done in 1..ops {
            store
                .create(OperationId::random(), RUNNING)
                .await
                .map_err(text)?;
            if (done + 1) % (ops / 4).max(1) == 0 {
                steps.push(serde_json::json!({
                    "operations": done + 1,
                    "rss_bytes": sys::rss_bytes(),
                }));
            }
        }
        let after = sys::rss_bytes();
        let line = serde_json::json!({
            "operations": store.len(),
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "bytes_per_operation": (after.saturating_sub(before)) as f64 / (ops.max(2) - 1) as f64,
            "steps": steps,
        });
        println!("{line}");
        Ok(())
    })
}

type HmacSha256 = Hmac<Sha256>;

/// The claims as the library signs them (same fields, same order).
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

/// The claims as a faster verifier reads them: borrowed, one pass.
#[derive(Deserialize)]
struct ReadClaims<'a> {
    op: OperationId,
    seq: u64,
    nbf: u64,
    iat: u64,
    exp: u64,
    #[serde(borrow)]
    aud: &'a str,
    #[serde(default)]
    hold: bool,
    #[serde(default, borrow)]
    sub: Option<&'a str>,
}

/// A prototype of a faster HS256 state codec: the header segment serialized
/// once, the HMAC keyed once (its inner and outer pads computed once and
/// cloned per use), the claims serialized straight into the `Location`
/// buffer, and verification that parses no header when the header segment
/// is byte-for-byte the one this codec issues.
struct FastCodec {
    header_segment: String,
    mac: HmacSha256,
}

impl FastCodec {
    fn new(library_token: &str) -> Result<Self, String> {
        let header_segment = library_token
            .split('.')
            .next()
            .ok_or("no header segment")?
            .to_owned();
        let mac = HmacSha256::new_from_slice(SECRET.as_bytes()).map_err(text)?;
        Ok(Self {
            header_segment,
            mac,
        })
    }

    /// `<poll path>?<state>` in one allocation.
    fn sign_location(&self, state: &State) -> Result<String, String> {
        let claims = SignedClaims {
            op: state.op,
            seq: state.seq,
            nbf: state.nbf,
            iat: state.iat,
            exp: state.exp,
            aud: AUDIENCE,
            hold: state.hold,
            sub: state.sub.as_deref(),
        };
        let mut json = [0u8; 384];
        let json_len = {
            let mut cursor = std::io::Cursor::new(&mut json[..]);
            serde_json::to_writer(&mut cursor, &claims).map_err(text)?;
            usize::try_from(cursor.position()).map_err(text)?
        };
        let mut out = String::with_capacity(POLL_PATH.len() + 1 + 384);
        out.push_str(POLL_PATH);
        out.push('?');
        let token_start = out.len();
        out.push_str(&self.header_segment);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&json[..json_len], &mut out);
        let mut mac = self.mac.clone();
        mac.update(&out.as_bytes()[token_start..]);
        let signature = mac.finalize().into_bytes();
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }

    /// Verifies like the library does (signature, `aud`, `exp` with no
    /// leeway, `iat`, `seq`, `nbf <= exp`); `None` where the library would
    /// refuse (or, for a header this codec does not issue, would parse it).
    fn verify(&self, token: &str, now: u64) -> Option<State> {
        let (message, signature) = token.rsplit_once('.')?;
        let (header, payload) = message.split_once('.')?;
        if header != self.header_segment {
            return None;
        }
        let mut expected = [0u8; 48];
        let n = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut expected)
            .ok()?;
        let mut mac = self.mac.clone();
        mac.update(message.as_bytes());
        mac.verify_slice(&expected[..n]).ok()?;
        let mut json = [0u8; 768];
        let n = URL_SAFE_NO_PAD.decode_slice(payload, &mut json).ok()?;
        let claims: ReadClaims<'_> = serde_json::from_slice(&json[..n]).ok()?;
        if claims.aud != AUDIENCE
            || claims.exp <= now
            || claims.iat > now + 5
            || claims.seq == 0
            || claims.nbf > claims.exp
        {
            return None;
        }
        Some(State {
            op: claims.op,
            seq: claims.seq,
            nbf: claims.nbf,
            iat: claims.iat,
            exp: claims.exp,
            hold: claims.hold,
            sub: claims.sub.map(str::to_owned),
        })
    }
}

/// Nanoseconds per call of `f`: the best of three runs of `iterations`
/// calls, after a warm-up of `iterations / 10 + 1` calls (so `f` runs
/// `3.1 × iterations + 1` times: what a callgrind count is divided by).
fn time(iterations: u64, f: &mut dyn FnMut()) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..iterations {
            f();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    (best * 10.0).round() / 10.0
}

/// The 303 the library builds for a poll, from a `Location` already built.
fn see_other(location: HeaderValue) -> HttpResponse {
    let mut res = HttpResponse::new(StatusCode::SEE_OTHER);
    let headers = res.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(0u32));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `micro [--iterations N] [--only name,name]`: timings of the poll path's
/// parts. Prints one JSON object (nanoseconds per call). `--only` runs just
/// the named parts: under `valgrind --tool=callgrind`, the difference of the
/// instruction counts of two runs with different `--iterations` gives the
/// instructions per call, free of the machine's noise.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let n: u64 = number_flag(args, "--iterations", 100_000)?;
    let codec = StateCodec::hs256(SECRET.as_bytes(), &[], AUDIENCE).map_err(text)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(text)?
        .as_secs();
    let state = State {
        op: OperationId::random(),
        seq: 2,
        nbf: now,
        iat: now,
        exp: now + 120,
        hold: false,
        sub: None,
    };
    let token = codec.sign(&state).map_err(text)?;
    let fast = FastCodec::new(&token)?;
    let fast_location = fast.sign_location(&state)?;
    let fast_token = fast_location
        .split_once('?')
        .map_or("", |(_, token)| token)
        .to_owned();
    // The prototype must agree with the library both ways.
    let agrees = codec.verify(&fast_token, now).ok().as_ref() == Some(&state)
        && fast.verify(&token, now).as_ref() == Some(&state)
        && fast_token == token;

    let claims_json = {
        let (_, rest) = token.split_once('.').ok_or("token")?;
        let (payload, _) = rest.split_once('.').ok_or("token")?;
        URL_SAFE_NO_PAD.decode(payload).map_err(text)?
    };
    let message = token.rsplit_once('.').map_or("", |(message, _)| message);
    let keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).map_err(text)?;

    let library_location = || {
        let token = codec.sign(&state).map_err(text)?;
        let mut location = String::with_capacity(POLL_PATH.len() + 1 + token.len());
        location.push_str(POLL_PATH);
        location.push('?');
        location.push_str(&token);
        HeaderValue::from_maybe_shared(Bytes::from(location)).map_err(text)
    };
    let location_value = library_location()?;

    let only: Vec<&str> = flag(args, "--only")
        .map(|list| list.split(',').collect())
        .unwrap_or_default();
    let mut results = serde_json::Map::new();
    results.insert("iterations".into(), n.into());
    results.insert("token_bytes".into(), token.len().into());
    results.insert("prototype_agrees_with_library".into(), agrees.into());
    let mut measure = |name: &str, f: &mut dyn FnMut()| {
        if only.is_empty() || only.contains(&name) {
            results.insert(name.to_owned(), time(n, f).into());
        }
    };
    measure("library_sign_ns", &mut || {
        let _ = black_box(codec.sign(&state));
    });
    measure("library_verify_ns", &mut || {
        let _ = black_box(codec.verify(&token, now));
    });
    measure("jwt_decode_header_ns", &mut || {
        let _ = black_box(jsonwebtoken::decode_header(&token));
    });
    measure("hmac_sha256_keyed_per_call_ns", &mut || {
        let _ = black_box(
            HmacSha256::new_from_slice(SECRET.as_bytes()).map(|mut mac| {
                mac.update(message.as_bytes());
                mac.finalize().into_bytes()
            }),
        );
    });
    measure("hmac_sha256_prekeyed_ns", &mut || {
        let mut mac = keyed.clone();
        mac.update(message.as_bytes());
        let _ = black_box(mac.finalize().into_bytes());
    });
    measure("claims_to_json_ns", &mut || {
        let _ = black_box(serde_json::to_vec(&SignedClaims {
            op: state.op,
            seq: state.seq,
            nbf: state.nbf,
            iat: state.iat,
            exp: state.exp,
            aud: AUDIENCE,
            hold: false,
            sub: None,
        }));
    });
    measure("claims_from_json_owned_ns", &mut || {
        let _ = black_box(serde_json::from_slice::<State>(&claims_json));
    });
    measure("claims_from_json_borrowed_ns", &mut || {
        let _ = black_box(serde_json::from_slice::<ReadClaims<'_>>(&claims_json).map(|c| c.seq));
    });
    measure("library_location_ns", &mut || {
        let _ = black_box(library_location());
    });
    measure("prototype_sign_location_ns", &mut || {
        let _ = black_box(fast.sign_location(&state).and_then(|location| {
            HeaderValue::from_maybe_shared(Bytes::from(location)).map_err(text)
        }));
    });
    measure("header_value_from_location_copy_ns", &mut || {
        let _ = black_box(HeaderValue::from_bytes(location_value.as_bytes()));
    });
    measure("prototype_verify_ns", &mut || {
        let _ = black_box(fast.verify(&token, now));
    });
    measure("response_303_build_ns", &mut || {
        let _ = black_box(see_other(location_value.clone()));
    });
    measure("operation_id_random_ns", &mut || {
        let _ = black_box(OperationId::random());
    });
    measure("system_time_now_ns", &mut || {
        let _ = black_box(std::time::SystemTime::now());
    });
    let wants = |name: &str| only.is_empty() || only.contains(&name);
    if wants("store_status_1_op_ns") || wants("store_status_100k_ops_ns") {
        let store = MemoryStore::new();
        let id = OperationId::random();
        let runtime = current_thread()?;
        runtime.block_on(store.create(id, RUNNING)).map_err(text)?;
        measure("store_status_1_op_ns", &mut || {
            let _ = black_box(store.status(id).now_or_never());
        });
        for _ in 0..100_000 {
            runtime
                .block_on(store.create(OperationId::random(), RUNNING))
                .map_err(text)?;
        }
        measure("store_status_100k_ops_ns", &mut || {
            let _ = black_box(store.status(id).now_or_never());
        });
    }
    let line = Value::Object(results);
    println!("{line}");
    Ok(())
}
