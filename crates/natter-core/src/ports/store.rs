//! `Store`: everything natter keeps, and the one place room sequence numbers come from.
//!
//! Guarantees every implementation keeps:
//! - A call that returns `Ok` has committed durably (fsync'd). Callers acknowledge to clients only
//!   after that.
//! - [`Store::append`] assigns the room's next `RoomSeq` in the same transaction that applies the
//!   change: per room, sequences are 1, 2, 3, ... with no gap and no reuse, even with concurrent
//!   writers (and, for a shared database, several nodes).
//! - A `Change::Send` whose `(author, client_msg_id)` was stored before changes nothing and
//!   returns the first message, marked `duplicate`.
//! - Reads of the event stream return exactly the committed events, in sequence order.
//! - The [`CommitListener`] hears every event `append` commits before that `append` returns.
//! - Errors are typed: `StoreError::Unavailable` means "nothing was written, try again".

use async_trait::async_trait;
use natter_protocol::event::{Message, Role, RoomEvent, RoomInfo, RoomKind, UserInfo};
use natter_protocol::frame::MemberInfo;
use natter_protocol::{ClientMsgId, MessageId, RoomId, RoomSeq, UserId};
use std::sync::Arc;

/// Hears each event that [`Store::append`] commits (a retried send commits nothing) before that
/// `append` returns. Writes that one queue commits (SQLite's writer, PostgreSQL's group commit of
/// sends) are heard on that queue, in commit order; any other as its commit completes. The
/// node's hub listens here: the callers' tasks run in whatever order the scheduler picks, and
/// publishing from them would hand a room's events to its sessions out of sequence, each of
/// which would then hold and reorder them (they still do, for what comes out of order). It must
/// not block: the next group commit waits for it.
pub type CommitListener = Arc<dyn Fn(&EventRecord) + Send + Sync>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("registration is closed")]
    RegistrationClosed,
    /// Storage could not be reached or the transaction failed; nothing was committed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// An account as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub info: UserInfo,
    pub is_admin: bool,
}

/// The hash of a session token: what the store keeps and what identifies a login session. The
/// token itself never reaches the store or the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub [u8; 32]);

/// One committed event of a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub room_id: RoomId,
    pub seq: RoomSeq,
    pub at: i64,
    pub actor: UserId,
    pub event: RoomEvent,
}

/// A change to a room. Each one that succeeds becomes exactly one event with the next sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Fails with `Forbidden` if the author is not a member. `mentions` are the usernames the
    /// body mentions; those who are members are recorded, for their unread-mention counts.
    Send {
        client_msg_id: ClientMsgId,
        body: String,
        mentions: Vec<String>,
    },
    /// Fails with `NotFound` if the message is not in this room or was deleted.
    Edit { message_id: MessageId, body: String },
    /// Fails with `NotFound` if the message is not in this room or was deleted already.
    Delete { message_id: MessageId },
    /// Fails with `Conflict` if the user is a member already.
    AddMember {
        user_id: UserId,
        role: Role,
        invited_by: Option<UserId>,
    },
    /// Fails with `NotFound` if the user is not a member.
    RemoveMember {
        user_id: UserId,
        kicked_by: Option<UserId>,
    },
    /// Fails with `Conflict` if another channel has that name.
    UpdateRoom { name: String, topic: String },
    /// Fails with `NotFound` if the user is not a member.
    SetRole { user_id: UserId, role: Role },
}

/// A member's delivery and read positions in a room, after an `advance_receipt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub delivered: RoomSeq,
    pub read: RoomSeq,
    /// Whether either moved (and so is news for the room).
    pub moved: bool,
}

/// A room a user belongs to, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub room: RoomInfo,
    /// The sequence of the `member_joined` event of the current membership.
    pub joined_seq: RoomSeq,
}

/// The result of an append: the event, and for a `Send` whether it was a retry of a stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub record: EventRecord,
    /// True when the change was a retried `Send`: nothing new was stored, `record` is the first.
    pub duplicate: bool,
}

/// Which page of history to read. Pages are always returned in ascending sequence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages.
    Latest,
    /// The newest messages with a sequence below this one.
    Before(RoomSeq),
    /// The oldest messages with a sequence above this one.
    After(RoomSeq),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the store can serve reads and writes.
    async fn health(&self) -> Result<(), StoreError>;

    /// Finishes every write already accepted, then refuses new ones (at shutdown).
    fn close(&self) {}

    /// True when writes take effect in the order their `append` futures were first polled, even
    /// if they run concurrently (one queue to one writer). A connection may then keep several
    /// sends in flight and still have them stored in the order it sent them.
    fn keeps_submission_order(&self) -> bool {
        false
    }

    /// Sets the listener that hears every event `append` commits. Once per store (`App::new`
    /// does it); a later call is ignored.
    fn listen(&self, listener: CommitListener);

    // --- accounts ---

    /// Creates an account. The first account on a store becomes its admin. With
    /// `only_if_first`, fails with `RegistrationClosed` unless no account exists yet.
    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        only_if_first: bool,
    ) -> Result<UserRecord, StoreError>;
    /// The account and its password hash, for a login.
    async fn credentials(&self, username: &str)
    -> Result<Option<(UserRecord, String)>, StoreError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn insert_token(
        &self,
        token: TokenId,
        user_id: UserId,
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// The account a token belongs to, if the token exists and has not expired at `now`.
    async fn user_by_token(
        &self,
        token: TokenId,
        now: i64,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Deletes the token; true if it existed.
    async fn revoke_token(&self, token: TokenId) -> Result<bool, StoreError>;

    // --- rooms ---

    /// Creates a channel with `owner` as its first member (event 1: `member_joined`). Fails with
    /// `Conflict` when a channel has that name already (names compare case-insensitively).
    async fn create_channel(
        &self,
        owner: UserId,
        kind: RoomKind,
        name: &str,
        topic: &str,
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError>;
    /// Finds the direct-message room whose members are exactly `members` (sorted, deduplicated,
    /// two or more), or creates it with one `member_joined` event per member. The events are
    /// empty when the room existed.
    async fn open_dm(
        &self,
        creator: UserId,
        members: &[UserId],
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError>;
    /// Applies one change to a room and records it as the room's next event.
    async fn append(
        &self,
        room_id: RoomId,
        actor: UserId,
        change: Change,
        now: i64,
    ) -> Result<Appended, StoreError>;

    /// The room as `viewer` sees it (`role` is the viewer's), or `None` if it does not exist.
    async fn room(&self, room_id: RoomId, viewer: UserId) -> Result<Option<RoomInfo>, StoreError>;
    async fn role_of(&self, room_id: RoomId, user_id: UserId) -> Result<Option<Role>, StoreError>;
    /// Every room `user_id` belongs to with its `last_seq`, read in one transaction so that the
    /// sequences form one consistent snapshot, with the sequence of the event that made them a
    /// member (what they may see starts there).
    async fn rooms_of(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError>;
    async fn public_rooms(&self, viewer: UserId) -> Result<Vec<RoomInfo>, StoreError>;
    async fn members(&self, room_id: RoomId) -> Result<Vec<MemberInfo>, StoreError>;

    // --- liveness ---

    /// Moves a member's delivery and read positions forward (never back, never past the room's
    /// newest event; reading implies delivery) and returns the positions now in force. Fails
    /// with `NotFound` if the user is not a member.
    async fn advance_receipt(
        &self,
        room_id: RoomId,
        user_id: UserId,
        delivered: Option<RoomSeq>,
        read: Option<RoomSeq>,
    ) -> Result<Positions, StoreError>;
    /// Everyone who shares with the user a direct or group message, or a channel of at most
    /// `room_limit` members: the people whose presence the user sees, with when each was last
    /// seen.
    async fn contacts(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<(UserId, Option<i64>)>, StoreError>;
    /// The rooms through which the user's presence is shared: their direct and group messages,
    /// and their channels of at most `room_limit` members.
    async fn presence_rooms_of(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<RoomId>, StoreError>;
    async fn set_last_seen(&self, user_id: UserId, at: i64) -> Result<(), StoreError>;

    // --- messages and events ---

    async fn message(
        &self,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<Option<Message>, StoreError>;
    /// Up to `limit` messages of a page and whether more lie beyond it in that direction.
    async fn history(
        &self,
        room_id: RoomId,
        page: HistoryPage,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError>;
    /// Events with `after < seq <= until` (no upper bound when `until` is `None`), ascending, at
    /// most `limit`. Message events carry the message as it is now: a deleted message's body is
    /// never sent again.
    async fn events_after(
        &self,
        room_id: RoomId,
        after: RoomSeq,
        until: Option<RoomSeq>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError>;
}
