use async_op::async_operation;

#[async_operation(retry_after = 2)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
