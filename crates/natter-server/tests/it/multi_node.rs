//! Several nodes sharing PostgreSQL and fanning out through Redis: a client on one node talks to a
//! client on another, with the same order, resume and idempotency guarantees as one node.

use crate::support::process::Process;
use crate::support::*;
use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{PresenceStatus, RoomEvent, Visibility};
use std::time::Duration;

#[tokio::test]
async fn two_clients_on_different_nodes_see_each_others_messages() {
    let database = TestDatabase::create().await;
    let a = TestServer::node(&database).await;
    let b = TestServer::node(&database).await;
    let (_, ana) = a.connected("ana").await;
    let bo_auth = b.user("bo").await;
    let mut bo = b.client(&bo_auth).await;
    expect_connected(&mut bo).await;
    let room = create_channel(&ana, "across", Visibility::Public).await;
    let from = join_and_follow(&mut bo, room.id).await;
    let sent = ana
        .send_message(room.id, "hello from node a")
        .await
        .unwrap();
    assert_eq!(
        collect_messages(&mut bo, room.id, 1, from).await,
        ["hello from node a"]
    );
    let mut ana = ana;
    bo.send_message(room.id, "and back from node b")
        .await
        .unwrap();
    let body = wait_for(&mut ana, |f| match f {
        ServerFrame::Event {
            event: RoomEvent::MessageCreated { message },
            ..
        } if message.id != sent.id => Some(message.body.clone()),
        _ => None,
    })
    .await;
    assert_eq!(body, "and back from node b");
}

#[tokio::test]
async fn concurrent_senders_on_three_nodes_produce_one_gapless_order_everywhere() {
    const PER_SENDER: usize = 150;
    let database = TestDatabase::create().await;
    let nodes = [
        TestServer::node(&database).await,
        TestServer::node(&database).await,
        TestServer::node(&database).await,
    ];
    let (_, owner) = nodes[0].connected("owner").await;
    let room = create_channel(&owner, "busy", Visibility::Public).await;
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (_, mut reader) = node.connected(&format!("reader{i}")).await;
        let from = join_and_follow(&mut reader, room.id).await;
        readers.push((reader, from));
        let (_, sender) = node.connected(&format!("sender{i}")).await;
        join(&sender, room.id).await;
        senders.push(sender);
    }
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
            })
        })
        .collect();
    let mut orders = Vec::new();
    for (mut reader, from) in readers {
        // collect_messages asserts every event of the room arrives as the next sequence.
        orders.push(collect_messages(&mut reader, room.id, 3 * PER_SENDER, from).await);
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        orders.iter().all(|order| order == &orders[0]),
        "one order on every node"
    );
    let ServerFrame::History { messages, .. } = owner
        .request(Request::History {
            room_id: room.id,
            before: None,
            after: None,
            limit: Some(200),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(messages.last().map(|m| &m.body), orders[0].last());
}

#[tokio::test]
async fn a_client_that_moves_to_another_node_resumes_without_gap_or_duplicate() {
    let database = TestDatabase::create().await;
    let a = TestServer::node(&database).await;
    let b = TestServer::node(&database).await;
    let (_, ana) = a.connected("ana").await;
    let bo_auth = a.user("bo").await;
    let room = create_channel(&ana, "roaming", Visibility::Public).await;
    let mut bo = a.client(&bo_auth).await;
    expect_connected(&mut bo).await;
    let from = join_and_follow(&mut bo, room.id).await;
    for n in 0..20 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let first = collect_messages(&mut bo, room.id, 20, from).await;
    let cursors = bo.cursors();
    bo.close();
    for n in 20..40 {
        ana.send_message(room.id, format!("m{n}")).await.unwrap();
    }
    let mut options = b.options(&bo_auth);
    options.resume = cursors.clone();
    let mut bo = natter_client::Client::connect(options).await.unwrap();
    expect_connected(&mut bo).await;
    let rest = collect_messages(&mut bo, room.id, 20, cursors[&room.id]).await;
    let all: Vec<String> = first.into_iter().chain(rest).collect();
    assert_eq!(all, (0..40).map(|n| format!("m{n}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn typing_and_receipts_cross_nodes() {
    let database = TestDatabase::create().await;
    let a = TestServer::node(&database).await;
    let b = TestServer::node(&database).await;
    let (_, mut ana) = a.connected("ana").await;
    let (bo_auth, mut bo) = b.connected("bo").await;
    let room = create_channel(&ana, "lively", Visibility::Public).await;
    join_and_follow(&mut bo, room.id).await;
    bo.request(Request::Typing { room_id: room.id })
        .await
        .unwrap();
    let typist = wait_for(&mut ana, |f| match f {
        ServerFrame::Typing { user, .. } => Some(user.username.clone()),
        _ => None,
    })
    .await;
    assert_eq!(typist, "bo");
    let message = ana.send_message(room.id, "read me").await.unwrap();
    bo.request(Request::MarkRead {
        room_id: room.id,
        seq: message.seq,
    })
    .await
    .unwrap();
    let read = wait_for(&mut ana, |f| match f {
        ServerFrame::Receipt {
            user_id, read_seq, ..
        } if *user_id == bo_auth.user.id => Some(*read_seq),
        _ => None,
    })
    .await;
    assert_eq!(read, message.seq);
}

#[tokio::test]
async fn presence_is_cluster_wide_a_user_online_on_any_node_is_online() {
    let database = TestDatabase::create().await;
    let quick = |s: &mut natter_server::config::Settings| s.limits.presence_coalesce_ms = 50;
    let a = TestServer::node_with(&database, quick).await;
    let b = TestServer::node_with(&database, quick).await;
    let (_, mut ana) = a.connected("ana").await;
    let (bo_auth, mut bo_on_a) = a.connected("bo").await;
    let room = create_channel(&ana, "together", Visibility::Public).await;
    join_and_follow(&mut bo_on_a, room.id).await;
    let bo_on_b = b.client(&bo_auth).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Leaving node A while still on node B is no change at all.
    bo_on_a.close();
    assert!(
        no_presence_of(
            &mut ana,
            bo_auth.user.id,
            PresenceStatus::Offline,
            Duration::from_millis(400)
        )
        .await,
        "bo is still online on node b"
    );
    bo_on_b.close();
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Offline, WAIT).await;
}

#[tokio::test]
async fn the_users_of_a_node_that_dies_go_offline() {
    let database = TestDatabase::create().await;
    let dir = tempfile::TempDir::new().unwrap();
    let mut doomed = Process::node(dir.path(), &database).await;
    let a = TestServer::node(&database).await;
    let (_, mut ana) = a.connected("ana").await;
    let room = create_channel(&ana, "vigil", Visibility::Public).await;
    let bo_auth = natter_client::register(&doomed.base_url, "bo", "password-bo", None)
        .await
        .unwrap();
    let mut bo = natter_client::Client::connect(natter_client::Options::new(
        &doomed.base_url,
        &bo_auth.token,
    ))
    .await
    .unwrap();
    join_and_follow(&mut bo, room.id).await;
    presence_becomes(&mut ana, bo_auth.user.id, PresenceStatus::Online, WAIT).await;
    doomed.kill().await;
    // The node's liveness key expires (15 s) and a live node cleans up after it (every 5 s).
    presence_becomes(
        &mut ana,
        bo_auth.user.id,
        PresenceStatus::Offline,
        Duration::from_secs(40),
    )
    .await;
}
