//! Bad input of every kind gets its documented error code. A bad request leaves the connection
//! open; only framing errors (oversized or binary frames) and failed authentication close it.

use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::frame::ServerFrame;
use natter_client::protocol::{CloseCode, ErrorCode, Visibility};

/// The connection still answers after an error.
async fn still_alive(raw: &mut RawSocket) {
    assert!(matches!(
        raw.request(r#"{"id":999,"type":"ping"}"#).await,
        ServerFrame::Pong { .. }
    ));
}

#[tokio::test]
async fn malformed_frames_get_error_codes_and_the_connection_survives() {
    let server = TestServer::start().await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::authenticated(&server.base_url, &ana.token).await;
    let cases: &[(&str, Option<u64>, ErrorCode)] = &[
        ("{not json", None, ErrorCode::BadFrame),
        ("[1, 2, 3]", None, ErrorCode::BadFrame),
        (r#"{"type":"ping"}"#, None, ErrorCode::BadFrame),
        (r#"{"id":"seven","type":"ping"}"#, None, ErrorCode::BadFrame),
        (r#"{"id":7}"#, Some(7), ErrorCode::BadFrame),
        (
            r#"{"id":8,"type":"teleport"}"#,
            Some(8),
            ErrorCode::UnknownType,
        ),
        (
            r#"{"id":9,"type":"send","room_id":"general","client_msg_id":"a","body":"x"}"#,
            Some(9),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":10,"type":"send","room_id":1}"#,
            Some(10),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":11,"type":"create_room","name":"x","visibility":"secret"}"#,
            Some(11),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":12,"type":"history","room_id":1,"limit":-5}"#,
            Some(12),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":13,"type":"hello","token":"again"}"#,
            Some(13),
            ErrorCode::AlreadyAuthenticated,
        ),
    ];
    for (frame, id, code) in cases {
        assert_eq!(raw.error_code_of(frame).await, (*id, *code), "{frame}");
    }
    still_alive(&mut raw).await;
}

#[tokio::test]
async fn invalid_values_are_refused_before_anything_is_stored() {
    let server = TestServer::start_with(|s| s.limits.max_message_bytes = 1000).await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::authenticated(&server.base_url, &ana.token).await;
    let ServerFrame::Room { room, .. } = raw
        .request(r#"{"id":1,"type":"create_room","name":"general","visibility":"public"}"#)
        .await
    else {
        panic!("room created")
    };
    let long_id = "x".repeat(65);
    let big_body = "y".repeat(1001);
    let cases = [
        (
            format!(
                r#"{{"id":2,"type":"send","room_id":{},"client_msg_id":"a","body":"   "}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":3,"type":"send","room_id":{},"client_msg_id":"","body":"hi"}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":16,"type":"send","room_id":{},"client_msg_id":"nul","body":"a\u0000b"}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":4,"type":"send","room_id":{},"client_msg_id":"{long_id}","body":"hi"}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":5,"type":"send","room_id":{},"client_msg_id":"b","body":"{big_body}"}}"#,
                room.id
            ),
            ErrorCode::TooLarge,
        ),
        (
            format!(
                r#"{{"id":6,"type":"history","room_id":{},"limit":0}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":7,"type":"history","room_id":{},"limit":100000}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":8,"type":"history","room_id":{},"before":5,"after":1}}"#,
                room.id
            ),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":9,"type":"create_room","name":"  ","visibility":"public"}"#.to_owned(),
            ErrorCode::InvalidField,
        ),
        (
            format!(
                r#"{{"id":10,"type":"create_room","name":"{}","visibility":"public"}}"#,
                "n".repeat(81)
            ),
            ErrorCode::TooLarge,
        ),
        (
            r#"{"id":11,"type":"create_room","name":"bad\u0007name","visibility":"public"}"#
                .to_owned(),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":12,"type":"create_room","name":"General","visibility":"private"}"#.to_owned(),
            ErrorCode::Conflict,
        ),
        (
            format!(r#"{{"id":13,"type":"update_room","room_id":{}}}"#, room.id),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":14,"type":"open_dm","usernames":[]}"#.to_owned(),
            ErrorCode::InvalidField,
        ),
        (
            r#"{"id":15,"type":"open_dm","usernames":["ana"]}"#.to_owned(),
            ErrorCode::InvalidField,
        ),
    ];
    for (frame, code) in &cases {
        assert_eq!(raw.error_code_of(frame).await.1, *code, "{frame}");
    }
    let ServerFrame::History { messages, .. } = raw
        .request(&format!(
            r#"{{"id":20,"type":"history","room_id":{}}}"#,
            room.id
        ))
        .await
    else {
        panic!()
    };
    assert!(messages.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn requests_before_hello_are_refused_until_hello() {
    let server = TestServer::start().await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::connect(&server.base_url).await;
    assert_eq!(
        raw.error_code_of(r#"{"id":1,"type":"list_rooms"}"#).await,
        (Some(1), ErrorCode::NotAuthenticated)
    );
    assert_eq!(
        raw.error_code_of("nonsense").await,
        (None, ErrorCode::BadFrame)
    );
    let welcome = raw
        .request(&format!(
            r#"{{"id":2,"type":"hello","token":"{}"}}"#,
            ana.token
        ))
        .await;
    assert!(matches!(welcome, ServerFrame::Welcome { .. }));
}

#[tokio::test]
async fn a_bad_token_is_refused_and_the_connection_closed() {
    let server = TestServer::start().await;
    let mut raw = RawSocket::connect(&server.base_url).await;
    assert_eq!(
        raw.error_code_of(r#"{"id":1,"type":"hello","token":"not-a-token"}"#)
            .await,
        (Some(1), ErrorCode::AuthFailed)
    );
    assert_eq!(
        raw.recv().await,
        Received::Closed(Some(CloseCode::AuthFailed.code()))
    );
    let mut anonymous = RawSocket::connect(&server.base_url).await;
    assert_eq!(
        anonymous.error_code_of(r#"{"id":1,"type":"hello"}"#).await,
        (Some(1), ErrorCode::AuthFailed)
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_before_and_after_hello() {
    let server = TestServer::start_with(|s| {
        s.limits.auth_timeout_ms = 300;
        s.limits.heartbeat_interval_ms = 200;
        s.limits.heartbeat_timeout_ms = 600;
    })
    .await;
    let ana = server.user("ana").await;
    let mut never_says_hello = RawSocket::connect(&server.base_url).await;
    assert_eq!(
        never_says_hello.recv().await,
        Received::Closed(Some(CloseCode::AuthTimeout.code()))
    );
    // After hello: heartbeats keep coming, but a client that sends nothing is cut off.
    let mut silent = RawSocket::authenticated(&server.base_url, &ana.token).await;
    assert_eq!(
        silent.recv().await,
        Received::Closed(Some(CloseCode::HeartbeatTimeout.code()))
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_a_binary_frame_with_1003() {
    let server = TestServer::start_with(|s| s.limits.max_frame_bytes = 4096).await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::authenticated(&server.base_url, &ana.token).await;
    raw.send(&format!(
        r#"{{"id":1,"type":"ping","pad":"{}"}}"#,
        "p".repeat(5000)
    ))
    .await;
    assert_eq!(
        raw.recv().await,
        Received::Closed(Some(CloseCode::TooBig.code()))
    );
    let mut binary = RawSocket::authenticated(&server.base_url, &ana.token).await;
    binary.send_binary(vec![1, 2, 3]).await;
    assert_eq!(
        binary.recv().await,
        Received::Closed(Some(CloseCode::Unsupported.code()))
    );
}

#[tokio::test]
async fn a_connection_over_its_rate_is_told_when_to_retry() {
    let server = TestServer::start_with(|s| {
        s.limits.rate_per_sec = 2.0;
        s.limits.rate_burst = 3.0;
    })
    .await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::authenticated(&server.base_url, &ana.token).await;
    for id in 1..=3 {
        assert!(matches!(
            raw.request(&format!(r#"{{"id":{id},"type":"ping"}}"#))
                .await,
            ServerFrame::Pong { .. }
        ));
    }
    match raw.request(r#"{"id":4,"type":"ping"}"#).await {
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            retryable: true,
            retry_after_ms: Some(ms),
            ..
        } => {
            assert!(ms > 0 && ms <= 500, "retry after {ms} ms");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    assert!(matches!(
        raw.request(r#"{"id":5,"type":"ping"}"#).await,
        ServerFrame::Pong { .. }
    ));
}

#[tokio::test]
async fn the_client_crate_reports_errors_without_losing_its_connection() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let room = create_channel(&ana, "lobby", Visibility::Public).await;
    let error = ana.send_message(room.id, "").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidField));
    ana.send_message(room.id, "still here").await.unwrap();
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_before_and_after_hello() {
    let server = TestServer::start().await;
    let ana = server.user("ana").await;
    let mut anonymous = RawSocket::connect(&server.base_url).await;
    assert_eq!(anonymous.close().await, Received::Closed(Some(1000)));
    let mut raw = RawSocket::authenticated(&server.base_url, &ana.token).await;
    assert_eq!(raw.close().await, Received::Closed(Some(1000)));
}

#[tokio::test]
async fn a_request_that_is_not_a_version_13_handshake_is_refused_with_a_status() {
    let server = TestServer::start().await;
    let url = format!("{}/api/v1/ws", server.base_url);
    let http = reqwest::Client::new();
    let plain = http.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let old_version = http
        .get(&url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(old_version.status(), 426);
    assert_eq!(old_version.headers()["sec-websocket-version"], "13");
}

/// RFC 6455: a ping is answered with a pong carrying its payload, also while the connection's
/// writer is busy with a stream of events (the pong shares its lock).
#[tokio::test]
async fn a_websocket_ping_is_answered_while_events_stream_in() {
    let server = TestServer::start().await;
    let (ana_auth, ana) = server.connected("ana").await;
    let room = create_channel(&ana, "busy", Visibility::Public).await;
    let mut raw = RawSocket::authenticated(&server.base_url, &ana_auth.token).await;
    let sender = tokio::spawn(async move {
        for n in 0..400 {
            ana.send_message(room.id, format!("m{n}")).await.unwrap();
        }
    });
    for n in 0..5u8 {
        let payload = [b'p', n];
        assert_eq!(raw.ping(&payload).await, payload);
    }
    sender.await.unwrap();
}
