//! Accounts and login sessions over HTTP, and the ways a WebSocket session is authenticated.

use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::frame::ServerFrame;
use natter_client::protocol::{CloseCode, ErrorCode};
use natter_client::{ClientEvent, ConnectionState};
use natter_server::config::Registration;

async fn post(server: &TestServer, path: &str, body: String) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.base_url))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn the_first_account_is_the_admin_and_usernames_are_unique_ignoring_case() {
    let server = TestServer::start().await;
    let first = server.user("root").await;
    let second = server.user("ana").await;
    assert!(first.is_admin && !second.is_admin);
    let error = natter_client::register(&server.base_url, "ANA", "another-password", None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict));
}

#[tokio::test]
async fn login_needs_the_right_password_and_answers_the_same_for_unknown_users() {
    let server = TestServer::start().await;
    server.user("ana").await;
    let auth = natter_client::login(&server.base_url, "Ana", "password-ana")
        .await
        .unwrap();
    assert_eq!(auth.user.username, "ana");
    for (user, password) in [("ana", "wrong-password"), ("nobody", "password-ana")] {
        let error = natter_client::login(&server.base_url, user, password)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::AuthFailed));
    }
}

#[tokio::test]
async fn bad_registrations_get_documented_errors() {
    let server = TestServer::start().await;
    let cases = [
        (
            r#"{"username":"a","password":"long enough"}"#.to_owned(),
            400,
            "invalid_field",
        ),
        (
            r#"{"username":"has space","password":"long enough"}"#.to_owned(),
            400,
            "invalid_field",
        ),
        (
            r#"{"username":"ana","password":"short"}"#.to_owned(),
            400,
            "invalid_field",
        ),
        (
            r#"{"username":"ana","password":"long enough","display_name":""}"#.to_owned(),
            400,
            "invalid_field",
        ),
        (
            r#"{"username":"ana","password":12345678}"#.to_owned(),
            400,
            "invalid_field",
        ),
        ("not json".to_owned(), 400, "invalid_field"),
    ];
    for (body, status, code) in cases {
        let (got_status, reply) = post(&server, "/api/v1/register", body.clone()).await;
        assert_eq!(
            (got_status, reply["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let huge = format!(
        r#"{{"username":"ana","password":"{}"}}"#,
        "p".repeat(20_000)
    );
    assert_eq!(post(&server, "/api/v1/register", huge).await.0, 413);
}

#[tokio::test]
async fn logout_revokes_the_token_and_closes_its_sessions() {
    let server = TestServer::start().await;
    let ana = server.user("ana").await;
    let other_device = natter_client::login(&server.base_url, "ana", "password-ana")
        .await
        .unwrap();
    let mut client = server.client(&ana).await;
    let mut phone = server.client(&other_device).await;
    natter_client::logout(&server.base_url, &ana.token)
        .await
        .unwrap();
    loop {
        match client.next_event_within(WAIT).await {
            Some(ClientEvent::Disconnected { close_code }) => {
                assert_eq!(close_code, Some(CloseCode::Revoked.code()));
                break;
            }
            Some(_) => {}
            None => panic!("the session was not closed"),
        }
    }
    assert!(client.wait_for_state(ConnectionState::Closed, WAIT).await);
    let mut raw = RawSocket::connect(&server.base_url).await;
    assert_eq!(
        raw.error_code_of(&format!(
            r#"{{"id":1,"type":"hello","token":"{}"}}"#,
            ana.token
        ))
        .await
        .1,
        ErrorCode::AuthFailed
    );
    // The other login is untouched.
    assert!(
        phone
            .request(natter_client::protocol::frame::Request::Ping)
            .await
            .is_ok()
    );
    assert_eq!(phone.state(), ConnectionState::Online);
    let _ = phone.next_event_within(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn closed_registration_admits_the_first_account_and_then_only_what_an_admin_creates() {
    let server = TestServer::start_with(|s| s.registration = Registration::Closed).await;
    let admin = server.user("admin").await;
    let error = natter_client::register(&server.base_url, "walk-in", "password-x", None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RegistrationClosed));
    let created = natter_client::register_as(
        &server.base_url,
        Some(&admin.token),
        "invited",
        "password-y",
        Some("Invited One"),
    )
    .await
    .unwrap();
    assert_eq!(created.user.display_name, "Invited One");
    assert!(!created.is_admin);
    let error = natter_client::register_as(
        &server.base_url,
        Some(&created.token),
        "third",
        "password-z",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::RegistrationClosed),
        "only admins may register others"
    );
}

#[tokio::test]
async fn the_session_cookie_authenticates_only_from_an_allowed_origin() {
    let server =
        TestServer::start_with(|s| s.allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let ana = server.user("ana").await;
    let cookie = format!("natter_token={}", ana.token);
    let host = server.addr.to_string();
    let same_origin = format!("http://{host}");
    for (origin, accepted) in [
        (same_origin.as_str(), true),
        ("https://app.example.com", true),
        ("https://evil.example.com", false),
    ] {
        let mut raw =
            RawSocket::connect_with(&server.base_url, &[("Origin", origin), ("Cookie", &cookie)])
                .await;
        raw.send(r#"{"id":1,"type":"hello"}"#).await;
        match raw.recv().await {
            Received::Frame(ServerFrame::Welcome { user, .. }) if accepted => {
                assert_eq!(user.username, "ana")
            }
            Received::Frame(ServerFrame::Error {
                code: ErrorCode::AuthFailed,
                ..
            }) if !accepted => {}
            other => panic!("origin {origin}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn healthz_answers_when_the_store_does() {
    let server = TestServer::start().await;
    let response = reqwest::get(format!("{}/healthz", server.base_url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// A logout can land after a session's token check and before the session is in the hub, where
/// the revocation looks for sessions to close. Every transport starts sessions this way
/// (`Session::start`), so this is checked once, below the transports, with the real store.
mod revoked_while_starting {
    use natter_core::ports::store::TokenId;
    use natter_core::ports::{Envelope, UserNotice};
    use natter_core::session::{Credentials, Greeting, Session};
    use natter_core::{App, Limits};
    use natter_protocol::{CloseCode, ErrorCode, RequestId, UserId};
    use std::collections::BTreeMap;

    async fn app_with_token(token: TokenId) -> (tempfile::TempDir, App, UserId) {
        let (dir, store) = crate::support::sqlite_store();
        let user = store
            .create_user("ana", "Ana", "hash", false)
            .await
            .unwrap();
        let expires = natter_core::now_ms() + 3_600_000;
        store
            .insert_token(token, user.info.id, expires)
            .await
            .unwrap();
        (
            dir,
            App::single_node(store, Limits::default()),
            user.info.id,
        )
    }

    /// What `POST /api/v1/logout` does.
    async fn logout(app: &App, user_id: UserId, token: TokenId) {
        assert!(app.store.revoke_token(token).await.unwrap());
        let notice = UserNotice::TokenRevoked { token };
        app.publish(Envelope::User { user_id, notice }).await;
    }

    async fn checked(app: &App, token: TokenId) -> Credentials {
        let found = Credentials::check(app, token).await.unwrap();
        found.expect("a valid token")
    }

    /// The start is refused as a revoked login, and leaves nothing in the hub.
    async fn assert_refused(app: &App, credentials: Credentials) {
        let refused = start(app, credentials).await.err();
        assert_eq!(refused, Some(ErrorCode::AuthFailed));
        assert_eq!(
            app.hub.session_count(),
            0,
            "the refused session left the hub"
        );
    }

    async fn start(app: &App, credentials: Credentials) -> Result<Session, ErrorCode> {
        let greeting = Greeting::Welcome(RequestId(1));
        Session::start(app.clone(), credentials, greeting, BTreeMap::new())
            .await
            .map(|(session, _stream)| session)
            .map_err(|error| error.code)
    }

    /// A client whose `hello` was authenticated as the node began shutting down: its session
    /// does not start (the store is about to close), and it is told to reconnect.
    #[tokio::test]
    async fn no_session_starts_once_the_node_is_shutting_down() {
        let token = TokenId([1; 32]);
        let (_dir, app, _ana) = app_with_token(token).await;
        let credentials = checked(&app, token).await;
        app.hub.close_all(CloseCode::ShuttingDown);
        assert_eq!(
            start(&app, credentials).await.err(),
            Some(ErrorCode::Unavailable)
        );
        assert_eq!(
            app.hub.session_count(),
            0,
            "the refused session left the hub"
        );
    }

    #[tokio::test]
    async fn a_token_revoked_between_its_check_and_the_session_start_is_refused() {
        let token = TokenId([1; 32]);
        let (_dir, app, ana) = app_with_token(token).await;
        let credentials = checked(&app, token).await;
        logout(&app, ana, token).await;
        assert_refused(&app, credentials).await;
    }

    /// On several nodes the logout's notice comes through the broker, which may drop it.
    #[tokio::test]
    async fn a_token_revoked_meanwhile_is_refused_even_if_the_notice_never_arrives() {
        let token = TokenId([1; 32]);
        let (_dir, app, _ana) = app_with_token(token).await;
        let credentials = checked(&app, token).await;
        assert!(app.store.revoke_token(token).await.unwrap());
        assert_refused(&app, credentials).await;
    }

    #[tokio::test]
    async fn another_tokens_revocation_meanwhile_does_not_refuse_the_start() {
        let (mine, other) = (TokenId([1; 32]), TokenId([2; 32]));
        let (_dir, app, ana) = app_with_token(mine).await;
        let expires = natter_core::now_ms() + 3_600_000;
        app.store.insert_token(other, ana, expires).await.unwrap();
        let credentials = checked(&app, mine).await;
        logout(&app, ana, other).await;
        let session = start(&app, credentials).await.expect("still valid");
        assert_eq!(app.hub.session_count(), 1);
        drop(session);
    }
}
