//! Failures survived by a cluster: a node killed under load, Redis restarted during traffic,
//! PostgreSQL briefly gone. Real processes and real services on loopback.

use crate::support::chaos::{CutProxy, OwnRedis};
use crate::support::process::Process;
use crate::support::*;
use natter_client::protocol::frame::ServerFrame;
use natter_client::protocol::{ClientMsgId, ErrorCode, RoomEvent, RoomId, RoomSeq, Visibility};
use natter_client::{Client, ClientError, ClientEvent, Options};
use std::collections::HashSet;
use std::time::Duration;

/// Options for a client that must notice a dead node quickly.
fn impatient(base_url: &str, token: &str) -> Options {
    let mut options = Options::new(base_url, token);
    options.request_timeout = Duration::from_secs(2);
    options.send_attempts = 2;
    options.backoff_min = Duration::from_millis(50);
    options.backoff_max = Duration::from_millis(300);
    options
}

/// Reads message bodies of `room` from `client` until `count` arrived, asserting each event is
/// the next sequence. When the client's node dies, it resumes on `fallback` from its cursors.
async fn read_all(
    mut client: Client,
    token: &str,
    fallback: &str,
    room: RoomId,
    mut cursor: RoomSeq,
    count: usize,
) -> Vec<String> {
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bodies.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} messages arrived",
            bodies.len()
        );
        match client.next_event_within(Duration::from_secs(5)).await {
            Some(ClientEvent::Frame(ServerFrame::Event {
                room_id,
                seq,
                event,
                ..
            })) if room_id == room => {
                assert_eq!(seq, cursor.next(), "gapless, in order, no duplicate");
                cursor = seq;
                if let RoomEvent::MessageCreated { message } = event {
                    bodies.push(message.body);
                }
            }
            Some(ClientEvent::Disconnected { .. }) | None => {
                // The node is gone (or silent): move to another one and resume.
                let mut options = impatient(fallback, token);
                options.resume = [(room, cursor)].into();
                client.close();
                client = Client::connect(options).await.expect("fallback node");
            }
            Some(_) => {}
        }
    }
    bodies
}

#[tokio::test]
async fn a_node_killed_under_load_loses_no_acknowledged_message_and_its_clients_resume_elsewhere() {
    const PER_SENDER: usize = 120;
    let database = TestDatabase::create().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::TempDir::new().unwrap()).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Process::node(dir.path(), &database).await);
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.base_url.clone()).collect();

    let owner = natter_client::register(&urls[0], "owner", "password-owner", None)
        .await
        .unwrap();
    let owner_client = Client::connect(Options::new(&urls[0], &owner.token))
        .await
        .unwrap();
    let room = create_channel(&owner_client, "ops", Visibility::Public).await;

    // A reader on the doomed node 1 and one on node 0; senders on every node.
    let mut readers = Vec::new();
    for (name, node) in [("reader-doomed", 1), ("reader-safe", 0)] {
        let auth = natter_client::register(&urls[node], name, "password-r", None)
            .await
            .unwrap();
        let mut client = Client::connect(impatient(&urls[node], &auth.token))
            .await
            .unwrap();
        let from = join_and_follow(&mut client, room.id).await;
        readers.push((client, auth.token, from));
    }
    let mut senders = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let auth = natter_client::register(url, &format!("sender{i}"), "password-s", None)
            .await
            .unwrap();
        let client = Client::connect(impatient(url, &auth.token)).await.unwrap();
        join(&client, room.id).await;
        senders.push((i, client, auth.token));
    }
    owner_client.send_message(room.id, "start").await.unwrap();
    let total = 3 * PER_SENDER;

    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(i, mut client, token)| {
            let urls = urls.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..PER_SENDER {
                    let id = ClientMsgId(format!("s{i}-{n}"));
                    loop {
                        match client
                            .send_with_id(room.id, id.clone(), format!("{i}:{n}"))
                            .await
                        {
                            Ok(message) => {
                                acked.push(message);
                                break;
                            }
                            // Its node died: the same send, with the same id, on another node.
                            Err(
                                ClientError::Timeout
                                | ClientError::Disconnected
                                | ClientError::Closed(_),
                            ) => {
                                client.close();
                                client = Client::connect(impatient(&urls[(i + 1) % 3], &token))
                                    .await
                                    .unwrap();
                            }
                            Err(error) => panic!("send failed: {error}"),
                        }
                    }
                }
                acked
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[1].kill().await;

    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert_eq!(
        acked.len(),
        total,
        "every send was acknowledged, some after moving node"
    );
    let ids: HashSet<_> = acked.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), total, "no send was stored twice");

    let mut orders = Vec::new();
    for (client, token, from) in readers {
        let bodies = read_all(client, &token, &urls[2], room.id, from, total + 1).await;
        assert_eq!(bodies[0], "start");
        orders.push(bodies);
    }
    assert_eq!(orders[0], orders[1], "both readers saw one order");
    let seen: HashSet<&String> = orders[0].iter().collect();
    assert_eq!(seen.len(), total + 1, "each message exactly once");
}

#[tokio::test]
async fn a_redis_restart_during_traffic_is_repaired_and_nothing_is_missed() {
    let database = TestDatabase::create().await;
    let mut redis = OwnRedis::start().await;
    let a = TestServer::node_at(&database.url, &redis.url(), |_| {}).await;
    let b = TestServer::node_at(&database.url, &redis.url(), |_| {}).await;
    let (_, ana) = a.connected("ana").await;
    let bo_auth = b.user("bo").await;
    let mut bo = b.client(&bo_auth).await;
    expect_connected(&mut bo).await;
    let room = create_channel(&ana, "weather", Visibility::Public).await;
    let from = join_and_follow(&mut bo, room.id).await;

    let sender = tokio::spawn(async move {
        for n in 0..60 {
            ana.send_message(room.id, format!("m{n}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.restart(Duration::from_millis(300)).await;
    sender.await.unwrap();
    // Messages published while Redis was down never crossed it: node B's sessions catch up from
    // PostgreSQL once its subscription is back, including the very last one.
    let bodies = collect_messages(&mut bo, room.id, 60, from).await;
    assert_eq!(bodies, (0..60).map(|n| format!("m{n}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn while_postgresql_is_unreachable_sends_fail_retryably_and_no_acknowledged_message_is_lost()
{
    let database = TestDatabase::create().await;
    let admin = postgres_admin_url();
    let pg_port: u16 = admin
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).nth(1))
        .and_then(|port| port.parse().ok())
        .unwrap_or(5432);
    let proxy = CutProxy::start(pg_port).await;
    let through_proxy =
        database
            .url
            .replacen(&format!(":{pg_port}/"), &format!(":{}/", proxy.port), 1);
    let node = TestServer::node_at(&through_proxy, &redis_url(), |_| {}).await;
    let (_, ana) = node.connected("ana").await;
    let room = create_channel(&ana, "fragile", Visibility::Public).await;
    ana.send_message(room.id, "before").await.unwrap();

    proxy.cut();
    let mut acked = vec!["before".to_owned()];
    let mut refused = Vec::new();
    for n in 0..5 {
        let request = natter_client::protocol::frame::Request::Send {
            room_id: room.id,
            client_msg_id: ClientMsgId(format!("during-{n}")),
            body: format!("during {n}"),
        };
        match ana.request(request).await {
            Ok(ServerFrame::Sent { message, .. }) => acked.push(message.body),
            Ok(other) => panic!("{other:?}"),
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, ErrorCode::Unavailable, "a retryable error, not a lie");
                assert!(code.retryable());
                refused.push(n);
            }
            Err(error) => panic!("{error}"),
        }
    }
    assert!(!refused.is_empty(), "the outage was noticed");
    proxy.restore();

    // The retries succeed once the database is back, each stored once.
    for n in refused {
        let id = ClientMsgId(format!("during-{n}"));
        let mut attempt = 0;
        let message = loop {
            attempt += 1;
            match ana
                .send_with_id(room.id, id.clone(), format!("during {n}"))
                .await
            {
                Ok(message) => break message,
                // Still reconnecting to the database: the same send again, shortly.
                Err(_) if attempt < 20 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(error) => panic!("never recovered: {error}"),
            }
        };
        acked.push(message.body);
    }
    let stored: Vec<String> = newest_messages(&ana, room.id)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    let mut expected = acked.clone();
    expected.sort();
    let mut got = stored.clone();
    got.sort();
    assert_eq!(got, expected, "every acknowledged message is stored, once");
}
