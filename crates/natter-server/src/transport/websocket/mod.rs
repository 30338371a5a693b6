//! The WebSocket transport (`GET /api/v1/ws`).
//!
//! The first frame must be `hello`; its token (or the session cookie, when the upgrade came from
//! an allowed origin) is checked before a session exists. Then one task reads requests and queues
//! each reply, and another writes whatever the session stream yields, so events keep flowing
//! while a request waits on the store. The framing itself is in [`wire`]: natter speaks RFC 6455
//! directly on the upgraded socket so that a batch of shared frames goes out in one `writev`.
//!
//! Cross-site WebSocket hijacking: browsers attach cookies to a WebSocket upgrade from any page,
//! so the cookie counts only when the `Origin` is the server's own or in `allowed_origins`. A
//! token in `hello` needs no such check: another site's page cannot know it.

mod wire;

use super::origin_allowed;
use crate::auth;
use crate::http::{ApiError, ServerState};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use hyper_util::rt::TokioIo;
use natter_core::services::ServiceError;
use natter_core::session::{Greeting, Session, SessionStream};
use natter_protocol::frame::{ClientFrame, Request as ClientRequest, ServerFrame};
use natter_protocol::websocket::Opcode;
use natter_protocol::{CloseCode, ErrorCode, RequestId, codec};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout, timeout_at};
use wire::{Incoming, ReadError, Reader, Writer};

/// The close code that answers a client's own close frame.
const NORMAL_CLOSURE: u16 = 1000;

/// How long the server waits for its close frame to be written before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type Io = TokioIo<hyper::upgrade::Upgraded>;
/// The writer, shared with the reader for pongs and for the answer to a client's close; and
/// what the writer knows of the reader.
struct Shared {
    /// A `futures` lock rather than tokio's: the writer takes it for every batch, almost always
    /// uncontended, and its uncontended path is one atomic swap against tokio's semaphore (CPU
    /// per delivery about 3% lower at 30,000 deliveries/s, docs/benchmarks.md).
    writer: futures_util::lock::Mutex<Writer<WriteHalf<Io>>>,
    /// Pongs waiting for the lock. It is not fair: a writer with frames always ready would take
    /// it back at once, so it first steps aside for them.
    pongs_waiting: AtomicUsize,
    /// Requests the reader has in flight (as of its last turn). A send's echo (its own `event`)
    /// reaches the outbox from the commit just before the send's `sent` reply does, so a writer
    /// woken while a request is in flight yields once and takes what came meanwhile: on one
    /// core, or whenever the reader gets its turn first, echo and reply go out in one `writev`.
    /// At a steady 10,000 sends/s they had been two writes per send, each a trip through
    /// loopback TCP (docs/benchmarks.md). A reply that waits on more than the store (a broker's
    /// publish to other nodes) usually misses the batch and goes in the next, as before.
    requests_in_flight: AtomicUsize,
}

impl Shared {
    /// The writer, for a pong: counted in `pongs_waiting` until it has the lock (or gives up
    /// waiting: dropped by its timeout).
    async fn lock_for_pong(&self) -> futures_util::lock::MutexGuard<'_, Writer<WriteHalf<Io>>> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.pongs_waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.pongs_waiting);
        self.writer.lock().await
    }
}

type SharedWriter = Arc<Shared>;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// # `GET /api/v1/ws`
/// - Upgrades to a WebSocket speaking the protocol of `docs/protocol.md` (RFC 6455, version 13).
/// - A request that is not a WebSocket handshake gets 400 `bad_frame`; another version than 13
///   gets 426 with `Sec-WebSocket-Version: 13`.
/// - Messages above `max_frame_bytes` close the connection with 1009.
pub async fn upgrade(State(state): State<ServerState>, mut request: Request) -> Response {
    let headers = request.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    // A key is 16 random bytes in base64: 24 characters ending in "==".
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| {
            let key = key.as_bytes();
            key.len() == 24
                && key.ends_with(b"==")
                && key[..22]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        })
        .cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return ApiError::new(ErrorCode::BadFrame, "expected a WebSocket handshake")
            .into_response();
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        // RFC 6455 §4.4: say which version this server speaks.
        let mut refusal = ApiError::new(
            ErrorCode::BadFrame,
            "unsupported WebSocket version; this server speaks 13",
        )
        .into_response();
        *refusal.status_mut() = StatusCode::UPGRADE_REQUIRED;
        refusal.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return refusal;
    }
    let cookie_token = if origin_allowed(headers, &state.config.settings.allowed_origins) {
        auth::cookie_token(headers)
    } else {
        None
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), state, cookie_token).await,
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The socket before `hello`: one task, both directions.
struct Handshaking {
    reader: Reader<ReadHalf<Io>>,
    writer: Writer<WriteHalf<Io>>,
}

impl Handshaking {
    async fn close(&mut self, code: CloseCode) {
        let _ = timeout(CLOSE_GRACE, self.writer.close_with(code)).await;
    }

    /// Sends a frame before the auth deadline; false if the client did not take it in time.
    async fn reply_by(&mut self, deadline: Instant, frame: ServerFrame) -> bool {
        let text: Arc<str> = Arc::from(codec::encode(&frame));
        timeout_at(deadline, self.writer.write_text(&[text]))
            .await
            .is_ok_and(|sent| sent.is_ok())
    }
}

/// What `hello` established.
struct Hello {
    session: Session,
    stream: SessionStream,
}

/// Reads frames until a valid `hello`. Returns `None` when the connection is over. Everything,
/// the replies to a client that does not read included, happens before the auth deadline.
async fn await_hello(
    socket: &mut Handshaking,
    state: &ServerState,
    cookie_token: Option<String>,
) -> Option<Hello> {
    let deadline = Instant::now() + state.app.limits.auth_timeout();
    loop {
        let body = match timeout_at(deadline, socket.reader.next()).await {
            Err(_elapsed) => {
                socket.close(CloseCode::AuthTimeout).await;
                return None;
            }
            Ok(Ok(Incoming::Text(body))) => body,
            Ok(Ok(Incoming::Binary)) => {
                socket.close(CloseCode::Unsupported).await;
                return None;
            }
            Ok(Ok(Incoming::Ping(payload))) => {
                let pong = socket.writer.write_control(Opcode::Pong, &payload);
                if !matches!(timeout_at(deadline, pong).await, Ok(Ok(()))) {
                    return None;
                }
                continue;
            }
            Ok(Ok(Incoming::Pong)) => continue,
            Ok(Ok(Incoming::Close)) => {
                // Answer the client's close, as RFC 6455 asks, then end.
                let _ = timeout(CLOSE_GRACE, socket.writer.close(NORMAL_CLOSURE, "")).await;
                return None;
            }
            Ok(Err(ReadError::Io)) => return None,
            Ok(Err(ReadError::Close(code))) => {
                socket.close(code).await;
                return None;
            }
        };
        let frame = match codec::decode_client_frame(&body) {
            Ok(frame) => frame,
            Err(error) => {
                if !socket.reply_by(deadline, error.into_frame()).await {
                    return None;
                }
                continue;
            }
        };
        let ClientRequest::Hello { token, resume } = frame.request else {
            let refusal = ServerFrame::error(
                Some(frame.id),
                ErrorCode::NotAuthenticated,
                "send `hello` first",
            );
            if !socket.reply_by(deadline, refusal).await {
                return None;
            }
            continue;
        };
        let reject = |code, message: &str| ServerFrame::error(Some(frame.id), code, message);
        // After `close_all` no session may start, and the store is about to close: not read.
        if let Some(code) = state.app.hub.closing() {
            refuse_as_shutting_down(socket, deadline, frame.id, code).await;
            return None;
        }
        let Some(token) = token.or_else(|| cookie_token.clone()) else {
            socket
                .reply_by(deadline, reject(ErrorCode::AuthFailed, "no token given"))
                .await;
            socket.close(CloseCode::AuthFailed).await;
            return None;
        };
        let credentials = match auth::authenticate(state, &token).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let refusal = reject(ErrorCode::AuthFailed, "unknown, expired or revoked token");
                socket.reply_by(deadline, refusal).await;
                socket.close(CloseCode::AuthFailed).await;
                return None;
            }
            // The store may have failed because the server began shutting down meanwhile.
            Err(_) if let Some(code) = state.app.hub.closing() => {
                refuse_as_shutting_down(socket, deadline, frame.id, code).await;
                return None;
            }
            Err(_) => {
                let reply = reject(
                    ErrorCode::Unavailable,
                    "storage is unavailable; reconnect later",
                );
                socket.reply_by(deadline, reply).await;
                socket.close(CloseCode::TryAgainLater).await;
                return None;
            }
        };
        let user_id = credentials.user.info.id;
        match Session::start(
            state.app.clone(),
            credentials,
            Greeting::Welcome(frame.id),
            resume,
        )
        .await
        {
            Ok((session, stream)) => {
                tracing::debug!(%user_id, "session started");
                return Some(Hello { session, stream });
            }
            // The server began shutting down meanwhile: the hub refused the session.
            Err(_) if let Some(code) = state.app.hub.closing() => {
                refuse_as_shutting_down(socket, deadline, frame.id, code).await;
                return None;
            }
            Err(error) => {
                socket
                    .reply_by(deadline, reject(error.code, &error.message))
                    .await;
                // Its token was revoked while the session started (`Session::start`).
                let close = if error.code == ErrorCode::AuthFailed {
                    CloseCode::Revoked
                } else {
                    CloseCode::TryAgainLater
                };
                socket.close(close).await;
                return None;
            }
        }
    }
}

/// Answers a `hello` that came as the server shuts down, and closes with the shutdown's `code`.
async fn refuse_as_shutting_down(
    socket: &mut Handshaking,
    deadline: Instant,
    id: RequestId,
    code: CloseCode,
) {
    let error = ServiceError::shutting_down();
    socket
        .reply_by(
            deadline,
            ServerFrame::error(Some(id), error.code, &error.message),
        )
        .await;
    socket.close(code).await;
}

async fn serve(io: Io, state: ServerState, cookie_token: Option<String>) {
    let (read, write) = tokio::io::split(io);
    let mut socket = Handshaking {
        reader: Reader::new(read, state.app.limits.max_frame_bytes),
        writer: Writer::new(write),
    };
    let Some(Hello { session, stream }) =
        Box::pin(await_hello(&mut socket, &state, cookie_token)).await
    else {
        return;
    };
    let Handshaking { reader, writer } = socket;
    let heartbeat_timeout = state.app.limits.heartbeat_timeout();
    let writer: SharedWriter = Arc::new(Shared {
        writer: futures_util::lock::Mutex::new(writer),
        pongs_waiting: AtomicUsize::new(0),
        requests_in_flight: AtomicUsize::new(0),
    });
    let writing = tokio::spawn(write_frames(writer.clone(), stream, heartbeat_timeout));
    // The connection goes on in tasks of their own: this one's state machine carries everything
    // the handshake needed, which an idle connection should not hold (docs/benchmarks.md).
    tokio::spawn(run(reader, writer, writing, session, heartbeat_timeout));
}

/// A connection after `hello`: this task reads and answers requests; `writing` writes.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
fn run(
    mut reader: Reader<ReadHalf<Io>>,
    writer: SharedWriter,
    mut writing: tokio::task::JoinHandle<()>,
    session: Session,
    heartbeat_timeout: Duration,
) -> impl Future<Output = ()> {
    // An async block rather than an async fn: an async fn's future keeps its arguments twice
    // (as passed and as moved into its body), a block uses what it captured in place. Every
    // connection holds this future: 912 bytes became 672.
    async move {
        let end = read_requests(
            &mut reader,
            &session,
            &writer,
            &mut writing,
            heartbeat_timeout,
        )
        .await;
        match end {
            ReadEnd::WriterDone => {}
            ReadEnd::ClientGone => writing.abort(),
            ReadEnd::ClientClosed => {
                // Answer the client's close, as RFC 6455 asks; the writer stops first (its lock is
                // released once it is cancelled).
                writing.abort();
                let _ = timeout(CLOSE_GRACE, async {
                    writer.writer.lock().await.close(NORMAL_CLOSURE, "").await
                })
                .await;
            }
            ReadEnd::Close(code) => {
                // We closed the session: give the writer a moment to send the close frame.
                session.close(code);
                if timeout(CLOSE_GRACE, &mut writing).await.is_err() {
                    writing.abort();
                }
            }
        }
    }
}

/// Requests of one connection in flight at most (pipelined sends); fewer with a small outbox,
/// which must hold their replies and the echo of each message besides.
const MAX_IN_FLIGHT: usize = 32;

type Answer<'a> = Pin<Box<dyn Future<Output = ServerFrame> + Send + 'a>>;

/// Why a connection stopped reading.
enum ReadEnd {
    /// The writer ended (the session was closed: slow consumer, revoked, shutdown); it has sent
    /// the close frame.
    WriterDone,
    /// The socket failed or ended: nothing more can be sent.
    ClientGone,
    /// The client sent a close frame: answer it and end.
    ClientClosed,
    /// The server ends the connection with this code.
    Close(CloseCode),
}

/// Reads requests and answers each, in order. Sends may pipeline (`Session::may_pipeline`): up
/// to `MAX_IN_FLIGHT` run at once, so one connection's sends share a group commit. Any other
/// request waits for those in flight and runs alone. Replies go out in request order.
async fn read_requests(
    reader: &mut Reader<ReadHalf<Io>>,
    session: &Session,
    writer: &SharedWriter,
    writing: &mut tokio::task::JoinHandle<()>,
    heartbeat_timeout: Duration,
) -> ReadEnd {
    let max_in_flight = MAX_IN_FLIGHT.min(session.outbox_capacity() / 4).max(1);
    // Requests being answered, boxed: a request's future is large and lives only while it runs.
    // The set itself exists only while something is in flight, so an idle connection carries
    // neither.
    let mut in_flight: Option<FuturesOrdered<Answer<'_>>> = None;
    let mut alone = false;
    let mut parked: Option<Box<ClientFrame>> = None;
    loop {
        let running = in_flight.as_ref().map_or(0, FuturesOrdered::len);
        writer.requests_in_flight.store(running, Ordering::Relaxed);
        let may_read = parked.is_none() && !alone && running < max_in_flight;
        tokio::select! {
            _ = &mut *writing => return ReadEnd::WriterDone,
            Some(reply) = next_answer(&mut in_flight), if running > 0 => {
                session.queue(&reply);
                if in_flight.as_ref().is_some_and(FuturesOrdered::is_empty) {
                    in_flight = None;
                    alone = false;
                    if let Some(frame) = parked.take() {
                        alone = true;
                        start(&mut in_flight, Box::pin(session.handle(*frame)));
                    }
                }
            }
            next = timeout(heartbeat_timeout, reader.next()), if may_read => match next {
                Err(_elapsed) => return ReadEnd::Close(CloseCode::HeartbeatTimeout),
                Ok(Ok(Incoming::Text(body))) => match codec::decode_client_frame(&body) {
                    Ok(frame) if session.may_pipeline(&frame.request) => {
                        start(&mut in_flight, Box::pin(session.handle(frame)));
                    }
                    Ok(frame) if running == 0 => {
                        alone = true;
                        start(&mut in_flight, Box::pin(session.handle(frame)));
                    }
                    Ok(frame) => parked = Some(Box::new(frame)),
                    // Queued behind what is in flight, so replies stay in request order.
                    Err(error) => start(&mut in_flight, Box::pin(std::future::ready(error.into_frame()))),
                },
                Ok(Ok(Incoming::Ping(payload))) => {
                    // The pong waits for the writer in a task of its own: reading (and the
                    // requests in flight) must not stop behind a writer stuck on a full socket.
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        let pong = async {
                            let mut locked = writer.lock_for_pong().await;
                            locked.write_control(Opcode::Pong, &payload).await
                        };
                        let _ = timeout(heartbeat_timeout, pong).await;
                    });
                }
                Ok(Ok(Incoming::Pong)) => {}
                Ok(Ok(Incoming::Binary)) => return ReadEnd::Close(CloseCode::Unsupported),
                Ok(Err(ReadError::Close(code))) => return ReadEnd::Close(code),
                Ok(Ok(Incoming::Close)) => return ReadEnd::ClientClosed,
                Ok(Err(ReadError::Io)) => return ReadEnd::ClientGone,
            }
        }
    }
}

fn start<'a>(in_flight: &mut Option<FuturesOrdered<Answer<'a>>>, answer: Answer<'a>) {
    in_flight
        .get_or_insert_with(FuturesOrdered::new)
        .push_back(answer);
}

async fn next_answer(in_flight: &mut Option<FuturesOrdered<Answer<'_>>>) -> Option<ServerFrame> {
    match in_flight {
        Some(answers) => answers.next().await,
        None => None,
    }
}

/// Writes the stream's frames; everything ready goes out in one batch.
///
/// A client that takes nothing for `write_timeout` is dropped: the writer ends, and with it the
/// reader, so a closed session (logout, slow consumer) cannot linger behind a full socket.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
fn write_frames(
    writer: SharedWriter,
    mut stream: SessionStream,
    write_timeout: Duration,
) -> impl Future<Output = ()> {
    // An async block, like `run`'s, so the arguments are not kept twice: 696 bytes became 488.
    async move {
        let mut frames = Vec::new();
        loop {
            // Frames taken from the session go out even when it closes right after: they have
            // left the outbox, and nothing else would write them. The close follows them.
            let mut close = stream.next(&mut frames).await.err();
            let reply_due =
                close.is_none() && writer.requests_in_flight.load(Ordering::Relaxed) > 0;
            if reply_due || writer.pongs_waiting.load(Ordering::Relaxed) > 0 {
                // Tasks already woken run first: the reader, which may be about to queue its
                // reply, and a pong, woken when this task last unlocked the writer.
                tokio::task::yield_now().await;
            }
            if reply_due {
                close = stream.take_ready(&mut frames).await.err();
            }
            let mut writer = writer.writer.lock().await;
            if !frames.is_empty() {
                // Most batches go straight into the socket buffer: arm the stall timer only for
                // a write that has to wait. Boxed: an idle writer should not hold a write's
                // state (docs/benchmarks.md).
                let written = Box::pin(async {
                    let mut write = pin!(writer.write_text(&frames));
                    match poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                        Poll::Ready(done) => Ok(done),
                        Poll::Pending => timeout(write_timeout, write).await,
                    }
                })
                .await;
                // Freed after every batch: an idle connection keeps no buffer, and one
                // allocation per write is nothing beside the write itself.
                frames = Vec::new();
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
            if let Some(code) = close {
                let _ = Box::pin(timeout(CLOSE_GRACE, writer.close_with(code))).await;
                return;
            }
        }
    }
}
