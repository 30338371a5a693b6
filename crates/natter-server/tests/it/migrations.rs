//! Schema migrations on a database that already holds a chat: nothing stored is lost, and
//! everything read through the new schema reads as it did through the old.

use natter_core::ports::store::{Change, HistoryPage, Store};
use natter_protocol::{ClientMsgId, Role, RoomId, RoomKind, RoomSeq, UserId};
use natter_server::store::SqliteStore;
use std::path::Path;

/// A user on the store and the channel they created.
async fn user_with_channel(store: &dyn Store, username: &str) -> (UserId, RoomId) {
    let user = store
        .create_user(username, username, "h", false)
        .await
        .unwrap()
        .info
        .id;
    let (room, _) = store
        .create_channel(user, RoomKind::Public, "general", "", 0)
        .await
        .unwrap();
    (user, room)
}

fn send(client_msg_id: &str, body: &str) -> Change {
    Change::Send {
        client_msg_id: ClientMsgId(client_msg_id.into()),
        body: body.into(),
        mentions: vec![],
    }
}

/// Migrations 3 and 4 rebuilt `messages`: without `UNIQUE (room_id, seq)`, then with the
/// idempotency key turned around, `UNIQUE (client_msg_id, author_id)`. A database written before
/// them keeps every message, mention and link, retries are still recognised, and its rooms'
/// sequences go on where they were.
#[tokio::test]
async fn a_database_from_before_the_messages_rebuilds_keeps_every_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("natter.db");
    let (room, ana, bo) = {
        let store = SqliteStore::open(&path).unwrap();
        let (ana, room) = user_with_channel(&store, "ana").await;
        let bo = store
            .create_user("bo", "Bo", "h", false)
            .await
            .unwrap()
            .info
            .id;
        let join = Change::AddMember {
            user_id: bo,
            role: Role::Member,
            invited_by: None,
        };
        store.append(room, bo, join, 1).await.unwrap();
        for n in 0..30 {
            let send = Change::Send {
                client_msg_id: ClientMsgId(format!("m{n}")),
                body: if n % 10 == 0 {
                    format!("hi @bo {n}")
                } else {
                    format!("m{n}")
                },
                mentions: if n % 10 == 0 {
                    vec!["bo".into()]
                } else {
                    vec![]
                },
            };
            store.append(room, ana, send, 2 + n).await.unwrap();
        }
        store.close();
        (room, ana, bo)
    };
    let before = read_back(&path, room, bo).await;
    back_to_version_2(&path);

    let store = SqliteStore::open(&path).unwrap();
    let after = (
        store
            .history(room, HistoryPage::Latest, 100)
            .await
            .unwrap()
            .0,
        store.room(room, bo).await.unwrap().unwrap(),
    );
    assert_eq!(after.0, before.0, "every message, as it was");
    assert_eq!(
        (after.1.unread, after.1.mentions, after.1.last_seq),
        (before.1.unread, before.1.mentions, before.1.last_seq),
        "unread counts and mentions as they were"
    );
    let retried = store
        .append(room, ana, send("m0", "retried"), 99)
        .await
        .unwrap();
    assert!(
        retried.duplicate,
        "client_msg_ids are still unique per author"
    );
    let next = store
        .append(room, ana, send("after", "after the migration"), 100)
        .await
        .unwrap();
    assert_eq!(next.record.seq, before.1.last_seq.next());
    store.close();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        version as usize,
        natter_server::store::schema::MIGRATIONS.len()
    );
    let dangling: Option<String> = conn
        .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
        .ok();
    assert_eq!(dangling, None, "every mention still points at its message");
    let mentions: i64 = conn
        .query_row("SELECT COUNT(*) FROM mentions", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mentions, 3);
    let unique: Vec<String> = conn
        .prepare(
            "SELECT ii.name FROM pragma_index_list('messages') il, pragma_index_info(il.name) ii
             WHERE il.\"unique\" = 1 ORDER BY il.name, ii.seqno",
        )
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        unique,
        ["client_msg_id", "author_id"],
        "one unique index is left, the time-first client_msg_id leading"
    );
}

/// What a reader sees: the room's history, and the room as `bo` sees it.
async fn read_back(
    path: &Path,
    room: natter_protocol::RoomId,
    viewer: natter_protocol::UserId,
) -> (Vec<natter_protocol::Message>, natter_protocol::RoomInfo) {
    let store = SqliteStore::open(path).unwrap();
    let history = store
        .history(room, HistoryPage::Latest, 100)
        .await
        .unwrap()
        .0;
    let info = store.room(room, viewer).await.unwrap().unwrap();
    store.close();
    assert_eq!(history.len(), 30);
    assert_eq!(info.last_seq, RoomSeq(32), "created, joined, 30 messages");
    (history, info)
}

/// Puts `messages` back as schema version 2 defined it, with its `UNIQUE (room_id, seq)`: the
/// table is created from the shipped migration's own statement, so the fixture cannot drift.
fn back_to_version_2(path: &Path) {
    let first = natter_server::store::schema::MIGRATIONS[0];
    let start = first.find("CREATE TABLE messages (").unwrap();
    let end = start + first[start..].find(");").unwrap() + 2;
    let create = first[start..end].replace("CREATE TABLE messages (", "CREATE TABLE messages_v2 (");
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF;
         BEGIN;
         {create}
         INSERT INTO messages_v2 SELECT * FROM messages;
         DROP TABLE messages;
         ALTER TABLE messages_v2 RENAME TO messages;
         PRAGMA user_version = 2;
         COMMIT;"
    ))
    .unwrap();
    let unique_by_seq: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_index_list('messages') WHERE \"unique\" = 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(unique_by_seq, 2, "the version 2 table, both unique indexes");
}

/// PostgreSQL's migration 3 turned the idempotency key around, `UNIQUE (client_msg_id,
/// author_id)`. A database from before it keeps its messages, and a retry of one of them is still
/// recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_from_before_the_key_turned_around_still_knows_its_retries() {
    let database = crate::support::TestDatabase::create().await;
    let store = database.store().await;
    let (ana, room) = user_with_channel(store.as_ref(), "ana").await;
    let first = store
        .append(room, ana, send("m0", "hello"), 1)
        .await
        .unwrap();
    store.close();
    drop(store);

    let (admin, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(
            "ALTER TABLE messages DROP CONSTRAINT messages_client_msg_id_author_id_key;
             ALTER TABLE messages ADD CONSTRAINT messages_author_id_client_msg_id_key
                 UNIQUE (author_id, client_msg_id);
             DELETE FROM natter_migrations WHERE version >= 2;",
        )
        .await
        .unwrap();

    let store = database.store().await;
    let retried = store
        .append(room, ana, send("m0", "again"), 2)
        .await
        .unwrap();
    assert!(retried.duplicate, "the retry returns the first message");
    assert_eq!(retried.record.seq, first.record.seq);
    let next = store
        .append(room, ana, send("m1", "next"), 3)
        .await
        .unwrap();
    assert_eq!(next.record.seq, first.record.seq.next());
    store.close();

    let keys: Vec<String> = admin
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'messages' AND indexdef LIKE '%client_msg_id%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].ends_with("(client_msg_id, author_id)"),
        "{}",
        keys[0]
    );
}
