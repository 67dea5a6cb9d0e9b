//! The HTTP clients of the benchmarks: held polls timed against a shared
//! event (figure 3), the `Notify` baseline, the client side of 10,000 held
//! polls (figure 4), and counting clients with a callback receiver
//! (figure 6). Every loop is bounded in count and time.

use std::{
    collections::HashMap,
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use reqwest::{Client, StatusCode, header};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
};

use crate::{flag, number_flag, sys};

/// A client that does not follow redirects, bounded in time.
pub(crate) fn client() -> Result<Client, String> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(90))
        .build()
        .map_err(|error| format!("http client: {error}"))
}

fn text<E: std::fmt::Display>(error: E) -> String {
    error.to_string()
}

/// What `/stats` of a benchmark server says.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(crate) struct Stats {
    pub(crate) rss_bytes: u64,
    pub(crate) held: usize,
    pub(crate) pending: usize,
    pub(crate) generation: u64,
    pub(crate) bare_held: usize,
}

impl Stats {
    /// Requests held now: long polls, or bare requests waiting on the gate.
    pub(crate) fn holding(&self, bare: bool) -> usize {
        if bare { self.bare_held } else { self.held }
    }
}

pub(crate) async fn stats(client: &Client, base: &str) -> Result<Stats, String> {
    client
        .get(format!("{base}/stats"))
        .send()
        .await
        .map_err(text)?
        .json()
        .await
        .map_err(text)
}

/// Waits (checking every 10 ms, 60 s at most) until `/stats` satisfies
/// `condition`; returns the last stats.
pub(crate) async fn stats_until(
    client: &Client,
    base: &str,
    what: &str,
    condition: impl Fn(&Stats) -> bool,
) -> Result<Stats, String> {
    let mut last = stats(client, base).await?;
    for _ in 0..6000 {
        if condition(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        last = stats(client, base).await?;
    }
    Err(format!("timed out waiting for {what}; last stats {last:?}"))
}

fn location(res: &reqwest::Response) -> Result<String, String> {
    res.headers()
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("a {} without Location", res.status()))
}

fn retry_after(res: &reqwest::Response) -> Option<u64> {
    res.headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Begins an operation with `POST url` and returns the 303's `Location`.
pub(crate) async fn begin(client: &Client, url: &str) -> Result<String, String> {
    let res = client.post(url).send().await.map_err(text)?;
    if res.status() != StatusCode::SEE_OTHER {
        return Err(format!("begin {url}: {} instead of 303", res.status()));
    }
    location(&res)
}

/// Begins `n` operations at `url`, 64 at a time; returns their poll URLs.
pub(crate) async fn begin_many(
    client: &Client,
    base: &str,
    url: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    stream::iter(0..n)
        .map(|_| async move { begin(client, url).await.map(|loc| format!("{base}{loc}")) })
        .buffer_unordered(64)
        .try_collect()
        .await
}

/// The URLs of `n` held requests on the gate's next generation: held polls
/// of `n` gated operations (begun here), or `n` bare held requests.
async fn held_urls(
    client: &Client,
    base: &str,
    n: usize,
    bare: bool,
) -> Result<Vec<String>, String> {
    let generation = stats(client, base).await?.generation;
    if bare {
        return Ok(vec![format!("{base}/bare-held?after={generation}"); n]);
    }
    begin_many(client, base, &format!("{base}/gated?after={generation}"), n).await
}

/// One round of figure 3: `n` operations gated on one event, a held poll
/// each (each with a client of its own, so a connection of its own), the
/// event fired; returns each poll's (response received − event fired) in
/// nanoseconds, from the wall clock both processes share. With `bare`, `n`
/// plain actix-web requests held on the same event instead.
///
/// With `raw`, each request is written and its answer read on a bare TCP
/// connection (no HTTP client library): a diagnostic of how much of the
/// latency is the client's own.
pub(crate) async fn latency_round(
    base: &str,
    n: usize,
    bare: bool,
    raw: bool,
) -> Result<Vec<f64>, String> {
    let shared = client()?;
    let polls = held_urls(&shared, base, n, bare).await?;
    let held_before = stats(&shared, base).await?.holding(bare);
    // Each task hands back its connection (or client) with its time, so
    // that no connection is closed, and no teardown done by the server,
    // until every answer of the round has arrived.
    let mut tasks = Vec::with_capacity(n);
    for poll in polls {
        if raw {
            tasks.push(tokio::spawn(async move {
                raw_get(&poll)
                    .await
                    .map(|(received, stream)| (received, Box::new(stream) as Kept))
            }));
            continue;
        }
        let client = client()?;
        tasks.push(tokio::spawn(async move {
            let res = client.get(&poll).send().await.map_err(text)?;
            let status = res.status();
            res.bytes().await.map_err(text)?;
            let received = sys::unix_nanos();
            if status == StatusCode::OK {
                Ok((received, Box::new(client) as Kept))
            } else {
                Err(format!("a held poll was answered {status}"))
            }
        }));
    }
    stats_until(&shared, base, "the polls to be held", |stats| {
        stats.holding(bare) >= held_before + n
    })
    .await?;
    let fired: u64 = shared
        .post(format!("{base}/fire"))
        .send()
        .await
        .map_err(text)?
        .text()
        .await
        .map_err(text)?
        .trim()
        .parse()
        .map_err(text)?;
    let mut latencies = Vec::with_capacity(n);
    let mut kept = Vec::with_capacity(n);
    for task in tasks {
        let (received, connection) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| "a held poll did not end".to_owned())?
            .map_err(text)??;
        latencies.push(received.saturating_sub(fired) as f64);
        kept.push(connection);
    }
    drop(kept);
    Ok(latencies)
}

/// A connection (or the client that owns it) kept open until a latency
/// round ends.
type Kept = Box<dyn std::any::Any + Send>;

/// `GET url` on a connection of its own, by hand: returns the time at which
/// the whole `200` (head and `Content-Length` body) had been read, and the
/// connection.
async fn raw_get(url: &str) -> Result<(u64, TcpStream), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(authority).await.map_err(text)?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(text)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    for _ in 0..1000 {
        let n = stream.read(&mut chunk).await.map_err(text)?;
        if n == 0 {
            return Err("connection closed before the answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            let received = sys::unix_nanos();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("answered {}", head.lines().next().unwrap_or("")));
            }
            return Ok((received, stream));
        }
    }
    Err("no whole answer".into())
}

/// `notify-baseline [--waiters N] [--rounds N]`: `N` tasks on one
/// current-thread runtime (as an actix-web worker is) wait on one
/// `tokio::sync::Notify`; `notify_waiters()`; each records the time from
/// just before the call to its own wake-up. Prints one JSON object.
pub(crate) fn notify_baseline_main(args: &[String]) -> Result<(), String> {
    let waiters: usize = number_flag(args, "--waiters", 1000)?;
    let rounds: usize = number_flag(args, "--rounds", 3)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(text)?;
    let latencies = runtime.block_on(async move {
        let mut all = Vec::with_capacity(waiters * rounds);
        for _ in 0..rounds {
            let notify = Arc::new(Notify::new());
            let fired: Arc<OnceLock<Instant>> = Arc::default();
            let registered = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..waiters)
                .map(|_| {
                    let notify = Arc::clone(&notify);
                    let fired = Arc::clone(&fired);
                    let registered = Arc::clone(&registered);
                    tokio::spawn(async move {
                        let notified = notify.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        registered.fetch_add(1, Ordering::SeqCst);
                        notified.await;
                        let woken = Instant::now();
                        fired
                            .get()
                            .map_or(0.0, |at| woken.duration_since(*at).as_nanos() as f64)
                    })
                })
                .collect();
            for _ in 0..1_000_000 {
                if registered.load(Ordering::SeqCst) == waiters {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = fired.set(Instant::now());
            notify.notify_waiters();
            for task in tasks {
                all.push(task.await.map_err(text)?);
            }
        }
        Ok::<_, String>(all)
    })?;
    let line = serde_json::json!({
        "waiters": waiters,
        "rounds": rounds,
        "p50_ns": sys::percentile(&latencies, 50.0),
        "p99_ns": sys::percentile(&latencies, 99.0),
        "max_ns": sys::percentile(&latencies, 100.0),
    });
    println!("{line}");
    Ok(())
}

/// `hold-clients --base URL [--n N] [--bare]`: the client side of figure
/// 4's held polls, in a process of its own. Begins `N` gated operations and
/// prints `begun N`; on the line `poll` from stdin sends one poll for each
/// (each on a connection of its own: they are all in flight at once) and
/// prints `polling`; once all are answered prints `done ok=N other=M`. With
/// `--bare`, begins nothing and sends `N` bare held requests instead.
pub(crate) fn hold_clients_main(args: &[String]) -> Result<(), String> {
    let base = flag(args, "--base")
        .ok_or("hold-clients needs --base")?
        .to_owned();
    let n: usize = number_flag(args, "--n", 10_000)?;
    let bare = crate::switch(args, "--bare");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(text)?;
    runtime.block_on(async move {
        let client = client()?;
        let polls = held_urls(&client, &base, n, bare).await?;
        say(&format!("begun {}", if bare { 0 } else { n }))?;
        let mut line = String::new();
        let mut stdin = BufReader::new(tokio::io::stdin());
        tokio::time::timeout(Duration::from_secs(300), stdin.read_line(&mut line))
            .await
            .map_err(|_| "no `poll` on stdin".to_owned())?
            .map_err(text)?;
        if line.trim() != "poll" {
            return Err(format!("expected `poll`, got {line:?}"));
        }
        let tasks: Vec<_> = polls
            .into_iter()
            .map(|poll| {
                let client = client.clone();
                tokio::spawn(async move {
                    let res = client.get(&poll).send().await.map_err(text)?;
                    let status = res.status();
                    res.bytes().await.map_err(text)?;
                    Ok::<_, String>(status)
                })
            })
            .collect();
        say("polling")?;
        let (mut ok, mut other) = (0, 0);
        for task in tasks {
            match tokio::time::timeout(Duration::from_secs(120), task).await {
                Ok(Ok(Ok(StatusCode::OK))) => ok += 1,
                _ => other += 1,
            }
        }
        say(&format!("done ok={ok} other={other}"))
    })
}

fn say(line: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}").map_err(text)?;
    stdout.flush().map_err(text)
}

/// How a client of figure 6 learns of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Follows 303s, waiting `Retry-After` (the default 2 s) before each.
    Polling,
    /// The same client against an endpoint whose polls are held.
    LongPolling,
    /// Asks for a callback, then fetches once notified.
    Callback,
}

impl Mode {
    pub(crate) const ALL: [Self; 3] = [Self::Polling, Self::LongPolling, Self::Callback];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::LongPolling => "long polling",
            Self::Callback => "callback",
        }
    }
}

/// What one client of figure 6 did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    /// Requests the client made (begin included).
    pub(crate) requests: u32,
    /// Notifications the server sent to the client (callback mode).
    pub(crate) notifications: u32,
    /// Time from the begin to the result, less the operation's length.
    pub(crate) late_ms: f64,
}

/// One operation of `seconds` in `mode`, from begin to result, counting.
pub(crate) async fn count_requests(
    client: &Client,
    base: &str,
    mode: Mode,
    seconds: u64,
    receiver: &Receiver,
) -> Result<Counted, String> {
    let ms = seconds * 1000;
    let started = Instant::now();
    let path = match mode {
        Mode::LongPolling => "/sleep-long-polling",
        Mode::Polling | Mode::Callback => "/sleep-polling",
    };
    let url = format!("{base}{path}?ms={ms}");
    if mode == Mode::Callback {
        let (id, notified) = receiver.expect();
        let prefer = format!(
            "respond-async, callback; url=\"http://{}/cb/{id}\"",
            receiver.addr
        );
        let res = client
            .post(&url)
            .header("prefer", prefer)
            .send()
            .await
            .map_err(text)?;
        if res.status() != StatusCode::ACCEPTED {
            return Err(format!("callback begin: {} instead of 202", res.status()));
        }
        let poll = location(&res)?;
        let poll_path = poll.split_once('?').map_or(poll.as_str(), |(path, _)| path);
        let state = tokio::time::timeout(Duration::from_secs(seconds + 60), notified)
            .await
            .map_err(|_| "no notification".to_owned())?
            .map_err(text)?;
        let res = client
            .get(format!("{base}{poll_path}?{state}"))
            .send()
            .await
            .map_err(text)?;
        if res.status() != StatusCode::OK {
            return Err(format!("callback fetch: {}", res.status()));
        }
        res.bytes().await.map_err(text)?;
        return Ok(Counted {
            requests: 2,
            notifications: receiver.notifications(id),
            late_ms: late(started, seconds),
        });
    }
    let res = client.post(&url).send().await.map_err(text)?;
    if res.status() != StatusCode::SEE_OTHER {
        return Err(format!("begin: {} instead of 303", res.status()));
    }
    let mut poll = format!("{base}{}", location(&res)?);
    let mut wait = retry_after(&res).unwrap_or(1);
    // `requests`: the begin and the polls so far, this one included.
    for requests in 2..=501 {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let res = client.get(&poll).send().await.map_err(text)?;
        match res.status() {
            StatusCode::SEE_OTHER => {
                wait = retry_after(&res).unwrap_or(1);
                poll = format!("{base}{}", location(&res)?);
            }
            StatusCode::SERVICE_UNAVAILABLE => wait = retry_after(&res).unwrap_or(1),
            StatusCode::OK => {
                res.bytes().await.map_err(text)?;
                return Ok(Counted {
                    requests,
                    notifications: 0,
                    late_ms: late(started, seconds),
                });
            }
            status => return Err(format!("poll answered {status}")),
        }
    }
    Err("no result after 500 polls".into())
}

fn late(started: Instant, seconds: u64) -> f64 {
    (started.elapsed().as_secs_f64() - seconds as f64) * 1000.0
}

/// A minimal HTTP/1.1 receiver of callback notifications on 127.0.0.1:
/// `GET /cb/<id>?<state>` is answered `204` and hands the state to whoever
/// expects `<id>`.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    shared: Arc<ReceiverShared>,
    task: tokio::task::AbortHandle,
}

#[derive(Default)]
struct ReceiverShared {
    next: AtomicUsize,
    waiting: Mutex<HashMap<usize, oneshot::Sender<String>>>,
    counts: Mutex<HashMap<usize, u32>>,
}

impl Receiver {
    pub(crate) async fn start() -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(text)?;
        let addr = listener.local_addr().map_err(text)?;
        let shared = Arc::new(ReceiverShared::default());
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                // Bounded: far more notifications than figure 6 causes.
                for _ in 0..10_000 {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(receive(socket, Arc::clone(&shared)));
                }
            }
        })
        .abort_handle();
        Ok(Self { addr, shared, task })
    }

    /// A new callback id and the notification's state, once it comes.
    fn expect(&self) -> (usize, oneshot::Receiver<String>) {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, tx);
        (id, rx)
    }

    fn notifications(&self, id: usize) -> u32 {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(mut socket: TcpStream, shared: Arc<ReceiverShared>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("");
    let parsed = target
        .strip_prefix("/cb/")
        .and_then(|rest| rest.split_once('?'))
        .and_then(|(id, state)| Some((id.parse::<usize>().ok()?, state.to_owned())));
    let _ = socket
        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        .await;
    let _ = socket.shutdown().await;
    if let Some((id, state)) = parsed {
        *shared
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(id)
            .or_default() += 1;
        let waiter = shared
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(state);
        }
    }
}
