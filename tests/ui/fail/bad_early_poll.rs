use async_op::async_operation;

#[async_operation(post, "/x", early_poll = "sometimes")]
async fn handler() -> &'static str {
    "done"
}

fn main() {}
