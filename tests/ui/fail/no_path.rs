use async_op::async_operation;

#[async_operation]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
