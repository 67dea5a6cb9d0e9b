//! A scripted HTTP receiver for callback notifications, on a raw socket so
//! that it can also misbehave: answer any status, or drop the connection
//! without an answer.

use std::{collections::VecDeque, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{Mutex, mpsc},
};

/// What the receiver does with one request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this status and these extra headers.
    Answer(u16, Vec<(&'static str, String)>),
    /// Close the connection without answering.
    Drop,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver on `127.0.0.1:<port>`: follows its script, then answers 204.
pub struct Receiver {
    pub base: String,
    pub received: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub async fn start(script: Vec<Step>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, received) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    let mut lines = text.split("\r\n");
                    let mut request_line = lines.next().unwrap_or("").split(' ');
                    let method = request_line.next().unwrap_or("").to_owned();
                    let target = request_line.next().unwrap_or("");
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    let headers = lines
                        .take_while(|line| !line.is_empty())
                        .filter_map(|line| line.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .collect();
                    let step = script
                        .lock()
                        .await
                        .pop_front()
                        .unwrap_or(Step::Answer(204, vec![]));
                    let _ = tx.send(Received {
                        method,
                        path: path.to_owned(),
                        query: query.to_owned(),
                        headers,
                    });
                    if let Step::Answer(status, extra) = step {
                        let mut answer = format!(
                            "HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n"
                        );
                        for (name, value) in extra {
                            answer.push_str(&format!("{name}: {value}\r\n"));
                        }
                        answer.push_str("\r\n");
                        let _ = socket.write_all(answer.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                });
            }
        });
        Self { base, received }
    }

    /// The next request, waiting for it (bounded: fails after 60 s).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(std::time::Duration::from_secs(60), self.received.recv())
            .await
            .expect("a notification within 60 s")
            .expect("the receiver is running")
    }
}
