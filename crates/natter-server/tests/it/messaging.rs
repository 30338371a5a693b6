//! Real-time messaging: delivery, order under concurrency, idempotent retries, edits, deletes and
//! history.

use crate::support::*;
use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{ClientMsgId, RoomEvent, RoomSeq, Visibility};
use std::collections::HashSet;

#[tokio::test]
async fn two_users_chat_in_real_time() {
    let server = TestServer::start().await;
    let (_, mut ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "general", Visibility::Public).await;
    join(&bo, room.id).await;

    let sent = ana.send_message(room.id, "hi Bo").await.unwrap();
    assert_eq!(sent.body, "hi Bo");
    assert_eq!(sent.author.username, "ana");

    let received = wait_for(&mut bo, |frame| match frame {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } => Some(message.clone()),
        _ => None,
    })
    .await;
    assert_eq!(received, sent);

    bo.send_message(room.id, "hello Ana").await.unwrap();
    let reply = wait_for(&mut ana, |frame| match frame {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } if message.author.username == "bo" => Some(message.body.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reply, "hello Ana");
}

#[tokio::test]
async fn concurrent_senders_are_seen_in_one_identical_order_by_every_receiver() {
    const SENDERS: usize = 5;
    const PER_SENDER: usize = 400;
    let server = TestServer::start().await;
    let (_, owner) = server.connected("owner").await;
    let room = create_channel(&owner, "busy", Visibility::Public).await;

    let mut receivers = Vec::new();
    for i in 0..3 {
        let (_, mut client) = server.connected(&format!("reader{i}")).await;
        let from = join_and_follow(&mut client, room.id).await;
        receivers.push((client, from));
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (_, client) = server.connected(&format!("writer{i}")).await;
        join(&client, room.id).await;
        senders.push(client);
    }
    // Joins are events too: start each reader's cursor after the last join.
    let start = match owner.request(Request::ListRooms).await.unwrap() {
        ServerFrame::Rooms { rooms, .. } => rooms[0].last_seq,
        other => panic!("{other:?}"),
    };

    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    client
                        .send_message(room.id, format!("{i}:{n}"))
                        .await
                        .unwrap();
                }
                client
            })
        })
        .collect();

    let mut orders = Vec::new();
    for (mut client, from) in receivers {
        orders.push(collect_messages(&mut client, room.id, SENDERS * PER_SENDER, from).await);
    }
    for task in tasks {
        task.await.unwrap();
    }
    let first = &orders[0];
    assert_eq!(first.len(), SENDERS * PER_SENDER);
    assert_eq!(
        first.iter().collect::<HashSet<_>>().len(),
        SENDERS * PER_SENDER,
        "no duplicates"
    );
    for other in &orders[1..] {
        assert_eq!(other, first, "every receiver sees the same order");
    }
    // Each sender's own messages keep the order they were sent in.
    for i in 0..SENDERS {
        let mine: Vec<usize> = first
            .iter()
            .filter_map(|body| body.strip_prefix(&format!("{i}:")))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..PER_SENDER).collect::<Vec<_>>());
    }
    // And the store agrees: the room's newest sequence accounts for every event.
    let history = match owner
        .request(Request::History {
            room_id: room.id,
            before: None,
            after: Some(start),
            limit: Some(200),
        })
        .await
        .unwrap()
    {
        ServerFrame::History { messages, .. } => messages,
        other => panic!("{other:?}"),
    };
    let bodies: Vec<&String> = history.iter().map(|m| &m.body).collect();
    assert_eq!(bodies, first.iter().take(200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_retried_send_returns_the_first_message_and_stores_it_once() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let room = create_channel(&ana, "retries", Visibility::Public).await;
    let send = |body: &str| Request::Send {
        room_id: room.id,
        client_msg_id: ClientMsgId("retry-1".into()),
        body: body.into(),
    };
    let first = ana.request(send("once")).await.unwrap();
    let second = ana.request(send("once, again")).await.unwrap();
    let (
        ServerFrame::Sent {
            message: a,
            duplicate: false,
            ..
        },
        ServerFrame::Sent {
            message: b,
            duplicate: true,
            ..
        },
    ) = (first, second)
    else {
        panic!("expected a first send and a duplicate");
    };
    assert_eq!(a, b);
    assert_eq!(b.body, "once");
    let messages = newest_messages(&ana, room.id).await;
    assert_eq!(messages.len(), 1);
}

#[tokio::test]
async fn edits_and_deletes_are_events_and_history_shows_their_result() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let (_, mut bo) = server.connected("bo").await;
    let room = create_channel(&ana, "edits", Visibility::Public).await;
    join(&bo, room.id).await;
    let message = ana.send_message(room.id, "tpyo").await.unwrap();
    let keep = ana.send_message(room.id, "keep me").await.unwrap();

    ana.request(Request::Edit {
        room_id: room.id,
        message_id: message.id,
        body: "typo".into(),
    })
    .await
    .unwrap();
    let edited = wait_for(&mut bo, |frame| match frame {
        ServerFrame::Event {
            event: RoomEvent::MessageEdited {
                message_id, body, ..
            },
            ..
        } => Some((*message_id, body.clone())),
        _ => None,
    })
    .await;
    assert_eq!(edited, (message.id, "typo".to_owned()));

    ana.request(Request::Delete {
        room_id: room.id,
        message_id: message.id,
    })
    .await
    .unwrap();
    let deleted = wait_for(&mut bo, |frame| match frame {
        ServerFrame::Event {
            event: RoomEvent::MessageDeleted { message_id },
            ..
        } => Some(*message_id),
        _ => None,
    })
    .await;
    assert_eq!(deleted, message.id);

    let messages = newest_messages(&bo, room.id).await;
    assert_eq!(messages.len(), 2);
    assert!(messages[0].deleted && messages[0].body.is_empty());
    assert_eq!(messages[1].id, keep.id);
    // Editing a deleted message is not possible.
    let error = ana
        .request(Request::Edit {
            room_id: room.id,
            message_id: message.id,
            body: "back".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(natter_client::protocol::ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn history_pages_backwards_and_forwards_by_sequence() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let room = create_channel(&ana, "pages", Visibility::Public).await;
    for n in 0..25 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let page = |before: Option<RoomSeq>, after: Option<RoomSeq>| Request::History {
        room_id: room.id,
        before,
        after,
        limit: Some(10),
    };
    let ServerFrame::History {
        messages: newest,
        has_more: true,
        ..
    } = ana.request(page(None, None)).await.unwrap()
    else {
        panic!("the newest page has more behind it")
    };
    let bodies: Vec<_> = newest.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies.first(), Some(&"m15"));
    assert_eq!(bodies.last(), Some(&"m24"));
    let ServerFrame::History {
        messages: older, ..
    } = ana.request(page(Some(newest[0].seq), None)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(older.first().map(|m| m.body.as_str()), Some("m5"));
    let ServerFrame::History {
        messages: oldest,
        has_more: false,
        ..
    } = ana.request(page(Some(older[0].seq), None)).await.unwrap()
    else {
        panic!("the oldest page has nothing before it")
    };
    assert_eq!(oldest.len(), 5);
    let ServerFrame::History {
        messages: forward, ..
    } = ana.request(page(None, Some(oldest[4].seq))).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(forward, older);
}

#[tokio::test]
async fn a_client_msg_id_reused_for_another_room_is_a_conflict_not_a_silent_drop() {
    let server = TestServer::start().await;
    let (_, ana) = server.connected("ana").await;
    let first = create_channel(&ana, "first", Visibility::Public).await;
    let second = create_channel(&ana, "second", Visibility::Public).await;
    let send = |room_id| Request::Send {
        room_id,
        client_msg_id: ClientMsgId("same".into()),
        body: "x".into(),
    };
    ana.request(send(first.id)).await.unwrap();
    let error = ana.request(send(second.id)).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(natter_client::protocol::ErrorCode::Conflict)
    );
}

#[tokio::test]
async fn pipelined_sends_are_stored_and_answered_in_the_order_sent() {
    const SENDS: u64 = 40;
    let server = TestServer::start().await;
    let (ana, client) = server.connected("ana").await;
    let room = create_channel(&client, "fast", Visibility::Public).await;
    let mut raw = crate::support::raw::RawSocket::authenticated(&server.base_url, &ana.token).await;
    // Every send goes out before any reply is read, then a request that must wait for them.
    for n in 0..SENDS {
        raw.send(&format!(
            r#"{{"id":{},"type":"send","room_id":{},"client_msg_id":"p{n}","body":"m{n}"}}"#,
            n + 10,
            room.id.0
        ))
        .await;
    }
    raw.send(&format!(
        r#"{{"id":99,"type":"history","room_id":{},"limit":100}}"#,
        room.id.0
    ))
    .await;
    let mut replies = Vec::new();
    while replies.len() < SENDS as usize + 1 {
        if let crate::support::raw::Received::Frame(frame) = raw.recv().await
            && frame.reply_to().is_some()
        {
            replies.push(frame);
        }
    }
    let mut last_seq = RoomSeq(0);
    for (n, reply) in replies[..SENDS as usize].iter().enumerate() {
        let ServerFrame::Sent { id, message, .. } = reply else {
            panic!("reply {n}: expected sent, got {reply:?}");
        };
        assert_eq!(id.0, n as u64 + 10, "replies come in request order");
        assert_eq!(message.body, format!("m{n}"));
        assert!(message.seq > last_seq, "stored in the order sent");
        last_seq = message.seq;
    }
    let ServerFrame::History { id, messages, .. } = &replies[SENDS as usize] else {
        panic!("expected history, got {:?}", replies[SENDS as usize]);
    };
    assert_eq!(id.0, 99);
    let bodies: Vec<&str> = messages.iter().map(|m| m.body.as_str()).collect();
    let expected: Vec<String> = (0..SENDS).map(|n| format!("m{n}")).collect();
    assert_eq!(
        bodies, expected,
        "the request behind the sends saw all of them"
    );
}
