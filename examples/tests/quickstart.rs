//! The `quickstart` binary as a user runs it: configured by the environment,
//! refusing bad configuration at start-up with a clear message.

#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Stdio;

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

const QUICKSTART: &str = env!("CARGO_BIN_EXE_quickstart");

fn quickstart() -> Command {
    let mut command = Command::new(QUICKSTART);
    command
        .env_remove("ASYNC_OP_SECRET")
        .env("ASYNC_OP_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a configuration that must be refused; returns what it printed.
async fn refused(command: &mut Command) -> String {
    let output = command.output().await.unwrap();
    assert!(!output.status.success(), "started with a bad configuration");
    String::from_utf8(output.stderr).unwrap()
}

/// Starts the server and returns it with its base URL and what it logged
/// before it listened.
async fn started(command: &mut Command) -> (Child, String, String) {
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut log = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("quickstart listening on ") {
            let base = rest.split(' ').next().unwrap().to_owned();
            return (child, base, log);
        }
        log.push_str(&line);
        log.push('\n');
    }
    panic!("quickstart exited without listening");
}

#[tokio::test]
async fn a_short_secret_is_refused_at_start_up() {
    let stderr = refused(quickstart().env("ASYNC_OP_SECRET", "too short")).await;
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}

#[tokio::test]
async fn a_bad_variable_is_refused_naming_it() {
    let stderr = refused(
        quickstart()
            .env("ASYNC_OP_SECRET", "a secret that is long enough for hs256")
            .env("ASYNC_OP_RETRY_AFTER", "soon"),
    )
    .await;
    assert!(stderr.contains("ASYNC_OP_RETRY_AFTER"), "{stderr}");
    let stderr = refused(
        quickstart()
            .env("ASYNC_OP_SECRET", "a secret that is long enough for hs256")
            .env("ASYNC_OP_POLL_PATH", "no-slash"),
    )
    .await;
    assert!(stderr.contains("poll_path"), "{stderr}");
}

#[tokio::test]
async fn the_environment_configures_the_middleware() {
    let (mut child, base, _) = started(
        quickstart()
            .env("ASYNC_OP_SECRET", "a secret that is long enough for hs256")
            .env("ASYNC_OP_POLL_PATH", "/ops")
            .env("ASYNC_OP_RETRY_AFTER", "1")
            .env("ASYNC_OP_TTL", "10m"),
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .post(format!("{base}/reports"))
        .json(&serde_json::json!({"seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["retry-after"], "1");
    let location = res.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/ops?"), "{location}");
    // The begin shows in the Prometheus metrics.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"async_op_begins_total{handler="create_report"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("async_op_pending_operations"), "{metrics}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn without_a_secret_it_makes_one_and_says_so() {
    let mut command = quickstart();
    command.env("RUST_LOG", "info");
    let (mut child, _, log) = started(&mut command).await;
    child.kill().await.unwrap();
    assert!(log.contains("ASYNC_OP_SECRET is not set"), "{log}");
}
