//! Liveness: presence, typing, delivery and read receipts, unread counts.

use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{
    ErrorCode, PresenceInfo, PresenceStatus, RoomId, RoomSeq, UserId, Visibility,
};
use natter_client::{Auth, Client, ClientEvent};
use std::time::Duration;

/// Presence changes are published after this window in these tests.
async fn quick_presence_server() -> TestServer {
    TestServer::start_with(|s| s.limits.presence_coalesce_ms = 50).await
}

/// Ana and Bo share a channel; returns it once both have been online for longer than the
/// coalescing window (a shorter stay is a flap, which by design is never published).
async fn shared_room(ana: &Client, bo: &mut Client) -> RoomId {
    let room = create_channel(ana, "together", Visibility::Public).await;
    join_and_follow(bo, room.id).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    room.id
}

/// The presence list of the `welcome` that `auth`'s `hello` gets, over a socket of its own.
async fn welcome_presence(server: &TestServer, auth: &Auth) -> Vec<PresenceInfo> {
    match RawSocket::welcomed(&server.base_url, &auth.token).await.1 {
        ServerFrame::Welcome { presence, .. } => presence,
        _ => unreachable!("`welcomed` returns a welcome"),
    }
}

#[tokio::test]
async fn presence_reaches_those_who_share_a_room_and_no_one_else() {
    let server = quick_presence_server().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let (_, mut eve) = server.connected("eve").await;
    shared_room(&ana, &mut bo).await;
    bo.close();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Offline, WAIT).await;
    let _bo_again = server.client(&bo_auth).await;
    assert_eq!(
        presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Online, WAIT).await,
        None
    );
    for status in [PresenceStatus::Online, PresenceStatus::Offline] {
        assert!(
            no_presence_of(
                &mut eve,
                bo_auth.user.id,
                status,
                Duration::from_millis(200)
            )
            .await
        );
    }
}

#[tokio::test]
async fn the_welcome_tells_who_of_the_users_contacts_is_online() {
    let server = quick_presence_server().await;
    let (ana_auth, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    server.connected("eve").await;
    shared_room(&ana, &mut bo).await;
    let presence = welcome_presence(&server, &bo_auth).await;
    assert_eq!(
        presence.len(),
        1,
        "only ana shares a room with bo: {presence:?}"
    );
    assert_eq!(
        (presence[0].user_id, presence[0].status),
        (ana_auth.user.id, PresenceStatus::Online)
    );
}

/// A server that shuts down with users online records when each was last seen before its store
/// closes, so their contacts learn it after the restart.
#[tokio::test]
async fn a_shutdown_records_when_everyone_online_was_last_seen() {
    // A window longer than the sessions take to end at shutdown: the offline changes are still
    // waiting it out when the store would close.
    let mut server = TestServer::start_with(|s| s.limits.presence_coalesce_ms = 400).await;
    let (ana_auth, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    shared_room(&ana, &mut bo).await;
    // Online for longer than the window, so that going offline is a change to record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;
    // Closed only now: closing them first would record their leaving while the server runs.
    drop((ana, bo));
    let server = server.start_again().await;
    let presence = welcome_presence(&server, &ana_auth).await;
    let bo_now = presence
        .iter()
        .find(|p| p.user_id == bo_auth.user.id)
        .expect("bo shares a room with ana");
    assert_eq!(bo_now.status, PresenceStatus::Offline);
    assert!(
        bo_now.last_seen.is_some_and(|at| at > 0),
        "bo's last seen, recorded at the shutdown: {bo_now:?}"
    );
}

/// Above `presence_room_limit` members a channel shares no presence (a welcome would list
/// everyone in it); a direct message shares it whatever the limit.
#[tokio::test]
async fn a_channel_above_the_presence_limit_shares_no_presence_and_a_direct_message_does() {
    let server = TestServer::start_with(|s| {
        s.limits.presence_coalesce_ms = 50;
        s.limits.presence_room_limit = 2;
    })
    .await;
    let (ana_auth, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let (_, mut eve) = server.connected("eve").await;
    let room = shared_room(&ana, &mut bo).await;
    join_and_follow(&mut eve, room).await;
    let bo_seen_by_ana =
        |presence: Vec<PresenceInfo>| presence.iter().any(|p| p.user_id == bo_auth.user.id);
    assert!(!bo_seen_by_ana(welcome_presence(&server, &ana_auth).await));
    bo.request(Request::OpenDm {
        usernames: vec!["ana".into()],
    })
    .await
    .unwrap();
    assert!(bo_seen_by_ana(welcome_presence(&server, &ana_auth).await));
}

#[tokio::test]
async fn a_user_with_two_devices_is_online_until_the_last_one_leaves() {
    let server = quick_presence_server().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut phone) = server.connected("bo").await;
    shared_room(&ana, &mut phone).await;
    let laptop = server.client(&bo_auth).await;
    laptop.close();
    assert!(
        no_presence_of(
            &mut ana,
            bo_auth.user.id,
            PresenceStatus::Offline,
            Duration::from_millis(300)
        )
        .await,
        "still online on the phone"
    );
    phone.close();
    let last_seen =
        presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Offline, WAIT).await;
    assert!(
        last_seen.is_some_and(|at| at > 0),
        "offline carries last seen"
    );
}

#[tokio::test]
async fn away_is_when_every_session_says_so() {
    let server = quick_presence_server().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut phone) = server.connected("bo").await;
    shared_room(&ana, &mut phone).await;
    let laptop = server.client(&bo_auth).await;
    let away = || Request::SetPresence {
        status: PresenceStatus::Away,
    };
    phone.request(away()).await.unwrap();
    assert!(
        no_presence_of(
            &mut ana,
            bo_auth.user.id,
            PresenceStatus::Away,
            Duration::from_millis(300)
        )
        .await,
        "the laptop is active"
    );
    laptop.request(away()).await.unwrap();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Away, WAIT).await;
    laptop
        .request(Request::SetPresence {
            status: PresenceStatus::Online,
        })
        .await
        .unwrap();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Online, WAIT).await;
    let error = laptop
        .request(Request::SetPresence {
            status: PresenceStatus::Offline,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidField));
}

#[tokio::test]
async fn a_connection_that_dies_without_a_goodbye_goes_offline_after_the_heartbeat_timeout() {
    let server = TestServer::start_with(|s| {
        s.limits.presence_coalesce_ms = 50;
        s.limits.heartbeat_interval_ms = 200;
        s.limits.heartbeat_timeout_ms = 800;
    })
    .await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    shared_room(&ana, &mut bo).await;
    bo.close();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Offline, WAIT).await;
    // A client that goes silent (its process frozen, its network gone) sends nothing more.
    let _silent = RawSocket::authenticated(&server.base_url, &bo_auth.token).await;
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Online, WAIT).await;
    let started = tokio::time::Instant::now();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Offline, WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "not before the heartbeat timeout"
    );
}

#[tokio::test]
async fn an_idle_session_gets_a_heartbeat_every_interval() {
    let server = TestServer::start_with(|s| {
        s.limits.heartbeat_interval_ms = 150;
        s.limits.heartbeat_timeout_ms = 10_000;
    })
    .await;
    let ana = server.user("ana").await;
    let mut quiet = RawSocket::authenticated(&server.base_url, &ana.token).await;
    for n in 0..3 {
        assert_eq!(
            quiet.recv_any().await,
            Received::Frame(ServerFrame::Heartbeat),
            "heartbeat {n}: nothing else happens on this connection"
        );
    }
    // And the connection is as alive as the heartbeats say.
    let pong = quiet.request(r#"{"id":1,"type":"ping"}"#).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
}

#[tokio::test]
async fn typing_reaches_the_other_members_and_is_never_stored() {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let (_, eve) = server.connected("eve").await;
    let room = shared_room(&ana, &mut bo).await;
    let mut bo_laptop = server.client(&bo_auth).await;
    expect_connected(&mut bo_laptop).await;
    let before = newest_messages(&ana, room).await.len();
    let ServerFrame::Done { seq: None, .. } =
        bo.request(Request::Typing { room_id: room }).await.unwrap()
    else {
        panic!("typing answers done without a sequence")
    };
    let typist = wait_for(&mut ana, |f| match f {
        ServerFrame::Typing { room_id, user } if *room_id == room => Some(user.username.clone()),
        _ => None,
    })
    .await;
    assert_eq!(typist, "bo");
    // Not to the typist's own devices, and not stored.
    bo.request(Request::Ping).await.unwrap();
    while let Some(event) = bo_laptop
        .next_event_within(Duration::from_millis(200))
        .await
    {
        assert!(
            !matches!(event, ClientEvent::Frame(ServerFrame::Typing { .. })),
            "{event:?}"
        );
    }
    assert_eq!(newest_messages(&ana, room).await.len(), before);
    let error = eve
        .request(Request::Typing { room_id: room })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));
}

async fn receipt_for(client: &mut Client, user_id: UserId) -> (RoomSeq, RoomSeq) {
    wait_for(client, |f| match f {
        ServerFrame::Receipt {
            user_id: u,
            delivered_seq,
            read_seq,
            ..
        } if *u == user_id => Some((*delivered_seq, *read_seq)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_read_position_only_moves_forward_and_reaches_the_readers_other_devices() {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut phone) = server.connected("bo").await;
    let room = shared_room(&ana, &mut phone).await;
    let mut laptop = server.client(&bo_auth).await;
    let mut last = RoomSeq::ZERO;
    for n in 0..5 {
        last = ana.send_message(room, format!("m{n}")).await.unwrap().seq;
    }
    let read = |seq| Request::MarkRead { room_id: room, seq };
    let target = RoomSeq(last.0 - 1);
    assert!(
        matches!(phone.request(read(target)).await.unwrap(), ServerFrame::Done { seq: Some(s), .. } if s == target)
    );
    assert_eq!(
        receipt_for(&mut laptop, bo_auth.user.id).await,
        (target, target)
    );
    assert_eq!(
        receipt_for(&mut ana, bo_auth.user.id).await,
        (target, target)
    );
    // Backwards is ignored; beyond the end is the end.
    assert!(
        matches!(phone.request(read(RoomSeq(2))).await.unwrap(), ServerFrame::Done { seq: Some(s), .. } if s == target)
    );
    assert!(
        matches!(phone.request(read(RoomSeq(10_000))).await.unwrap(), ServerFrame::Done { seq: Some(s), .. } if s == last)
    );
    let ServerFrame::Members { members, .. } = ana
        .request(Request::Members { room_id: room })
        .await
        .unwrap()
    else {
        panic!()
    };
    let bo_member = members
        .iter()
        .find(|m| m.user.id == bo_auth.user.id)
        .unwrap();
    assert_eq!((bo_member.delivered_seq, bo_member.read_seq), (last, last));
}

#[tokio::test]
async fn delivery_is_known_when_the_recipients_client_says_it_has_the_message() {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let room = shared_room(&ana, &mut bo).await;
    let joined = newest_messages(&ana, room).await.len();
    assert_eq!(joined, 0);
    let message = ana.send_message(room, "did you get this?").await.unwrap();
    let ServerFrame::Done { .. } = bo
        .request(Request::MarkDelivered {
            room_id: room,
            seq: message.seq,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let (delivered, read) = receipt_for(&mut ana, bo_auth.user.id).await;
    assert_eq!(delivered, message.seq);
    assert!(read < message.seq, "delivered is not read");
}

#[tokio::test]
async fn unread_counts_and_mentions_are_right_after_reconnect() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let room = shared_room(&ana, &mut bo).await;
    bo.close();
    drop(bo);
    ana.send_message(room, "one").await.unwrap();
    ana.send_message(room, "@bo can you look at this?")
        .await
        .unwrap();
    let last = ana
        .send_message(room, "three, for @eve who is not here")
        .await
        .unwrap()
        .seq;

    let unread_of = |rooms: &[natter_client::protocol::RoomInfo]| {
        let r = rooms.iter().find(|r| r.id == room).unwrap();
        (r.unread, r.mentions)
    };
    let mut bo = server.client(&bo_auth).await;
    assert_eq!(unread_of(&expect_connected(&mut bo).await), (3, 1));
    let mut bo_phone = server.client(&bo_auth).await;
    assert_eq!(
        unread_of(&expect_connected(&mut bo_phone).await),
        (3, 1),
        "the same on every device"
    );
    let ServerFrame::Rooms { rooms, .. } = ana.request(Request::ListRooms).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        unread_of(&rooms),
        (0, 0),
        "one's own messages are never unread"
    );

    bo.request(Request::MarkRead {
        room_id: room,
        seq: last,
    })
    .await
    .unwrap();
    bo.close();
    let mut bo = server.client(&bo_auth).await;
    assert_eq!(unread_of(&expect_connected(&mut bo).await), (0, 0));
}
