use async_op::async_operation;

#[async_operation(fetch, "/x")]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
