//! The `#[async_operation]` attribute of [async-op](https://docs.rs/async-op).
//!
//! Use it through the `async-op` crate (`async_op::async_operation`), which
//! provides everything the generated code refers to.
//!
//! `lib.rs` documents, `attr.rs` parses the arguments, `expand.rs` generates.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Turns an `async fn` handler into an asynchronous operation.
///
/// ```text
/// #[async_operation(<method>, "<path>", retry_after = <seconds>, retention = "<duration>",
///                  long_poll = <seconds>, early_poll = "reject" | "hold", name = "<name>")]
/// ```
///
/// | argument | required | default | meaning |
/// |---|---|---|---|
/// | method | no | `post` | `get`, `post`, `put`, `patch` or `delete` |
/// | path | yes | | the begin path, as in `#[post("...")]` |
/// | `retry_after` | no | the middleware's (`ASYNC_OP_RETRY_AFTER`, 2 s) | whole seconds a client waits between polls |
/// | `retention` | no | the middleware's (`ASYNC_OP_TTL`, 1 h) | how long the result is kept: `"90s"`, `"15m"`, `"1h"`, `"7d"` or seconds |
/// | `long_poll` | no | the middleware's (`ASYNC_OP_LONG_POLL`, 20 s) | whole seconds a poll of the running operation is held, 0 to 30 (0: off) |
/// | `early_poll` | no | the middleware's (`ASYNC_OP_EARLY_POLL`, `"reject"`) | `"reject"` (503 + `Retry-After`) or `"hold"` (held until the wait is over) |
/// | `name` | no | the function's name | the resource name, and the handler's name in logs |
///
/// The function may take any actix-web extractors and return any
/// `Responder`, including `Result<T, E>` with `E: ResponseError`. It is
/// registered like actix-web's own route macros: `App::service(handler)`.
/// The extractors run on the begin request (a failure answers at once and
/// starts nothing); the body runs in the background, and its whole response
/// is what the final poll returns.
///
/// ```
/// use actix_web::web;
/// use async_op::async_operation;
///
/// #[async_operation(post, "/sum", retry_after = 1, retention = "10m")]
/// async fn sum(numbers: web::Json<Vec<i64>>) -> String {
///     numbers.iter().sum::<i64>().to_string()
/// }
///
/// let app = actix_web::App::new().service(sum);
/// # drop(app);
/// ```
#[proc_macro_attribute]
pub fn async_operation(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse::<attr::OperationArgs>(args) {
        Ok(args) => args,
        Err(error) => return input_and_compile_error(item, error),
    };
    let function = match syn::parse::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => return input_and_compile_error(item, error),
    };
    match expand::expand(args, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => input_and_compile_error(item, error),
    }
}

/// Returns the item unchanged beside the error, so that the rest of the
/// crate still sees the function (fewer follow-on errors, IDEs stay useful).
fn input_and_compile_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(TokenStream::from(error.to_compile_error()));
    item
}
