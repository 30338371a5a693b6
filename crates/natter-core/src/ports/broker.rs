//! `Broker`: carries committed events and user notices to every node's hub.
//!
//! Guarantee: best effort, at most once. A broker may drop, duplicate or reorder envelopes (Redis
//! pub/sub drops whatever a lagging subscriber misses). That is safe because order and
//! completeness come from the store: a session that sees a gap in a room's sequence fills it from
//! the store, and drops what it has delivered already. A broker only makes delivery fast.
//!
//! Publishing happens after the store committed; it never blocks on a slow client.

use crate::ports::store::{EventRecord, TokenId};
use async_trait::async_trait;
use natter_protocol::{PresenceInfo, RoomId, RoomSeq, UserId, UserInfo};
use std::sync::Arc;

/// What a broker carries.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// A committed room event, for every session subscribed to the room.
    Room(Arc<EventRecord>),
    /// A change in what one user's sessions should see.
    User { user_id: UserId, notice: UserNotice },
    /// Someone is typing in a room: for the room's other members, and never stored.
    Typing { room_id: RoomId, user: UserInfo },
    /// A member's delivery and read positions moved forward: for the room's members.
    Receipt {
        room_id: RoomId,
        user_id: UserId,
        delivered_seq: RoomSeq,
        read_seq: RoomSeq,
    },
    /// A user's presence changed: for everyone in `rooms`, the rooms the user belongs to.
    Presence {
        presence: PresenceInfo,
        rooms: Arc<[RoomId]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNotice {
    /// The user became a member with event `from_seq`; the room's events from there on are
    /// theirs to see. (Leaving needs no notice: sessions see the `member_left` event itself.)
    RoomAdded { room_id: RoomId, from_seq: RoomSeq },
    /// The login session with this token ended (logout): close its connections.
    TokenRevoked { token: TokenId },
}

#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Hands the envelope to every node's hub, this node's included, at most once.
    async fn publish(&self, envelope: Envelope) -> Result<(), BrokerError>;
    /// Hands the envelope to every other node's hub, at most once: for an event this node's hub
    /// had already from the store's commit listener.
    async fn publish_to_other_nodes(&self, envelope: Envelope) -> Result<(), BrokerError>;
}
