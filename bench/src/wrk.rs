//! Running `wrk` and reading what it prints.

use std::{path::Path, time::Duration};

use tokio::process::Command;

/// The script that turns wrk's requests into begins: `POST` with a small
/// JSON body.
pub(crate) const POST_SCRIPT: &str = include_str!("../wrk/post.lua");

/// What one wrk run measured.
#[derive(Debug, Clone)]
pub(crate) struct WrkRun {
    /// Requests per second.
    pub(crate) rps: f64,
    /// Requests completed.
    pub(crate) requests: u64,
    /// Responses with a status of 400 or more.
    pub(crate) non_2xx_3xx: u64,
    /// Connect, read, write and timeout errors, added up.
    pub(crate) socket_errors: u64,
    /// Latency percentiles in milliseconds.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// CPU time the server used during the run, per request, in µs.
    pub(crate) server_cpu_us_per_request: Option<f64>,
    /// The server's CPU use during the run, in cores (1.0: one core busy).
    pub(crate) server_cores_busy: Option<f64>,
    /// The command line.
    pub(crate) command: String,
}

impl WrkRun {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rps": round(self.rps, 1),
            "requests": self.requests,
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "server_cpu_us_per_request": self.server_cpu_us_per_request.map(|v| round(v, 2)),
            "server_cores_busy": self.server_cores_busy.map(|v| round(v, 2)),
        })
    }
}

/// `value` rounded to `digits` decimals.
pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The parameters of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) seconds: u64,
    pub(crate) connections: u32,
    /// The core to pin wrk to, if pinning.
    pub(crate) core: Option<usize>,
}

/// Runs wrk against `url` (with `script`, for POSTs) while measuring the
/// CPU time of the server process `server_pid`.
pub(crate) async fn run(
    load: Load,
    url: &str,
    script: Option<&Path>,
    server_pid: Option<u32>,
) -> Result<WrkRun, String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(core) = load.core {
        argv.extend(["taskset".into(), "-c".into(), core.to_string()]);
    }
    argv.extend([
        "wrk".into(),
        "-t1".into(),
        format!("-c{}", load.connections),
        format!("-d{}s", load.seconds),
        "--latency".into(),
    ]);
    if let Some(script) = script {
        argv.extend(["-s".into(), script.display().to_string()]);
    }
    argv.push(url.to_owned());
    let command = argv.join(" ");
    let cpu_before = server_pid.and_then(crate::sys::cpu_seconds);
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(load.seconds + 30),
        Command::new(&argv[0])
            .args(&argv[1..])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{command}` did not end"))?
    .map_err(|error| format!("`{command}`: {error}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = server_pid.and_then(crate::sys::cpu_seconds);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "`{command}` failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut run = parse(&stdout).ok_or_else(|| format!("cannot read wrk's output:\n{stdout}"))?;
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = after - before;
        if run.requests > 0 {
            run.server_cpu_us_per_request = Some(cpu * 1e6 / run.requests as f64);
        }
        run.server_cores_busy = Some(cpu / elapsed.max(1e-3));
    }
    run.command = command;
    Ok(run)
}

fn parse(text: &str) -> Option<WrkRun> {
    let mut rps = None;
    let mut requests = None;
    let mut non = 0;
    let mut socket_errors = 0;
    let mut p50 = 0.0;
    let mut p99 = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = millis(rest.trim()).unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = millis(rest.trim()).unwrap_or(0.0);
        }
    }
    Some(WrkRun {
        rps: rps?,
        requests: requests?,
        non_2xx_3xx: non,
        socket_errors,
        p50_ms: p50,
        p99_ms: p99,
        server_cpu_us_per_request: None,
        server_cores_busy: None,
        command: String::new(),
    })
}

/// wrk's `123.45us`, `1.23ms` or `2.00s`, in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| round(n * scale, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/x
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
    Req/Sec    50.00k     1.00k   52.00k    80.00%
  Latency Distribution
     50%    1.10ms
     75%    1.30ms
     90%    1.50ms
     99%  812.00us
  250000 requests in 5.00s, 100.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  49999.50
Transfer/sec:     20.00MB
";
        let run = parse(text).expect("parsed");
        assert!((run.rps - 49999.5).abs() < 1e-9);
        assert_eq!(run.requests, 250_000);
        assert_eq!(run.non_2xx_3xx, 7);
        assert_eq!(run.socket_errors, 3);
        assert!((run.p50_ms - 1.1).abs() < 1e-9);
        assert!((run.p99_ms - 0.812).abs() < 1e-9);
    }
}
