//! The SQLite schema, as an ordered list of migrations. `PRAGMA user_version` records how many
//! have run; a start applies the rest in one transaction. Never edit a migration that has
//! shipped: add a new one.

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Session tokens, by the SHA-256 of the token: a stolen database holds no usable token.
CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tokens_by_user ON tokens(user_id);

-- kind: public | private | dm | group. dm_key (the sorted member ids) makes a direct message
-- unique per set of members; channels have none and a unique name instead.
CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    topic      TEXT NOT NULL,
    dm_key     TEXT UNIQUE,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX rooms_channel_name ON rooms(name COLLATE NOCASE) WHERE dm_key IS NULL;

CREATE TABLE members (
    room_id    INTEGER NOT NULL REFERENCES rooms(id),
    user_id    INTEGER NOT NULL REFERENCES users(id),
    role       TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members(user_id, room_id);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    room_id       INTEGER NOT NULL REFERENCES rooms(id),
    seq           INTEGER NOT NULL,
    author_id     INTEGER NOT NULL REFERENCES users(id),
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (room_id, seq),
    UNIQUE (author_id, client_msg_id)
);

-- Every change to a room, one row per sequence number. Message and member events point at the
-- current rows, so a deleted message's text is never replayed.
CREATE TABLE room_events (
    room_id    INTEGER NOT NULL REFERENCES rooms(id),
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    actor_id   INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    message_id INTEGER,
    subject_id INTEGER,
    role       TEXT,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
"#,
    // Liveness: read and delivery positions per member (existing members count as having read
    // everything), last-seen times, and who each message mentions.
    r#"
ALTER TABLE members ADD COLUMN read_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
UPDATE members SET
    read_seq = (SELECT last_seq FROM rooms WHERE rooms.id = members.room_id),
    delivered_seq = (SELECT last_seq FROM rooms WHERE rooms.id = members.room_id);
ALTER TABLE users ADD COLUMN last_seen_at INTEGER;
CREATE TABLE mentions (
    user_id    INTEGER NOT NULL REFERENCES users(id),
    message_id INTEGER NOT NULL REFERENCES messages(id),
    PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID;
"#,
    // Messages lose `UNIQUE (room_id, seq)`: `room_events` keys every event, a message's
    // included, by `(room_id, seq)` already, and history and unread counts read through it. The
    // second index cost every group commit one more page per room it touched (benchmarked:
    // docs/benchmarks.md). SQLite cannot drop a table constraint, so the table is rebuilt; the
    // migration runs with foreign keys off, and `migrate` checks them before it commits.
    r#"
CREATE TABLE messages_rebuilt (
    id            INTEGER PRIMARY KEY,
    room_id       INTEGER NOT NULL REFERENCES rooms(id),
    seq           INTEGER NOT NULL,
    author_id     INTEGER NOT NULL REFERENCES users(id),
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (author_id, client_msg_id)
);
INSERT INTO messages_rebuilt
    (id, room_id, seq, author_id, client_msg_id, body, created_at, edited_at, deleted)
    SELECT id, room_id, seq, author_id, client_msg_id, body, created_at, edited_at, deleted
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;
"#,
    // The idempotency key turns around: `UNIQUE (client_msg_id, author_id)`. natter's clients
    // put the time first in a `client_msg_id`, so keyed by it the index grows at one end, and a
    // group commit writes one or two of its pages. Keyed by author first, every author in the
    // group cost a page of their own (69 of the about 150 pages a 70-message group wrote in the
    // durable benchmark). The lookup names both columns, so it uses either order. A rebuild
    // again, for the same reason as the last one.
    r#"
CREATE TABLE messages_rebuilt (
    id            INTEGER PRIMARY KEY,
    room_id       INTEGER NOT NULL REFERENCES rooms(id),
    seq           INTEGER NOT NULL,
    author_id     INTEGER NOT NULL REFERENCES users(id),
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_msg_id, author_id)
);
INSERT INTO messages_rebuilt
    (id, room_id, seq, author_id, client_msg_id, body, created_at, edited_at, deleted)
    SELECT id, room_id, seq, author_id, client_msg_id, body, created_at, edited_at, deleted
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;
"#,
];
