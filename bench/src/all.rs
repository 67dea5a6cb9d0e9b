//! `all`: every figure of BENCHMARKS.md in one run.
//!
//! Servers run as child processes (`serve <kind>`) pinned to core 0; `wrk`,
//! this process (its HTTP clients) and the client-side child processes run
//! on core 1. Each ratio compares against a bare actix-web handler measured
//! in the same run, interleaved round by round, so that a drift of the
//! machine's load hits both sides alike.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdout, Command},
};

use crate::{
    clients::{self, Mode, Receiver},
    flag, number_flag, switch, sys,
    wrk::{self, Load, WrkRun, round},
};

/// What a run measures, and how long it drives each server.
#[derive(Debug, Clone)]
struct Settings {
    only: Vec<String>,
    seconds: u64,
    warmup: u64,
    rounds: usize,
    connections: u32,
    lengths: Vec<u64>,
    repeats: usize,
    latency_ops: usize,
    latency_rounds: usize,
    held: usize,
    mem_ops: usize,
    summary: Option<PathBuf>,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Self, String> {
        let list = |name: &str, default: &str| -> Vec<String> {
            flag(args, name)
                .unwrap_or(default)
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let lengths = list("--lengths", "1,10,60")
            .iter()
            .map(|s| s.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "--lengths expects seconds such as 1,10,60".to_owned())?;
        Ok(Self {
            only: list("--only", "1,2,3,4,5,6,micro"),
            seconds: number_flag(args, "--duration", 5)?,
            warmup: number_flag(args, "--warmup", 2)?,
            rounds: number_flag(args, "--rounds", 3)?,
            connections: number_flag(args, "--connections", 64)?,
            lengths,
            repeats: number_flag(args, "--repeats", 2)?,
            latency_ops: number_flag(args, "--latency-ops", 1000)?,
            latency_rounds: number_flag(args, "--latency-rounds", 3)?,
            held: number_flag(args, "--held", 10_000)?,
            mem_ops: number_flag(args, "--mem-ops", 100_000)?,
            summary: flag(args, "--summary").map(PathBuf::from),
        })
    }

    fn wants(&self, figure: &str) -> bool {
        self.only.iter().any(|f| f == figure)
    }
}

/// One figure: what was measured, against which target, by which commands.
#[derive(Debug, Clone)]
struct Figure {
    id: &'static str,
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    target: Option<&'static str>,
    met: Option<bool>,
    measured: String,
    details: Value,
    commands: Vec<String>,
    error: Option<String>,
}

impl Figure {
    fn new(id: &'static str, name: &'static str, unit: &'static str) -> Self {
        Self {
            id,
            name,
            value: None,
            unit,
            target: None,
            met: None,
            measured: String::new(),
            details: Value::Null,
            commands: Vec::new(),
            error: None,
        }
    }

    fn failed(mut self, error: String) -> Self {
        println!("  !! figure {}: {error}", self.id);
        self.error = Some(error);
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "figure": self.id,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "measured": self.measured,
            "details": self.details,
            "commands": self.commands,
            "error": self.error,
        })
    }
}

/// What every part of the run shares.
#[derive(Clone)]
struct Ctx {
    exe: String,
    server_core: Option<usize>,
    load_core: Option<usize>,
    settings: Arc<Settings>,
    script: PathBuf,
    http: reqwest::Client,
}

/// A server child process.
struct Server {
    child: Child,
    pid: Option<u32>,
    base: String,
    command: String,
}

impl Server {
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Ctx {
    /// `[taskset -c <core>] <program> <args>`.
    fn argv(&self, core: Option<usize>, program: &str, args: &[String]) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(core) = core {
            argv.extend(["taskset".to_owned(), "-c".to_owned(), core.to_string()]);
        }
        argv.push(program.to_owned());
        argv.extend(args.iter().cloned());
        argv
    }

    fn command(argv: &[String]) -> Command {
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).kill_on_drop(true);
        command
    }

    /// Starts `serve <args>` on the server core and waits for its address.
    async fn server(&self, args: &[&str]) -> Result<Server, String> {
        let mut full = vec!["serve".to_owned()];
        full.extend(args.iter().map(|s| (*s).to_owned()));
        let argv = self.argv(self.server_core, &self.exe, &full);
        let command = argv.join(" ");
        let mut child = Self::command(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| format!("`{command}`: {error}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| format!("`{command}` did not start within 30 s"))?
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("`{command}` exited before listening"))?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("`{command}` said {line:?}"))?;
        Ok(Server {
            pid: child.id(),
            child,
            base: format!("http://{addr}"),
            command,
        })
    }

    /// Runs `<args>` as a child of this binary on `core`; returns the JSON
    /// object it prints last.
    async fn child_json(
        &self,
        core: Option<usize>,
        args: &[String],
    ) -> Result<(Value, String), String> {
        let argv = self.argv(core, &self.exe, args);
        let command = argv.join(" ");
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            Self::command(&argv).stdin(Stdio::null()).output(),
        )
        .await
        .map_err(|_| format!("`{command}` did not end within 300 s"))?
        .map_err(|error| format!("`{command}`: {error}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "`{command}` failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let value = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<Value>(line).ok())
            .ok_or_else(|| format!("`{command}` printed no JSON"))?;
        Ok((value, command))
    }

    async fn wrk(&self, url: &str, post: bool, server: &Server) -> Result<WrkRun, String> {
        self.wrk_for(url, post, server, self.settings.seconds).await
    }

    async fn wrk_for(
        &self,
        url: &str,
        post: bool,
        server: &Server,
        seconds: u64,
    ) -> Result<WrkRun, String> {
        let load = Load {
            seconds,
            connections: self.settings.connections,
            core: self.load_core,
        };
        let script = post.then_some(self.script.as_path());
        wrk::run(load, url, script, server.pid).await
    }
}

/// `all [options]`.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let settings = Settings::parse(args)?;
    let cores = sys::cores();
    let pin = !switch(args, "--no-pin") && cores >= 2 && sys::have("taskset");
    if pin {
        // This process (and the threads it starts from now on) goes on the
        // load core; the servers go on core 0.
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &pid])
            .stdout(Stdio::null())
            .status()
            .map_err(|error| format!("taskset: {error}"))?;
        if !status.success() {
            return Err("taskset could not pin this process to core 1".into());
        }
    }
    if !sys::have("wrk") {
        return Err(
            "wrk is not installed (`apt-get install -y wrk`, or `bash bench/run.sh`)".into(),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(run(settings, pin))
}

async fn run(settings: Settings, pin: bool) -> Result<(), String> {
    let started = Instant::now();
    let exe = std::env::current_exe()
        .map_err(|error| error.to_string())?
        .display()
        .to_string();
    let dir = std::env::temp_dir().join(format!("async-op-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let script = dir.join("post.lua");
    std::fs::write(&script, wrk::POST_SCRIPT).map_err(|error| error.to_string())?;
    let ctx = Ctx {
        exe,
        server_core: pin.then_some(0),
        load_core: pin.then_some(1),
        settings: Arc::new(settings),
        script,
        http: clients::client()?,
    };
    let machine = sys::machine();
    println!("== async-op benchmarks");
    println!("machine: {machine}");
    if pin {
        println!("pinning: servers on core 0, wrk and clients on core 1 (taskset)");
    } else {
        println!("pinning: none (fewer than 2 cores, taskset missing, or --no-pin)");
    }
    println!("settings: {:?}", ctx.settings);

    // Figure 6 takes as long as its longest operation: it runs in the
    // background from the start (a few requests a second in all).
    let modes = ctx.settings.wants("6").then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move { figure_6(&ctx).await })
    });

    let mut figures = Vec::new();
    if ctx.settings.wants("4") {
        figures.push(figure_4a(&ctx).await);
    }
    if ["1", "2", "5"].iter().any(|f| ctx.settings.wants(f)) {
        figures.extend(throughput(&ctx).await);
    }
    if ctx.settings.wants("3") {
        figures.push(figure_3(&ctx).await);
    }
    if ctx.settings.wants("4") {
        figures.push(figure_4b(&ctx).await);
    }
    if ctx.settings.wants("micro") {
        figures.push(micro(&ctx).await);
    }
    if let Some(modes) = modes {
        println!("\n(waiting for figure 6's operations to end)");
        figures.push(match modes.await {
            Ok(figure) => figure,
            Err(error) => {
                Figure::new("6", "requests_per_operation", "requests").failed(error.to_string())
            }
        });
    }
    figures.sort_by_key(|figure| figure.id);
    let _ = std::fs::remove_dir_all(&dir);

    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "\n== Summary ({elapsed:.0} s; load average now {})",
        sys::load_average()
    );
    println!("| figure | what | measured | target | met |");
    println!("|---|---|---|---|---|");
    for figure in &figures {
        let met = match (figure.met, &figure.error) {
            (_, Some(_)) => "error",
            (Some(true), _) => "yes",
            (Some(false), _) => "NO",
            (None, _) => "-",
        };
        let measured = figure.error.as_deref().unwrap_or(&figure.measured);
        println!(
            "| {} | {} | {} | {} | {} |",
            figure.id,
            figure.name,
            measured,
            figure.target.unwrap_or("-"),
            met
        );
    }
    println!("\n== Summary as JSON (one object per figure per line)");
    let mut lines = String::new();
    let run_line =
        json!({"figure": "run", "seconds": round(elapsed, 1), "machine": machine, "pinned": pin});
    lines.push_str(&format!("{run_line}\n"));
    for figure in &figures {
        lines.push_str(&format!("{}\n", figure.to_json()));
    }
    print!("{lines}");
    std::io::stdout()
        .flush()
        .map_err(|error| error.to_string())?;
    if let Some(path) = &ctx.settings.summary {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(path, lines).map_err(|error| format!("{}: {error}", path.display()))?;
    }
    let failed: Vec<_> = figures
        .iter()
        .filter(|figure| figure.error.is_some())
        .map(|figure| figure.id)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("figures not measured: {}", failed.join(", ")))
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn show(run: &WrkRun, label: &str) {
    println!("$ {}", run.command);
    println!(
        "  {label}: {:.0} req/s, p50 {} ms, p99 {} ms, server {} cores busy, {} µs CPU/request, {} non-2xx/3xx, {} socket errors",
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.server_cores_busy
            .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
        run.server_cpu_us_per_request
            .map_or_else(|| "?".into(), |v| format!("{v:.1}")),
        run.non_2xx_3xx,
        run.socket_errors,
    );
}

/// The Redis for figure 5: `ASYNC_OP_BENCH_REDIS_URL`, else the one at
/// 127.0.0.1:6379, else a private `redis-server` on a free port.
async fn redis(ctx: &Ctx) -> Result<(String, Option<Child>, String), String> {
    if let Ok(url) = std::env::var("ASYNC_OP_BENCH_REDIS_URL") {
        return Ok((url, None, "ASYNC_OP_BENCH_REDIS_URL".into()));
    }
    if ping("127.0.0.1:6379").await {
        return Ok((
            "redis://127.0.0.1:6379".into(),
            None,
            "the Redis answering at 127.0.0.1:6379 (not pinned)".into(),
        ));
    }
    if !sys::have("redis-server") {
        return Err(
            "no Redis at 127.0.0.1:6379 and no redis-server to start (apt-get install redis-server)"
                .into(),
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| error.to_string())?
        .port();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let argv = ctx.argv(None, "redis-server", &args);
    let child = Ctx::command(&argv)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|error| format!("redis-server: {error}"))?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if ping(&addr).await {
            return Ok((
                format!("redis://{addr}"),
                Some(child),
                format!("a private `{}` (not pinned)", argv.join(" ")),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the private redis-server did not answer".into())
}

async fn ping(addr: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Figures 1, 5 and 2: throughput against bare handlers, interleaved.
async fn throughput(ctx: &Ctx) -> Vec<Figure> {
    let s = &ctx.settings;
    let mut figures = Vec::new();
    section("Figures 1, 5, 2: throughput (servers on core 0, wrk on core 1)");
    let servers = async {
        let bare = ctx.server(&["bare"]).await?;
        let memory = ctx.server(&["memory"]).await?;
        println!("$ {}\n  → {}", bare.command, bare.base);
        println!("$ {}\n  → {}", memory.command, memory.base);
        Ok::<_, String>((bare, memory))
    };
    let (bare, memory) = match servers.await {
        Ok(servers) => servers,
        Err(error) => {
            for (id, name) in [
                ("1", "poll_throughput_ratio"),
                ("2", "begin_throughput_ratio"),
                ("5", "redis_poll_throughput_ratio"),
            ] {
                if s.wants(id) {
                    figures.push(Figure::new(id, name, "ratio").failed(error.clone()));
                }
            }
            return figures;
        }
    };
    let mut redis_server = None;
    let mut redis_child = None;
    let mut redis_note = String::new();
    if s.wants("5") {
        let prefix = format!("async-op-bench-{}", std::process::id());
        match redis(ctx).await {
            Ok((url, child, note)) => {
                redis_child = child;
                redis_note = note;
                match ctx
                    .server(&["redis", "--redis", &url, "--prefix", &prefix])
                    .await
                {
                    Ok(server) => {
                        println!(
                            "$ {}\n  → {} (Redis: {redis_note})",
                            server.command, server.base
                        );
                        redis_server = Some(server);
                    }
                    Err(error) => redis_note = error,
                }
            }
            Err(error) => redis_note = error,
        }
    }

    if s.wants("1") || s.wants("5") {
        let polls = poll_figures(ctx, &bare, &memory, redis_server.as_ref(), &redis_note).await;
        figures.extend(polls);
    }
    if s.wants("2") {
        figures.push(begin_figure(ctx, &bare, &memory).await);
    }
    bare.stop().await;
    memory.stop().await;
    if let Some(server) = redis_server {
        server.stop().await;
    }
    if let Some(mut child) = redis_child {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    figures
}

/// The median over rounds of `numerator[i] / denominator[i]`.
fn ratio(numerator: &[WrkRun], denominator: &[WrkRun]) -> f64 {
    let ratios: Vec<f64> = numerator
        .iter()
        .zip(denominator)
        .map(|(n, d)| n.rps / d.rps.max(1e-9))
        .collect();
    sys::median(&ratios)
}

/// The median over rounds of the CPU time per request, baseline / measured
/// (comparable to a throughput ratio).
fn cpu_ratio(measured: &[WrkRun], baseline: &[WrkRun]) -> Option<f64> {
    let ratios: Option<Vec<f64>> = measured
        .iter()
        .zip(baseline)
        .map(|(m, b)| Some(b.server_cpu_us_per_request? / m.server_cpu_us_per_request?))
        .collect();
    ratios.map(|r| round(sys::median(&r), 3))
}

fn runs_json(runs: &[WrkRun]) -> Value {
    Value::Array(runs.iter().map(WrkRun::to_json).collect())
}

fn median_rps(runs: &[WrkRun]) -> f64 {
    sys::median(&runs.iter().map(|r| r.rps).collect::<Vec<_>>())
}

fn clean(runs: &[WrkRun]) -> bool {
    runs.iter()
        .all(|r| r.non_2xx_3xx == 0 && r.socket_errors == 0)
}

/// Whether the server used (nearly) its whole core in every run: if not,
/// something else was running on the machine, and the throughputs say more
/// about that than about the server.
fn saturated(runs: &[WrkRun]) -> bool {
    runs.iter()
        .all(|r| r.server_cores_busy.is_some_and(|busy| busy >= 0.9))
}

/// Fills a ratio figure from interleaved runs of the measured server and
/// its baseline: the median of the per-round throughput ratios, and the
/// CPU time per request as a cross-check that machine load does not skew.
fn fill_ratio(
    figure: &mut Figure,
    measured: &[WrkRun],
    baseline: &[WrkRun],
    servers: &[&Server],
    target: Option<f64>,
) {
    let value = round(ratio(measured, baseline), 3);
    let cpu = cpu_ratio(measured, baseline);
    let all_saturated = saturated(measured) && saturated(baseline);
    figure.value = Some(value);
    figure.met = target.map(|target| value >= target && clean(measured));
    figure.measured = format!(
        "{value:.3} ({:.0} / {:.0} req/s; CPU/request ratio {}){}",
        median_rps(measured),
        median_rps(baseline),
        cpu.map_or_else(|| "?".into(), |c| format!("{c:.3}")),
        if all_saturated {
            ""
        } else {
            " [server not saturated in every run: the machine was busy]"
        }
    );
    if !all_saturated {
        println!(
            "  !! figure {}: the server did not use its whole core in every run \
             (another process on the machine?): throughput ratios are unreliable, \
             the CPU-per-request ratio less so",
            figure.id
        );
    }
    figure.details = json!({
        "measured_rps_median": round(median_rps(measured), 1),
        "baseline_rps_median": round(median_rps(baseline), 1),
        "cpu_per_request_ratio": cpu,
        "server_saturated_in_every_run": all_saturated,
        "no_errors_or_503": clean(measured),
        "measured_runs": runs_json(measured),
        "baseline_runs": runs_json(baseline),
    });
    figure.commands = servers
        .iter()
        .map(|server| server.command.clone())
        .collect();
    figure.commands.extend(
        [measured.first(), baseline.first()]
            .into_iter()
            .flatten()
            .map(|run| run.command.clone()),
    );
}

async fn poll_figures(
    ctx: &Ctx,
    bare: &Server,
    memory: &Server,
    redis: Option<&Server>,
    redis_note: &str,
) -> Vec<Figure> {
    let s = &ctx.settings;
    let mut figures = Vec::new();
    let setup = async {
        let memory_poll = clients::begin(&ctx.http, &format!("{}/pending", memory.base)).await?;
        let memory_url = format!("{}{memory_poll}", memory.base);
        let query = memory_poll.split_once('?').map_or("", |(_, q)| q);
        // The same query length as the library's polls.
        let bare_url = format!("{}/bare-poll?{query}", bare.base);
        let redis_url = match redis {
            Some(server) => {
                let poll = clients::begin(&ctx.http, &format!("{}/pending", server.base)).await?;
                Some(format!("{}{poll}", server.base))
            }
            None => None,
        };
        Ok::<_, String>((bare_url, memory_url, redis_url))
    };
    let (bare_url, memory_url, redis_url) = match setup.await {
        Ok(urls) => urls,
        Err(error) => {
            for (id, name) in [
                ("1", "poll_throughput_ratio"),
                ("5", "redis_poll_throughput_ratio"),
            ] {
                figures.push(Figure::new(id, name, "ratio").failed(error.clone()));
            }
            return figures;
        }
    };
    let mut targets: Vec<(&str, &str, &Server)> = vec![
        ("bare 303", &bare_url, bare),
        ("async-op poll, memory store", &memory_url, memory),
    ];
    if let (Some(url), Some(server)) = (&redis_url, redis) {
        if s.wants("5") {
            targets.push(("async-op poll, Redis store", url, server));
        }
    }
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    let mut error = None;
    println!("(warm-up: {} s each, not counted)", s.warmup);
    for (_, url, server) in &targets {
        if let Err(e) = ctx.wrk_for(url, false, server, s.warmup).await {
            error = Some(e);
        }
    }
    for round_no in 0..s.rounds {
        if error.is_some() {
            break;
        }
        println!("-- poll round {}/{}", round_no + 1, s.rounds);
        for (i, (label, url, server)) in targets.iter().enumerate() {
            match ctx.wrk(url, false, server).await {
                Ok(run) => {
                    show(&run, label);
                    runs[i].push(run);
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    if s.wants("1") {
        let mut figure = Figure::new("1", "poll_throughput_ratio", "ratio");
        figure.target = Some(">= 0.85");
        if let Some(error) = &error {
            figure = figure.failed(error.clone());
        } else {
            fill_ratio(&mut figure, &runs[1], &runs[0], &[bare, memory], Some(0.85));
        }
        figures.push(figure);
    }
    if s.wants("5") {
        let mut figure = Figure::new("5", "redis_poll_throughput_ratio", "ratio");
        match (&error, redis) {
            (Some(error), _) => figure = figure.failed(error.clone()),
            (None, None) => figure = figure.failed(format!("not measured: {redis_note}")),
            (None, Some(redis)) => {
                fill_ratio(&mut figure, &runs[2], &runs[1], &[memory, redis], None);
                if let Value::Object(details) = &mut figure.details {
                    details.insert("redis".into(), redis_note.into());
                }
            }
        }
        figures.push(figure);
    }
    figures
}

async fn begin_figure(ctx: &Ctx, bare: &Server, memory: &Server) -> Figure {
    let s = &ctx.settings;
    let mut figure = Figure::new("2", "begin_throughput_ratio", "ratio");
    figure.target = Some(">= 0.8");
    let bare_url = format!("{}/bare-begin", bare.base);
    let memory_url = format!("{}/empty", memory.base);
    let targets = [
        ("bare spawn + 303", &bare_url, bare),
        ("async-op begin, memory store", &memory_url, memory),
    ];
    let mut runs: [Vec<WrkRun>; 2] = [Vec::new(), Vec::new()];
    let result = async {
        for (_, url, server) in &targets {
            ctx.wrk_for(url, true, server, s.warmup).await?;
        }
        for round_no in 0..s.rounds {
            println!("-- begin round {}/{}", round_no + 1, s.rounds);
            for (i, (label, url, server)) in targets.iter().enumerate() {
                let run = ctx.wrk(url, true, server).await?;
                show(&run, label);
                runs[i].push(run);
            }
        }
        Ok::<_, String>(())
    };
    if let Err(error) = result.await {
        return figure.failed(error);
    }
    fill_ratio(&mut figure, &runs[1], &runs[0], &[bare, memory], Some(0.8));
    if let Value::Object(details) = &mut figure.details {
        details.insert("wrk_script".into(), wrk::POST_SCRIPT.into());
    }
    figure
}

/// Figure 3: completion-to-client latency of held polls.
async fn figure_3(ctx: &Ctx) -> Figure {
    let s = &ctx.settings;
    let mut figure = Figure::new("3", "long_poll_completion_latency_p99", "ms");
    figure.target = Some("p99 < 5 ms");
    section(&format!(
        "Figure 3: completion-to-client latency, {n} operations ending at once, a held poll each \
         (and {n} bare actix-web requests held on the same kind of event), with a minimal \
         hand-written HTTP/1.1 client and with reqwest, one connection per request",
        n = s.latency_ops
    ));
    // (library?, raw client?) in the order each round runs them.
    const CASES: [(bool, bool, &str); 4] = [
        (true, true, "async-op held polls,      minimal client"),
        (false, true, "bare actix held requests, minimal client"),
        (true, false, "async-op held polls,      reqwest       "),
        (false, false, "bare actix held requests, reqwest       "),
    ];
    let result = async {
        let server = ctx.server(&["longpoll"]).await?;
        println!("$ {}", server.command);
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
        let mut rounds = Vec::new();
        for round_no in 0..s.latency_rounds {
            let mut this_round = Vec::new();
            for (i, (library, raw, label)) in CASES.iter().enumerate() {
                let latencies =
                    clients::latency_round(&server.base, s.latency_ops, !library, *raw).await;
                let latencies = match latencies {
                    Ok(latencies) => latencies,
                    Err(error) => {
                        server.stop().await;
                        return Err(error);
                    }
                };
                let p50 = sys::percentile(&latencies, 50.0) / 1e6;
                let p99 = sys::percentile(&latencies, 99.0) / 1e6;
                println!(
                    "  round {} {label}: p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms",
                    round_no + 1,
                    sys::percentile(&latencies, 100.0) / 1e6
                );
                this_round.push(json!({"case": label.split_whitespace().collect::<Vec<_>>().join(" "), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}));
                samples[i].extend(latencies);
            }
            rounds.push(Value::Array(this_round));
        }
        let command = server.command.clone();
        server.stop().await;
        let (baseline, baseline_command) = ctx
            .child_json(
                ctx.server_core,
                &[
                    "notify-baseline".into(),
                    "--waiters".into(),
                    s.latency_ops.to_string(),
                    "--rounds".into(),
                    s.latency_rounds.to_string(),
                ],
            )
            .await?;
        println!("$ {baseline_command}\n  {baseline}");
        Ok::<_, String>((samples, rounds, baseline, vec![command, baseline_command]))
    };
    match result.await {
        Err(error) => figure.failed(error),
        Ok((samples, rounds, baseline, commands)) => {
            let ms = |values: &[f64], p: f64| round(sys::percentile(values, p) / 1e6, 3);
            let (p50, p99) = (ms(&samples[0], 50.0), ms(&samples[0], 99.0));
            let (bare_p50, bare_p99) = (ms(&samples[1], 50.0), ms(&samples[1], 99.0));
            let (req_p50, req_p99) = (ms(&samples[2], 50.0), ms(&samples[2], 99.0));
            let (req_bare_p50, req_bare_p99) = (ms(&samples[3], 50.0), ms(&samples[3], 99.0));
            let base_p50 = baseline["p50_ns"].as_f64().unwrap_or(0.0) / 1e6;
            let base_p99 = baseline["p99_ns"].as_f64().unwrap_or(0.0) / 1e6;
            figure.value = Some(p99);
            figure.met = Some(p99 < 5.0);
            figure.measured = format!(
                "p50 {p50:.2} ms, p99 {p99:.2} ms (bare actix: p50 {bare_p50:.2}, p99 {bare_p99:.2}; \
                 with reqwest: p99 {req_p99:.2} vs bare {req_bare_p99:.2}; \
                 Notify: p50 {base_p50:.3}, p99 {base_p99:.3})"
            );
            figure.details = json!({
                "samples_per_case": samples[0].len(),
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": ms(&samples[0], 100.0),
                "bare_held_p50_ms": bare_p50,
                "bare_held_p99_ms": bare_p99,
                "reqwest_p50_ms": req_p50,
                "reqwest_p99_ms": req_p99,
                "reqwest_bare_held_p50_ms": req_bare_p50,
                "reqwest_bare_held_p99_ms": req_bare_p99,
                "notify_baseline_p50_ms": round(base_p50, 4),
                "notify_baseline_p99_ms": round(base_p99, 4),
                "rounds": rounds,
                "client": "the figure: a minimal hand-written HTTP/1.1 client, one TCP connection per held request; also reqwest, one Client (one connection) per held request; both in the bench process on the load core",
            });
            figure.commands = commands;
            println!("  → {}", figure.measured);
            figure
        }
    }
}

/// Figure 4a: bytes per pending operation in the memory store.
async fn figure_4a(ctx: &Ctx) -> Figure {
    let s = &ctx.settings;
    let mut figure = Figure::new("4a", "memory_store_bytes_per_pending_operation", "bytes");
    figure.target = Some("< 1024 bytes");
    section(&format!(
        "Figure 4a: memory per pending operation, {} in a MemoryStore (own process)",
        s.mem_ops
    ));
    let args = [
        "mem-store".to_owned(),
        "--ops".into(),
        s.mem_ops.to_string(),
    ];
    match ctx.child_json(ctx.server_core, &args).await {
        Err(error) => figure.failed(error),
        Ok((value, command)) => {
            println!("$ {command}\n  {value}");
            let per = value["bytes_per_operation"].as_f64().unwrap_or(f64::NAN);
            figure.value = Some(round(per, 1));
            figure.met = Some(per < 1024.0);
            figure.measured = format!("{per:.0} bytes/operation");
            figure.details = value;
            figure.commands = vec![command];
            figure
        }
    }
}

/// Reads one line of a child, within `limit`.
async fn line_of(
    lines: &mut Lines<BufReader<ChildStdout>>,
    limit: Duration,
    what: &str,
) -> Result<String, String> {
    tokio::time::timeout(limit, lines.next_line())
        .await
        .map_err(|_| format!("hold-clients: no `{what}` within {limit:?}"))?
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("hold-clients exited before `{what}`"))
}

/// Figure 4b: the resident memory of a server with 10,000 held polls.
async fn figure_4b(ctx: &Ctx) -> Figure {
    let s = &ctx.settings;
    let mut figure = Figure::new("4b", "server_rss_with_held_polls", "MiB");
    let mut held = s.held;
    let mut note = String::new();
    if let Some(limit) = sys::open_files_limit() {
        let room = usize::try_from(limit.saturating_sub(200)).unwrap_or(usize::MAX);
        if room < held {
            note = format!(
                "open files limited to {limit} (ulimit -n): {room} held polls instead of {held}"
            );
            held = room;
        }
    }
    section(&format!(
        "Figure 4b: server RSS with {held} held long polls (clients in another process)"
    ));
    if !note.is_empty() {
        println!("  note: {note}");
    }
    let result = async {
        let mut outcomes = Vec::new();
        for bare in [false, true] {
            let server = ctx.server(&["longpoll"]).await?;
            println!("$ {}", server.command);
            let outcome = held_polls(ctx, &server, held, bare).await;
            server.stop().await;
            outcomes.push(outcome?);
        }
        Ok::<_, String>(outcomes)
    };
    match result.await {
        Err(error) => figure.failed(error),
        Ok(mut outcomes) => {
            let (bare_idle, _, bare_holding, bare_commands, bare_answered) = outcomes.remove(1);
            let (idle, begun, holding, mut commands, answered) = outcomes.remove(0);
            commands.extend(bare_commands);
            let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
            let per_op = begun.rss_bytes.saturating_sub(idle.rss_bytes) as f64 / held as f64;
            let per_poll = holding.rss_bytes.saturating_sub(begun.rss_bytes) as f64 / held as f64;
            let bare_per =
                bare_holding.rss_bytes.saturating_sub(bare_idle.rss_bytes) as f64 / held as f64;
            figure.value = Some(round(mib(holding.rss_bytes), 1));
            figure.measured = format!(
                "{:.1} MiB with {held} held polls (idle {:.1} MiB; +{per_op:.0} B per pending operation end to end, +{per_poll:.0} B per held poll; bare actix: +{bare_per:.0} B per held request)",
                mib(holding.rss_bytes),
                mib(idle.rss_bytes)
            );
            figure.details = json!({
                "held_polls": held,
                "rss_idle_bytes": idle.rss_bytes,
                "rss_after_begins_bytes": begun.rss_bytes,
                "rss_with_held_polls_bytes": holding.rss_bytes,
                "bytes_per_pending_operation_end_to_end": round(per_op, 1),
                "bytes_per_held_poll": round(per_poll, 1),
                "pending_operations": begun.pending,
                "held_requests": holding.held,
                "polls_answered": answered,
                "bare_rss_idle_bytes": bare_idle.rss_bytes,
                "bare_rss_with_held_requests_bytes": bare_holding.rss_bytes,
                "bare_bytes_per_held_request": round(bare_per, 1),
                "bare_answered": bare_answered,
                "note": note,
            });
            figure.commands = commands;
            println!("  → {}", figure.measured);
            figure
        }
    }
}

type HeldOutcome = (
    clients::Stats,
    clients::Stats,
    clients::Stats,
    Vec<String>,
    String,
);

async fn held_polls(
    ctx: &Ctx,
    server: &Server,
    held: usize,
    bare: bool,
) -> Result<HeldOutcome, String> {
    let idle = clients::stats(&ctx.http, &server.base).await?;
    let mut args = vec![
        "hold-clients".to_owned(),
        "--base".into(),
        server.base.clone(),
        "--n".into(),
        held.to_string(),
    ];
    if bare {
        args.push("--bare".into());
    }
    let argv = ctx.argv(ctx.load_core, &ctx.exe, &args);
    let command = argv.join(" ");
    println!("$ {command}");
    let mut child = Ctx::command(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("`{command}`: {error}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    line_of(&mut lines, Duration::from_secs(180), "begun").await?;
    let begun = clients::stats_until(&ctx.http, &server.base, "pending operations", |stats| {
        bare || stats.pending >= held
    })
    .await?;
    if !bare {
        println!(
            "  {held} operations pending: server RSS {} bytes",
            begun.rss_bytes
        );
    }
    stdin
        .write_all(b"poll\n")
        .await
        .map_err(|error| error.to_string())?;
    stdin.flush().await.map_err(|error| error.to_string())?;
    line_of(&mut lines, Duration::from_secs(60), "polling").await?;
    let holding = clients::stats_until(&ctx.http, &server.base, "held requests", |stats| {
        stats.holding(bare) >= held
    })
    .await?;
    // Let the allocator settle, then read again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holding = clients::stats(&ctx.http, &server.base)
        .await
        .unwrap_or(holding);
    println!(
        "  {} {} held: server RSS {} bytes",
        holding.holding(bare),
        if bare { "bare requests" } else { "polls" },
        holding.rss_bytes
    );
    ctx.http
        .post(format!("{}/fire", server.base))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let done = line_of(&mut lines, Duration::from_secs(180), "done").await?;
    println!("  clients: {done}");
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok((
        idle,
        begun,
        holding,
        vec![server.command.clone(), command],
        done,
    ))
}

/// The README's table of requests per operation, for comparison.
fn readme_expects(mode: Mode, seconds: u64) -> Option<u32> {
    match (mode, seconds) {
        (Mode::Polling, 1) => Some(2),
        (Mode::Polling, 10) => Some(6),
        (Mode::Polling, 60) => Some(31),
        (Mode::LongPolling, 1 | 10) => Some(2),
        (Mode::LongPolling, 60) => Some(4),
        (Mode::Callback, _) => Some(2),
        _ => None,
    }
}

/// Figure 6: requests a client makes per operation, by mode and length.
async fn figure_6(ctx: &Ctx) -> Figure {
    let s = &ctx.settings;
    let mut figure = Figure::new("6", "requests_per_operation", "requests");
    println!(
        "(figure 6 started in the background: operations of {:?} s, {} clients per mode and length)",
        s.lengths, s.repeats
    );
    let result = async {
        let server = ctx.server(&["modes"]).await?;
        let receiver = Arc::new(Receiver::start().await?);
        let client = clients::client()?;
        let mut handles = Vec::new();
        for &seconds in &s.lengths {
            for mode in Mode::ALL {
                for _ in 0..s.repeats {
                    let client = client.clone();
                    let base = server.base.clone();
                    let receiver = Arc::clone(&receiver);
                    handles.push((
                        mode,
                        seconds,
                        tokio::spawn(async move {
                            clients::count_requests(&client, &base, mode, seconds, &receiver).await
                        }),
                    ));
                }
            }
        }
        let mut cells: BTreeMap<(u64, &'static str), Vec<clients::Counted>> = BTreeMap::new();
        let mut errors = Vec::new();
        for (mode, seconds, handle) in handles {
            match handle.await {
                Ok(Ok(counted)) => cells
                    .entry((seconds, mode.name()))
                    .or_default()
                    .push(counted),
                Ok(Err(error)) => errors.push(format!("{} {seconds} s: {error}", mode.name())),
                Err(error) => errors.push(error.to_string()),
            }
        }
        let command = server.command.clone();
        server.stop().await;
        Ok::<_, String>((cells, errors, command))
    };
    match result.await {
        Err(error) => figure.failed(error),
        Ok((cells, errors, command)) => {
            section("Figure 6: requests per operation (begin included)");
            println!("$ {command}");
            println!(
                "  (clients in the bench process: reqwest, follow 303s honouring Retry-After; callback: begin + fetch)"
            );
            let mut table = Vec::new();
            let mut measured = Vec::new();
            for &seconds in &s.lengths {
                for mode in Mode::ALL {
                    let Some(counts) = cells.get(&(seconds, mode.name())) else {
                        continue;
                    };
                    let requests: Vec<f64> = counts.iter().map(|c| f64::from(c.requests)).collect();
                    let notifications: u32 =
                        counts.iter().map(|c| c.notifications).max().unwrap_or(0);
                    let late: Vec<f64> = counts.iter().map(|c| c.late_ms).collect();
                    let lo = requests.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = requests.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let shown = if (hi - lo).abs() < f64::EPSILON {
                        format!("{lo:.0}")
                    } else {
                        format!("{lo:.0}-{hi:.0}")
                    };
                    let expected = readme_expects(mode, seconds);
                    println!(
                        "  {seconds:>3} s {:<13} {shown:>6} requests{}  (result {:.0} ms after the operation's end, median; README: {})",
                        mode.name(),
                        if mode == Mode::Callback {
                            format!(" + {notifications} notification(s) server→client")
                        } else {
                            String::new()
                        },
                        sys::median(&late),
                        expected.map_or_else(|| "-".into(), |e| e.to_string()),
                    );
                    measured.push(format!("{seconds}s {}: {shown}", mode.name()));
                    table.push(json!({
                        "seconds": seconds,
                        "mode": mode.name(),
                        "requests": requests,
                        "notifications": notifications,
                        "late_ms_median": round(sys::median(&late), 1),
                        "readme_expects": expected,
                    }));
                }
            }
            for error in &errors {
                println!("  !! {error}");
            }
            figure.measured = measured.join("; ");
            figure.details = json!({"cells": table, "errors": errors});
            figure.commands = vec![command];
            if !errors.is_empty() {
                figure.error = Some(errors.join("; "));
            }
            figure
        }
    }
}

/// The poll path's parts timed in-process (profiling notes).
async fn micro(ctx: &Ctx) -> Figure {
    let mut figure = Figure::new("micro", "poll_path_parts_ns", "ns");
    section("Poll path, part by part (in-process, ns per call)");
    match ctx.child_json(ctx.server_core, &["micro".to_owned()]).await {
        Err(error) => figure.failed(error),
        Ok((value, command)) => {
            println!("$ {command}");
            if let Value::Object(map) = &value {
                for (key, v) in map {
                    println!("  {key:<34} {v}");
                }
            }
            figure.measured = format!(
                "verify {} ns, sign+Location {} ns (prototype: {} / {} ns)",
                value["library_verify_ns"],
                value["library_location_ns"],
                value["prototype_verify_ns"],
                value["prototype_sign_location_ns"]
            );
            figure.details = value;
            figure.commands = vec![command];
            figure
        }
    }
}
