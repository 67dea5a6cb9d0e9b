use async_op::async_operation;

#[async_operation(post, "/x", long_poll = 31)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
