use async_op::async_operation;

#[async_operation(post, "x")]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
