//! The per-room event stream and the shapes it carries.
//!
//! Everything that changes a room — a message, an edit, a delete, a member joining or leaving, a
//! rename — is one `RoomEvent` with its own `RoomSeq`. A client that has applied every event up to
//! sequence n has the room's full state; resume sends what comes after n.

use crate::ids::{ClientMsgId, MessageId, RoomId, RoomSeq, UserId};
use serde::{Deserialize, Serialize};

/// Who a public user is. `display_name` is free text; `username` is unique and never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

/// A member's power in a room. Owners and admins may kick, rename and set the topic; only the
/// owner may change roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// What kind of room it is. Channels have names; direct messages are defined by their members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// A channel anyone may find and join.
    Public,
    /// A channel joined by invitation only.
    Private,
    /// A direct message between two users; there is at most one per pair.
    Dm,
    /// A direct message between three or more users; at most one per set of members.
    Group,
}

/// The visibility asked for when creating a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

/// A room as one user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: RoomId,
    pub kind: RoomKind,
    /// Empty for direct messages: name them by their `members`.
    pub name: String,
    pub topic: String,
    /// The sequence of the room's newest event when this was read.
    pub last_seq: RoomSeq,
    /// The reader's role, or `null` when the reader is not a member (browsing public channels).
    pub role: Option<Role>,
    pub member_count: u32,
    /// For `dm` and `group` rooms: every member, the reader included. Empty for channels.
    #[serde(default)]
    pub members: Vec<UserInfo>,
    /// The reader's read position: the last sequence they have read (0 for non-members).
    #[serde(default)]
    pub read_seq: RoomSeq,
    /// Messages from others after `read_seq`.
    #[serde(default)]
    pub unread: u32,
    /// Of those, the ones that mention the reader (`@username`).
    #[serde(default)]
    pub mentions: u32,
}

/// Whether someone is around. A user is `online` while any of their connections is active,
/// `away` when every connection says so (idle, hidden tab), `offline` with none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// One user's presence, as told to the people who share a room with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub user_id: UserId,
    pub status: PresenceStatus,
    /// When they were last connected (milliseconds since the epoch); `null` while connected or
    /// if never seen.
    pub last_seen: Option<i64>,
}

/// A message as stored. A deleted message keeps its place in history with an empty body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub room_id: RoomId,
    /// The sequence of the event that created it.
    pub seq: RoomSeq,
    pub author: UserInfo,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
}

/// One entry of a room's event stream. The `kind` field names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    MessageCreated {
        message: Message,
    },
    MessageEdited {
        message_id: MessageId,
        body: String,
        edited_at: i64,
    },
    MessageDeleted {
        message_id: MessageId,
    },
    MemberJoined {
        user: UserInfo,
        role: Role,
        /// Set when the member was invited (or added to a direct message) rather than joining.
        invited_by: Option<UserId>,
    },
    MemberLeft {
        user_id: UserId,
        /// Set when the member was removed by someone else.
        kicked_by: Option<UserId>,
    },
    RoomUpdated {
        name: String,
        topic: String,
    },
    RoleChanged {
        user_id: UserId,
        role: Role,
    },
}
