use async_op::async_operation;

#[async_operation(post, "/x")]
fn handler() -> &'static str {
    "done"
}

fn main() {}
