//! One instance of a cluster as a process of its own, so that a test can
//! kill it with SIGKILL, as a crash would: the test app on an ephemeral
//! loopback port with a Redis store. Prints `LISTENING <base URL>` once it
//! serves, then runs until killed.
//!
//! Configured by the environment:
//! - `ASYNC_OP_REDIS_URL` set: the store comes from
//!   `AsyncOpsBuilder::store_from_env` (default prefix and lease) and the
//!   rest from `with_env` (`ASYNC_OP_SECRET`, ...): the path an app takes;
//! - otherwise `ASYNC_OP_TEST_REDIS_URL`, `NODE_PREFIX`, `NODE_LEASE_MS` and
//!   `NODE_LONG_POLL` (seconds) configure it directly, with the test secret.

use std::{process::ExitCode, time::Duration};

use async_op::{AsyncOps, store::RedisStore};
use async_op_tests::redis::{Node, TEST_REDIS_URL, cluster_builder};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn number(name: &str, default: u64) -> u64 {
    var(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[actix_web::main]
async fn main() -> ExitCode {
    let builder = if var("ASYNC_OP_REDIS_URL").is_some() {
        let from_env = async { AsyncOps::builder().with_env()?.store_from_env().await };
        match from_env.await {
            Ok(builder) => builder,
            Err(error) => {
                eprintln!("cluster node: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        let Some(url) = var(TEST_REDIS_URL) else {
            eprintln!("cluster node: set ASYNC_OP_REDIS_URL or {TEST_REDIS_URL}");
            return ExitCode::from(2);
        };
        let store = RedisStore::builder(url)
            .prefix(var("NODE_PREFIX").unwrap_or_else(|| "async-op".into()))
            .lease(Duration::from_millis(number("NODE_LEASE_MS", 10_000)))
            .connect()
            .await;
        match store {
            Ok(store) => {
                cluster_builder(store).long_poll(Duration::from_secs(number("NODE_LONG_POLL", 0)))
            }
            Err(error) => {
                eprintln!("cluster node: {error}");
                return ExitCode::from(2);
            }
        }
    };
    let node = Node::start(builder).await;
    println!("LISTENING {}", node.base);
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
