//! Store implementations. Only this folder knows SQL.
//!
//! Both stores keep the same tables and read them with the same SQL where the dialects agree;
//! the shared pieces live here.

mod commit_window;
pub mod postgres;
pub mod schema;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use natter_core::ports::store::{Appended, CommitListener, EventRecord};
use natter_protocol::{
    Message, MessageId, Role, RoomEvent, RoomId, RoomKind, RoomSeq, UserId, UserInfo,
};
use std::sync::{Arc, OnceLock};

/// A store's commit listener, shared with whatever commits (SQLite's writer thread,
/// PostgreSQL's group-commit task). Set once, at start: every committed event reads it, so it
/// takes no lock.
#[derive(Clone, Default)]
pub(crate) struct Listener(Arc<OnceLock<CommitListener>>);

impl Listener {
    pub(crate) fn set(&self, listener: CommitListener) {
        if self.0.set(listener).is_err() {
            tracing::error!("the store already has a commit listener; the new one is ignored");
        }
    }

    /// Tells the listener of a committed append; a retried send committed nothing.
    pub(crate) fn hear(&self, appended: &Appended) {
        if let Some(listener) = self.0.get()
            && !appended.duplicate
        {
            listener(&appended.record);
        }
    }
}

// The selects below are macros, not `const`s, so that a statement built on one is a single
// literal (`concat!(message_select!(), " WHERE …")`): a `format!` on every call showed up in
// profiles of reconnect storms, once per event read.

/// The SQL both stores read a message with (`m` the message, `u` its author).
macro_rules! message_select {
    () => {
        "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, u.display_name,
        m.client_msg_id, m.body, m.created_at, m.edited_at, m.deleted
    FROM messages m JOIN users u ON u.id = m.author_id"
    };
}
pub(crate) use message_select;

/// The SQL both stores read an event with: the row, its subject's names, the room's name and topic.
macro_rules! event_select {
    () => {
        "SELECT e.seq, e.at, e.actor_id, e.kind, e.message_id, e.subject_id, e.role,
        su.username, su.display_name, r.name, r.topic
    FROM room_events e
    JOIN rooms r ON r.id = e.room_id
    LEFT JOIN users su ON su.id = e.subject_id"
    };
}
pub(crate) use event_select;

/// The SQL both stores find the rooms a user shares presence through with
/// (`Store::presence_rooms_of`, and `Store::contacts` within it):
/// direct and group messages, and channels of at most the limit's members. The arguments are
/// the store's placeholders for the user and the limit.
macro_rules! presence_rooms {
    ($user:literal, $limit:literal) => {
        concat!(
            "SELECT m.room_id FROM members m JOIN rooms r ON r.id = m.room_id
    WHERE m.user_id = ",
            $user,
            " AND (r.kind IN ('dm', 'group')
        OR (SELECT COUNT(*) FROM members c WHERE c.room_id = r.id) <= ",
            $limit,
            ")"
        )
    };
}
pub(crate) use presence_rooms;

/// A room-size limit as SQL compares it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

pub(crate) fn parse_role(text: &str) -> Role {
    match text {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        _ => Role::Member,
    }
}

/// A direct or group conversation's identity, `rooms.dm_key`, and its kind: one room per set
/// of members (given sorted and deduplicated), in both stores alike.
pub(crate) fn dm_key(members: &[UserId]) -> (String, RoomKind) {
    let key = members
        .iter()
        .map(|m| m.0.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let kind = if members.len() == 2 {
        RoomKind::Dm
    } else {
        RoomKind::Group
    };
    (key, kind)
}

pub(crate) fn kind_str(kind: RoomKind) -> &'static str {
    match kind {
        RoomKind::Public => "public",
        RoomKind::Private => "private",
        RoomKind::Dm => "dm",
        RoomKind::Group => "group",
    }
}

pub(crate) fn parse_kind(text: &str) -> RoomKind {
    match text {
        "public" => RoomKind::Public,
        "private" => RoomKind::Private,
        "dm" => RoomKind::Dm,
        _ => RoomKind::Group,
    }
}

/// A freshly stored message, as its `message_created` event: everything it shows was just
/// written, so a send need not read it back.
pub(crate) struct NewMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: RoomSeq,
    pub author: UserInfo,
    pub client_msg_id: natter_protocol::ClientMsgId,
    pub body: String,
    pub at: i64,
}

impl NewMessage {
    pub fn into_event(self) -> EventRecord {
        EventRecord {
            room_id: self.room_id,
            seq: self.seq,
            at: self.at,
            actor: self.author.id,
            event: RoomEvent::MessageCreated {
                message: Message {
                    id: self.id,
                    room_id: self.room_id,
                    seq: self.seq,
                    author: self.author,
                    client_msg_id: self.client_msg_id,
                    body: self.body,
                    created_at: self.at,
                    edited_at: None,
                    deleted: false,
                },
            },
        }
    }
}

/// One `room_events` row, as `event_select!` reads it, with the message it points at (read by the
/// caller for message events).
pub(crate) struct EventColumns {
    pub seq: RoomSeq,
    pub at: i64,
    pub actor: UserId,
    pub kind: String,
    pub message_id: Option<i64>,
    pub message: Option<Message>,
    pub subject: Option<UserId>,
    pub role: Option<Role>,
    pub subject_username: Option<String>,
    pub subject_display_name: Option<String>,
    pub room_name: String,
    pub room_topic: String,
}

impl EventColumns {
    /// Whether the caller must read the message for this event.
    pub fn needs_message(kind: &str) -> bool {
        kind == "message_created" || kind == "message_edited"
    }

    /// The event as clients see it.
    pub fn into_record(self, room_id: RoomId) -> EventRecord {
        let actor = self.actor;
        let by_other = |subject: Option<UserId>| subject.filter(|s| *s != actor).map(|_| actor);
        let event = match (self.kind.as_str(), self.message) {
            ("message_created", Some(message)) => RoomEvent::MessageCreated { message },
            ("message_edited", Some(message)) => RoomEvent::MessageEdited {
                message_id: message.id,
                body: message.body,
                edited_at: self.at,
            },
            ("message_deleted", _) | ("message_created" | "message_edited", None) => {
                RoomEvent::MessageDeleted {
                    message_id: MessageId(self.message_id.unwrap_or_default()),
                }
            }
            ("member_joined", _) => RoomEvent::MemberJoined {
                user: UserInfo {
                    id: self.subject.unwrap_or(actor),
                    username: self.subject_username.unwrap_or_default(),
                    display_name: self.subject_display_name.unwrap_or_default(),
                },
                role: self.role.unwrap_or(Role::Member),
                invited_by: by_other(self.subject),
            },
            ("member_left", _) => RoomEvent::MemberLeft {
                user_id: self.subject.unwrap_or(actor),
                kicked_by: by_other(self.subject),
            },
            ("room_updated", _) => RoomEvent::RoomUpdated {
                name: self.room_name,
                topic: self.room_topic,
            },
            _ => RoomEvent::RoleChanged {
                user_id: self.subject.unwrap_or(actor),
                role: self.role.unwrap_or(Role::Member),
            },
        };
        EventRecord {
            room_id,
            seq: self.seq,
            at: self.at,
            actor,
            event,
        }
    }
}
