//! End to end in a real browser: headless Chromium loads the quickstart page,
//! submits its form, and the page's plain `fetch()` follows the `303`s to the
//! report (or to the handler's `422`). Driven by Python Selenium with Debian's
//! chromium and chromedriver; `.ci/install-browser.sh` installs them.
//!
//! Missing prerequisites fail the test with what to install; it never skips.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration, time::Instant};

use async_op::{EarlyPoll, MemoryStore};
use async_op_tests::{TestServer, ops_builder};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "run `bash .ci/install-browser.sh` (as root), or: \
    apt-get install -y chromium chromium-driver && python3 -m pip install selenium";

/// Whatever of chromium, chromedriver, python3 and selenium is missing.
async fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !std::path::Path::new(path).exists() {
            missing.push(format!("{path} (Debian package `{package}`)"));
        }
    }
    let selenium = tokio::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .stdin(Stdio::null())
        .output()
        .await;
    match selenium {
        Err(error) => missing.push(format!("python3 ({error})")),
        Ok(output) if !output.status.success() => {
            missing.push("the Python package `selenium` (pip install selenium)".into());
        }
        Ok(_) => {}
    }
    missing
}

/// Where the page is saved once it shows the report.
fn screenshot_path() -> PathBuf {
    std::env::var_os("ASYNC_OP_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("quickstart-page.png"))
}

#[actix_web::test]
async fn the_quickstart_page_shows_the_report_and_the_failure_in_chromium() {
    let missing = missing_prerequisites().await;
    assert!(
        missing.is_empty(),
        "the browser test needs {}: {INSTALL}",
        missing.join(", ")
    );

    // As the quickstart binary serves it: browsers follow a 303 at once, so
    // early polls are held, and long polling answers when the report is done.
    let store = MemoryStore::new();
    let server = TestServer::start_with(
        ops_builder(&store)
            .early_poll(EarlyPoll::Hold)
            .long_poll(Duration::from_secs(5)),
        store,
    )
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/browser_report.py");
    let screenshot = screenshot_path();
    let started = Instant::now();
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&server.base)
        .arg(&screenshot)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // A bound on the whole browser run, so that a wedged browser fails the
    // test instead of hanging it; the cases themselves take about 3 s.
    let output = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .expect("the browser run finished within 180 s")
        .expect("python3 runs");
    eprintln!("browser run: {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser driver failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let outcomes: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    for outcome in &outcomes {
        eprintln!(
            "{}: {:?}, redirects {}, console {}",
            outcome["case"], outcome["status_text"], outcome["hops"], outcome["console"]
        );
    }
    let case = |name: &str| {
        outcomes
            .iter()
            .find(|outcome| outcome["case"] == name)
            .unwrap_or_else(|| panic!("no {name} case in:\n{stdout}\n{stderr}"))
    };

    let report = case("report");
    assert_eq!(report["status"], "200", "{report:#}");
    assert!(
        report["status_text"]
            .as_str()
            .unwrap()
            .starts_with("200 after"),
        "{report:#}"
    );
    let result = report["result"].as_str().unwrap();
    assert!(result.contains(r#""rows": 2000"#), "{report:#}");
    assert!(result.contains(r#""seconds": 2"#), "{report:#}");
    // The browser itself followed the 303s; the page saw only the result.
    assert_redirected(report);
    eprintln!("page with the report: {}", screenshot.display());

    let failed = case("fail");
    assert_eq!(failed["status"], "422", "{failed:#}");
    let result = failed["result"].as_str().unwrap();
    assert!(
        result.contains("urn:quickstart:problem:report-failed"),
        "{failed:#}"
    );
    assert!(result.contains(r#""status": 422"#), "{failed:#}");
    assert_redirected(failed);

    server.stop().await;
}

/// The browser followed at least one redirect for the case, all of them 303.
fn assert_redirected(outcome: &Value) {
    let hops = outcome["hops"].as_array().unwrap();
    assert!(
        !hops.is_empty() && hops.iter().all(|status| status == 303),
        "{outcome:#}"
    );
}
