//! Rooms: channels public and private, direct and group messages, membership and the room list.

use crate::support::*;
use natter_client::Client;
use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{ErrorCode, Role, RoomEvent, RoomInfo, RoomKind, Visibility};

async fn open_dm(client: &Client, usernames: &[&str]) -> RoomInfo {
    let request = Request::OpenDm {
        usernames: usernames.iter().map(|u| u.to_string()).collect(),
    };
    match client.request(request).await.unwrap() {
        ServerFrame::Room { room, .. } => room,
        other => panic!("{other:?}"),
    }
}

async fn room_list(client: &Client) -> Vec<RoomInfo> {
    match client.request(Request::ListRooms).await.unwrap() {
        ServerFrame::Rooms { rooms, .. } => rooms,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_direct_message_is_found_again_rather_than_duplicated() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let dm = open_dm(&ana, &["bo"]).await;
    assert_eq!(dm.kind, RoomKind::Dm);
    assert_eq!(
        dm.members
            .iter()
            .map(|m| m.username.as_str())
            .collect::<Vec<_>>(),
        ["ana", "bo"]
    );
    // Bo is told about the new conversation and sees what Ana writes in it.
    let added = wait_for(&mut bo, |f| match f {
        ServerFrame::RoomAdded { room } => Some(room.id),
        _ => None,
    })
    .await;
    assert_eq!(added, dm.id);
    ana.send_message(dm.id, "psst").await.unwrap();
    let body = wait_for(&mut bo, |f| match f {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } => Some(message.body.clone()),
        _ => None,
    })
    .await;
    assert_eq!(body, "psst");
    assert_eq!(open_dm(&bo, &["ana"]).await.id, dm.id);
    assert_eq!(open_dm(&ana, &["BO", "bo"]).await.id, dm.id);
}

#[tokio::test]
async fn a_group_message_is_one_room_per_set_of_members() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, bo) = server.connected("bo").await;
    server.connected("cy").await;
    let group = open_dm(&ana, &["bo", "cy"]).await;
    assert_eq!(group.kind, RoomKind::Group);
    assert_eq!(group.member_count, 3);
    assert_eq!(open_dm(&bo, &["cy", "ana"]).await.id, group.id);
    assert_ne!(open_dm(&ana, &["bo"]).await.id, group.id);
}

#[tokio::test]
async fn public_channels_can_be_browsed_and_joined_private_ones_cannot() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, bo) = server.connected("bo").await;
    let public = create_channel(&ana, "town-square", Visibility::Public).await;
    create_channel(&ana, "back-room", Visibility::Private).await;
    let ServerFrame::Rooms { rooms, .. } = bo.request(Request::PublicRooms).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        rooms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["town-square"]
    );
    assert_eq!(rooms[0].role, None, "not a member yet");
    let joined = join(&bo, public.id).await;
    assert_eq!(joined.role, Some(Role::Member));
    assert_eq!(joined.member_count, 2);
    let error = bo
        .request(Request::Join { room_id: public.id })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict), "joining twice");
}

#[tokio::test]
async fn an_invited_user_gets_the_room_and_its_history() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "plans", Visibility::Private).await;
    ana.send_message(room.id, "said before bo came")
        .await
        .unwrap();
    ana.request(Request::Invite {
        room_id: room.id,
        username: "bo".into(),
    })
    .await
    .unwrap();
    let added = wait_for(&mut bo, |f| match f {
        ServerFrame::RoomAdded { room } => Some(room.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (added.id, added.kind, added.role),
        (room.id, RoomKind::Private, Some(Role::Member))
    );
    let (_, _, event) = next_room_event(&mut bo).await;
    assert!(
        matches!(event, RoomEvent::MemberJoined { ref user, invited_by: Some(_), .. } if user.username == "bo")
    );
    let messages = newest_messages(&bo, room.id).await;
    assert_eq!(messages[0].body, "said before bo came");
    let error = ana
        .request(Request::Invite {
            room_id: room.id,
            username: "bo".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict));
}

#[tokio::test]
async fn renames_and_topics_reach_members_and_the_room_list() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "old-name", Visibility::Public).await;
    join_and_follow(&mut bo, room.id).await;
    ana.request(Request::UpdateRoom {
        room_id: room.id,
        name: Some("new-name".into()),
        topic: Some("what we do".into()),
    })
    .await
    .unwrap();
    let updated = wait_for(&mut bo, |f| match f {
        ServerFrame::Event {
            event: RoomEvent::RoomUpdated { name, topic },
            ..
        } => Some((name.clone(), topic.clone())),
        _ => None,
    })
    .await;
    assert_eq!(updated, ("new-name".to_owned(), "what we do".to_owned()));
    let listed = room_list(&bo).await;
    assert_eq!(
        (listed[0].name.as_str(), listed[0].topic.as_str()),
        ("new-name", "what we do")
    );
}

#[tokio::test]
async fn the_room_list_holds_each_room_with_role_and_newest_sequence_and_leaving_removes_it() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let mine = create_channel(&ana, "mine", Visibility::Public).await;
    let shared = create_channel(&ana, "shared", Visibility::Public).await;
    join_and_follow(&mut bo, shared.id).await;
    let message = ana.send_message(shared.id, "hi").await.unwrap();
    let rooms = room_list(&ana).await;
    assert_eq!(rooms.len(), 2);
    assert_eq!((rooms[0].id, rooms[0].role), (mine.id, Some(Role::Owner)));
    assert_eq!(rooms[1].last_seq, message.seq);
    bo.request(Request::Leave { room_id: shared.id })
        .await
        .unwrap();
    wait_for(&mut bo, |f| {
        matches!(f, ServerFrame::RoomRemoved { room_id } if *room_id == shared.id).then_some(())
    })
    .await;
    assert!(room_list(&bo).await.is_empty());
}
