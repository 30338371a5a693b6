//! A bare WebSocket for the tests that must send what no well-behaved client would.

use futures_util::{SinkExt, StreamExt};
use natter_client::protocol::ServerFrame;
use natter_client::protocol::codec;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct RawSocket {
    socket: Socket,
}

/// How a raw read ended.
#[derive(Debug, PartialEq)]
pub enum Received {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

impl RawSocket {
    pub async fn connect(base_url: &str) -> RawSocket {
        RawSocket::connect_with(base_url, &[]).await
    }

    /// Connects with extra request headers (Origin, Cookie).
    pub async fn connect_with(base_url: &str, headers: &[(&str, &str)]) -> RawSocket {
        let mut request = natter_client::websocket_url(base_url)
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .expect("ws connect");
        RawSocket { socket }
    }

    /// Connects and says hello with `token`; returns once the welcome arrived.
    pub async fn authenticated(base_url: &str, token: &str) -> RawSocket {
        RawSocket::welcomed(base_url, token).await.0
    }

    /// Connects and says hello with `token`; returns the socket and the `welcome` it got.
    pub async fn welcomed(base_url: &str, token: &str) -> (RawSocket, ServerFrame) {
        let mut raw = RawSocket::connect(base_url).await;
        raw.send(&format!(r#"{{"id":1,"type":"hello","token":"{token}"}}"#))
            .await;
        match raw.recv().await {
            Received::Frame(welcome @ ServerFrame::Welcome { .. }) => (raw, welcome),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a WebSocket ping and returns the payload of the pong that answers it; frames that
    /// arrive meanwhile are skipped.
    pub async fn ping(&mut self, payload: &[u8]) -> Vec<u8> {
        self.socket
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .expect("send ping");
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a pong within 10 s");
            match next {
                Some(Ok(Message::Pong(payload))) => return payload.to_vec(),
                Some(Ok(_)) => {}
                other => panic!("the connection ended before the pong: {other:?}"),
            }
        }
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// Sends a close frame (1000) and returns how the server answered.
    pub async fn close(&mut self) -> Received {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        self.socket
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .expect("send close");
        self.recv().await
    }

    /// The next frame that is not a heartbeat, or the close.
    pub async fn recv(&mut self) -> Received {
        loop {
            match self.recv_any().await {
                Received::Frame(ServerFrame::Heartbeat) => continue,
                other => return other,
            }
        }
    }

    /// The next frame, heartbeats included, or the close.
    pub async fn recv_any(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame = codec::decode_server_frame(&text).expect("server frame");
                    return Received::Frame(frame);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// Sends a request and returns the error code of the reply (panics if it is not an error).
    pub async fn error_code_of(
        &mut self,
        text: &str,
    ) -> (Option<u64>, natter_client::protocol::ErrorCode) {
        self.send(text).await;
        loop {
            match self.recv().await {
                Received::Frame(ServerFrame::Error { id, code, .. }) => {
                    return (id.map(|i| i.0), code);
                }
                Received::Frame(ServerFrame::Event { .. }) => continue,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns its reply, skipping pushed frames.
    pub async fn request(&mut self, text: &str) -> ServerFrame {
        self.send(text).await;
        loop {
            match self.recv().await {
                Received::Frame(frame) if frame.reply_to().is_some() => return frame,
                Received::Frame(_) => continue,
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }
}
