use std::fmt;

use actix_web::{HttpRequest, ResponseError, web};
use async_op::async_operation;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    count: u64,
}

#[derive(Serialize)]
struct Output {
    id: u32,
    total: u64,
    method: String,
}

struct Factor(u64);

#[derive(Debug)]
struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too large")
    }
}

impl ResponseError for TooLarge {}

/// Several extractors and a `Result` whose error is a `ResponseError`.
#[async_operation(post, "/items/{id}")]
async fn a(
    input: web::Json<Input>,
    id: web::Path<u32>,
    req: HttpRequest,
    factor: web::Data<Factor>,
) -> Result<web::Json<Output>, TooLarge> {
    let total = input.count.checked_mul(factor.0).ok_or(TooLarge)?;
    Ok(web::Json(Output {
        id: id.into_inner(),
        total,
        method: req.method().to_string(),
    }))
}

/// Every argument given.
#[async_operation(put, "/x", retry_after = 1, retention = "10m", long_poll = 5, early_poll = "hold", name = "x")]
async fn b() -> &'static str {
    "done"
}

/// Only the path: `post` and the middleware's defaults.
#[async_operation("/y")]
async fn c() -> String {
    String::from("done")
}

fn main() {
    let _app = actix_web::App::new().service(a).service(b).service(c);
}
