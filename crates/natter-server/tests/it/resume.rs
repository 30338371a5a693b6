//! Resume: a client that loses its connection, or the server, gets every missed event exactly
//! once, in order.

use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::frame::ServerFrame;
use natter_client::protocol::{CloseCode, RoomEvent, RoomSeq, Visibility};
use natter_client::{ClientEvent, ConnectionState};
use std::time::Duration;

#[tokio::test]
async fn a_dropped_connection_resumes_with_no_gap_and_no_duplicate_while_others_keep_sending() {
    const COUNT: usize = 300;
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "flaky", Visibility::Public).await;
    let from = join_and_follow(&mut bo, room.id).await;

    let sender = tokio::spawn(async move {
        for n in 0..COUNT {
            ana.send_message(room.id, format!("m{n}")).await.unwrap();
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    // Drop Bo's connection three times while Ana sends; collect everything in between.
    let mut bodies = Vec::new();
    let mut cursor = from;
    let mut drops = 0;
    while bodies.len() < COUNT {
        let (room_id, seq, event) = next_room_event(&mut bo).await;
        assert_eq!(room_id, room.id);
        assert_eq!(
            seq,
            cursor.next(),
            "no gap and no duplicate across reconnects"
        );
        cursor = seq;
        if let RoomEvent::MessageCreated { message } = event {
            bodies.push(message.body);
        }
        if drops < 3 && bodies.len() == 60 * (drops + 1) {
            bo.drop_connection();
            drops += 1;
        }
    }
    sender.await.unwrap();
    assert_eq!(drops, 3);
    assert_eq!(
        bodies,
        (0..COUNT).map(|n| format!("m{n}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_new_session_receives_every_event_after_its_snapshot() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let bo_auth = server.user("bo").await;
    let room = create_channel(&ana, "snapshots", Visibility::Public).await;
    {
        let bo = server.client(&bo_auth).await;
        join(&bo, room.id).await;
    }
    let sender = tokio::spawn(async move {
        for n in 0..400 {
            ana.send_message(room.id, format!("m{n}")).await.unwrap();
        }
    });
    // Sessions that start mid-stream: the first event after the welcome is the snapshot's next.
    for _ in 0..5 {
        let mut bo = server.client(&bo_auth).await;
        let rooms = expect_connected(&mut bo).await;
        let snapshot = rooms.iter().find(|r| r.id == room.id).unwrap().last_seq;
        let mut cursor = snapshot;
        for _ in 0..10 {
            let (_, seq, _) = next_room_event(&mut bo).await;
            assert_eq!(seq, cursor.next());
            cursor = seq;
        }
        bo.close();
    }
    sender.await.unwrap();
}

#[tokio::test]
async fn a_resume_beyond_the_gap_limit_says_so_and_sends_the_newest_events() {
    let server = TestServer::start_with(|s| s.limits.resume_gap_limit = 5).await;
    let (_, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "far-behind", Visibility::Public).await;
    join_and_follow(&mut bo, room.id).await;
    let (_, seq, _) = next_room_event(&mut bo).await;
    let cursors = bo.cursors();
    assert_eq!(cursors[&room.id], seq);
    bo.close();
    drop(bo);

    for n in 0..20 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let mut options = server.options(&bo_auth);
    options.resume = cursors;
    let mut bo = natter_client::Client::connect(options).await.unwrap();
    expect_connected(&mut bo).await;
    let last = RoomSeq(seq.0 + 20);
    let gap = wait_for(&mut bo, |frame| match frame {
        ServerFrame::Gap {
            from_seq, to_seq, ..
        } => Some((*from_seq, *to_seq)),
        ServerFrame::Event { .. } => panic!("the gap frame comes before the events"),
        _ => None,
    })
    .await;
    assert_eq!(gap, (seq.next(), RoomSeq(last.0 - 5)));
    let bodies = collect_messages(&mut bo, room.id, 5, RoomSeq(last.0 - 5)).await;
    assert_eq!(bodies, ["m15", "m16", "m17", "m18", "m19"]);
}

#[tokio::test]
async fn a_server_restart_is_survived_by_clients_that_resume_and_retry() {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "restarts", Visibility::Public).await;
    let from = join_and_follow(&mut bo, room.id).await;
    ana.send_message(room.id, "before").await.unwrap();
    // The join (from + 1), then the message (from + 2).
    assert_eq!(
        collect_messages(&mut bo, room.id, 1, from).await,
        ["before"]
    );

    let mut server = server;
    server.stop().await;
    // Both clients were told to reconnect, with the shutdown close code.
    for client in [&mut ana, &mut bo] {
        loop {
            match client.next_event_within(WAIT).await {
                Some(ClientEvent::Disconnected { close_code }) => {
                    assert_eq!(close_code, Some(CloseCode::ShuttingDown.code()));
                    break;
                }
                Some(_) => continue,
                None => panic!("no disconnect after shutdown"),
            }
        }
        assert_eq!(client.state(), ConnectionState::Reconnecting);
    }
    // A send made while the server is down is delivered once it is back.
    let pending = tokio::spawn(async move {
        let message = ana.send_message(room.id, "while down").await.unwrap();
        (ana, message)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = server.start_again().await;
    let (ana, message) = pending.await.unwrap();
    assert_eq!(message.body, "while down");
    ana.send_message(room.id, "after").await.unwrap();

    let bodies = collect_messages(&mut bo, room.id, 2, RoomSeq(from.0 + 2)).await;
    assert_eq!(bodies, ["while down", "after"]);
    drop(server);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_resume_and_loses_nothing() {
    const COUNT: usize = 400;
    let server = TestServer::start_with(|s| s.limits.outbox_capacity = 16).await;
    let (_, ana) = server.connected("ana").await;
    let bo = server.user("bo").await;
    let room = create_channel(&ana, "firehose", Visibility::Public).await;
    {
        let client = server.client(&bo).await;
        join(&client, room.id).await;
    }
    let start = ana.send_message(room.id, "start").await.unwrap().seq;

    // Bo's socket reads nothing while Ana sends megabytes: its queue overflows.
    let mut slow = RawSocket::authenticated(&server.base_url, &bo.token).await;
    let body = "x".repeat(15_000);
    for _ in 0..COUNT {
        ana.send_message(room.id, body.clone()).await.unwrap();
    }
    let mut cursor = start;
    let close = loop {
        match slow.recv().await {
            Received::Frame(ServerFrame::Event { seq, .. }) => {
                assert_eq!(seq, cursor.next());
                cursor = seq;
            }
            Received::Frame(_) => {}
            Received::Closed(code) => break code,
        }
    };
    assert_eq!(close, Some(CloseCode::Resume.code()));
    let last = RoomSeq(start.0 + COUNT as u64);
    assert!(cursor < last, "the consumer was cut off before the end");

    // Resuming from where it got to brings the rest, in order.
    let mut resumed = RawSocket::connect(&server.base_url).await;
    resumed
        .send(&format!(
            r#"{{"id":1,"type":"hello","token":"{}","resume":{{"{}":{}}}}}"#,
            bo.token, room.id, cursor
        ))
        .await;
    while cursor < last {
        match resumed.recv().await {
            Received::Frame(ServerFrame::Event { seq, .. }) => {
                assert_eq!(seq, cursor.next());
                cursor = seq;
            }
            Received::Frame(_) => {}
            Received::Closed(code) => panic!("closed while resuming: {code:?}"),
        }
    }
}

#[tokio::test]
async fn a_resume_never_replays_what_happened_while_the_user_was_not_a_member() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (cy_auth, mut cy) = server.connected("cy").await;
    let room = create_channel(&ana, "members-only", Visibility::Private).await;
    ana.request(natter_client::protocol::frame::Request::Invite {
        room_id: room.id,
        username: "cy".into(),
    })
    .await
    .unwrap();
    let from = wait_for(&mut cy, |f| match f {
        ServerFrame::RoomAdded { room: r } => Some(r.last_seq),
        _ => None,
    })
    .await;
    collect_messages(&mut cy, room.id, 0, from).await;
    let (_, seq, _) = next_room_event(&mut cy).await;
    let cursors = cy.cursors();
    assert_eq!(cursors[&room.id], seq);
    cy.close();
    drop(cy);

    ana.request(natter_client::protocol::frame::Request::Kick {
        room_id: room.id,
        user_id: cy_auth.user.id,
    })
    .await
    .unwrap();
    ana.send_message(room.id, "secret plans").await.unwrap();
    ana.request(natter_client::protocol::frame::Request::Invite {
        room_id: room.id,
        username: "cy".into(),
    })
    .await
    .unwrap();
    ana.send_message(room.id, "hello again").await.unwrap();

    let mut options = server.options(&cy_auth);
    options.resume = cursors;
    let mut cy = natter_client::Client::connect(options).await.unwrap();
    expect_connected(&mut cy).await;
    // What cy missed while a member (the kick), the end of that membership, then the new one.
    let mut story = Vec::new();
    loop {
        let frame = wait_for(&mut cy, |f| match f {
            ServerFrame::Event { event, .. } => Some(match event {
                RoomEvent::MemberLeft { .. } => "left".to_owned(),
                RoomEvent::MemberJoined { .. } => "joined".to_owned(),
                RoomEvent::MessageCreated { message } => message.body.clone(),
                _ => "other".to_owned(),
            }),
            ServerFrame::RoomRemoved { .. } => Some("room_removed".to_owned()),
            ServerFrame::RoomAdded { .. } => Some("room_added".to_owned()),
            _ => None,
        })
        .await;
        let done = frame == "hello again";
        story.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(
        story,
        [
            "left",
            "room_removed",
            "room_added",
            "joined",
            "hello again"
        ]
    );
}
