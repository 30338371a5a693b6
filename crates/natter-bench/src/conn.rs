//! Raw connections: register users, open an authenticated socket, send requests by id.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Socket, Message>;
pub type Stream = SplitStream<Socket>;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A prefix for the users a run registers (each run needs its own): `given`, or a fresh one.
pub fn run_prefix(given: &Option<String>, letter: &str) -> String {
    given.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{letter}{nanos:x}-")
    })
}

/// Registers `count` users named `{prefix}{i}`, a few at a time (password hashing is slow on
/// purpose), and returns their tokens.
pub async fn register_users(
    base_url: &str,
    prefix: &str,
    count: usize,
) -> Result<Vec<String>, Error> {
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (base_url, name, gate) = (base_url.to_owned(), format!("{prefix}{i}"), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            natter_client::register(&base_url, &name, "bench-password", None)
                .await
                .map(|auth| auth.token)
        }));
    }
    let mut tokens = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        tokens.push(task.await?.map_err(|e| format!("register user {i}: {e}"))?);
        if (i + 1) % 500 == 0 {
            eprintln!("  registered {}/{count}", i + 1);
        }
    }
    Ok(tokens)
}

/// Opens a socket and authenticates; returns it once the welcome has arrived.
pub async fn connect(base_url: &str, token: &str) -> Result<(Sink, Stream), Error> {
    let url = natter_client::websocket_url(base_url);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let (mut sink, mut stream) = socket.split();
    sink.send(Message::Text(
        format!(r#"{{"id":0,"type":"hello","token":"{token}"}}"#).into(),
    ))
    .await?;
    while let Some(message) = stream.next().await {
        if let Message::Text(text) = message? {
            if text.starts_with(r#"{"type":"welcome""#) {
                return Ok((sink, stream));
            }
            if text.contains(r#""type":"error""#) {
                return Err(format!("hello refused: {text}").into());
            }
        }
    }
    Err("closed before the welcome".into())
}

/// Sends one request and waits for its reply (skipping pushed frames); returns the reply text.
pub async fn request(
    sink: &mut Sink,
    stream: &mut Stream,
    id: u64,
    body: &str,
) -> Result<String, Error> {
    sink.send(Message::Text(format!(r#"{{"id":{id},{body}}}"#).into()))
        .await?;
    // Replies start `{"type":"…","id":N,`; pushed frames never have an `id` right after the type.
    let marker = format!(r#"","id":{id},"#);
    while let Some(message) = stream.next().await {
        if let Message::Text(text) = message?
            && text.contains(&marker)
        {
            if text.contains(r#""type":"error""#) {
                return Err(format!("request {body} failed: {text}").into());
            }
            return Ok(text.to_string());
        }
    }
    Err("closed before the reply".into())
}

/// The number after `"key":` in a frame.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    crate::wire::number_after(text.as_bytes(), format!(r#""{key}":"#).as_bytes())
}
