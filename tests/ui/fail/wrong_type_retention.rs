use async_op::async_operation;

#[async_operation(post, "/x", retention = 60)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
