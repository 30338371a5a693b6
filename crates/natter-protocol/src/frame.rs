//! The frames of a natter connection.
//!
//! A client sends `ClientFrame`s: a request id plus a `Request`. Every request gets exactly one
//! reply frame carrying the same id: the request's own reply type, or `error`. Independently, the
//! server pushes `event`, `gap`, `room_added`, `room_removed` and `heartbeat` frames, which carry no
//! request id.

use crate::error::ErrorCode;
use crate::event::{
    Message, PresenceInfo, PresenceStatus, Role, RoomEvent, RoomInfo, UserInfo, Visibility,
};
use crate::ids::{ClientMsgId, MessageId, RequestId, RoomId, RoomSeq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One client frame: `{"id": 7, "type": "send", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientFrame {
    pub id: RequestId,
    #[serde(flatten)]
    pub request: Request,
}

/// What a client can ask. The JSON `type` field names the variant (`"send"`, `"create_room"`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The first frame of every connection. `token` authenticates; it may be left out when the
    /// WebSocket upgrade carried the session cookie from an allowed origin. `resume` maps each room
    /// to the last sequence the client has applied; the server sends everything after it.
    Hello {
        #[serde(default)]
        token: Option<String>,
        #[serde(default, deserialize_with = "resume_map")]
        resume: BTreeMap<RoomId, RoomSeq>,
    },
    /// A liveness probe; the reply is `pong`. Any frame resets the server's heartbeat timer.
    Ping,
    Send {
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        body: String,
    },
    Edit {
        room_id: RoomId,
        message_id: MessageId,
        body: String,
    },
    Delete {
        room_id: RoomId,
        message_id: MessageId,
    },
    /// A page of messages. With `before`, the newest `limit` messages below that sequence; with
    /// `after`, the oldest `limit` above it; with neither, the newest `limit`. Always ascending.
    History {
        room_id: RoomId,
        #[serde(default)]
        before: Option<RoomSeq>,
        #[serde(default)]
        after: Option<RoomSeq>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// The rooms the user belongs to, each with its newest sequence.
    ListRooms,
    /// Every public channel, for browsing and joining.
    PublicRooms,
    CreateRoom {
        name: String,
        visibility: Visibility,
        #[serde(default)]
        topic: String,
    },
    /// Opens (or finds again) the direct message with these users; two or more names make a group.
    OpenDm {
        usernames: Vec<String>,
    },
    Join {
        room_id: RoomId,
    },
    Leave {
        room_id: RoomId,
    },
    Invite {
        room_id: RoomId,
        username: String,
    },
    Kick {
        room_id: RoomId,
        user_id: UserId,
    },
    SetRole {
        room_id: RoomId,
        user_id: UserId,
        role: Role,
    },
    UpdateRoom {
        room_id: RoomId,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        topic: Option<String>,
    },
    Members {
        room_id: RoomId,
    },
    /// "I am typing in this room." Never stored; members see a `typing` frame. Send it at most
    /// every few seconds while typing; it expires by itself after `typing_timeout_ms`.
    Typing {
        room_id: RoomId,
    },
    /// This connection's own state: `away` when idle or hidden, `online` when back. (`offline`
    /// is not accepted: closing the connection says that.)
    SetPresence {
        status: PresenceStatus,
    },
    /// Moves the user's read position in the room forward to `seq` (never back). Also marks
    /// everything up to `seq` delivered.
    MarkRead {
        room_id: RoomId,
        seq: RoomSeq,
    },
    /// Tells the server this client has received the room's events up to `seq` (for delivery
    /// receipts). Never moves back.
    MarkDelivered {
        room_id: RoomId,
        seq: RoomSeq,
    },
}

/// JSON object keys are strings: `{"12": 40}` means room 12, sequence 40.
fn resume_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<RoomId, RoomSeq>, D::Error> {
    let raw = BTreeMap::<String, RoomSeq>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(room, seq)| {
            room.parse().map(|room| (room, seq)).map_err(|_| {
                serde::de::Error::custom(format!("`resume` key `{room}` is not a room id"))
            })
        })
        .collect()
}

/// A room member, their role and how far they have received and read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub user: UserInfo,
    pub role: Role,
    #[serde(default)]
    pub delivered_seq: RoomSeq,
    #[serde(default)]
    pub read_seq: RoomSeq,
}

/// The limits a server enforces, announced in `welcome` so clients can check before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: u32,
    pub max_message_bytes: u32,
    pub max_history_page: u32,
    pub resume_gap_limit: u32,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// How long a `typing` indication lasts without a refresh.
    #[serde(default)]
    pub typing_timeout_ms: u64,
}

/// `ServerFrame::Event` by reference, for encoding: a node encodes each committed event once for
/// all its sessions, and this spares it a copy of the event (the message's text and names) to
/// do so. It serializes to the same JSON as the `ServerFrame` it stands for.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "event")]
pub struct EventFrame<'a> {
    pub room_id: RoomId,
    pub seq: RoomSeq,
    pub at: i64,
    pub actor: UserId,
    pub event: &'a RoomEvent,
}

/// Everything a server sends. The JSON `type` field names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The reply to `hello`: who you are, and every room you belong to with its newest sequence,
    /// read as one snapshot. Events after those sequences follow as `event` frames.
    Welcome {
        id: RequestId,
        protocol: u32,
        user: UserInfo,
        is_admin: bool,
        rooms: Vec<RoomInfo>,
        /// The presence of everyone who shares a room with the user.
        #[serde(default)]
        presence: Vec<PresenceInfo>,
        limits: Limits,
    },
    Pong {
        id: RequestId,
    },
    /// The reply to `send`, sent once the message is durable. `duplicate` is true when this
    /// `client_msg_id` had been stored before: the message is the first one, not a new copy.
    Sent {
        id: RequestId,
        message: Message,
        duplicate: bool,
    },
    /// The reply to a request that changes a room: the sequence of the event it produced, if any.
    Done {
        id: RequestId,
        seq: Option<RoomSeq>,
    },
    History {
        id: RequestId,
        room_id: RoomId,
        messages: Vec<Message>,
        /// True when more messages lie beyond this page in the direction asked.
        has_more: bool,
    },
    Rooms {
        id: RequestId,
        rooms: Vec<RoomInfo>,
    },
    Room {
        id: RequestId,
        room: RoomInfo,
    },
    Members {
        id: RequestId,
        room_id: RoomId,
        members: Vec<MemberInfo>,
    },
    /// A failed request (`id` set) or a frame that could not be read as one (`id` null).
    Error {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// One event of a room's stream. Per room, a connection receives `seq` n+1 right after n.
    Event {
        room_id: RoomId,
        seq: RoomSeq,
        /// Milliseconds since the Unix epoch.
        at: i64,
        actor: UserId,
        event: RoomEvent,
    },
    /// Resume skipped events `from_seq..=to_seq` of a room because there were more than the
    /// server's `resume_gap_limit`; fetch them with `history` if needed. Events from
    /// `to_seq + 1` follow.
    Gap {
        room_id: RoomId,
        from_seq: RoomSeq,
        to_seq: RoomSeq,
    },
    /// The user now belongs to this room (created, joined, invited, or a DM opened to them). Its
    /// events from `room.last_seq + 1` follow.
    RoomAdded {
        room: RoomInfo,
    },
    /// The user no longer belongs to this room; no more of its events will come.
    RoomRemoved {
        room_id: RoomId,
    },
    /// Someone is typing in a room (never sent to the typist). Show it until a message from them
    /// arrives or `typing_timeout_ms` passes without another.
    Typing {
        room_id: RoomId,
        user: UserInfo,
    },
    /// Someone who shares a room with the user changed presence.
    Presence {
        presence: PresenceInfo,
    },
    /// A member's delivery and read positions in a room moved forward (the user's own too: that
    /// is how their other devices learn it).
    Receipt {
        room_id: RoomId,
        user_id: UserId,
        delivered_seq: RoomSeq,
        read_seq: RoomSeq,
    },
    /// Sent every `heartbeat_interval_ms` so clients can detect a dead server.
    Heartbeat,
}

impl ServerFrame {
    /// The request this frame answers, if it is a reply.
    pub fn reply_to(&self) -> Option<RequestId> {
        match self {
            ServerFrame::Welcome { id, .. }
            | ServerFrame::Pong { id }
            | ServerFrame::Sent { id, .. }
            | ServerFrame::Done { id, .. }
            | ServerFrame::History { id, .. }
            | ServerFrame::Rooms { id, .. }
            | ServerFrame::Room { id, .. }
            | ServerFrame::Members { id, .. } => Some(*id),
            ServerFrame::Error { id, .. } => *id,
            ServerFrame::Event { .. }
            | ServerFrame::Gap { .. }
            | ServerFrame::RoomAdded { .. }
            | ServerFrame::RoomRemoved { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Receipt { .. }
            | ServerFrame::Heartbeat => None,
        }
    }

    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
            retryable: code.retryable(),
            retry_after_ms: None,
        }
    }
}
