//! Compile-time checks of `#[async_operation]`, with `trybuild`.
//!
//! `ui/fail/*.rs` each misuse the attribute once and must fail with the
//! macro's own error, pointing at the offending token; the expected compiler
//! output is the `.stderr` file beside each case. `ui/pass/*.rs` must
//! compile (and run): extractors, `Result` returns, every argument given,
//! and the path alone.
//!
//! After an intended change to a message, regenerate the `.stderr` files:
//! `TRYBUILD=overwrite cargo test -p async-op-tests --test macro_ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/fail/*.rs");
    cases.pass("ui/pass/*.rs");
}
