//! The WebSocket transport (`GET /api/v1/ws`).
//!
//! The first frame must be `hello`; its token (or the session cookie, when the upgrade came from
//! an allowed origin) is checked before a session exists. Then one task reads requests and queues
//! each reply, and another writes whatever the session stream yields, so events keep flowing
//! while a request waits on the store.
//!
//! Cross-site WebSocket hijacking: browsers attach cookies to a WebSocket upgrade from any page,
//! so the cookie counts only when the `Origin` is the server's own or in `allowed_origins`. A
//! token in `hello` needs no such check: another site's page cannot know it.

use super::origin_allowed;
use crate::auth;
use crate::http::ServerState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use natter_core::session::{Greeting, Session, SessionStream};
use natter_protocol::frame::{Request, ServerFrame};
use natter_protocol::{CloseCode, ErrorCode, codec};
use std::time::Duration;
use tokio::time::{Instant, timeout, timeout_at};

/// Per-connection read buffer, and the write size that triggers a write (frames larger than this
/// still pass). Small on purpose: most connections are idle most of the time (docs/benchmarks.md).
const IO_BUFFER_BYTES: usize = 2 * 1024;

/// How long the server waits for its close frame to be written before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// # `GET /api/v1/ws`
/// - Upgrades to a WebSocket speaking the protocol of `docs/protocol.md`.
/// - Frames above `max_frame_bytes` close the connection with 1009.
pub async fn upgrade(
    State(state): State<ServerState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let cookie_token = if origin_allowed(&headers, &state.config.settings.allowed_origins) {
        auth::cookie_token(&headers)
    } else {
        None
    };
    let max = state.app.limits.max_frame_bytes;
    // tungstenite's default 128 KiB read and write buffers per connection dominate memory at
    // thousands of mostly idle connections; chat frames are small and each batch is flushed.
    ws.max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(IO_BUFFER_BYTES)
        .write_buffer_size(IO_BUFFER_BYTES)
        .on_upgrade(move |socket| serve(socket, state, cookie_token))
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(codec::encode(frame)))
}

async fn close(socket: &mut WebSocket, code: CloseCode) {
    let frame = Message::Close(Some(CloseFrame {
        code: code.code(),
        reason: code.reason().into(),
    }));
    let _ = timeout(CLOSE_GRACE, socket.send(frame)).await;
}

/// What `hello` established.
struct Hello {
    session: Session,
    stream: SessionStream,
}

/// Sends a frame before the auth deadline; false if the client did not take it in time.
async fn reply_by(deadline: Instant, socket: &mut WebSocket, frame: ServerFrame) -> bool {
    timeout_at(deadline, socket.send(text(&frame)))
        .await
        .is_ok_and(|sent| sent.is_ok())
}

/// Reads frames until a valid `hello`. Returns `None` when the connection is over. Everything,
/// the replies to a client that does not read included, happens before the auth deadline.
async fn await_hello(
    socket: &mut WebSocket,
    state: &ServerState,
    cookie_token: Option<String>,
) -> Option<Hello> {
    let deadline = Instant::now() + state.app.limits.auth_timeout();
    loop {
        let message = match timeout_at(deadline, socket.recv()).await {
            Err(_elapsed) => {
                close(socket, CloseCode::AuthTimeout).await;
                return None;
            }
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                close_for_read_error(socket, error).await;
                return None;
            }
            Ok(None) => return None,
        };
        let body = match message {
            Message::Text(body) => body,
            Message::Binary(_) => {
                close(socket, CloseCode::Unsupported).await;
                return None;
            }
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let frame = match codec::decode_client_frame(&body) {
            Ok(frame) => frame,
            Err(error) => {
                if !reply_by(deadline, socket, error.into_frame()).await {
                    return None;
                }
                continue;
            }
        };
        let Request::Hello { token, resume } = frame.request else {
            let refusal = ServerFrame::error(
                Some(frame.id),
                ErrorCode::NotAuthenticated,
                "send `hello` first",
            );
            if !reply_by(deadline, socket, refusal).await {
                return None;
            }
            continue;
        };
        let reject = |code, message: &str| ServerFrame::error(Some(frame.id), code, message);
        let Some(token) = token.or_else(|| cookie_token.clone()) else {
            reply_by(
                deadline,
                socket,
                reject(ErrorCode::AuthFailed, "no token given"),
            )
            .await;
            close(socket, CloseCode::AuthFailed).await;
            return None;
        };
        let (user, token_id) = match auth::authenticate(state, &token).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let refusal = reject(ErrorCode::AuthFailed, "unknown, expired or revoked token");
                reply_by(deadline, socket, refusal).await;
                close(socket, CloseCode::AuthFailed).await;
                return None;
            }
            Err(_) => {
                let reply = reject(
                    ErrorCode::Unavailable,
                    "storage is unavailable; reconnect later",
                );
                reply_by(deadline, socket, reply).await;
                close(socket, CloseCode::TryAgainLater).await;
                return None;
            }
        };
        let user_id = user.info.id;
        match Session::start(
            state.app.clone(),
            user,
            token_id,
            Greeting::Welcome(frame.id),
            resume,
        )
        .await
        {
            Ok((session, stream)) => {
                // A logout between the token check and the session's registration in the hub
                // would miss this session: check once more now that it is registered.
                if !matches!(auth::authenticate(state, &token).await, Ok(Some(_))) {
                    drop(session);
                    close(socket, CloseCode::Revoked).await;
                    return None;
                }
                tracing::debug!(%user_id, "session started");
                return Some(Hello { session, stream });
            }
            Err(error) => {
                reply_by(deadline, socket, reject(error.code, &error.message)).await;
                close(socket, CloseCode::TryAgainLater).await;
                return None;
            }
        }
    }
}

/// A frame over the limit is a framing error: the connection cannot continue.
fn close_code_for(error: &axum::Error) -> Option<CloseCode> {
    let inner = std::error::Error::source(error)?;
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(CloseCode::TooBig),
        _ => None,
    }
}

async fn close_for_read_error(socket: &mut WebSocket, error: axum::Error) {
    if let Some(code) = close_code_for(&error) {
        close(socket, code).await;
    }
}

async fn serve(mut socket: WebSocket, state: ServerState, cookie_token: Option<String>) {
    let Some(Hello {
        mut session,
        stream,
    }) = Box::pin(await_hello(&mut socket, &state, cookie_token)).await
    else {
        return;
    };
    let heartbeat_timeout = state.app.limits.heartbeat_timeout();
    let (sink, mut incoming) = socket.split();
    let mut writer = tokio::spawn(write_frames(sink, stream, heartbeat_timeout));
    loop {
        tokio::select! {
            // The writer ends when the session is closed (slow consumer, revoked, shutdown):
            // it has sent the close frame; stop reading.
            _ = &mut writer => return,
            next = timeout(heartbeat_timeout, incoming.next()) => match next {
                Err(_elapsed) => {
                    session.close(CloseCode::HeartbeatTimeout);
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => match close_code_for(&error) {
                    Some(code) => {
                        session.close(code);
                        break;
                    }
                    None => {
                        writer.abort();
                        return;
                    }
                },
                Ok(Some(Ok(Message::Text(body)))) => {
                    // Boxed: the request's future is large and lives only while it runs, so an
                    // idle connection does not carry its space.
                    let reply = match codec::decode_client_frame(&body) {
                        Ok(frame) => Box::pin(session.handle(frame)).await,
                        Err(error) => error.into_frame(),
                    };
                    session.queue(&reply);
                }
                Ok(Some(Ok(Message::Binary(_)))) => {
                    session.close(CloseCode::Unsupported);
                    break;
                }
                Ok(Some(Ok(Message::Close(_)))) => {
                    writer.abort();
                    return;
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            }
        }
    }
    // We closed the session: give the writer a moment to send the close frame.
    if timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Writes the stream's frames; batches everything ready into one flush.
///
/// A client that takes nothing for `write_timeout` is dropped: the writer ends, and with it the
/// reader, so a closed session (logout, slow consumer) cannot linger behind a full socket.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SessionStream,
    write_timeout: Duration,
) {
    let mut frames = Vec::new();
    loop {
        match stream.next(&mut frames).await {
            Ok(()) => {
                let batch = async {
                    for frame in frames.drain(..) {
                        sink.feed(Message::Text(Utf8Bytes::from(&*frame))).await?;
                    }
                    sink.flush().await
                };
                if !matches!(timeout(write_timeout, batch).await, Ok(Ok(()))) {
                    return;
                }
            }
            Err(code) => {
                let frame = Message::Close(Some(CloseFrame {
                    code: code.code(),
                    reason: code.reason().into(),
                }));
                let _ = timeout(CLOSE_GRACE, sink.send(frame)).await;
                return;
            }
        }
    }
}
