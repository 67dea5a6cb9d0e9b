//! The example applications' shared parts, so that the test suite can run
//! the very same app that `cargo run --bin quickstart` serves.

#![forbid(unsafe_code)]

pub mod prometheus;
pub mod reports;
