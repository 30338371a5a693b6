//! Typing indicators and delivery/read receipts: what makes a conversation feel alive.
//!
//! Typing is ephemeral: published to the room's other members, never stored. Receipts are
//! stored positions that only move forward; each move is published to the room's members,
//! which is also how the user's other devices learn that a room was read.

use super::ServiceError;
use super::messages::require_member;
use crate::App;
use crate::ports::Envelope;
use crate::ports::store::UserRecord;
use natter_protocol::{RoomId, RoomSeq};

pub async fn typing(app: &App, user: &UserRecord, room_id: RoomId) -> Result<(), ServiceError> {
    require_member(app, user, room_id).await?;
    app.publish(Envelope::Typing {
        room_id,
        user: user.info.clone(),
    })
    .await;
    Ok(())
}

/// Moves the user's positions forward; returns the read position now in force.
pub async fn advance_receipt(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    delivered: Option<RoomSeq>,
    read: Option<RoomSeq>,
) -> Result<RoomSeq, ServiceError> {
    require_member(app, user, room_id).await?;
    let positions = app
        .store
        .advance_receipt(room_id, user.info.id, delivered, read)
        .await?;
    if positions.moved {
        app.publish(Envelope::Receipt {
            room_id,
            user_id: user.info.id,
            delivered_seq: positions.delivered,
            read_seq: positions.read,
        })
        .await;
    }
    Ok(positions.read)
}
