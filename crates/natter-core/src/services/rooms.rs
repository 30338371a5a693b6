//! Rooms: channels and direct messages, membership and roles.
//!
//! Rules: anyone may join a public channel; members invite into channels; owners and admins
//! kick, rename and set the topic, and may only act on members below their own role; only the
//! owner changes roles, and hands ownership over before leaving. Direct messages are defined by
//! their members: nobody joins, invites or is kicked.

use super::ServiceError;
use super::check_line;
use super::messages::{append_and_publish, require_member};
use crate::App;
use crate::now_ms;
use crate::ports::store::{Change, EventRecord, UserRecord};
use crate::ports::{Envelope, UserNotice};
use natter_protocol::frame::MemberInfo;
use natter_protocol::{ErrorCode, Role, RoomId, RoomInfo, RoomKind, RoomSeq, UserId, Visibility};
use std::sync::Arc;

async fn room_as(app: &App, user: &UserRecord, room_id: RoomId) -> Result<RoomInfo, ServiceError> {
    app.store
        .room(room_id, user.info.id)
        .await?
        .ok_or_else(|| ServiceError::not_found("room not found"))
}

fn require_channel(room: &RoomInfo) -> Result<(), ServiceError> {
    match room.kind {
        RoomKind::Public | RoomKind::Private => Ok(()),
        RoomKind::Dm | RoomKind::Group => Err(ServiceError::forbidden(
            "direct messages are defined by their members",
        )),
    }
}

/// Publishes a room's new events (from a store call other than `append`, which has no commit
/// listener) and tells each new member's sessions to follow the room.
async fn publish_new_members(app: &App, events: Vec<EventRecord>) {
    for record in events {
        let (added, room_id, seq) = (new_member(&record), record.room_id, record.seq);
        app.publish(Envelope::Room(Arc::new(record))).await;
        notify_new_member(app, added, room_id, seq).await;
    }
}

fn new_member(record: &EventRecord) -> Option<UserId> {
    match &record.event {
        natter_protocol::RoomEvent::MemberJoined { user, .. } => Some(user.id),
        _ => None,
    }
}

/// Tells the new member's sessions to follow the room from its join event `from_seq`.
async fn notify_new_member(app: &App, added: Option<UserId>, room_id: RoomId, from_seq: RoomSeq) {
    if let Some(user_id) = added {
        let notice = UserNotice::RoomAdded { room_id, from_seq };
        app.publish(Envelope::User { user_id, notice }).await;
    }
}

async fn add_member(
    app: &App,
    actor: &UserRecord,
    room_id: RoomId,
    user_id: UserId,
    invited_by: Option<UserId>,
) -> Result<RoomSeq, ServiceError> {
    let appended = app
        .store
        .append(
            room_id,
            actor.info.id,
            Change::AddMember {
                user_id,
                role: Role::Member,
                invited_by,
            },
            now_ms(),
        )
        .await?;
    let record = app.publish_appended(appended).await;
    notify_new_member(app, new_member(&record), record.room_id, record.seq).await;
    Ok(record.seq)
}

async fn remove_member(
    app: &App,
    actor: &UserRecord,
    room_id: RoomId,
    user_id: UserId,
    kicked_by: Option<UserId>,
) -> Result<RoomSeq, ServiceError> {
    // The member's sessions stop at the `member_left` event itself: no separate notice that could
    // arrive out of order with it.
    let record = append_and_publish(
        app,
        room_id,
        actor,
        Change::RemoveMember { user_id, kicked_by },
    )
    .await?;
    Ok(record.seq)
}

pub async fn create_channel(
    app: &App,
    user: &UserRecord,
    name: &str,
    visibility: Visibility,
    topic: &str,
) -> Result<RoomInfo, ServiceError> {
    let name = check_line("name", name, app.limits.max_room_name_chars, false)?;
    let topic = check_line("topic", topic, app.limits.max_topic_chars, true)?;
    let kind = match visibility {
        Visibility::Public => RoomKind::Public,
        Visibility::Private => RoomKind::Private,
    };
    let (room_id, events) = app
        .store
        .create_channel(user.info.id, kind, &name, &topic, now_ms())
        .await?;
    publish_new_members(app, events).await;
    room_as(app, user, room_id).await
}

/// Finds or creates the direct message between `user` and the named users.
pub async fn open_dm(
    app: &App,
    user: &UserRecord,
    usernames: &[String],
) -> Result<RoomInfo, ServiceError> {
    // Count before any lookup: one frame could carry thousands of names.
    if usernames.len() > app.limits.max_group_members {
        return Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!(
                "a group direct message has at most {} members",
                app.limits.max_group_members
            ),
        ));
    }
    let mut members = vec![user.info.id];
    for username in usernames {
        let other = app
            .store
            .user_by_username(username)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("no user named `{username}`")))?;
        members.push(other.info.id);
    }
    members.sort();
    members.dedup();
    if members.len() < 2 {
        return Err(ServiceError::invalid(
            "`usernames` must name at least one other user",
        ));
    }
    if members.len() > app.limits.max_group_members {
        return Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!(
                "a group direct message has at most {} members",
                app.limits.max_group_members
            ),
        ));
    }
    let (room_id, events) = app.store.open_dm(user.info.id, &members, now_ms()).await?;
    publish_new_members(app, events).await;
    room_as(app, user, room_id).await
}

pub async fn join(app: &App, user: &UserRecord, room_id: RoomId) -> Result<RoomInfo, ServiceError> {
    let room = room_as(app, user, room_id).await?;
    if room.kind != RoomKind::Public {
        return Err(ServiceError::forbidden(
            "only public channels can be joined; ask a member for an invitation",
        ));
    }
    add_member(app, user, room_id, user.info.id, None).await?;
    room_as(app, user, room_id).await
}

pub async fn leave(app: &App, user: &UserRecord, room_id: RoomId) -> Result<RoomSeq, ServiceError> {
    let role = require_member(app, user, room_id).await?;
    let room = room_as(app, user, room_id).await?;
    if matches!(room.kind, RoomKind::Dm | RoomKind::Group) {
        // Its members define it: a direct message is found again by them, not left.
        return Err(ServiceError::forbidden("a direct message cannot be left"));
    }
    if role == Role::Owner && room.member_count > 1 {
        return Err(ServiceError::forbidden(
            "the owner must hand ownership to another member (set_role) before leaving",
        ));
    }
    remove_member(app, user, room_id, user.info.id, None).await
}

pub async fn invite(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    username: &str,
) -> Result<RoomSeq, ServiceError> {
    require_member(app, user, room_id).await?;
    require_channel(&room_as(app, user, room_id).await?)?;
    let invitee = app
        .store
        .user_by_username(username)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no user named `{username}`")))?;
    add_member(app, user, room_id, invitee.info.id, Some(user.info.id)).await
}

pub async fn kick(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    target: UserId,
) -> Result<RoomSeq, ServiceError> {
    let role = require_member(app, user, room_id).await?;
    require_channel(&room_as(app, user, room_id).await?)?;
    if target == user.info.id {
        return Err(ServiceError::invalid("use `leave` to leave a room"));
    }
    let target_role = app
        .store
        .role_of(room_id, target)
        .await?
        .ok_or_else(|| ServiceError::not_found("that user is not a member"))?;
    if role < Role::Admin || target_role >= role {
        return Err(ServiceError::forbidden(
            "only owners and admins may remove members, and only members below their role",
        ));
    }
    remove_member(app, user, room_id, target, Some(user.info.id)).await
}

/// Sets a member's role. Making someone `owner` hands ownership over: the old owner becomes an
/// admin.
pub async fn set_role(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    target: UserId,
    role: Role,
) -> Result<RoomSeq, ServiceError> {
    let my_role = require_member(app, user, room_id).await?;
    require_channel(&room_as(app, user, room_id).await?)?;
    if my_role != Role::Owner {
        return Err(ServiceError::forbidden("only the owner may change roles"));
    }
    if target == user.info.id {
        return Err(ServiceError::invalid(
            "the owner changes their own role by handing ownership to another member",
        ));
    }
    let record = append_and_publish(
        app,
        room_id,
        user,
        Change::SetRole {
            user_id: target,
            role,
        },
    )
    .await?;
    if role == Role::Owner {
        let record = append_and_publish(
            app,
            room_id,
            user,
            Change::SetRole {
                user_id: user.info.id,
                role: Role::Admin,
            },
        )
        .await?;
        return Ok(record.seq);
    }
    Ok(record.seq)
}

pub async fn update_room(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    name: Option<&str>,
    topic: Option<&str>,
) -> Result<RoomSeq, ServiceError> {
    let role = require_member(app, user, room_id).await?;
    let room = room_as(app, user, room_id).await?;
    require_channel(&room)?;
    if role < Role::Admin {
        return Err(ServiceError::forbidden(
            "only owners and admins may rename a room or set its topic",
        ));
    }
    if name.is_none() && topic.is_none() {
        return Err(ServiceError::invalid("give `name`, `topic` or both"));
    }
    let name = match name {
        Some(name) => check_line("name", name, app.limits.max_room_name_chars, false)?,
        None => room.name,
    };
    let topic = match topic {
        Some(topic) => check_line("topic", topic, app.limits.max_topic_chars, true)?,
        None => room.topic,
    };
    let record = append_and_publish(app, room_id, user, Change::UpdateRoom { name, topic }).await?;
    Ok(record.seq)
}

pub async fn members(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
) -> Result<Vec<MemberInfo>, ServiceError> {
    require_member(app, user, room_id).await?;
    Ok(app.store.members(room_id).await?)
}
