//! The `quickstart` app: `POST /reports` as an asynchronous operation.
//!
//! The request is JSON `{"seconds": <number>, "fail": <bool, optional>}`. The
//! handler sleeps that long, then answers `200` with a JSON report that
//! includes the input, or, with `"fail": true`, its own `422` problem.
//! A malformed body gets actix-web's `400` at once and starts nothing.
//!
//! `GET /` serves a page that starts a report from a form and shows the
//! result with a plain `fetch()`.

use std::time::Duration;

use actix_web::{HttpResponse, ResponseError, http::StatusCode, web};
use async_op::{async_operation, error::problem_response};
use serde::{Deserialize, Deserializer, Serialize, de};

/// The longest report the example accepts, in seconds.
pub const MAX_SECONDS: f64 = 3600.0;

/// What a client asks for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ReportRequest {
    /// How long the report takes, in seconds (0 to 3600).
    #[serde(deserialize_with = "seconds")]
    pub seconds: f64,
    /// Whether the report fails (with a 422 of the handler's own).
    #[serde(default)]
    pub fail: bool,
}

/// Validated while the body is extracted, so that a bad number is a `400`
/// on the begin request and starts nothing.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && (0.0..=MAX_SECONDS).contains(&value) {
        Ok(value)
    } else {
        Err(de::Error::custom(format_args!(
            "seconds must be a number from 0 to {MAX_SECONDS}"
        )))
    }
}

/// The finished report.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Report {
    /// The request, as given.
    pub request: ReportRequest,
    /// Some result rows.
    pub rows: u64,
    /// A line of text.
    pub summary: String,
}

impl PartialEq for ReportRequest {
    fn eq(&self, other: &Self) -> bool {
        self.seconds == other.seconds && self.fail == other.fail
    }
}

/// The report's own error: a `422` problem.
#[derive(Debug, thiserror::Error)]
#[error("the report failed as requested (\"fail\": true)")]
pub struct ReportFailed;

impl ResponseError for ReportFailed {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNPROCESSABLE_ENTITY
    }

    fn error_response(&self) -> HttpResponse {
        problem_response(
            self.status_code(),
            "urn:quickstart:problem:report-failed",
            "Report failed",
            &self.to_string(),
        )
    }
}

/// `POST /reports`: an ordinary handler, made asynchronous by the attribute.
#[async_operation(post, "/reports")]
pub async fn create_report(
    request: web::Json<ReportRequest>,
) -> Result<web::Json<Report>, ReportFailed> {
    let request = request.into_inner();
    actix_rt::time::sleep(Duration::from_secs_f64(request.seconds)).await;
    if request.fail {
        return Err(ReportFailed);
    }
    let rows = (request.seconds * 1000.0) as u64;
    Ok(web::Json(Report {
        summary: format!("{rows} rows in {} s", request.seconds),
        rows,
        request,
    }))
}

/// `GET /`: a page that starts a report with a form and shows the result,
/// using a plain `fetch()`.
#[actix_web::get("/")]
async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("static/index.html"))
}

/// Registers the example's endpoints on an app.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(create_report).service(index);
}
