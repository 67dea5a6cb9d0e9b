use async_op::async_operation;

#[async_operation(post)]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
