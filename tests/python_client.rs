//! An off-the-shelf client drives an operation: Python `requests` with a
//! urllib3 `Retry` that honours `Retry-After` on 503. No custom polling code.

#![allow(missing_docs, clippy::unwrap_used)]

use async_op_tests::TestServer;
use serde_json::{Value, json};

#[actix_web::test]
async fn python_requests_with_urllib3_retry_gets_the_result() {
    let server = TestServer::start().await;
    let (stdout, stderr) =
        async_op_tests::run_python("poll_with_requests.py", &[&server.base, "1.5"]).await;
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("200"), "{stdout}");
    let report: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(report["request"], json!({"seconds": 1.5, "fail": false}));
    assert_eq!(report["rows"], 1500);
    // requests saw the begin's 303 and at least one more 303 on the way.
    let hops: Vec<u16> = serde_json::from_str(stderr.trim()).unwrap();
    assert!(
        hops.len() >= 2 && hops.iter().all(|s| *s == 303),
        "{hops:?}"
    );
    server.stop().await;
}
