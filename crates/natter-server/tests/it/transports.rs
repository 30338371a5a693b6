//! One protocol suite, run over each transport: WebSocket, Server-Sent Events + POST, and
//! long-polling + POST. The same scenarios, the same guarantees (order, resume, errors, auth).

use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::frame::{ClientFrame, Request, ServerFrame};
use natter_client::protocol::{
    ErrorCode, RequestId, RoomEvent, RoomId, RoomSeq, Visibility, codec,
};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    WebSocket,
    Sse,
    Poll,
}

/// A client speaking the protocol over one transport, frame by frame.
pub(crate) struct Wire {
    kind: Kind,
    base: String,
    token: String,
    http: reqwest::Client,
    socket: Option<RawSocket>,
    sse: Option<reqwest::Response>,
    sse_buffer: String,
    poll_cursor: Option<String>,
    pending: VecDeque<ServerFrame>,
    next_id: u64,
}

fn cursor_text(cursors: &BTreeMap<RoomId, RoomSeq>) -> String {
    cursors
        .iter()
        .map(|(r, s)| format!("{r}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Wire {
    /// Connects and returns once the welcome (or, resuming a poll, the first answer) is in.
    pub(crate) async fn open(
        kind: Kind,
        base: &str,
        token: &str,
        resume: &BTreeMap<RoomId, RoomSeq>,
    ) -> Wire {
        let mut wire = Wire {
            kind,
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
            socket: None,
            sse: None,
            sse_buffer: String::new(),
            poll_cursor: None,
            pending: VecDeque::new(),
            next_id: 100,
        };
        match kind {
            Kind::WebSocket => {
                let mut socket = RawSocket::connect(base).await;
                let resume: BTreeMap<String, u64> =
                    resume.iter().map(|(r, s)| (r.to_string(), s.0)).collect();
                let hello =
                    serde_json::json!({"id": 1, "type": "hello", "token": token, "resume": resume});
                socket.send(&hello.to_string()).await;
                wire.socket = Some(socket);
            }
            Kind::Sse => {
                let url = format!(
                    "{base}/api/v1/sse?token={token}&resume={}",
                    cursor_text(resume)
                );
                let response = wire.http.get(url).send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                assert_eq!(response.headers()["content-type"], "text/event-stream");
                wire.sse = Some(response);
            }
            Kind::Poll => {
                // A resumed poll continues from the cursors; a fresh one starts with a welcome,
                // which a client fetches as it connects.
                if resume.is_empty() {
                    wire.poll().await;
                } else {
                    wire.poll_cursor = Some(cursor_text(resume));
                }
            }
        }
        wire
    }

    /// One long-poll: its frames join the queue, its cursor is kept for the next.
    async fn poll(&mut self) {
        let mut url = format!("{}/api/v1/poll?timeout=5", self.base);
        if let Some(cursor) = &self.poll_cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let request = self.http.get(url).bearer_auth(&self.token);
        let answer: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        self.poll_cursor = Some(answer["cursor"].as_str().unwrap().to_owned());
        for frame in answer["frames"].as_array().unwrap() {
            self.pending
                .push_back(serde_json::from_value(frame.clone()).unwrap());
        }
    }

    pub(crate) async fn request(&mut self, request: Request) -> ServerFrame {
        self.next_id += 1;
        let frame = ClientFrame {
            id: RequestId(self.next_id),
            request,
        };
        match self.kind {
            Kind::WebSocket => {
                let socket = self.socket.as_mut().unwrap();
                socket.send(&codec::encode(&frame)).await;
                loop {
                    match socket.recv().await {
                        Received::Frame(f) if f.reply_to() == Some(frame.id) => return f,
                        Received::Frame(f) => self.pending.push_back(f),
                        Received::Closed(code) => panic!("closed: {code:?}"),
                    }
                }
            }
            Kind::Sse | Kind::Poll => {
                let response = self
                    .http
                    .post(format!("{}/api/v1/rpc", self.base))
                    .bearer_auth(&self.token)
                    .body(codec::encode(&frame))
                    .send()
                    .await
                    .unwrap();
                codec::decode_server_frame(&response.text().await.unwrap()).unwrap()
            }
        }
    }

    /// The next pushed frame (not a heartbeat), within the test's patience.
    async fn next(&mut self) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.pending.pop_front() {
                if frame != ServerFrame::Heartbeat {
                    return frame;
                }
                continue;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no frame over {:?}",
                self.kind
            );
            match self.kind {
                Kind::WebSocket => match self.socket.as_mut().unwrap().recv().await {
                    Received::Frame(frame) => self.pending.push_back(frame),
                    Received::Closed(code) => panic!("closed: {code:?}"),
                },
                Kind::Sse => {
                    while let Some(end) = self.sse_buffer.find("\n\n") {
                        let event: String = self.sse_buffer.drain(..end + 2).collect();
                        for line in event.lines() {
                            if let Some(data) = line.strip_prefix("data: ") {
                                self.pending
                                    .push_back(codec::decode_server_frame(data).unwrap());
                            }
                        }
                    }
                    if self.pending.is_empty() {
                        let chunk = tokio::time::timeout(WAIT, self.sse.as_mut().unwrap().chunk())
                            .await
                            .expect("an SSE chunk")
                            .unwrap()
                            .expect("the stream stays open");
                        self.sse_buffer
                            .push_str(std::str::from_utf8(&chunk).unwrap());
                    }
                }
                Kind::Poll => self.poll().await,
            }
        }
    }

    /// The next room event: `(room, seq, event)`.
    async fn next_event(&mut self) -> (RoomId, RoomSeq, RoomEvent) {
        loop {
            if let ServerFrame::Event {
                room_id,
                seq,
                event,
                ..
            } = self.next().await
            {
                return (room_id, seq, event);
            }
        }
    }
}

/// Bo joins over the transport; returns the sequence after which the room's events follow.
pub(crate) async fn joined(wire: &mut Wire, room: RoomId) -> RoomSeq {
    let reply = wire.request(Request::Join { room_id: room }).await;
    let ServerFrame::Room { room: info, .. } = reply else {
        panic!("{reply:?}")
    };
    // The join is the newest event when it answers; everything after it follows.
    let mut cursor = RoomSeq(info.last_seq.0 - 1);
    loop {
        let (room_id, seq, event) = wire.next_event().await;
        if room_id == room && seq == cursor.next() {
            cursor = seq;
            if matches!(event, RoomEvent::MemberJoined { .. }) {
                return cursor;
            }
        }
    }
}

pub(crate) async fn messages_in_order(
    wire: &mut Wire,
    room: RoomId,
    mut cursor: RoomSeq,
    count: usize,
) -> (Vec<String>, RoomSeq) {
    let mut bodies = Vec::new();
    while bodies.len() < count {
        let (room_id, seq, event) = wire.next_event().await;
        if room_id != room {
            continue;
        }
        assert_eq!(seq, cursor.next(), "gapless, in order, no duplicate");
        cursor = seq;
        if let RoomEvent::MessageCreated { message } = event {
            bodies.push(message.body);
        }
    }
    (bodies, cursor)
}

async fn chat_in_real_time(kind: Kind) {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let bo = server.user("bo").await;
    let room = create_channel(&ana, "general", Visibility::Public).await;
    let mut wire = Wire::open(kind, &server.base_url, &bo.token, &BTreeMap::new()).await;
    let cursor = joined(&mut wire, room.id).await;
    for n in 0..5 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let (bodies, _) = messages_in_order(&mut wire, room.id, cursor, 5).await;
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    let reply = wire
        .request(Request::Send {
            room_id: room.id,
            client_msg_id: natter_client::protocol::ClientMsgId("from-bo".into()),
            body: "hi ana".into(),
        })
        .await;
    assert!(matches!(reply, ServerFrame::Sent { .. }), "{reply:?}");
    let body = wait_for(&mut ana, |f| match f {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } if message.author.username == "bo" => Some(message.body.clone()),
        _ => None,
    })
    .await;
    assert_eq!(body, "hi ana");
}

async fn resume_after_a_drop_while_others_keep_sending(kind: Kind) {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let bo = server.user("bo").await;
    let room = create_channel(&ana, "resume", Visibility::Public).await;
    let mut wire = Wire::open(kind, &server.base_url, &bo.token, &BTreeMap::new()).await;
    let cursor = joined(&mut wire, room.id).await;
    for n in 0..10 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let (first, cursor) = messages_in_order(&mut wire, room.id, cursor, 10).await;
    drop(wire);
    for n in 10..30 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let resume: BTreeMap<RoomId, RoomSeq> = [(room.id, cursor)].into();
    let mut wire = Wire::open(kind, &server.base_url, &bo.token, &resume).await;
    let (rest, _) = messages_in_order(&mut wire, room.id, cursor, 20).await;
    let all: Vec<String> = first.into_iter().chain(rest).collect();
    assert_eq!(all, (0..30).map(|n| format!("m{n}")).collect::<Vec<_>>());
}

async fn errors_and_authorization_behave_the_same(kind: Kind) {
    let server = TestServer::start_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 3.0;
    })
    .await;
    let ana = server.user("ana").await;
    let eve = server.user("eve").await;
    let mut ana_wire = Wire::open(kind, &server.base_url, &ana.token, &BTreeMap::new()).await;
    let reply = ana_wire
        .request(Request::CreateRoom {
            name: "private".into(),
            visibility: Visibility::Private,
            topic: String::new(),
        })
        .await;
    let ServerFrame::Room { room, .. } = reply else {
        panic!("{reply:?}")
    };
    let mut eve_wire = Wire::open(kind, &server.base_url, &eve.token, &BTreeMap::new()).await;
    let denied = eve_wire
        .request(Request::History {
            room_id: room.id,
            before: None,
            after: None,
            limit: None,
        })
        .await;
    assert!(
        matches!(
            denied,
            ServerFrame::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{denied:?}"
    );
    let unknown = eve_wire
        .request(Request::Join {
            room_id: RoomId(999),
        })
        .await;
    assert!(
        matches!(
            unknown,
            ServerFrame::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{unknown:?}"
    );
    // The request budget holds over every transport.
    let mut limited = false;
    for _ in 0..6 {
        if let ServerFrame::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(_),
            ..
        } = eve_wire.request(Request::Ping).await
        {
            limited = true;
        }
    }
    assert!(limited, "rate limited over {kind:?}");
}

async fn a_bad_token_is_refused(kind: Kind) {
    let server = TestServer::start().await;
    match kind {
        Kind::WebSocket => {
            let mut raw = RawSocket::connect(&server.base_url).await;
            assert_eq!(
                raw.error_code_of(r#"{"id":1,"type":"hello","token":"nope"}"#)
                    .await
                    .1,
                ErrorCode::AuthFailed
            );
        }
        Kind::Sse | Kind::Poll => {
            let path = if matches!(kind, Kind::Sse) {
                "sse"
            } else {
                "poll"
            };
            let client = reqwest::Client::new();
            let stream = client
                .get(format!("{}/api/v1/{path}?token=nope", server.base_url))
                .send()
                .await
                .unwrap();
            assert_eq!(stream.status().as_u16(), 401);
            let rpc = client
                .post(format!("{}/api/v1/rpc", server.base_url))
                .bearer_auth("nope")
                .body(r#"{"id":1,"type":"ping"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(rpc.status().as_u16(), 401);
            let body: serde_json::Value = rpc.json().await.unwrap();
            assert_eq!(body["code"], "auth_failed");
        }
    }
}

macro_rules! over_every_transport {
    ($($scenario:ident),* $(,)?) => {
        mod websocket {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Kind::WebSocket).await })*
        }
        mod sse {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Kind::Sse).await })*
        }
        mod long_poll {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Kind::Poll).await })*
        }
    };
}

over_every_transport!(
    chat_in_real_time,
    resume_after_a_drop_while_others_keep_sending,
    errors_and_authorization_behave_the_same,
    a_bad_token_is_refused,
);

#[tokio::test]
async fn an_sse_stream_and_its_requests_may_land_on_different_nodes() {
    let database = TestDatabase::create().await;
    let a = TestServer::node(&database).await;
    let b = TestServer::node(&database).await;
    let (_, ana) = a.connected("ana").await;
    let bo = b.user("bo").await;
    let room = create_channel(&ana, "split", Visibility::Public).await;
    // The stream from node A, the requests to node B: nothing is sticky.
    let mut wire = Wire::open(Kind::Sse, &a.base_url, &bo.token, &BTreeMap::new()).await;
    wire.base = b.base_url.clone();
    let cursor = joined(&mut wire, room.id).await;
    let reply = wire
        .request(Request::Send {
            room_id: room.id,
            client_msg_id: natter_client::protocol::ClientMsgId("x".into()),
            body: "sent to b, seen on a".into(),
        })
        .await;
    assert!(matches!(reply, ServerFrame::Sent { .. }));
    let (bodies, _) = messages_in_order(&mut wire, room.id, cursor, 1).await;
    assert_eq!(bodies, ["sent to b, seen on a"]);
}

/// A shutdown closes every session (`close_all`) before the server stops; a stream that starts in
/// between is ended at once the way its transport ends a session, so the client reconnects (to
/// another node, behind a balancer) rather than reading an error.
#[tokio::test]
async fn a_stream_started_while_the_server_shuts_down_is_told_to_reconnect() {
    let server = TestServer::start().await;
    let ana = server.user("ana").await;
    server
        .hub
        .close_all(natter_client::protocol::CloseCode::ShuttingDown);
    let http = reqwest::Client::new();
    let base = &server.base_url;
    let poll: serde_json::Value = http
        .get(format!("{base}/api/v1/poll?timeout=5"))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(poll["frames"], serde_json::json!([]));
    assert_eq!(poll["close"]["code"], 4004);
    let sse = http
        .get(format!("{base}/api/v1/sse"))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let text = tokio::time::timeout(WAIT, sse.text())
        .await
        .unwrap()
        .unwrap();
    assert!(
        text.starts_with("event: close\ndata: {\"code\":4004,"),
        "got {text:?}"
    );
}

/// `SessionStream::take_ready`, which the WebSocket writer calls after a yield so that a send's
/// reply joins the batch that carries its echo. Below the transports, with the real store: the
/// batching itself has no outcome a client could tell apart, but these two promises do.
mod taking_ready_frames {
    use natter_core::ports::store::TokenId;
    use natter_core::session::{Credentials, Greeting, Session, SessionStream};
    use natter_core::{App, Limits};
    use natter_protocol::frame::ServerFrame;
    use natter_protocol::{CloseCode, RequestId};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    /// A started session whose greeting the stream has already yielded.
    async fn started() -> (tempfile::TempDir, Session, SessionStream) {
        let (dir, store) = crate::support::sqlite_store();
        let user = store
            .create_user("ana", "Ana", "hash", false)
            .await
            .unwrap();
        let token = TokenId([7; 32]);
        let expires = natter_core::now_ms() + 3_600_000;
        store
            .insert_token(token, user.info.id, expires)
            .await
            .unwrap();
        let app = App::single_node(store, Limits::default());
        let credentials = Credentials::check(&app, token).await.unwrap().unwrap();
        let greeting = Greeting::Welcome(RequestId(1));
        let (session, mut stream) = Session::start(app, credentials, greeting, BTreeMap::new())
            .await
            .unwrap();
        let mut greeted = Vec::new();
        stream.next(&mut greeted).await.unwrap();
        assert!(greeted[0].contains(r#""type":"welcome""#), "{greeted:?}");
        (dir, session, stream)
    }

    fn pong(id: u64) -> ServerFrame {
        ServerFrame::Pong { id: RequestId(id) }
    }

    /// The batch `next` yields once a reply (`pong` 2) is queued.
    async fn next_with_one_reply(session: &Session, stream: &mut SessionStream) -> Vec<Arc<str>> {
        let mut batch = Vec::new();
        session.queue(&pong(2));
        stream.next(&mut batch).await.unwrap();
        batch
    }

    fn texts(batch: &[Arc<str>]) -> Vec<&str> {
        batch.iter().map(|frame| &**frame).collect()
    }

    /// Fails the test instead of hanging it: `take_ready` must not wait for frames to come.
    const AT_ONCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn what_was_queued_after_next_joins_the_batch_in_order_and_nothing_is_awaited() {
        let (_dir, session, mut stream) = started().await;
        let mut batch = next_with_one_reply(&session, &mut stream).await;
        session.queue(&pong(3));
        session.queue(&pong(4));
        let taken = tokio::time::timeout(AT_ONCE, stream.take_ready(&mut batch)).await;
        assert_eq!(taken.expect("take_ready waited"), Ok(()));
        assert_eq!(
            texts(&batch),
            [
                r#"{"type":"pong","id":2}"#,
                r#"{"type":"pong","id":3}"#,
                r#"{"type":"pong","id":4}"#
            ]
        );
        // Nothing more is queued: it returns at once and adds nothing.
        let taken = tokio::time::timeout(AT_ONCE, stream.take_ready(&mut batch)).await;
        assert_eq!(taken.expect("take_ready waited for a frame"), Ok(()));
        assert_eq!(batch.len(), 3);
    }

    #[tokio::test]
    async fn a_close_found_by_take_ready_leaves_the_frames_already_taken_to_be_written() {
        let (_dir, session, mut stream) = started().await;
        let mut batch = next_with_one_reply(&session, &mut stream).await;
        session.close(CloseCode::Revoked);
        let taken = tokio::time::timeout(AT_ONCE, stream.take_ready(&mut batch)).await;
        assert_eq!(taken.expect("take_ready waited"), Err(CloseCode::Revoked));
        assert_eq!(texts(&batch), [r#"{"type":"pong","id":2}"#]);
    }
}
