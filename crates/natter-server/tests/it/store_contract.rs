//! The `Store` contract, checked directly against the SQLite store: the guarantees every store
//! must keep, whatever sits above it. Written against `dyn Store` so another backend runs the
//! same suite.

use natter_core::ports::store::{Appended, Change, Positions, Store, StoreError, TokenId};
use natter_protocol::{ClientMsgId, Role, RoomId, RoomKind, RoomSeq, UserId};
use std::sync::Arc;

/// Runs each contract test against every store: `sqlite::name` and `postgres::name`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                let (_dir, store) = crate::support::sqlite_store();
                super::$name(store).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                let database = crate::support::TestDatabase::create().await;
                super::$name(database.store().await).await;
            })*
        }
    };
}

contract!(
    concurrent_appends_get_gapless_strictly_increasing_sequences_per_room,
    a_failed_change_takes_no_sequence_number,
    a_repeated_client_msg_id_returns_the_first_message,
    events_are_read_between_bounds_and_deleted_text_is_never_replayed,
    tokens_expire_and_revoke,
    the_first_user_is_admin_and_closed_registration_refuses_the_rest,
    read_positions_only_move_forward_and_count_unread_messages_and_mentions,
    a_direct_message_is_one_room_per_set_of_members,
    sends_submitted_together_are_stored_in_order_and_each_refusal_stands_alone,
    the_commit_listener_hears_each_new_event_once_in_sequence_order,
    a_retry_is_answered_from_the_first_send_even_after_its_author_left,
    presence_is_shared_through_direct_messages_and_channels_up_to_the_limit,
);

async fn user(store: &Arc<dyn Store>, name: &str) -> UserId {
    store
        .create_user(name, name, "hash", false)
        .await
        .unwrap()
        .info
        .id
}

async fn channel(store: &Arc<dyn Store>, owner: UserId, name: &str) -> RoomId {
    store
        .create_channel(owner, RoomKind::Public, name, "", 0)
        .await
        .unwrap()
        .0
}

/// Adds `user` to `room` as a member; the join event's sequence.
async fn join(store: &Arc<dyn Store>, room: RoomId, user: UserId) -> RoomSeq {
    let joined = Change::AddMember {
        user_id: user,
        role: Role::Member,
        invited_by: None,
    };
    store
        .append(room, user, joined, 0)
        .await
        .unwrap()
        .record
        .seq
}

fn send(id: &str) -> Change {
    Change::Send {
        client_msg_id: ClientMsgId(id.into()),
        body: format!("body of {id}"),
        mentions: vec![],
    }
}

async fn concurrent_appends_get_gapless_strictly_increasing_sequences_per_room(
    store: Arc<dyn Store>,
) {
    let mut writers = Vec::new();
    for i in 0..8 {
        writers.push(user(&store, &format!("u{i}")).await);
    }
    let room_a = channel(&store, writers[0], "a").await;
    let room_b = channel(&store, writers[0], "b").await;
    for writer in &writers[1..] {
        for room in [room_a, room_b] {
            join(&store, room, *writer).await;
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

async fn a_failed_change_takes_no_sequence_number(store: Arc<dyn Store>) {
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

async fn a_repeated_client_msg_id_returns_the_first_message(store: Arc<dyn Store>) {
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

async fn events_are_read_between_bounds_and_deleted_text_is_never_replayed(store: Arc<dyn Store>) {
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

async fn tokens_expire_and_revoke(store: Arc<dyn Store>) {
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

async fn the_first_user_is_admin_and_closed_registration_refuses_the_rest(store: Arc<dyn Store>) {
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

async fn read_positions_only_move_forward_and_count_unread_messages_and_mentions(
    store: Arc<dyn Store>,
) {
    let ana = user(&store, "ana").await;
    let bo = user(&store, "bo").await;
    let room = channel(&store, ana, "r").await;
    let join = join(&store, room, bo).await;
    for (n, body) in ["one", "hi @bo", "three"].iter().enumerate() {
        let change = Change::Send {
            client_msg_id: ClientMsgId(format!("m{n}")),
            body: body.to_string(),
            mentions: natter_core::services::messages::mentioned_usernames(body),
        };
        store.append(room, ana, change, 0).await.unwrap();
    }
    let info = store.room(room, bo).await.unwrap().unwrap();
    assert_eq!((info.read_seq, info.unread, info.mentions), (join, 3, 1));
    let moved = store
        .advance_receipt(room, bo, None, Some(RoomSeq(join.0 + 2)))
        .await
        .unwrap();
    let at = RoomSeq(join.0 + 2);
    assert_eq!(
        moved,
        Positions {
            delivered: at,
            read: at,
            moved: true
        }
    );
    assert_eq!(
        store
            .advance_receipt(room, bo, Some(RoomSeq(1)), Some(RoomSeq(1)))
            .await
            .unwrap(),
        Positions {
            delivered: at,
            read: at,
            moved: false
        },
        "backwards changes nothing and answers the positions in force"
    );
    let info = store.room(room, bo).await.unwrap().unwrap();
    assert_eq!((info.unread, info.mentions), (1, 0));
    let capped = store
        .advance_receipt(room, bo, None, Some(RoomSeq(999)))
        .await
        .unwrap();
    assert_eq!(
        capped,
        Positions {
            delivered: info.last_seq,
            read: info.last_seq,
            moved: true
        },
        "never past the newest event"
    );
    let eve = user(&store, "eve").await;
    assert_eq!(
        store
            .advance_receipt(room, eve, None, Some(RoomSeq(1)))
            .await
            .unwrap_err(),
        StoreError::NotFound("member")
    );
}

async fn a_direct_message_is_one_room_per_set_of_members(store: Arc<dyn Store>) {
    let ana = user(&store, "ana").await;
    let bo = user(&store, "bo").await;
    let (first, events) = store.open_dm(ana, &[ana, bo], 0).await.unwrap();
    assert_eq!(events.len(), 2);
    let (again, events) = store.open_dm(bo, &[ana, bo], 0).await.unwrap();
    assert_eq!((again, events.len()), (first, 0));
    let memberships = store.rooms_of(bo).await.unwrap();
    assert_eq!(memberships.len(), 1);
    assert_eq!(memberships[0].room.kind, RoomKind::Dm);
    assert_eq!(
        store
            .contacts(ana, 200)
            .await
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        [bo]
    );
}

/// A channel counts toward presence up to `room_limit` members; a direct or group message always.
async fn presence_is_shared_through_direct_messages_and_channels_up_to_the_limit(
    store: Arc<dyn Store>,
) {
    let ana = user(&store, "ana").await;
    let bo = user(&store, "bo").await;
    let eve = user(&store, "eve").await;
    let zed = user(&store, "zed").await;
    let small = channel(&store, ana, "small").await;
    join(&store, small, bo).await;
    let big = channel(&store, ana, "big").await;
    join(&store, big, eve).await;
    join(&store, big, zed).await;
    let (dm, _) = store.open_dm(zed, &[ana, zed], 0).await.unwrap();
    let gil = user(&store, "gil").await;
    let (group, _) = store.open_dm(gil, &[ana, bo, gil], 0).await.unwrap();
    assert_eq!(
        store.room(group, ana).await.unwrap().map(|room| room.kind),
        Some(RoomKind::Group)
    );
    let shared = async |limit| {
        let mut contacts: Vec<UserId> = store
            .contacts(ana, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|(user_id, _)| user_id)
            .collect();
        let mut rooms = store.presence_rooms_of(ana, limit).await.unwrap();
        contacts.sort();
        rooms.sort();
        (contacts, rooms)
    };
    let sorted = |mut ids: Vec<RoomId>| {
        ids.sort();
        ids
    };
    assert_eq!(
        shared(3).await,
        (vec![bo, eve, zed, gil], sorted(vec![small, big, dm, group]))
    );
    assert_eq!(
        shared(2).await,
        (vec![bo, zed, gil], sorted(vec![small, dm, group]))
    );
    assert_eq!(
        shared(0).await,
        (vec![bo, zed, gil], sorted(vec![dm, group])),
        "direct and group messages have no limit"
    );
}

/// Sends submitted together (as pipelined sends are) share a group commit on a store that
/// groups them; a refused or retried send among them must come out exactly as it would alone,
/// and what each caller is told must be what is stored.
async fn sends_submitted_together_are_stored_in_order_and_each_refusal_stands_alone(
    store: Arc<dyn Store>,
) {
    let ana = user(&store, "ana").await;
    let bo = user(&store, "bo").await;
    let eve = user(&store, "eve").await;
    let room_a = channel(&store, ana, "a").await;
    let room_b = channel(&store, ana, "b").await;
    join(&store, room_a, bo).await;
    let earlier = store.append(room_a, ana, send("earlier"), 1).await.unwrap();

    let mention_bo = Change::Send {
        client_msg_id: ClientMsgId("hi-bo".into()),
        body: "hi @bo".into(),
        mentions: vec!["bo".into()],
    };
    let batch: Vec<(RoomId, UserId, Change)> = vec![
        (room_a, ana, send("a1")),
        (room_b, ana, send("b1")),
        (room_a, eve, send("not-a-member")),
        (room_a, bo, send("bo1")),
        (room_a, ana, send("earlier")),
        (room_a, ana, mention_bo),
        (room_b, ana, send("b2")),
        (RoomId(999_999), ana, send("nowhere")),
        (room_a, ana, send("a2")),
    ];
    let mut results = submit_together(&store, batch).await;
    let seq_of = |results: &[Result<Appended, StoreError>], i: usize| {
        results[i].as_ref().unwrap().record.seq.0
    };
    let base = earlier.record.seq.0;
    if store.keeps_submission_order() {
        assert_eq!(
            [0, 3, 5, 8].map(|i| seq_of(&results, i)),
            [base + 1, base + 2, base + 3, base + 4],
            "room a's sends numbered in the order submitted"
        );
        assert_eq!(
            [1, 6].map(|i| seq_of(&results, i)),
            [2, 3],
            "room b's likewise"
        );
    }
    assert_eq!(
        results[2].as_ref().unwrap_err(),
        &StoreError::Forbidden("you are not a member of this room")
    );
    assert_eq!(
        results[7].as_ref().unwrap_err(),
        &StoreError::NotFound("room")
    );
    let retry = results[4].as_ref().unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        retry.record, earlier.record,
        "a retry answers the first message"
    );

    // The same client_msg_id twice in one batch: the first is stored, the second answers it.
    let again = vec![
        (room_a, ana, send("c1")),
        (room_a, ana, send("c1")),
        (room_a, ana, send("c2")),
    ];
    let again = submit_together(&store, again).await;
    let (first, repeat) = (again[0].as_ref().unwrap(), again[1].as_ref().unwrap());
    assert!(!first.duplicate && repeat.duplicate);
    assert_eq!(repeat.record, first.record);
    if store.keeps_submission_order() {
        assert_eq!(seq_of(&again, 2), seq_of(&again, 0) + 1);
    }
    results.extend(again);

    // What each sender was told is exactly what is stored.
    for room in [room_a, room_b] {
        let stored = store
            .events_after(room, RoomSeq::ZERO, None, 100)
            .await
            .unwrap();
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq.0).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
        for result in results
            .iter()
            .flatten()
            .filter(|r| r.record.room_id == room)
        {
            let found = stored.iter().find(|e| e.seq == result.record.seq);
            assert_eq!(found, Some(&result.record));
        }
    }
    let info = store.room(room_a, bo).await.unwrap().unwrap();
    assert_eq!(info.mentions, 1, "the mention in the batch is recorded");
}

/// The node's hub hears committed events from the store's commit listener: each event that
/// `append` commits, once and before that `append` returns; sends submitted together are heard
/// in each room's sequence order (sessions need not reorder them); a refused send or a retry is
/// not heard.
async fn the_commit_listener_hears_each_new_event_once_in_sequence_order(store: Arc<dyn Store>) {
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hearing = heard.clone();
    store.listen(Arc::new(move |record| {
        hearing.lock().unwrap().push((record.room_id, record.seq));
    }));
    let heard = move || heard.lock().unwrap().clone();
    let ana = user(&store, "ana").await;
    let eve = user(&store, "eve").await;
    let room_a = channel(&store, ana, "a").await;
    let room_b = channel(&store, ana, "b").await;
    assert_eq!(heard(), [], "creating a room is not an append");

    let first = store.append(room_a, ana, send("first"), 1).await.unwrap();
    assert_eq!(
        heard(),
        [(room_a, first.record.seq)],
        "heard before append returned"
    );

    let batch = vec![
        (room_a, ana, send("a1")),
        (room_b, ana, send("b1")),
        (room_a, eve, send("refused")),
        (room_a, ana, send("first")),
        (room_a, ana, send("a2")),
        (room_b, ana, send("b2")),
        (room_a, ana, send("a3")),
    ];
    let results = submit_together(&store, batch).await;
    assert!(results[2].is_err() && results[3].as_ref().unwrap().duplicate);
    let heard_now = heard();
    assert_eq!(
        heard_now.len(),
        1 + 5,
        "each new event once; no refusal, no retry"
    );
    for room in [room_a, room_b] {
        let seqs: Vec<RoomSeq> = heard_now
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, seq)| *seq)
            .collect();
        let mut stored: Vec<RoomSeq> = results
            .iter()
            .flatten()
            .chain([&first])
            .filter(|a| a.record.room_id == room && !a.duplicate)
            .map(|a| a.record.seq)
            .collect();
        stored.sort();
        assert_eq!(seqs, stored, "room {room}: heard in sequence order");
    }

    let message_id = match &first.record.event {
        natter_protocol::RoomEvent::MessageCreated { message } => message.id,
        other => panic!("a send made {other:?}"),
    };
    let edit = Change::Edit {
        message_id,
        body: "edited".into(),
    };
    let edited = store.append(room_a, ana, edit, 2).await.unwrap();
    assert_eq!(
        heard().last(),
        Some(&(room_a, edited.record.seq)),
        "other changes are heard too"
    );
}

/// Appends every change at once, submitted in order (join_all first polls its futures in order).
async fn submit_together(
    store: &Arc<dyn Store>,
    batch: Vec<(RoomId, UserId, Change)>,
) -> Vec<Result<Appended, StoreError>> {
    futures_util::future::join_all(
        batch
            .into_iter()
            .map(|(room, actor, change)| store.append(room, actor, change, 5)),
    )
    .await
}

/// A retry is answered from what was stored, whatever changed since: after its author left the
/// room it still gets the first message, not a refusal. The same id sent to another room is a
/// conflict; to a room that does not exist, it is that room that is not found.
async fn a_retry_is_answered_from_the_first_send_even_after_its_author_left(store: Arc<dyn Store>) {
    let ana = user(&store, "ana").await;
    let bo = user(&store, "bo").await;
    let room = channel(&store, ana, "a").await;
    let other = channel(&store, ana, "b").await;
    join(&store, room, bo).await;
    join(&store, other, bo).await;
    let first = store.append(room, bo, send("once"), 1).await.unwrap();
    let leave = Change::RemoveMember {
        user_id: bo,
        kicked_by: None,
    };
    store.append(room, bo, leave, 2).await.unwrap();

    let retry = store.append(room, bo, send("once"), 3).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.record, first.record);
    let conflict =
        StoreError::Conflict("this client_msg_id was used for a message to another room");
    let refused = store.append(other, bo, send("once"), 4).await;
    assert_eq!(refused.unwrap_err(), conflict);
    let refused = store.append(RoomId(999_999), bo, send("once"), 4).await;
    assert_eq!(refused.unwrap_err(), StoreError::NotFound("room"));
    let refused = store.append(room, bo, send("new"), 5).await;
    assert_eq!(
        refused.unwrap_err(),
        StoreError::Forbidden("you are not a member of this room")
    );
}
