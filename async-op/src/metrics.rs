//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: the
//! application installs whichever recorder it likes (the `quickstart`
//! example serves Prometheus text at `/metrics`); without one, each call is
//! a no-op.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `async_op_begins_total` | counter | `handler` | operations begun |
//! | `async_op_begins_refused_total` | counter | `reason` | begins that started nothing (`too-many-operations`, `invalid-callback`, `store-unavailable`, `idempotency-key-reused`, ...) |
//! | `async_op_begins_repeated_total` | counter | | begins answered with an existing operation (`Idempotency-Key`) |
//! | `async_op_polls_total` | counter | `answer` | poll-path requests by answer: `result`, `see-other`, `cancelled-now`, or the problem type's name (`too-early`, `invalid-state`, ...) |
//! | `async_op_completions_total` | counter | `outcome` | operations ended: `finished`, `failed`, `cancelled` |
//! | `async_op_callback_attempts_total` | counter | | notification requests sent |
//! | `async_op_callback_retries_total` | counter | | attempts followed by another |
//! | `async_op_callback_deliveries_total` | counter | `result` | notifications `delivered` or `abandoned` |
//! | `async_op_held_requests` | gauge | | requests held now (long polls, early polls, `Prefer: wait`) |
//! | `async_op_pending_operations` | gauge | | operations running on this instance |
//!
//! Every label value is a static string: recording allocates nothing.

use metrics::{counter, gauge};

use crate::error::ProtocolError;

/// The short name of an error's problem type (`invalid-state`, ...).
pub(crate) fn problem_name(error: &ProtocolError) -> &'static str {
    let problem_type = error.problem_type();
    problem_type
        .strip_prefix("urn:async-op:problem:")
        .unwrap_or(problem_type)
}

pub(crate) fn begun(handler: &'static str) {
    counter!("async_op_begins_total", "handler" => handler).increment(1);
}

pub(crate) fn begin_refused(error: &ProtocolError) {
    counter!("async_op_begins_refused_total", "reason" => problem_name(error)).increment(1);
}

pub(crate) fn begin_repeated() {
    counter!("async_op_begins_repeated_total").increment(1);
}

pub(crate) fn polled(answer: &'static str) {
    counter!("async_op_polls_total", "answer" => answer).increment(1);
}

pub(crate) fn completed(outcome: &'static str) {
    counter!("async_op_completions_total", "outcome" => outcome).increment(1);
}

pub(crate) fn callback_attempt() {
    counter!("async_op_callback_attempts_total").increment(1);
}

pub(crate) fn callback_retry() {
    counter!("async_op_callback_retries_total").increment(1);
}

pub(crate) fn callback_done(result: &'static str) {
    counter!("async_op_callback_deliveries_total", "result" => result).increment(1);
}

pub(crate) fn held(delta: f64) {
    gauge!("async_op_held_requests").increment(delta);
}

pub(crate) fn pending(delta: f64) {
    gauge!("async_op_pending_operations").increment(delta);
}
