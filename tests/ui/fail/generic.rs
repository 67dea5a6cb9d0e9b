use async_op::async_operation;

#[async_operation(post, "/x")]
async fn handler<T: Default>() -> &'static str {
    "done"
}

fn main() {}
