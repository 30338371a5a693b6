//! Authorization: a user reads, sends to and sees events of only the rooms they belong to, and
//! changes a room only as far as their role allows. Every request that touches a room is tried
//! by someone who may not.

use crate::support::*;
use natter_client::Client;
use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{ErrorCode, MessageId, Role, RoomEvent, RoomId, UserId, Visibility};

async fn expect_code(client: &Client, what: &str, request: Request, code: ErrorCode) {
    match client.request(request).await {
        Err(error) => assert_eq!(error.code(), Some(code), "{what}: {error}"),
        Ok(reply) => panic!("{what}: expected {code:?}, got {reply:?}"),
    }
}

/// Every request that names a room, aimed at `room_id`.
fn room_requests(
    room_id: RoomId,
    message_id: MessageId,
    user_id: UserId,
) -> Vec<(&'static str, Request)> {
    vec![
        (
            "send",
            Request::Send {
                room_id,
                client_msg_id: natter_client::new_client_msg_id(),
                body: "hi".into(),
            },
        ),
        (
            "history",
            Request::History {
                room_id,
                before: None,
                after: None,
                limit: None,
            },
        ),
        ("members", Request::Members { room_id }),
        (
            "edit",
            Request::Edit {
                room_id,
                message_id,
                body: "x".into(),
            },
        ),
        (
            "delete",
            Request::Delete {
                room_id,
                message_id,
            },
        ),
        (
            "invite",
            Request::Invite {
                room_id,
                username: "bo".into(),
            },
        ),
        ("kick", Request::Kick { room_id, user_id }),
        ("leave", Request::Leave { room_id }),
        (
            "update_room",
            Request::UpdateRoom {
                room_id,
                name: Some("mine".into()),
                topic: None,
            },
        ),
        (
            "set_role",
            Request::SetRole {
                room_id,
                user_id,
                role: Role::Admin,
            },
        ),
    ]
}

#[tokio::test]
async fn a_non_member_is_refused_every_request_on_a_private_channel() {
    let server = TestServer::start().await;
    let (ana_auth, ana) = server.connected("ana").await;
    server.connected("bo").await;
    let (_, eve) = server.connected("eve").await;
    let secret = create_channel(&ana, "secret", Visibility::Private).await;
    let message = ana
        .send_message(secret.id, "for members only")
        .await
        .unwrap();
    for (what, request) in room_requests(secret.id, message.id, ana_auth.user.id) {
        expect_code(&eve, what, request, ErrorCode::Forbidden).await;
    }
    expect_code(
        &eve,
        "join",
        Request::Join { room_id: secret.id },
        ErrorCode::Forbidden,
    )
    .await;
}

#[tokio::test]
async fn a_public_channel_is_readable_only_after_joining() {
    let server = TestServer::start().await;
    let (ana_auth, ana) = server.connected("ana").await;
    let (_, eve) = server.connected("eve").await;
    let lobby = create_channel(&ana, "lobby", Visibility::Public).await;
    let message = ana.send_message(lobby.id, "hello").await.unwrap();
    for (what, request) in room_requests(lobby.id, message.id, ana_auth.user.id) {
        expect_code(&eve, what, request, ErrorCode::Forbidden).await;
    }
    join(&eve, lobby.id).await;
    eve.request(Request::History {
        room_id: lobby.id,
        before: None,
        after: None,
        limit: None,
    })
    .await
    .expect("members read history");
}

#[tokio::test]
async fn unknown_rooms_and_messages_are_not_found() {
    let server = TestServer::start().await;
    let (bo_auth, _) = server.connected("bo").await;
    let (_, ana) = server.connected("ana").await;
    let missing = RoomId(4242);
    for (what, request) in room_requests(missing, MessageId(1), bo_auth.user.id) {
        expect_code(&ana, what, request, ErrorCode::NotFound).await;
    }
    expect_code(
        &ana,
        "join",
        Request::Join { room_id: missing },
        ErrorCode::NotFound,
    )
    .await;
    let room = create_channel(&ana, "real", Visibility::Public).await;
    expect_code(
        &ana,
        "edit an unknown message",
        Request::Edit {
            room_id: room.id,
            message_id: MessageId(999),
            body: "x".into(),
        },
        ErrorCode::NotFound,
    )
    .await;
    expect_code(
        &ana,
        "dm an unknown user",
        Request::OpenDm {
            usernames: vec!["nobody".into()],
        },
        ErrorCode::NotFound,
    )
    .await;
}

#[tokio::test]
async fn members_change_a_room_only_as_far_as_their_role_allows() {
    let server = TestServer::start().await;
    let (ana_auth, ana) = server.connected("ana").await;
    let (bo_auth, bo) = server.connected("bo").await;
    let (cy_auth, cy) = server.connected("cy").await;
    let room = create_channel(&ana, "team", Visibility::Public).await;
    join(&bo, room.id).await;
    join(&cy, room.id).await;
    let anas = ana.send_message(room.id, "owner's words").await.unwrap();
    let ana_id = ana_auth.user.id;

    let forbidden = [
        (
            "edit another's message",
            Request::Edit {
                room_id: room.id,
                message_id: anas.id,
                body: "mine now".into(),
            },
        ),
        (
            "delete another's message",
            Request::Delete {
                room_id: room.id,
                message_id: anas.id,
            },
        ),
        (
            "kick",
            Request::Kick {
                room_id: room.id,
                user_id: cy_auth.user.id,
            },
        ),
        (
            "rename",
            Request::UpdateRoom {
                room_id: room.id,
                name: Some("bo's".into()),
                topic: None,
            },
        ),
        (
            "set a role",
            Request::SetRole {
                room_id: room.id,
                user_id: cy_auth.user.id,
                role: Role::Admin,
            },
        ),
    ];
    for (what, request) in forbidden {
        expect_code(&bo, what, request, ErrorCode::Forbidden).await;
    }

    // An admin may remove members and messages, but not the owner or their role.
    ana.request(Request::SetRole {
        room_id: room.id,
        user_id: bo_auth.user.id,
        role: Role::Admin,
    })
    .await
    .unwrap();
    expect_code(
        &bo,
        "admin kicks owner",
        Request::Kick {
            room_id: room.id,
            user_id: ana_id,
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_code(
        &bo,
        "admin sets a role",
        Request::SetRole {
            room_id: room.id,
            user_id: cy_auth.user.id,
            role: Role::Admin,
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_code(
        &bo,
        "admin edits owner's message",
        Request::Edit {
            room_id: room.id,
            message_id: anas.id,
            body: "x".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    bo.request(Request::Delete {
        room_id: room.id,
        message_id: anas.id,
    })
    .await
    .expect("admins delete");
    bo.request(Request::Kick {
        room_id: room.id,
        user_id: cy_auth.user.id,
    })
    .await
    .expect("admins kick members");

    // The owner cannot walk away from members without handing ownership over.
    expect_code(
        &ana,
        "owner leaves",
        Request::Leave { room_id: room.id },
        ErrorCode::Forbidden,
    )
    .await;
    ana.request(Request::SetRole {
        room_id: room.id,
        user_id: bo_auth.user.id,
        role: Role::Owner,
    })
    .await
    .unwrap();
    ana.request(Request::Leave { room_id: room.id })
        .await
        .expect("an admin may leave");
    let ServerFrame::Members { members, .. } = bo
        .request(Request::Members { room_id: room.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, Role::Owner);
}

#[tokio::test]
async fn direct_messages_cannot_be_joined_invited_to_or_left() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    server.connected("bo").await;
    let (_, eve) = server.connected("eve").await;
    let ServerFrame::Room { room: dm, .. } = ana
        .request(Request::OpenDm {
            usernames: vec!["bo".into()],
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    expect_code(
        &eve,
        "join a dm",
        Request::Join { room_id: dm.id },
        ErrorCode::Forbidden,
    )
    .await;
    expect_code(
        &ana,
        "invite into a dm",
        Request::Invite {
            room_id: dm.id,
            username: "eve".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_code(
        &ana,
        "leave a dm",
        Request::Leave { room_id: dm.id },
        ErrorCode::Forbidden,
    )
    .await;
}

#[tokio::test]
async fn events_reach_only_members() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut eve) = server.connected("eve").await;
    let secret = create_channel(&ana, "secret", Visibility::Private).await;
    let open = create_channel(&ana, "open", Visibility::Public).await;
    ana.send_message(secret.id, "not for eve").await.unwrap();
    join_and_follow(&mut eve, open.id).await;
    ana.send_message(open.id, "for everyone").await.unwrap();
    // Everything Eve receives is about the room she is in.
    let mut seen = 0;
    while seen < 2 {
        let (room_id, _, _) = next_room_event(&mut eve).await;
        assert_eq!(room_id, open.id, "eve must never see the private channel");
        seen += 1;
    }
}

#[tokio::test]
async fn a_kicked_member_stops_receiving_the_room() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (bo_auth, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "strict", Visibility::Private).await;
    ana.request(Request::Invite {
        room_id: room.id,
        username: "bo".into(),
    })
    .await
    .unwrap();
    let other = create_channel(&ana, "other", Visibility::Public).await;
    wait_for(&mut bo, |f| {
        matches!(f, ServerFrame::RoomAdded { room: r } if r.id == room.id).then_some(())
    })
    .await;
    ana.request(Request::Kick {
        room_id: room.id,
        user_id: bo_auth.user.id,
    })
    .await
    .unwrap();
    wait_for(&mut bo, |f| {
        matches!(f, ServerFrame::RoomRemoved { room_id } if *room_id == room.id).then_some(())
    })
    .await;
    ana.send_message(room.id, "after bo left").await.unwrap();
    join_and_follow(&mut bo, other.id).await;
    let (room_id, _, _) = next_room_event(&mut bo).await;
    assert_eq!(room_id, other.id);
    expect_code(
        &bo,
        "history after kick",
        Request::History {
            room_id: room.id,
            before: None,
            after: None,
            limit: None,
        },
        ErrorCode::Forbidden,
    )
    .await;
}

/// Cy's view of a room after a kick: nothing with a sequence past the kick, then `room_removed`.
async fn events_until_removed(
    cy: &mut Client,
    room_id: RoomId,
) -> Vec<(natter_client::protocol::RoomSeq, RoomEvent)> {
    let mut seen = Vec::new();
    loop {
        let frame = wait_for(cy, |f| match f {
            ServerFrame::Event {
                room_id: r,
                seq,
                event,
                ..
            } if *r == room_id => Some(Some((*seq, event.clone()))),
            ServerFrame::RoomRemoved { room_id: r } if *r == room_id => Some(None),
            _ => None,
        })
        .await;
        match frame {
            Some(event) => seen.push(event),
            None => return seen,
        }
    }
}

#[tokio::test]
async fn a_kicked_member_sees_nothing_posted_after_the_kick_even_while_others_keep_posting() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, bo) = server.connected("bo").await;
    let (cy_auth, mut cy) = server.connected("cy").await;
    let room = create_channel(&ana, "racy", Visibility::Private).await;
    for name in ["bo", "cy"] {
        ana.request(Request::Invite {
            room_id: room.id,
            username: name.into(),
        })
        .await
        .unwrap();
    }
    wait_for(&mut cy, |f| {
        matches!(f, ServerFrame::RoomAdded { .. }).then_some(())
    })
    .await;
    let chatter = tokio::spawn(async move {
        for n in 0..200 {
            bo.send_message(room.id, format!("m{n}")).await.unwrap();
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let ServerFrame::Done {
        seq: Some(kick), ..
    } = ana
        .request(Request::Kick {
            room_id: room.id,
            user_id: cy_auth.user.id,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let seen = events_until_removed(&mut cy, room.id).await;
    chatter.await.unwrap();
    let (last_seq, last_event) = seen.last().unwrap();
    assert_eq!(*last_seq, kick, "the kick is the last event cy sees");
    assert!(
        matches!(last_event, RoomEvent::MemberLeft { user_id, .. } if *user_id == cy_auth.user.id)
    );
    assert!(seen.iter().all(|(seq, _)| *seq <= kick));
}

#[tokio::test]
async fn a_member_kicked_and_invited_again_at_once_follows_the_room_from_the_invitation() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (cy_auth, mut cy) = server.connected("cy").await;
    let room = create_channel(&ana, "revolving", Visibility::Private).await;
    ana.request(Request::Invite {
        room_id: room.id,
        username: "cy".into(),
    })
    .await
    .unwrap();
    wait_for(&mut cy, |f| {
        matches!(f, ServerFrame::RoomAdded { .. }).then_some(())
    })
    .await;
    ana.request(Request::Kick {
        room_id: room.id,
        user_id: cy_auth.user.id,
    })
    .await
    .unwrap();
    ana.send_message(room.id, "while cy is out").await.unwrap();
    let ServerFrame::Done {
        seq: Some(back), ..
    } = ana
        .request(Request::Invite {
            room_id: room.id,
            username: "cy".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    ana.send_message(room.id, "welcome back").await.unwrap();

    let before = events_until_removed(&mut cy, room.id).await;
    assert!(matches!(
        before.last(),
        Some((_, RoomEvent::MemberLeft { .. }))
    ));
    let added = wait_for(&mut cy, |f| match f {
        ServerFrame::RoomAdded { room: r } if r.id == room.id => Some(r.last_seq),
        _ => None,
    })
    .await;
    assert_eq!(added.next(), back);
    let (seq, event) = wait_for(&mut cy, |f| match f {
        ServerFrame::Event {
            room_id,
            seq,
            event,
            ..
        } if *room_id == room.id => Some((*seq, event.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        seq, back,
        "the invitation comes first: nothing from the time away"
    );
    assert!(matches!(event, RoomEvent::MemberJoined { .. }));
    let body = wait_for(&mut cy, |f| match f {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } => Some(message.body.clone()),
        _ => None,
    })
    .await;
    assert_eq!(body, "welcome back");
}
