//! The `Store` contract, checked directly against the SQLite store: the guarantees every store
//! must keep, whatever sits above it. Written against `dyn Store` so another backend runs the
//! same suite.

use natter_core::ports::store::{Change, Store, StoreError, TokenId};
use natter_protocol::{ClientMsgId, Role, RoomKind, RoomSeq, UserId};
use natter_server::store::SqliteStore;
use std::sync::Arc;

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::TempDir::new().unwrap();
    let store = SqliteStore::open(&dir.path().join("natter.db")).unwrap();
    (dir, Arc::new(store))
}

async fn user(store: &Arc<dyn Store>, name: &str) -> UserId {
    store
        .create_user(name, name, "hash", false)
        .await
        .unwrap()
        .info
        .id
}

fn send(id: &str) -> Change {
    Change::Send {
        client_msg_id: ClientMsgId(id.into()),
        body: format!("body of {id}"),
        mentions: vec![],
    }
}

#[tokio::test]
async fn concurrent_appends_get_gapless_strictly_increasing_sequences_per_room() {
    let (_dir, store) = sqlite();
    let mut writers = Vec::new();
    for i in 0..8 {
        writers.push(user(&store, &format!("u{i}")).await);
    }
    let (room_a, _) = store
        .create_channel(writers[0], RoomKind::Public, "a", "", 0)
        .await
        .unwrap();
    let (room_b, _) = store
        .create_channel(writers[0], RoomKind::Public, "b", "", 0)
        .await
        .unwrap();
    for (i, writer) in writers.iter().enumerate().skip(1) {
        for room in [room_a, room_b] {
            let change = Change::AddMember {
                user_id: *writer,
                role: Role::Member,
                invited_by: None,
            };
            store.append(room, *writer, change, i as i64).await.unwrap();
        }
    }
    let tasks: Vec<_> = writers
        .iter()
        .map(|writer| {
            let (store, writer) = (store.clone(), *writer);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..150 {
                    let room = if n % 3 == 0 { room_b } else { room_a };
                    let appended = store
                        .append(room, writer, send(&format!("{writer}-{n}")), 0)
                        .await
                        .unwrap();
                    seqs.push((room, appended.record.seq));
                }
                seqs
            })
        })
        .collect();
    let mut per_room: std::collections::BTreeMap<_, Vec<u64>> = Default::default();
    for task in tasks {
        for (room, seq) in task.await.unwrap() {
            per_room.entry(room).or_default().push(seq.0);
        }
    }
    for (room, mut seqs) in per_room {
        seqs.sort();
        // Sequence 1 is the owner's join and 2..=8 the other joins.
        let expected: Vec<u64> = (9..9 + seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "room {room}");
        let events = store
            .events_after(room, RoomSeq::ZERO, None, 10_000)
            .await
            .unwrap();
        let stored: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
        assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_failed_change_takes_no_sequence_number() {
    let (_dir, store) = sqlite();
    let ana = user(&store, "ana").await;
    let eve = user(&store, "eve").await;
    let (room, _) = store
        .create_channel(ana, RoomKind::Private, "r", "", 0)
        .await
        .unwrap();
    assert_eq!(
        store.append(room, eve, send("x"), 0).await.unwrap_err(),
        StoreError::Forbidden("you are not a member of this room")
    );
    let kick_nobody = Change::RemoveMember {
        user_id: eve,
        kicked_by: Some(ana),
    };
    assert_eq!(
        store.append(room, ana, kick_nobody, 0).await.unwrap_err(),
        StoreError::NotFound("member")
    );
    let appended = store.append(room, ana, send("y"), 0).await.unwrap();
    assert_eq!(appended.record.seq, RoomSeq(2));
}

#[tokio::test]
async fn a_repeated_client_msg_id_returns_the_first_message() {
    let (_dir, store) = sqlite();
    let ana = user(&store, "ana").await;
    let (room, _) = store
        .create_channel(ana, RoomKind::Public, "r", "", 0)
        .await
        .unwrap();
    let first = store.append(room, ana, send("same"), 0).await.unwrap();
    let again = store
        .append(
            room,
            ana,
            Change::Send {
                client_msg_id: ClientMsgId("same".into()),
                body: "different".into(),
                mentions: vec![],
            },
            0,
        )
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.record, first.record);
    assert_eq!(
        store
            .events_after(room, RoomSeq::ZERO, None, 100)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn events_are_read_between_bounds_and_deleted_text_is_never_replayed() {
    let (_dir, store) = sqlite();
    let ana = user(&store, "ana").await;
    let (room, _) = store
        .create_channel(ana, RoomKind::Public, "r", "", 0)
        .await
        .unwrap();
    let sent = store.append(room, ana, send("secret"), 0).await.unwrap();
    let natter_protocol::RoomEvent::MessageCreated { message } = sent.record.event else {
        panic!()
    };
    store
        .append(
            room,
            ana,
            Change::Delete {
                message_id: message.id,
            },
            0,
        )
        .await
        .unwrap();
    let events = store
        .events_after(room, RoomSeq(1), Some(RoomSeq(2)), 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    match &events[0].event {
        natter_protocol::RoomEvent::MessageCreated { message } => {
            assert!(message.deleted && message.body.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tokens_expire_and_revoke() {
    let (_dir, store) = sqlite();
    let ana = user(&store, "ana").await;
    let token = TokenId([7; 32]);
    store.insert_token(token, ana, 1_000).await.unwrap();
    assert!(store.user_by_token(token, 999).await.unwrap().is_some());
    assert!(
        store.user_by_token(token, 1_000).await.unwrap().is_none(),
        "expired"
    );
    assert!(store.revoke_token(token).await.unwrap());
    assert!(!store.revoke_token(token).await.unwrap());
}

#[tokio::test]
async fn the_first_user_is_admin_and_closed_registration_refuses_the_rest() {
    let (_dir, store) = sqlite();
    assert!(
        store
            .create_user("root", "Root", "h", true)
            .await
            .unwrap()
            .is_admin
    );
    assert_eq!(
        store
            .create_user("ana", "Ana", "h", true)
            .await
            .unwrap_err(),
        StoreError::RegistrationClosed
    );
    assert!(
        !store
            .create_user("ana", "Ana", "h", false)
            .await
            .unwrap()
            .is_admin
    );
}
