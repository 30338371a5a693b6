//! Store implementations. Only this folder knows SQL.
//!
//! Both stores keep the same tables and read them with the same SQL where the dialects agree;
//! the shared pieces live here.

pub mod postgres;
pub mod schema;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use natter_protocol::{Role, RoomKind};

/// The SQL both stores read a message with (`m` the message, `u` its author).
pub(crate) const MESSAGE_SELECT: &str =
    "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, u.display_name,
        m.client_msg_id, m.body, m.created_at, m.edited_at, m.deleted
    FROM messages m JOIN users u ON u.id = m.author_id";

/// The SQL both stores read an event with: the row, its subject's names, the room's name and topic.
pub(crate) const EVENT_SELECT: &str =
    "SELECT e.seq, e.at, e.actor_id, e.kind, e.message_id, e.subject_id, e.role,
        su.username, su.display_name, r.name, r.topic
    FROM room_events e
    JOIN rooms r ON r.id = e.room_id
    LEFT JOIN users su ON su.id = e.subject_id";

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
