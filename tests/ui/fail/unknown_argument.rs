use async_op::async_operation;

#[async_operation(post, "/x", retries = 3)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
