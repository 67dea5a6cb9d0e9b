//! `async-op-bench`: the benchmark command of `BENCHMARKS.md`.
//!
//! `async-op-bench all` measures every figure. It starts the servers it needs
//! as child processes of itself (`async-op-bench serve <kind>`), pinned to
//! core 0 with `taskset`, drives them with `wrk` pinned to core 1 (or with
//! its own HTTP clients, also on core 1), prints every figure with the
//! command lines that made it, and ends with a machine-readable summary: one
//! JSON object per figure per line. All traffic goes to 127.0.0.1.
//!
//! The other subcommands are the parts that `all` runs in processes of their
//! own, so that one process's memory or CPU does not pollute another's
//! figure:
//!
//! | subcommand | what |
//! |---|---|
//! | `serve <bare\|memory\|redis\|longpoll\|modes>` | one server on an ephemeral loopback port; prints `listening <addr>` |
//! | `notify-baseline` | 1,000 `tokio::sync::Notify` waiters woken at once: the wake-up latency |
//! | `mem-store` | RSS of a process before and after 100,000 pending operations in a `MemoryStore` |
//! | `hold-clients` | the client side of 10,000 held long polls |
//! | `micro` | in-process timings of the poll path's parts, and prototypes of faster ones |

#![forbid(unsafe_code)]

mod all;
mod clients;
mod micro;
mod serve;
mod sys;
mod wrk;

use std::process::ExitCode;

const USAGE: &str = "\
usage: async-op-bench all [--only 1,2,3,4,5,6,micro] [--duration SECS] [--rounds N]
                          [--connections N] [--lengths 1,10,60] [--held N] [--no-pin]
                          [--summary FILE]
       async-op-bench serve <bare|memory|redis|longpoll|modes> [--redis URL] [--prefix P]
       async-op-bench notify-baseline [--waiters N] [--rounds N]
       async-op-bench mem-store [--ops N]
       async-op-bench hold-clients --base URL [--n N]
       async-op-bench micro [--iterations N] [--only name,name]

`bash bench/run.sh` installs wrk if missing, builds in release and runs `all`.
See BENCHMARKS.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "all" => all::main(rest),
        "serve" => serve::main(rest),
        "notify-baseline" => clients::notify_baseline_main(rest),
        "mem-store" => micro::mem_store_main(rest),
        "hold-clients" => clients::hold_clients_main(rest),
        "micro" => micro::main(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("async-op-bench {command}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The value of `--name VALUE` in `args`.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .map(String::as_str)
}

/// The number given as `--name N`, or `default`.
pub(crate) fn number_flag<T: std::str::FromStr>(
    args: &[String],
    name: &str,
    default: T,
) -> Result<T, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} expects a number, not {text:?}")),
    }
}

/// Whether `--name` is present.
pub(crate) fn switch(args: &[String], name: &str) -> bool {
    args.iter().any(|arg| arg == name)
}
