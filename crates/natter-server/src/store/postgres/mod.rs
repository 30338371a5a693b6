//! The PostgreSQL `Store`: for production and for several nodes sharing one database.
//!
//! The same guarantees as SQLite, kept by PostgreSQL itself: every writer to a room first takes
//! the room's row lock (`SELECT … FOR UPDATE`), which serializes the room's writers, on every
//! node, until commit; sequences advance under it, so they stay gapless and strictly increasing.
//! Commits are durable with the server's `synchronous_commit` (on by default).
//!
//! Sends, the hot path, are committed in groups (`group`): many sends per transaction. Every
//! other change is a transaction of its own (`append_alone`).
//!
//! Migrations run at start under an advisory lock, so nodes starting together apply them once.

mod group;

use super::{
    EventColumns, Listener, NewMessage, dm_key, event_select, kind_str, message_select, parse_kind,
    parse_role, presence_rooms, role_str, sql_limit,
};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use natter_core::ports::store::{
    Appended, Change, CommitListener, EventRecord, HistoryPage, Membership, Positions, Store,
    StoreError, TokenId, UserRecord,
};
use natter_protocol::frame::MemberInfo;
use natter_protocol::{
    ClientMsgId, Message, MessageId, Role, RoomId, RoomInfo, RoomKind, RoomSeq, UserId, UserInfo,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Every statement goes through the connection's statement cache. Without it tokio-postgres
/// parses and plans each statement again, one extra round trip, on every call.
trait CachedStatements: GenericClient + Sync {
    fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, tokio_postgres::Error>> + Send {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_opt(&statement, params).await
        }
    }

    fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, tokio_postgres::Error>> + Send {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_one(&statement, params).await
        }
    }

    fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query(&statement, params).await
        }
    }

    fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.execute(&statement, params).await
        }
    }
}

impl<T: GenericClient + Sync> CachedStatements for T {}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_admin      BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT
);
CREATE UNIQUE INDEX users_username ON users (lower(username));
CREATE TABLE tokens (
    hash       BYTEA PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (user_id);
CREATE TABLE rooms (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    topic      TEXT NOT NULL,
    dm_key     TEXT UNIQUE,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX rooms_channel_name ON rooms (lower(name)) WHERE dm_key IS NULL;
CREATE TABLE members (
    room_id       BIGINT NOT NULL REFERENCES rooms(id),
    user_id       BIGINT NOT NULL REFERENCES users(id),
    role          TEXT NOT NULL,
    joined_seq    BIGINT NOT NULL,
    read_seq      BIGINT NOT NULL DEFAULT 0,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, room_id);
CREATE TABLE messages (
    id            BIGSERIAL PRIMARY KEY,
    room_id       BIGINT NOT NULL REFERENCES rooms(id),
    seq           BIGINT NOT NULL,
    author_id     BIGINT NOT NULL REFERENCES users(id),
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    edited_at     BIGINT,
    deleted       BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (room_id, seq),
    UNIQUE (author_id, client_msg_id)
);
CREATE TABLE room_events (
    room_id    BIGINT NOT NULL REFERENCES rooms(id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    actor_id   BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    message_id BIGINT,
    subject_id BIGINT,
    role       TEXT,
    PRIMARY KEY (room_id, seq)
);
CREATE TABLE mentions (
    user_id    BIGINT NOT NULL REFERENCES users(id),
    message_id BIGINT NOT NULL REFERENCES messages(id),
    PRIMARY KEY (user_id, message_id)
);
"#,
    // The cluster's identity: every node sharing this database shares the broker channel named
    // after it, and nothing else does.
    r#"
CREATE TABLE natter_cluster (id TEXT NOT NULL);
INSERT INTO natter_cluster (id) VALUES (md5(random()::text || clock_timestamp()::text));
"#,
    // The idempotency key turns around, as in SQLite's schema (store/schema.rs says why): keyed
    // by the time-first `client_msg_id`, the index grows at one end.
    r#"
ALTER TABLE messages DROP CONSTRAINT messages_author_id_client_msg_id_key;
ALTER TABLE messages ADD CONSTRAINT messages_client_msg_id_author_id_key
    UNIQUE (client_msg_id, author_id);
"#,
];

/// An arbitrary key for the advisory lock that serializes migrations across nodes.
const MIGRATION_LOCK: i64 = 0x6e61_7474_6572;

pub struct PostgresStore {
    pool: Pool,
    /// The queue to the group-commit task; taken at `close`, which then refuses new sends.
    sends: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<group::Pending>>>,
    /// Disconnects when the group-commit task has answered every queued send.
    sends_done: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    listener: Listener,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// A conflict that a second attempt resolves: a unique key another transaction took first (a
/// retried send racing its first attempt), a serialization failure, a deadlock.
const RETRY: StoreError = StoreError::Conflict("changed concurrently; try again");

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn db<T>(result: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
    result.map_err(|error| match error.code() {
        Some(code)
            if *code == SqlState::UNIQUE_VIOLATION
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            RETRY
        }
        // tokio-postgres' Display says only "db error": the server's message is in the details.
        _ => match error.as_db_error() {
            Some(db_error) => StoreError::Unavailable(format!("{error}: {db_error}")),
            None => StoreError::Unavailable(error.to_string()),
        },
    })
}

fn seq(value: i64) -> RoomSeq {
    RoomSeq(value.max(0) as u64)
}

fn user_record(row: &Row) -> UserRecord {
    UserRecord {
        info: UserInfo {
            id: UserId(row.get(0)),
            username: row.get(1),
            display_name: row.get(2),
        },
        is_admin: row.get(3),
    }
}

fn message_row(row: &Row) -> Message {
    let deleted: bool = row.get(10);
    Message {
        id: MessageId(row.get(0)),
        room_id: RoomId(row.get(1)),
        seq: seq(row.get(2)),
        author: UserInfo {
            id: UserId(row.get(3)),
            username: row.get(4),
            display_name: row.get(5),
        },
        client_msg_id: ClientMsgId(row.get(6)),
        body: if deleted { String::new() } else { row.get(7) },
        created_at: row.get(8),
        edited_at: row.get(9),
        deleted,
    }
}

/// Rebuilds one event from its row; message events read the message as it is now.
async fn event_row(
    client: &impl GenericClient,
    room_id: RoomId,
    row: &Row,
) -> Result<EventRecord, StoreError> {
    let kind: String = row.get(3);
    let message_id: Option<i64> = row.get(4);
    let message = match message_id.filter(|_| EventColumns::needs_message(&kind)) {
        Some(id) => Some(message_row(&db(client
            .query_one_cached(concat!(message_select!(), " WHERE m.id = $1"), &[&id])
            .await)?)),
        None => None,
    };
    let columns = EventColumns {
        seq: seq(row.get(0)),
        at: row.get(1),
        actor: UserId(row.get(2)),
        kind,
        message_id,
        message,
        subject: row.get::<_, Option<i64>>(5).map(UserId),
        role: row.get::<_, Option<String>>(6).map(|r| parse_role(&r)),
        subject_username: row.get(7),
        subject_display_name: row.get(8),
        room_name: row.get(9),
        room_topic: row.get(10),
    };
    Ok(columns.into_record(room_id))
}

async fn load_event(
    client: &impl GenericClient,
    room_id: RoomId,
    at: RoomSeq,
) -> Result<EventRecord, StoreError> {
    let row = db(client
        .query_one_cached(
            concat!(event_select!(), " WHERE e.room_id = $1 AND e.seq = $2"),
            &[&room_id.0, &(at.0 as i64)],
        )
        .await)?;
    event_row(client, room_id, &row).await
}

/// `$1` is the viewer: `role`, the read position, the unread counts and (column 10) the
/// sequence their membership began at are theirs.
macro_rules! room_select {
    () => {
        "SELECT r.id, r.kind, r.name, r.topic, r.last_seq,
        v.role,
        (SELECT COUNT(*) FROM members WHERE room_id = r.id),
        COALESCE(v.read_seq, 0),
        (SELECT COUNT(*) FROM messages m
            WHERE m.room_id = r.id AND m.seq > v.read_seq AND m.author_id != $1 AND NOT m.deleted),
        (SELECT COUNT(*) FROM mentions mn JOIN messages m ON m.id = mn.message_id
            WHERE mn.user_id = $1 AND m.room_id = r.id AND m.seq > v.read_seq AND NOT m.deleted),
        COALESCE(v.joined_seq, 0)
    FROM rooms r
    LEFT JOIN members v ON v.room_id = r.id AND v.user_id = $1"
    };
}

async fn room_row(client: &impl GenericClient, row: &Row) -> Result<RoomInfo, StoreError> {
    let id = RoomId(row.get(0));
    let kind = parse_kind(row.get(1));
    let members = match kind {
        RoomKind::Dm | RoomKind::Group => db(client
            .query_cached(
                "SELECT u.id, u.username, u.display_name FROM members m
                 JOIN users u ON u.id = m.user_id WHERE m.room_id = $1 ORDER BY u.id",
                &[&id.0],
            )
            .await)?
        .iter()
        .map(|row| UserInfo {
            id: UserId(row.get(0)),
            username: row.get(1),
            display_name: row.get(2),
        })
        .collect(),
        RoomKind::Public | RoomKind::Private => Vec::new(),
    };
    Ok(RoomInfo {
        id,
        kind,
        name: row.get(2),
        topic: row.get(3),
        last_seq: seq(row.get(4)),
        role: row.get::<_, Option<String>>(5).map(|r| parse_role(&r)),
        member_count: row.get::<_, i64>(6) as u32,
        members,
        read_seq: seq(row.get(7)),
        unread: row.get::<_, i64>(8) as u32,
        mentions: row.get::<_, i64>(9) as u32,
    })
}

async fn role_of(
    client: &impl GenericClient,
    room_id: RoomId,
    user_id: UserId,
) -> Result<Option<Role>, StoreError> {
    Ok(db(client
        .query_opt_cached(
            "SELECT role FROM members WHERE room_id = $1 AND user_id = $2",
            &[&room_id.0, &user_id.0],
        )
        .await)?
    .map(|row| parse_role(row.get(0))))
}

async fn lock_room(client: &impl GenericClient, room_id: RoomId) -> Result<(), StoreError> {
    let found = db(client
        .query_opt_cached(
            "SELECT id FROM rooms WHERE id = $1 FOR UPDATE",
            &[&room_id.0],
        )
        .await)?;
    found.map(|_| ()).ok_or(StoreError::NotFound("room"))
}

async fn require_room(client: &impl GenericClient, room_id: RoomId) -> Result<(), StoreError> {
    let found = db(client
        .query_opt_cached("SELECT id FROM rooms WHERE id = $1", &[&room_id.0])
        .await)?;
    found.map(|_| ()).ok_or(StoreError::NotFound("room"))
}

/// Advances the room's sequence; the row lock it takes serializes the room's writers.
async fn next_seq(client: &impl GenericClient, room_id: RoomId) -> Result<RoomSeq, StoreError> {
    let row = db(client
        .query_opt_cached(
            "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            &[&room_id.0],
        )
        .await)?;
    row.map(|row| seq(row.get(0)))
        .ok_or(StoreError::NotFound("room"))
}

/// What one event row points at.
struct EventRow<'a> {
    kind: &'a str,
    message_id: Option<MessageId>,
    subject: Option<UserId>,
    role: Option<Role>,
}

async fn insert_event(
    client: &impl GenericClient,
    room_id: RoomId,
    at_seq: RoomSeq,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<EventRecord, StoreError> {
    insert_event_row(client, room_id, at_seq, actor, now, row).await?;
    load_event(client, room_id, at_seq).await
}

/// Records the event at `at_seq`.
async fn insert_event_row(
    client: &impl GenericClient,
    room_id: RoomId,
    at_seq: RoomSeq,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<(), StoreError> {
    db(client
        .execute_cached(
            "INSERT INTO room_events (room_id, seq, at, actor_id, kind, message_id, subject_id, role)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &room_id.0,
                &(at_seq.0 as i64),
                &now,
                &actor.0,
                &row.kind,
                &row.message_id.map(|m| m.0),
                &row.subject.map(|s| s.0),
                &row.role.map(role_str),
            ],
        )
        .await)?;
    Ok(())
}

async fn record_event(
    client: &impl GenericClient,
    room_id: RoomId,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<EventRecord, StoreError> {
    let at_seq = next_seq(client, room_id).await?;
    insert_event(client, room_id, at_seq, actor, now, row).await
}

async fn add_member(
    client: &impl GenericClient,
    room_id: RoomId,
    actor: UserId,
    user_id: UserId,
    role: Role,
    now: i64,
) -> Result<EventRecord, StoreError> {
    require_room(client, room_id).await?;
    if role_of(client, room_id, user_id).await?.is_some() {
        return Err(StoreError::Conflict("already a member"));
    }
    let user = db(client
        .query_opt_cached("SELECT id FROM users WHERE id = $1", &[&user_id.0])
        .await)?;
    if user.is_none() {
        return Err(StoreError::NotFound("user"));
    }
    let row = EventRow {
        kind: "member_joined",
        message_id: None,
        subject: Some(user_id),
        role: Some(role),
    };
    let record = record_event(client, room_id, actor, now, row).await?;
    let joined = record.seq.0 as i64;
    db(client
        .execute_cached(
            "INSERT INTO members (room_id, user_id, role, joined_seq, read_seq, delivered_seq)
             VALUES ($1, $2, $3, $4, $4, $4)",
            &[&room_id.0, &user_id.0, &role_str(role), &joined],
        )
        .await)?;
    Ok(record)
}

async fn live_message(
    client: &impl GenericClient,
    room_id: RoomId,
    message_id: MessageId,
) -> Result<(), StoreError> {
    let found = db(client
        .query_opt_cached(
            "SELECT id FROM messages WHERE id = $1 AND room_id = $2 AND NOT deleted",
            &[&message_id.0, &room_id.0],
        )
        .await)?;
    found.map(|_| ()).ok_or(StoreError::NotFound("message"))
}

async fn apply_change(
    client: &impl GenericClient,
    room_id: RoomId,
    actor: UserId,
    change: Change,
    now: i64,
) -> Result<Appended, StoreError> {
    let fresh = |record| {
        Ok(Appended {
            record,
            duplicate: false,
        })
    };
    let event = |kind, message_id, subject, role| EventRow {
        kind,
        message_id,
        subject,
        role,
    };
    // Every change to a room starts by locking the room's row: the checks below (membership, a
    // live message) then see every change committed before, on any node, and no other change to
    // the room can slip in between a check and the write.
    lock_room(client, room_id).await?;
    match change {
        Change::Send {
            client_msg_id,
            body,
            mentions,
        } => {
            let first = db(client
                .query_opt_cached(
                    "SELECT room_id, seq FROM messages WHERE author_id = $1 AND client_msg_id = $2",
                    &[&actor.0, &client_msg_id.0],
                )
                .await)?;
            if let Some(first) = first {
                let first_room: i64 = first.get(0);
                if first_room != room_id.0 {
                    return Err(StoreError::Conflict(
                        "this client_msg_id was used for a message to another room",
                    ));
                }
                let record = load_event(client, room_id, seq(first.get(1))).await?;
                return Ok(Appended {
                    record,
                    duplicate: true,
                });
            }
            // The room, the author's membership and how the author is shown, in one round
            // trip: the hot path of every send.
            let found = db(client
                .query_opt_cached(
                    "SELECT m.role, u.username, u.display_name FROM rooms r
                     JOIN users u ON u.id = $2
                     LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2
                     WHERE r.id = $1",
                    &[&room_id.0, &actor.0],
                )
                .await)?
            .ok_or(StoreError::NotFound("room"))?;
            if found.get::<_, Option<String>>(0).is_none() {
                return Err(StoreError::Forbidden("you are not a member of this room"));
            }
            let author = UserInfo {
                id: actor,
                username: found.get(1),
                display_name: found.get(2),
            };
            let at_seq = next_seq(client, room_id).await?;
            let row = db(client
                .query_one_cached(
                    "INSERT INTO messages (room_id, seq, author_id, client_msg_id, body, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[&room_id.0, &(at_seq.0 as i64), &actor.0, &client_msg_id.0, &body, &now],
                )
                .await)?;
            let message_id = MessageId(row.get(0));
            for username in &mentions {
                db(client
                    .execute_cached(
                        "INSERT INTO mentions (user_id, message_id)
                         SELECT u.id, $1 FROM users u JOIN members m ON m.user_id = u.id
                         WHERE m.room_id = $2 AND lower(u.username) = lower($3) AND u.id != $4
                         ON CONFLICT DO NOTHING",
                        &[&message_id.0, &room_id.0, username, &actor.0],
                    )
                    .await)?;
            }
            let row = event("message_created", Some(message_id), None, None);
            insert_event_row(client, room_id, at_seq, actor, now, row).await?;
            fresh(
                NewMessage {
                    id: message_id,
                    room_id,
                    seq: at_seq,
                    author,
                    client_msg_id,
                    body,
                    at: now,
                }
                .into_event(),
            )
        }
        Change::Edit { message_id, body } => {
            live_message(client, room_id, message_id).await?;
            db(client
                .execute_cached(
                    "UPDATE messages SET body = $1, edited_at = $2 WHERE id = $3",
                    &[&body, &now, &message_id.0],
                )
                .await)?;
            let row = event("message_edited", Some(message_id), None, None);
            fresh(record_event(client, room_id, actor, now, row).await?)
        }
        Change::Delete { message_id } => {
            live_message(client, room_id, message_id).await?;
            db(client
                .execute_cached(
                    "UPDATE messages SET body = '', deleted = true WHERE id = $1",
                    &[&message_id.0],
                )
                .await)?;
            let row = event("message_deleted", Some(message_id), None, None);
            fresh(record_event(client, room_id, actor, now, row).await?)
        }
        Change::AddMember { user_id, role, .. } => {
            fresh(add_member(client, room_id, actor, user_id, role, now).await?)
        }
        Change::RemoveMember { user_id, .. } => {
            if role_of(client, room_id, user_id).await?.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            db(client
                .execute_cached(
                    "DELETE FROM members WHERE room_id = $1 AND user_id = $2",
                    &[&room_id.0, &user_id.0],
                )
                .await)?;
            let row = event("member_left", None, Some(user_id), None);
            fresh(record_event(client, room_id, actor, now, row).await?)
        }
        Change::UpdateRoom { name, topic } => {
            require_room(client, room_id).await?;
            match client
                .execute_cached(
                    "UPDATE rooms SET name = $1, topic = $2 WHERE id = $3",
                    &[&name, &topic, &room_id.0],
                )
                .await
            {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("a channel with that name exists"));
                }
                other => db(other)?,
            };
            let row = event("room_updated", None, None, None);
            fresh(record_event(client, room_id, actor, now, row).await?)
        }
        Change::SetRole { user_id, role } => {
            if role_of(client, room_id, user_id).await?.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            db(client
                .execute_cached(
                    "UPDATE members SET role = $1 WHERE room_id = $2 AND user_id = $3",
                    &[&role_str(role), &room_id.0, &user_id.0],
                )
                .await)?;
            let row = event("role_changed", None, Some(user_id), Some(role));
            fresh(record_event(client, room_id, actor, now, row).await?)
        }
    }
}

impl PostgresStore {
    /// Connects (the URL as libpq takes it) and runs pending migrations.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(unavailable)?;
        // A database that stops answering must turn into `unavailable`, not hung requests.
        config.connect_timeout(std::time::Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(std::time::Duration::from_secs(30));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(std::time::Duration::from_secs(5));
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(unavailable)?;
        let (sends, queue) = tokio::sync::mpsc::unbounded_channel();
        let (done, sends_done) = std::sync::mpsc::channel::<()>();
        let committing = pool.clone();
        let listener = Listener::default();
        let heard = listener.clone();
        tokio::spawn(async move {
            group::run(committing, queue, heard).await;
            drop(done);
        });
        let store = PostgresStore {
            pool,
            sends: std::sync::Mutex::new(Some(sends)),
            sends_done: std::sync::Mutex::new(Some(sends_done)),
            listener,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The id of the cluster this database belongs to.
    pub async fn cluster_id(&self) -> Result<String, StoreError> {
        let row = db(self
            .client()
            .await?
            .query_one_cached("SELECT id FROM natter_cluster", &[])
            .await)?;
        Ok(row.get(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = db(client.transaction().await)?;
        db(tx
            .execute_cached("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await)?;
        db(tx
            .batch_execute("CREATE TABLE IF NOT EXISTS natter_migrations (version INT PRIMARY KEY)")
            .await)?;
        let applied: i64 = db(tx
            .query_one_cached("SELECT COUNT(*) FROM natter_migrations", &[])
            .await)?
        .get(0);
        for (version, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            db(tx.batch_execute(migration).await)?;
            db(tx
                .execute_cached(
                    "INSERT INTO natter_migrations (version) VALUES ($1)",
                    &[&(version as i32)],
                )
                .await)?;
        }
        db(tx.commit().await)
    }

    /// Runs `work` in a transaction and commits it; a store error rolls it back.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        write(&self.pool, work).await
    }
}

/// Runs `work` in a transaction and commits it; a store error rolls it back.
async fn write<T>(
    pool: &Pool,
    work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let tx = db(client.transaction().await)?;
    let result = work(&tx).await?;
    db(tx.commit().await)?;
    Ok(result)
}

/// One change in a transaction of its own. A send retried into another room at the same moment,
/// a deadlock, a serialization failure: a second attempt sees the winner's commit.
async fn append_alone(
    pool: &Pool,
    room_id: RoomId,
    actor: UserId,
    change: Change,
    now: i64,
) -> Result<Appended, StoreError> {
    for _ in 0..2 {
        let result = write(pool, async |tx| {
            apply_change(tx, room_id, actor, change.clone(), now).await
        })
        .await;
        match result {
            Err(error) if error == RETRY => continue,
            other => return other,
        }
    }
    write(pool, async |tx| {
        apply_change(tx, room_id, actor, change, now).await
    })
    .await
}

#[async_trait]
impl Store for PostgresStore {
    async fn health(&self) -> Result<(), StoreError> {
        db(self.client().await?.query_one_cached("SELECT 1", &[]).await).map(|_| ())
    }

    /// Stops taking sends and waits (blocking, a bounded time) until every queued one is answered.
    fn close(&self) {
        self.sends.lock().unwrap_or_else(|e| e.into_inner()).take();
        let done = self
            .sends_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(done) = done {
            let _ = done.recv_timeout(std::time::Duration::from_secs(10));
        }
    }

    fn keeps_submission_order(&self) -> bool {
        true
    }

    fn listen(&self, listener: CommitListener) {
        self.listener.set(listener);
    }

    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        only_if_first: bool,
    ) -> Result<UserRecord, StoreError> {
        self.write(async |tx| {
            // Two first registrations at once must not both become admin.
            db(tx
                .batch_execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                .await)?;
            let existing: i64 =
                db(tx.query_one_cached("SELECT COUNT(*) FROM users", &[]).await)?.get(0);
            if only_if_first && existing > 0 {
                return Err(StoreError::RegistrationClosed);
            }
            let is_admin = existing == 0;
            let row = match tx
                .query_one_cached(
                    "INSERT INTO users (username, display_name, password_hash, is_admin, created_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&username, &display_name, &password_hash, &is_admin, &natter_core::now_ms()],
                )
                .await
            {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("that username is taken"));
                }
                other => db(other)?,
            };
            Ok(UserRecord {
                info: UserInfo {
                    id: UserId(row.get(0)),
                    username: username.to_owned(),
                    display_name: display_name.to_owned(),
                },
                is_admin,
            })
        })
        .await
    }

    async fn credentials(
        &self,
        username: &str,
    ) -> Result<Option<(UserRecord, String)>, StoreError> {
        let row = db(self
            .client()
            .await?
            .query_opt_cached(
                "SELECT id, username, display_name, is_admin, password_hash FROM users
                 WHERE lower(username) = lower($1)",
                &[&username],
            )
            .await)?;
        Ok(row.map(|row| (user_record(&row), row.get(4))))
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = db(self
            .client()
            .await?
            .query_opt_cached(
                "SELECT id, username, display_name, is_admin FROM users
                 WHERE lower(username) = lower($1)",
                &[&username],
            )
            .await)?;
        Ok(row.as_ref().map(user_record))
    }

    async fn insert_token(
        &self,
        token: TokenId,
        user_id: UserId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        db(self
            .client()
            .await?
            .execute_cached(
                "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&&token.0[..], &user_id.0, &natter_core::now_ms(), &expires_at],
            )
            .await)
        .map(|_| ())
    }

    async fn user_by_token(
        &self,
        token: TokenId,
        now: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let row = db(self
            .client()
            .await?
            .query_opt_cached(
                "SELECT u.id, u.username, u.display_name, u.is_admin
                 FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = $1 AND t.expires_at > $2",
                &[&&token.0[..], &now],
            )
            .await)?;
        Ok(row.as_ref().map(user_record))
    }

    async fn revoke_token(&self, token: TokenId) -> Result<bool, StoreError> {
        db(self
            .client()
            .await?
            .execute_cached("DELETE FROM tokens WHERE hash = $1", &[&&token.0[..]])
            .await)
        .map(|n| n > 0)
    }

    async fn create_channel(
        &self,
        owner: UserId,
        kind: RoomKind,
        name: &str,
        topic: &str,
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError> {
        self.write(async |tx| {
            let row = match tx
                .query_one_cached(
                    "INSERT INTO rooms (kind, name, topic, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING id",
                    &[&kind_str(kind), &name, &topic, &now],
                )
                .await
            {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("a channel with that name exists"));
                }
                other => db(other)?,
            };
            let room_id = RoomId(row.get(0));
            let record = add_member(tx, room_id, owner, owner, Role::Owner, now).await?;
            Ok((room_id, vec![record]))
        })
        .await
    }

    async fn open_dm(
        &self,
        creator: UserId,
        members: &[UserId],
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError> {
        let (key, kind) = dm_key(members);
        let created = self
            .write(async |tx| {
                // Another node may create the same room at the same moment: the unique key
                // makes one of them lose, and the loser finds the winner's room below.
                let row = db(tx
                    .query_opt_cached(
                        "INSERT INTO rooms (kind, name, topic, dm_key, created_at)
                         VALUES ($1, '', '', $2, $3) ON CONFLICT (dm_key) DO NOTHING RETURNING id",
                        &[&kind_str(kind), &key, &now],
                    )
                    .await)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let room_id = RoomId(row.get(0));
                let mut events = Vec::with_capacity(members.len());
                let ordered = std::iter::once(creator)
                    .chain(members.iter().copied().filter(|m| *m != creator));
                for member in ordered {
                    events.push(add_member(tx, room_id, creator, member, Role::Member, now).await?);
                }
                Ok(Some((room_id, events)))
            })
            .await?;
        if let Some(created) = created {
            return Ok(created);
        }
        let row = db(self
            .client()
            .await?
            .query_one_cached("SELECT id FROM rooms WHERE dm_key = $1", &[&key])
            .await)?;
        Ok((RoomId(row.get(0)), Vec::new()))
    }

    async fn append(
        &self,
        room_id: RoomId,
        actor: UserId,
        change: Change,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let Change::Send {
            client_msg_id,
            body,
            mentions,
        } = change
        else {
            let appended = append_alone(&self.pool, room_id, actor, change, now).await?;
            self.listener.hear(&appended);
            return Ok(appended);
        };
        // Queued before the first await: sends are stored in the order their futures first ran.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = group::Pending {
            room_id,
            actor,
            client_msg_id,
            body,
            mentions,
            now,
            reply,
        };
        let queued = self
            .sends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|sends| sends.send(pending).is_ok());
        if !queued {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the send was not committed".into())))
    }

    async fn room(&self, room_id: RoomId, viewer: UserId) -> Result<Option<RoomInfo>, StoreError> {
        let client = self.client().await?;
        let row = db(client
            .query_opt_cached(
                concat!(room_select!(), " WHERE r.id = $2"),
                &[&viewer.0, &room_id.0],
            )
            .await)?;
        match row {
            Some(row) => Ok(Some(room_row(&client, &row).await?)),
            None => Ok(None),
        }
    }

    async fn role_of(&self, room_id: RoomId, user_id: UserId) -> Result<Option<Role>, StoreError> {
        role_of(&self.client().await?, room_id, user_id).await
    }

    async fn rooms_of(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError> {
        let mut client = self.client().await?;
        // One REPEATABLE READ transaction: every last_seq comes from the same snapshot.
        let tx = db(client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await)?;
        let rows = db(tx
            .query_cached(
                concat!(room_select!(), " WHERE v.user_id = $1 ORDER BY r.id"),
                &[&user_id.0],
            )
            .await)?;
        let mut memberships = Vec::with_capacity(rows.len());
        for row in &rows {
            memberships.push(Membership {
                room: room_row(&tx, row).await?,
                joined_seq: seq(row.get(10)),
            });
        }
        db(tx.commit().await)?;
        Ok(memberships)
    }

    async fn public_rooms(&self, viewer: UserId) -> Result<Vec<RoomInfo>, StoreError> {
        let client = self.client().await?;
        let rows = db(client
            .query_cached(
                concat!(
                    room_select!(),
                    " WHERE r.kind = 'public' ORDER BY lower(r.name)"
                ),
                &[&viewer.0],
            )
            .await)?;
        let mut rooms = Vec::with_capacity(rows.len());
        for row in &rows {
            rooms.push(room_row(&client, row).await?);
        }
        Ok(rooms)
    }

    async fn members(&self, room_id: RoomId) -> Result<Vec<MemberInfo>, StoreError> {
        let rows = db(self
            .client()
            .await?
            .query_cached(
                "SELECT u.id, u.username, u.display_name, m.role, m.delivered_seq, m.read_seq
                 FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = $1 ORDER BY u.username",
                &[&room_id.0],
            )
            .await)?;
        Ok(rows
            .iter()
            .map(|row| MemberInfo {
                user: UserInfo {
                    id: UserId(row.get(0)),
                    username: row.get(1),
                    display_name: row.get(2),
                },
                role: parse_role(row.get(3)),
                delivered_seq: seq(row.get(4)),
                read_seq: seq(row.get(5)),
            })
            .collect())
    }

    async fn presence_rooms_of(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        let rows = db(self
            .client()
            .await?
            .query_cached(
                presence_rooms!("$1", "$2"),
                &[&user_id.0, &sql_limit(room_limit)],
            )
            .await)?;
        Ok(rows.iter().map(|row| RoomId(row.get(0))).collect())
    }

    async fn advance_receipt(
        &self,
        room_id: RoomId,
        user_id: UserId,
        delivered: Option<RoomSeq>,
        read: Option<RoomSeq>,
    ) -> Result<Positions, StoreError> {
        self.write(async |tx| {
            let row = db(tx
                .query_opt_cached(
                    "SELECT m.delivered_seq, m.read_seq, r.last_seq FROM members m
                     JOIN rooms r ON r.id = m.room_id WHERE m.room_id = $1 AND m.user_id = $2
                     FOR UPDATE OF m",
                    &[&room_id.0, &user_id.0],
                )
                .await)?
            .ok_or(StoreError::NotFound("member"))?;
            let (delivered_now, read_now, last): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let read_next = read.map_or(read_now, |r| (r.0 as i64).min(last)).max(read_now);
            let delivered_next = delivered
                .map_or(delivered_now, |d| (d.0 as i64).min(last))
                .max(delivered_now)
                .max(read_next);
            let moved = (delivered_next, read_next) != (delivered_now, read_now);
            if !moved {
                return Ok(Positions { delivered: seq(delivered_now), read: seq(read_now), moved });
            }
            db(tx
                .execute_cached(
                    "UPDATE members SET delivered_seq = $1, read_seq = $2 WHERE room_id = $3 AND user_id = $4",
                    &[&delivered_next, &read_next, &room_id.0, &user_id.0],
                )
                .await)?;
            Ok(Positions { delivered: seq(delivered_next), read: seq(read_next), moved })
        })
        .await
    }

    async fn contacts(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<(UserId, Option<i64>)>, StoreError> {
        let rows = db(self
            .client()
            .await?
            .query_cached(
                concat!(
                    "SELECT DISTINCT u.id, u.last_seen_at FROM members theirs
                     JOIN users u ON u.id = theirs.user_id
                     WHERE theirs.user_id != $1 AND theirs.room_id IN (",
                    presence_rooms!("$1", "$2"),
                    ")"
                ),
                &[&user_id.0, &sql_limit(room_limit)],
            )
            .await)?;
        Ok(rows
            .iter()
            .map(|row| (UserId(row.get(0)), row.get(1)))
            .collect())
    }

    async fn set_last_seen(&self, user_id: UserId, at: i64) -> Result<(), StoreError> {
        db(self
            .client()
            .await?
            .execute_cached(
                "UPDATE users SET last_seen_at = $1 WHERE id = $2",
                &[&at, &user_id.0],
            )
            .await)
        .map(|_| ())
    }

    async fn message(
        &self,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let row = db(self
            .client()
            .await?
            .query_opt_cached(
                concat!(message_select!(), " WHERE m.id = $1 AND m.room_id = $2"),
                &[&message_id.0, &room_id.0],
            )
            .await)?;
        Ok(row.as_ref().map(message_row))
    }

    async fn history(
        &self,
        room_id: RoomId,
        page: HistoryPage,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let (filter, order, bound) = match page {
            HistoryPage::Latest => ("", "DESC", 0),
            HistoryPage::Before(seq) => ("AND m.seq < $3", "DESC", seq.0 as i64),
            HistoryPage::After(seq) => ("AND m.seq > $3", "ASC", seq.0 as i64),
        };
        let sql = format!(
            "{} WHERE m.room_id = $1 {filter} ORDER BY m.seq {order} LIMIT $2",
            message_select!()
        );
        let fetch = limit as i64 + 1;
        let client = self.client().await?;
        let rows = if filter.is_empty() {
            db(client.query_cached(&sql, &[&room_id.0, &fetch]).await)?
        } else {
            db(client
                .query_cached(&sql, &[&room_id.0, &fetch, &bound])
                .await)?
        };
        let mut messages: Vec<Message> = rows.iter().map(message_row).collect();
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        if order == "DESC" {
            messages.reverse();
        }
        Ok((messages, has_more))
    }

    async fn events_after(
        &self,
        room_id: RoomId,
        after: RoomSeq,
        until: Option<RoomSeq>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let until = until.map(|u| u.0 as i64).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = db(client
            .query_cached(
                concat!(
                    event_select!(),
                    " WHERE e.room_id = $1 AND e.seq > $2 AND e.seq <= $3
                     ORDER BY e.seq LIMIT $4"
                ),
                &[&room_id.0, &(after.0 as i64), &until, &(limit as i64)],
            )
            .await)?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(event_row(&client, room_id, row).await?);
        }
        Ok(events)
    }
}
