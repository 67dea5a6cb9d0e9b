use async_op::async_operation;

#[async_operation(post, "/x", retry_after = 1, retry_after = 2)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
