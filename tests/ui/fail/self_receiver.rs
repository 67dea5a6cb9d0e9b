use async_op::async_operation;

struct Reports;

impl Reports {
    #[async_operation(post, "/x")]
    async fn handler(&self) -> &'static str {
        "done"
    }
}

fn main() {}
