//! The soak: three nodes, 200 clients in 20 rooms, 20,000 messages, then an exact audit that
//! every acknowledged message reached every member of its room exactly once, in the room's order.

use crate::support::*;
use natter_client::protocol::Visibility;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Barrier;

const ROOMS: usize = 20;
const MEMBERS: usize = 10;
const PER_CLIENT: usize = 100;

#[tokio::test]
async fn soak_every_acknowledged_message_reaches_every_member_once_in_order() {
    let database = TestDatabase::create().await;
    let nodes = Arc::new([
        TestServer::node(&database).await,
        TestServer::node(&database).await,
        TestServer::node(&database).await,
    ]);
    let (_, owner) = nodes[0].connected("owner").await;
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        rooms.push(
            create_channel(&owner, &format!("soak-{r}"), Visibility::Public)
                .await
                .id,
        );
    }
    let barrier = Arc::new(Barrier::new(ROOMS * MEMBERS));
    let mut tasks = Vec::new();
    for (r, room) in rooms.iter().copied().enumerate() {
        for m in 0..MEMBERS {
            let (nodes, barrier) = (nodes.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                // Members of one room sit on different nodes.
                let node = &nodes[(r + m) % nodes.len()];
                let (_, mut client) = node.connected(&format!("u{r}x{m}")).await;
                let from = join_and_follow(&mut client, room).await;
                barrier.wait().await;
                let mut acked = Vec::with_capacity(PER_CLIENT);
                for n in 0..PER_CLIENT {
                    acked.push(
                        client
                            .send_message(room, format!("{r}/{m}/{n}"))
                            .await
                            .unwrap(),
                    );
                }
                let received =
                    collect_messages(&mut client, room, MEMBERS * PER_CLIENT, from).await;
                (room, acked, received)
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let mut total = 0;
    for room in rooms {
        let stored: Vec<String> = all_messages(&owner, room)
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(stored.len(), MEMBERS * PER_CLIENT);
        let acked: HashSet<String> = results
            .iter()
            .filter(|(r, ..)| *r == room)
            .flat_map(|(_, acked, _)| acked.iter().map(|m| m.body.clone()))
            .collect();
        assert_eq!(
            acked,
            stored.iter().cloned().collect::<HashSet<_>>(),
            "acknowledged = stored"
        );
        for (_, _, received) in results.iter().filter(|(r, ..)| *r == room) {
            assert_eq!(
                received, &stored,
                "every member saw exactly the room's history, in order"
            );
        }
        total += stored.len();
    }
    assert_eq!(total, ROOMS * MEMBERS * PER_CLIENT);
}
