//! `callback_client`: begins a report on the quickstart in callback mode,
//! receives the notification on a small actix-web server of its own, fetches
//! the result and prints it.
//!
//! The quickstart refuses callbacks until it is told which hosts it may call
//! (and loopback addresses besides), so run it with both allowed, then the
//! client, in two terminals:
//!
//! ```text
//! ASYNC_OP_CALLBACK_ALLOW=127.0.0.1 ASYNC_OP_CALLBACK_ALLOW_NETWORKS=127.0.0.0/8 cargo run --bin quickstart
//! cargo run --bin callback_client -- 3
//! ```
//!
//! The argument is the report's length in seconds (default 3). The client
//! reads `QUICKSTART_URL` (default `http://127.0.0.1:8080`) and listens for
//! the notification on `CALLBACK_BIND` (default `127.0.0.1:0`, a free port);
//! `CALLBACK_URL` overrides the public base URL it gives the server (default
//! `http://<bound address>/async-op-callback`), for when the server reaches
//! it under another name. It logs each step of the client (`RUST_LOG`,
//! default `info,async_op::client=debug`) and each notification it receives.
//! The exit status is 0 when the final answer is a `200`.

use std::{net::TcpListener, process::ExitCode, time::Duration};

use actix_web::{App, HttpServer, middleware::Logger};
use async_op::client::{CallbackReceiver, Client};
use async_op_examples::reports::{Report, ReportRequest};
use tracing_subscriber::EnvFilter;

#[actix_web::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,async_op::client=debug")),
        )
        .init();
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("callback_client: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one report; `Ok(true)` when it ended with a `200`.
async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let seconds: f64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("the report's length must be a number of seconds, not {arg:?}"))?,
        None => 3.0,
    };
    let quickstart =
        std::env::var("QUICKSTART_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let bind = std::env::var("CALLBACK_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());

    // The receiver, on a server of this client's own.
    let listener =
        TcpListener::bind(&bind).map_err(|error| format!("cannot listen on {bind}: {error}"))?;
    let public = match std::env::var("CALLBACK_URL") {
        Ok(url) => url,
        Err(_) => format!("http://{}/async-op-callback", listener.local_addr()?),
    };
    let receiver = CallbackReceiver::new(&public)?;
    let server = HttpServer::new({
        let receiver = receiver.clone();
        // The Logger shows each notification as it comes.
        move || {
            App::new()
                .wrap(Logger::new("notification: %r -> %s"))
                .service(receiver.service())
        }
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    println!("receiving callbacks under {}", receiver.base_url());

    // A report that runs `seconds` long, and time to spare for it.
    let client = Client::new(&quickstart)?
        .deadline(Duration::from_secs_f64(seconds + 120.0))
        .callback_timeout(Duration::from_secs_f64(seconds + 60.0));
    println!("POST {quickstart}/reports {{\"seconds\": {seconds}}}, asking for a callback");
    let response = client
        .post("/reports")
        .json(&ReportRequest {
            seconds,
            fail: false,
        })
        .callback(&receiver)
        .wait()
        .await?;
    println!(
        "{} from {} ({}; {} request(s) after the begin)",
        response.status(),
        response.url(),
        if response.notified() {
            "202 Accepted, notification received, result fetched"
        } else if response.polls() == 0 {
            "answered at once"
        } else {
            "no notification: the result was polled"
        },
        response.polls(),
    );
    handle.stop(true).await;

    let ok = response.status().as_u16() == 200;
    let response = response.error_for_status().await?;
    let report: Report = response.json().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ok)
}
