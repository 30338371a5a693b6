//! The HTTP transports, for clients whose network breaks WebSocket upgrades.
//!
//! - `POST /api/v1/rpc`: one request frame in, its one reply frame out.
//! - `GET /api/v1/sse`: the event stream as Server-Sent Events. Each event that moves a room's
//!   position carries an `id:` with every room's cursor, so the browser's automatic reconnect
//!   (`Last-Event-ID`) resumes exactly where it stopped.
//! - `GET /api/v1/poll`: long-polling. Answers as soon as there is something (or after
//!   `timeout` seconds) with the frames and the cursor to send next time.
//!
//! Nothing is kept between HTTP requests: a stream's session lives as long as its response, and
//! the cursors travel with the client. Any node can answer any of these requests, so a client
//! behind a round-robin proxy works with no sticky sessions. Authentication: `Authorization:
//! Bearer`, or `?token=` (EventSource cannot set headers), or the session cookie from an allowed
//! origin, as for the WebSocket.

use super::origin_allowed;
use crate::auth;
use crate::http::{ApiError, ServerState};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use natter_core::ports::store::TokenId;
use natter_core::session::{Credentials, Greeting, RateLimiter, Session, SessionStream, answer};
use natter_protocol::frame::{Request, ServerFrame};
use natter_protocol::{CloseCode, ErrorCode, RequestId, RoomId, RoomSeq, codec};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-token request budgets for `POST /api/v1/rpc` (what a connection has on the WebSocket).
#[derive(Default)]
pub struct RpcLimits {
    buckets: Mutex<HashMap<TokenId, RateLimiter>>,
}

impl RpcLimits {
    fn take(&self, token: TokenId, rate: f64, burst: f64) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            // Forget idle buckets: a full bucket is what a new one would be anyway.
            buckets.retain(|_, bucket| bucket.idle(now) < Duration::from_secs(60));
        }
        buckets
            .entry(token)
            .or_insert_with(|| RateLimiter::new(rate, burst))
            .take(now)
    }
}

#[derive(Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
    /// Cursors to resume from (`room:seq,room:seq`); `Last-Event-ID` wins for SSE.
    resume: Option<String>,
    /// Long-poll: the cursor from the previous answer. Without it, the answer starts with a welcome.
    cursor: Option<String>,
    /// Long-poll: seconds to wait for something to happen (1 to 60, default 25).
    timeout: Option<u64>,
}

/// Every room's position, as the client would keep it, and its compact text form.
#[derive(Default, Clone)]
struct Cursors(BTreeMap<RoomId, RoomSeq>);

impl Cursors {
    fn parse(text: &str) -> Result<Cursors, ApiError> {
        let mut map = BTreeMap::new();
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let parsed = pair
                .split_once(':')
                .and_then(|(room, seq)| Some((room.parse().ok()?, seq.parse().ok()?)));
            let Some((room, seq)) = parsed else {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    format!("cursor `{pair}` is not `room:seq`"),
                ));
            };
            map.insert(RoomId(room), RoomSeq(seq));
        }
        Ok(Cursors(map))
    }

    fn encode(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(room, seq)| format!("{room}:{seq}"))
            .collect();
        pairs.join(",")
    }

    /// Follows one outgoing frame; true if a room's position moved.
    fn observe(&mut self, frame: &str) -> bool {
        // Room events are nearly all the traffic: read their two numbers without a parse.
        if let Some(rest) = frame.strip_prefix(r#"{"type":"event","room_id":"#) {
            let number = |text: &str| -> Option<u64> {
                text.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            };
            let room = number(rest);
            let seq = rest
                .find(r#","seq":"#)
                .and_then(|at| number(&rest[at + 7..]));
            if let (Some(room), Some(seq)) = (room, seq) {
                self.0.insert(RoomId(room as i64), RoomSeq(seq));
                return true;
            }
            return false;
        }
        let interesting = [
            r#"{"type":"welcome""#,
            r#"{"type":"gap""#,
            r#"{"type":"room_"#,
        ];
        if !interesting.iter().any(|prefix| frame.starts_with(prefix)) {
            return false;
        }
        match codec::decode_server_frame(frame) {
            Ok(ServerFrame::Welcome { rooms, .. }) => {
                let known = std::mem::take(&mut self.0);
                for room in rooms {
                    let seq = known
                        .get(&room.id)
                        .map_or(room.last_seq, |c| (*c).min(room.last_seq));
                    self.0.insert(room.id, seq);
                }
                true
            }
            Ok(ServerFrame::Gap {
                room_id, to_seq, ..
            }) => {
                self.0.insert(room_id, to_seq);
                true
            }
            Ok(ServerFrame::RoomAdded { room }) => {
                self.0.insert(room.id, room.last_seq);
                true
            }
            Ok(ServerFrame::RoomRemoved { room_id }) => self.0.remove(&room_id).is_some(),
            _ => false,
        }
    }
}

fn frame_response(status: StatusCode, frame: &ServerFrame) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        codec::encode(frame),
    )
        .into_response()
}

/// The token a request carries and the account behind it.
async fn authenticate(
    state: &ServerState,
    headers: &HeaderMap,
    query_token: Option<String>,
) -> Result<Credentials, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let cookie = origin_allowed(headers, &state.config.settings.allowed_origins)
        .then(|| auth::cookie_token(headers))
        .flatten();
    let Some(token) = bearer.or(query_token).or(cookie) else {
        return Err(ApiError::new(ErrorCode::AuthFailed, "no token given"));
    };
    match auth::authenticate(state, &token).await? {
        Some(found) => Ok(found),
        None => Err(ApiError::new(
            ErrorCode::AuthFailed,
            "unknown, expired or revoked token",
        )),
    }
}

/// # `POST /api/v1/rpc`
/// - Body: one client frame (`{"id":1,"type":"send",…}`); answer: its one reply frame, status 200
///   (a failed request is an `error` frame, as on the WebSocket).
/// - 401 with an `auth_failed` error frame when the token is missing or refused.
pub async fn rpc(State(state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let Credentials { user, token } = match authenticate(&state, &headers, None).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let frame = match std::str::from_utf8(&body)
        .map_err(|_| codec::DecodeError {
            id: None,
            code: ErrorCode::BadFrame,
            message: "not UTF-8".into(),
        })
        .and_then(codec::decode_client_frame)
    {
        Ok(frame) => frame,
        Err(error) => return frame_response(StatusCode::OK, &error.into_frame()),
    };
    if let Request::Hello { .. } = frame.request {
        let refusal = ServerFrame::error(
            Some(frame.id),
            ErrorCode::InvalidField,
            "`hello` opens a stream; over HTTP each request carries its token",
        );
        return frame_response(StatusCode::OK, &refusal);
    }
    let limits = &state.app.limits;
    if let Err(retry_after_ms) =
        state
            .rpc_limits
            .take(token, limits.rate_per_sec, limits.rate_burst)
    {
        let limited = ServerFrame::Error {
            id: Some(frame.id),
            code: ErrorCode::RateLimited,
            message: "too many requests".into(),
            retryable: true,
            retry_after_ms: Some(retry_after_ms),
        };
        return frame_response(StatusCode::OK, &limited);
    }
    let reply = answer(&state.app, &user, frame.id, frame.request, None).await;
    frame_response(StatusCode::OK, &reply)
}

/// Why a stream did not start: the server is shutting down (the transport tells the client to
/// reconnect, as it would end a live session), or an error to answer with.
enum NotStarted {
    Closing(CloseCode),
    Refused(Response),
}

async fn start_session(
    state: &ServerState,
    credentials: Credentials,
    greeting: Greeting,
    resume: &Cursors,
) -> Result<(Session, SessionStream), NotStarted> {
    Session::start(state.app.clone(), credentials, greeting, resume.0.clone())
        .await
        .map_err(|error| match state.app.hub.closing() {
            Some(code) => NotStarted::Closing(code),
            None => NotStarted::Refused(ApiError::from(error).into_response()),
        })
}

/// The SSE event that ends a stream with `code`.
fn sse_close(code: CloseCode) -> String {
    format!(
        "event: close\ndata: {{\"code\":{},\"reason\":\"{}\"}}\n\n",
        code.code(),
        code.reason()
    )
}

fn event_stream(body: Body) -> Response {
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
            // nginx would otherwise buffer the stream.
            (
                axum::http::HeaderName::from_static("x-accel-buffering"),
                "no",
            ),
        ],
        body,
    )
        .into_response()
}

/// # `GET /api/v1/sse`
/// - `text/event-stream` of server frames (`data:` lines), starting with `welcome`. Frames that
///   move a room's position carry `id:` with every room's cursor; on reconnect the browser sends
///   it back as `Last-Event-ID` and the stream resumes from there (or give `?resume=`).
/// - When the server ends the session it sends `event: close` with `{"code":…}` (the WebSocket
///   close codes) before closing the response.
pub async fn sse(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Response {
    let credentials = match authenticate(&state, &headers, query.token).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let resume = match last_event_id
        .or(query.resume.as_deref())
        .map(Cursors::parse)
    {
        Some(Ok(cursors)) => cursors,
        Some(Err(error)) => return error.into_response(),
        None => Cursors::default(),
    };
    let (session, stream) = match start_session(
        &state,
        credentials,
        Greeting::Welcome(RequestId(0)),
        &resume,
    )
    .await
    {
        Ok(pair) => pair,
        Err(NotStarted::Closing(code)) => return event_stream(Body::from(sse_close(code))),
        Err(NotStarted::Refused(response)) => return response,
    };
    struct Live {
        _session: Session,
        stream: SessionStream,
        cursors: Cursors,
        frames: Vec<Arc<str>>,
        done: bool,
    }
    let live = Live {
        _session: session,
        stream,
        cursors: resume,
        frames: Vec::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(live, |mut live| async move {
        if live.done {
            return None;
        }
        let mut chunk = String::new();
        match live.stream.next(&mut live.frames).await {
            Ok(()) => {
                for frame in live.frames.drain(..) {
                    if live.cursors.observe(&frame) {
                        chunk.push_str("id: ");
                        chunk.push_str(&live.cursors.encode());
                        chunk.push('\n');
                    }
                    chunk.push_str("data: ");
                    chunk.push_str(&frame);
                    chunk.push_str("\n\n");
                }
            }
            Err(code) => {
                chunk = sse_close(code);
                live.done = true;
            }
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), live))
    });
    event_stream(Body::from_stream(events))
}

/// # `GET /api/v1/poll`
/// - Answers `{"cursor":"…","frames":[…]}` as soon as there are frames, or with no frames after
///   `timeout` seconds (default 25). Send `cursor` back with the next poll.
/// - The first poll (no `cursor`) starts with `welcome`, after which the events since `resume`
///   follow when it is given (as for `hello`); later polls announce rooms joined or left in between
///   as `room_added` / `room_removed`.
/// - A session the server ended answers with a `close` member: `{"code":…}`.
pub async fn poll(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Response {
    let credentials = match authenticate(&state, &headers, query.token).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let parsed = match (query.cursor.as_deref(), query.resume.as_deref()) {
        (Some(cursor), _) => Cursors::parse(cursor).map(|c| (Greeting::Quiet, c)),
        (None, Some(resume)) => {
            Cursors::parse(resume).map(|c| (Greeting::Welcome(RequestId(0)), c))
        }
        (None, None) => Ok((Greeting::Welcome(RequestId(0)), Cursors::default())),
    };
    let (greeting, cursors) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error.into_response(),
    };
    let wait = Duration::from_secs(query.timeout.unwrap_or(25).clamp(1, 60));
    let (_session, mut stream) = match start_session(&state, credentials, greeting, &cursors).await
    {
        Ok(pair) => pair,
        Err(NotStarted::Closing(code)) => return poll_answer(&cursors, &[], Some(code)),
        Err(NotStarted::Refused(response)) => return response,
    };
    let mut cursors = cursors;
    let mut frames = Vec::new();
    let mut close: Option<CloseCode> = None;
    let deadline = tokio::time::Instant::now() + wait;
    // Wait for the first frames, then take what follows within a moment, in one answer.
    loop {
        let limit = if frames.is_empty() {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(20)
        };
        let mut batch = Vec::new();
        match tokio::time::timeout_at(limit, stream.next(&mut batch)).await {
            Ok(Ok(())) => {
                frames.extend(
                    batch
                        .into_iter()
                        .filter(|f| !f.starts_with(r#"{"type":"heartbeat""#)),
                );
                if frames.len() >= 1000 {
                    break;
                }
            }
            Ok(Err(code)) => {
                close = Some(code);
                break;
            }
            Err(_elapsed) if !frames.is_empty() || tokio::time::Instant::now() >= deadline => break,
            Err(_elapsed) => {}
        }
    }
    for frame in &frames {
        cursors.observe(frame);
    }
    poll_answer(&cursors, &frames, close)
}

/// `{"cursor":…,"frames":[…]}`, with `"close"` when the session ended.
fn poll_answer(cursors: &Cursors, frames: &[Arc<str>], close: Option<CloseCode>) -> Response {
    let mut body = format!(r#"{{"cursor":"{}","frames":["#, cursors.encode());
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(frame);
    }
    body.push(']');
    if let Some(code) = close {
        body.push_str(&format!(r#","close":{{"code":{}}}"#, code.code()));
    }
    body.push('}');
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_follow_events_gaps_and_membership() {
        let mut cursors = Cursors::parse("3:10,4:2").unwrap();
        assert!(cursors.observe(r#"{"type":"event","room_id":3,"seq":11,"at":0,"actor":1,"event":{"kind":"message_deleted","message_id":1}}"#));
        assert!(cursors.observe(r#"{"type":"gap","room_id":4,"from_seq":3,"to_seq":40}"#));
        assert!(cursors.observe(r#"{"type":"room_removed","room_id":4}"#));
        assert!(!cursors.observe(r#"{"type":"heartbeat"}"#));
        assert_eq!(cursors.encode(), "3:11");
        assert!(Cursors::parse("3:x").is_err());
    }
}
