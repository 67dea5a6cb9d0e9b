//! Redis for the tests: which Redis to use, private `redis-server`s that a
//! test may kill and restart, stores with key prefixes of their own, and the
//! servers ("nodes") of a cluster sharing one Redis.
//!
//! The Redis the tests share is, in this order: `ASYNC_OP_TEST_REDIS_URL`
//! if set; the Redis at 127.0.0.1:6379 if it answers `PING`; a private
//! `redis-server` on a free port, started for this test process and stopped
//! with it. Without any of them the tests fail and say to install
//! `redis-server`; none is skipped. Every test uses a prefix of its own, so
//! tests run in parallel without meeting.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use async_op::{
    AsyncOps, AsyncOpsBuilder, OperationId,
    store::{RedisStore, redis::DEFAULT_LEASE},
};

use crate::SECRET;

/// The variable that names the Redis the tests use.
pub const TEST_REDIS_URL: &str = "ASYNC_OP_TEST_REDIS_URL";

const INSTALL: &str = "the Redis tests need a Redis: install redis-server \
    (`apt-get install redis-server`), run one on 127.0.0.1:6379, \
    or set ASYNC_OP_TEST_REDIS_URL";

/// The URL of the Redis the tests share (see the module docs).
pub fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(TEST_REDIS_URL) {
            if !url.is_empty() {
                return url;
            }
        }
        let local: SocketAddr = ([127, 0, 0, 1], 6379).into();
        if ping(local) {
            return "redis://127.0.0.1:6379".to_owned();
        }
        start_for_this_process()
    })
}

/// A key prefix that no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("async-op-test:{test}:{}", OperationId::random())
}

/// Whether a Redis answers `PING` at `addr`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server_args(port: u16) -> Vec<String> {
    let dir = std::env::temp_dir();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn wait_until_ready(port: u16, child: &mut Child) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(addr) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server on port {port} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 s");
}

/// Starts a `redis-server` that lives as long as this test process: a
/// shell holds it and stops it when our end of its stdin closes, which the
/// operating system does when the process exits, however it exits.
fn start_for_this_process() -> String {
    static HOLDER: OnceLock<Child> = OnceLock::new();
    let port = free_port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"command -v redis-server >/dev/null || exit 127; redis-server "$@" >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid; wait $pid"#)
        .arg("sh")
        .args(redis_server_args(port))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run sh: {error}; {INSTALL}"));
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("no Redis ({status}): {INSTALL}");
    }
    wait_until_ready(port, &mut child);
    eprintln!("async-op tests: started a private redis-server on port {port}");
    let _ = HOLDER.set(child);
    format!("redis://127.0.0.1:{port}")
}

/// A `redis-server` of one test's own, on a free port, without persistence,
/// that the test may kill and restart. Killed when dropped.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one; fails the test, saying what to install, without
    /// `redis-server`.
    pub fn start() -> Self {
        let port = free_port();
        let mut redis = Self { port, child: None };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(redis_server_args(self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start redis-server ({error}): {INSTALL}"));
        wait_until_ready(self.port, &mut child);
        self.child = Some(child);
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store on `url` with `prefix` and `lease`.
pub async fn redis_store(url: &str, prefix: &str, lease: Duration) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .lease(lease)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test Redis: {error}; {INSTALL}"))
}

/// Two stores on the shared Redis with one prefix of their own: two
/// instances of an app, for the shared store suite.
pub async fn store_pair() -> (RedisStore, RedisStore) {
    let prefix = unique_prefix("suite");
    let a = redis_store(redis_url(), &prefix, DEFAULT_LEASE).await;
    let b = redis_store(redis_url(), &prefix, DEFAULT_LEASE).await;
    (a, b)
}

/// The test secret, `Retry-After: 1`, no long polling, and `store`.
pub fn cluster_builder(store: RedisStore) -> AsyncOpsBuilder {
    AsyncOps::builder()
        .secret(SECRET)
        .retry_after(Duration::from_secs(1))
        .long_poll(Duration::ZERO)
        .store(store)
}

/// One instance of a cluster.
pub use crate::Node;
