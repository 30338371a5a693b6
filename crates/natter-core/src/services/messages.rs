//! Sending, editing, deleting and reading messages.

use super::ServiceError;
use crate::App;
use crate::now_ms;
use crate::ports::store::{Change, EventRecord, HistoryPage, UserRecord};
use natter_protocol::{
    ClientMsgId, ErrorCode, Message, MessageId, Role, RoomEvent, RoomId, RoomSeq,
};

fn check_body(app: &App, body: &str) -> Result<(), ServiceError> {
    if body.trim().is_empty() {
        return Err(ServiceError::invalid("`body` must not be empty"));
    }
    // PostgreSQL's text cannot hold U+0000; refused on every store, so both behave alike.
    if body.contains('\0') {
        return Err(ServiceError::invalid("`body` must not contain U+0000"));
    }
    if body.len() > app.limits.max_message_bytes {
        return Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!(
                "`body` is {} bytes; the limit is {}",
                body.len(),
                app.limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

fn check_client_msg_id(id: &ClientMsgId) -> Result<(), ServiceError> {
    let len = id.0.chars().count();
    if len == 0 || len > ClientMsgId::MAX_LEN || id.0.chars().any(char::is_control) {
        return Err(ServiceError::invalid(format!(
            "`client_msg_id` must be 1 to {} printable characters",
            ClientMsgId::MAX_LEN
        )));
    }
    Ok(())
}

/// Most distinct mentions recorded per message.
const MAX_MENTIONS: usize = 50;

/// The usernames a body mentions: `@name` at the start or after a character that cannot be part
/// of a word or an email address, made of the characters usernames allow, lower-cased.
pub fn mentioned_usernames(body: &str) -> Vec<String> {
    let username_char = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    let mut found = Vec::new();
    let mut previous: Option<char> = None;
    for (index, c) in body.char_indices() {
        let starts_word = previous.is_none_or(|p| !(p.is_alphanumeric() || p == '_' || p == '@'));
        previous = Some(c);
        if c != '@' || !starts_word {
            continue;
        }
        let name: String = body[index + 1..]
            .chars()
            .take_while(|c| username_char(*c))
            .collect();
        let name = name.trim_end_matches(['.', '-']).to_ascii_lowercase();
        if name.len() >= 2 && !found.contains(&name) && found.len() < MAX_MENTIONS {
            found.push(name);
        }
    }
    found
}

/// Fails with `not_found` if the room does not exist and `forbidden` if `user` is not a member.
pub(crate) async fn require_member(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
) -> Result<Role, ServiceError> {
    if let Some(role) = app.store.role_of(room_id, user.info.id).await? {
        return Ok(role);
    }
    match app.store.room(room_id, user.info.id).await? {
        Some(_) => Err(ServiceError::forbidden("you are not a member of this room")),
        None => Err(ServiceError::not_found("room not found")),
    }
}

/// Stores a message and, once it is durable, returns it. A retry with the same `client_msg_id`
/// returns the first message (`duplicate` = true) and stores nothing.
pub async fn send(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    client_msg_id: ClientMsgId,
    body: String,
) -> Result<(Message, bool), ServiceError> {
    check_client_msg_id(&client_msg_id)?;
    check_body(app, &body)?;
    let mentions = mentioned_usernames(&body);
    // No await before `append`: pipelined sends are stored in the order their futures first run
    // (`Store::keeps_submission_order`), which holds only if the first poll reaches the store.
    let appended = app
        .store
        .append(
            room_id,
            user.info.id,
            Change::Send {
                client_msg_id,
                body,
                mentions,
            },
            now_ms(),
        )
        .await?;
    let duplicate = appended.duplicate;
    // The event is durable whatever it is, so it is published before it is looked at; taking
    // the message out of the published record also spares a copy of it.
    let record = app.publish_appended(appended).await;
    match record.event {
        RoomEvent::MessageCreated { message } => Ok((message, duplicate)),
        event => {
            tracing::error!(
                room_id = %record.room_id,
                seq = %record.seq,
                duplicate,
                ?event,
                "store answered a send with another kind of event"
            );
            Err(ServiceError::new(ErrorCode::Internal, "internal error"))
        }
    }
}

async fn message_in_room(
    app: &App,
    room_id: RoomId,
    message_id: MessageId,
) -> Result<Message, ServiceError> {
    match app.store.message(room_id, message_id).await? {
        Some(message) if !message.deleted => Ok(message),
        _ => Err(ServiceError::not_found("message not found")),
    }
}

pub(crate) async fn append_and_publish(
    app: &App,
    room_id: RoomId,
    actor: &UserRecord,
    change: Change,
) -> Result<EventRecord, ServiceError> {
    let appended = app
        .store
        .append(room_id, actor.info.id, change, now_ms())
        .await?;
    Ok(app.publish_appended(appended).await)
}

/// Only the author may edit a message.
pub async fn edit(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    message_id: MessageId,
    body: String,
) -> Result<RoomSeq, ServiceError> {
    check_body(app, &body)?;
    require_member(app, user, room_id).await?;
    let message = message_in_room(app, room_id, message_id).await?;
    if message.author.id != user.info.id {
        return Err(ServiceError::forbidden(
            "only the author may edit a message",
        ));
    }
    let record = append_and_publish(app, room_id, user, Change::Edit { message_id, body }).await?;
    Ok(record.seq)
}

/// The author, and the room's admins and owner, may delete a message.
pub async fn delete(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    message_id: MessageId,
) -> Result<RoomSeq, ServiceError> {
    let role = require_member(app, user, room_id).await?;
    let message = message_in_room(app, room_id, message_id).await?;
    if message.author.id != user.info.id && role < Role::Admin {
        return Err(ServiceError::forbidden(
            "only the author or a room admin may delete a message",
        ));
    }
    let record = append_and_publish(app, room_id, user, Change::Delete { message_id }).await?;
    Ok(record.seq)
}

/// A page of history, for members only.
pub async fn history(
    app: &App,
    user: &UserRecord,
    room_id: RoomId,
    before: Option<RoomSeq>,
    after: Option<RoomSeq>,
    limit: Option<u32>,
) -> Result<(Vec<Message>, bool), ServiceError> {
    let page = match (before, after) {
        (None, None) => HistoryPage::Latest,
        (Some(before), None) => HistoryPage::Before(before),
        (None, Some(after)) => HistoryPage::After(after),
        (Some(_), Some(_)) => {
            return Err(ServiceError::invalid("give `before` or `after`, not both"));
        }
    };
    if [before, after]
        .into_iter()
        .flatten()
        .any(|seq| seq.0 > i64::MAX as u64)
    {
        return Err(ServiceError::invalid(
            "`before` and `after` must be below 2^63",
        ));
    }
    let max = app.limits.max_history_page;
    let limit = limit.unwrap_or(50.min(max));
    if limit == 0 || limit > max {
        return Err(ServiceError::invalid(format!(
            "`limit` must be between 1 and {max}"
        )));
    }
    require_member(app, user, room_id).await?;
    Ok(app.store.history(room_id, page, limit).await?)
}

#[cfg(test)]
mod tests {
    use super::mentioned_usernames;

    #[test]
    fn mentions_are_words_starting_with_at() {
        assert_eq!(
            mentioned_usernames("@ana and @Bo.B, see you. (@cy) @ana again"),
            ["ana", "bo.b", "cy"]
        );
        assert!(mentioned_usernames("mail ana@example.com or @ or @a").is_empty());
    }
}
