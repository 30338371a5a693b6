//! A session: one authenticated client connection, whatever its transport.
//!
//! A transport authenticates the client's `hello`, then calls [`Session::start`], which returns
//! two halves:
//! - [`Session`] takes the client's requests one at a time and answers each with exactly one
//!   frame (rate limited per connection);
//! - [`SessionStream`] yields the frames to write: the welcome, replies,
//!   and every room's events in sequence order, with gaps filled from the store.
//!
//! The session subscribes to its rooms in the hub *before* it reads the room snapshot and the
//! missed events, so an event committed in between arrives twice at worst, and the stream drops
//! the second copy by its sequence. In the same way it checks its token once more after it
//! has registered, so that a logout either finds the session or is seen by that check.

pub mod outbox;
pub mod stream;

use crate::App;
use crate::hub::SessionKey;
use crate::ports::store::{EventRecord, StoreError, TokenId, UserRecord};
use crate::services::{ServiceError, liveness, messages, rooms};
use natter_protocol::frame::{ClientFrame, EventFrame, Request, ServerFrame};
use natter_protocol::{
    ErrorCode, PROTOCOL_VERSION, PresenceInfo, PresenceStatus, RequestId, RoomId, RoomSeq, UserId,
    codec,
};
use outbox::{Outbound, Outbox};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
pub use stream::SessionStream;

/// The one place a committed event becomes wire bytes.
pub(crate) fn encode_event(record: &EventRecord) -> Arc<str> {
    Arc::from(codec::encode(&EventFrame {
        room_id: record.room_id,
        seq: record.seq,
        at: record.at,
        actor: record.actor,
        event: &record.event,
    }))
}

/// A token bucket: `rate` requests per second, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// How long since the bucket was last used.
    pub fn idle(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last)
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

/// How a session begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// With a `welcome` answering this `hello`: the room list snapshot, then events.
    Welcome(RequestId),
    /// Without one (a long-poll continuing from its cursors): rooms the client's cursors do not
    /// name arrive as `room_added`, rooms it names that are gone as `room_removed`.
    Quiet,
}

/// The presence of the user's contacts (`Store::contacts`: who shares a direct message or a
/// channel up to `presence_room_limit` members with them), for the welcome.
async fn welcome_presence(app: &App, user_id: UserId) -> Result<Vec<PresenceInfo>, ServiceError> {
    let contacts = app
        .store
        .contacts(user_id, app.limits.presence_room_limit)
        .await?;
    let ids: Vec<UserId> = contacts.iter().map(|(id, _)| *id).collect();
    let statuses = app
        .presence_registry
        .statuses(&ids)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "presence unknown for the welcome");
            vec![PresenceStatus::Offline; ids.len()]
        });
    Ok(contacts
        .into_iter()
        .zip(statuses)
        .map(|((user_id, last_seen), status)| PresenceInfo {
            user_id,
            status,
            last_seen: last_seen.filter(|_| status == PresenceStatus::Offline),
        })
        .collect())
}

/// A token the store vouched for: whose it is, and its hash, under which the hub files the
/// session so that a logout can find it.
pub struct Credentials {
    pub user: UserRecord,
    pub token: TokenId,
}

impl Credentials {
    /// The account behind `token` if the token is valid now.
    pub async fn check(app: &App, token: TokenId) -> Result<Option<Credentials>, StoreError> {
        let user = app.store.user_by_token(token, crate::now_ms()).await?;
        Ok(user.map(|user| Credentials { user, token }))
    }
}

/// The request half of a session. Dropping it removes the session from the hub.
pub struct Session {
    app: App,
    user: UserRecord,
    key: SessionKey,
    outbox: Arc<Outbox>,
    /// Locked only to take a token; requests of one connection may run concurrently (pipelined
    /// sends), so it cannot be a plain field.
    limiter: std::sync::Mutex<RateLimiter>,
    /// What this connection last said of itself (`set_presence`).
    away: AtomicBool,
}

impl Session {
    /// Registers the session, refuses it (`auth_failed`) if its token was revoked since it was
    /// checked, reads the user's rooms as one snapshot, subscribes to them, and queues the
    /// `welcome` reply to `hello_id`. `resume` maps rooms to the last sequence the client
    /// applied; events after it follow the welcome.
    pub async fn start(
        app: App,
        credentials: Credentials,
        greeting: Greeting,
        resume: BTreeMap<RoomId, RoomSeq>,
    ) -> Result<(Session, SessionStream), ServiceError> {
        let Credentials { user, token } = credentials;
        let outbox = Arc::new(Outbox::new(app.limits.outbox_capacity));
        // Refused once the node began shutting down (while this client authenticated): its
        // store is about to close, so nothing more is read.
        let key = app
            .hub
            .register(user.info.id, token, outbox.clone())
            .map_err(|_closing| ServiceError::shutting_down())?;
        let snapshot = async {
            // A logout between the token check and the registration found no session to
            // close, and its notice may come from another node through a broker that can drop
            // it: ask the store again now that a later logout will find this session.
            if Credentials::check(&app, token).await?.is_none() {
                return Err(ServiceError::new(
                    ErrorCode::AuthFailed,
                    "this token was revoked",
                ));
            }
            Ok(app.store.rooms_of(user.info.id).await?)
        };
        let memberships = match snapshot.await {
            Ok(memberships) => memberships,
            Err(error) => {
                app.hub.unregister(key);
                return Err(error);
            }
        };
        app.hub
            .subscribe(key, memberships.iter().map(|m| m.room.id));
        let mut welcome_and_gaps = Vec::new();
        let mut cursors = Vec::with_capacity(memberships.len());
        let gap_limit = app.limits.resume_gap_limit as u64;
        for membership in &memberships {
            let room = &membership.room;
            // A client cannot be ahead of the store: a claimed cursor past the end means "up to
            // date". A cursor from before the current membership means the user left (or was
            // removed) and came back while away: they get what they missed up to their leaving,
            // then the room starts again at the join (`room_removed`, `room_added`), and the
            // time they were not a member stays unseen.
            let joined = RoomSeq(membership.joined_seq.0.saturating_sub(1));
            let mut cursor = resume
                .get(&room.id)
                .copied()
                .unwrap_or(room.last_seq)
                .min(room.last_seq);
            let rejoin = (cursor < joined).then_some(membership.joined_seq);
            if room.last_seq.0 - cursor.0 > gap_limit {
                let skip_to = RoomSeq(room.last_seq.0 - gap_limit);
                welcome_and_gaps.push(ServerFrame::Gap {
                    room_id: room.id,
                    from_seq: cursor.next(),
                    to_seq: skip_to,
                });
                cursor = skip_to;
            }
            cursors.push((room.id, cursor, rejoin));
        }
        if greeting == Greeting::Quiet {
            // No room list goes out: announce the rooms the client does not know, and the ones
            // it knows that are gone, as the live stream would have.
            for membership in &memberships {
                if !resume.contains_key(&membership.room.id) {
                    let cursor = RoomSeq(membership.joined_seq.0.saturating_sub(1));
                    let mut room = membership.room.clone();
                    room.last_seq = cursor;
                    welcome_and_gaps.push(ServerFrame::RoomAdded { room });
                    if let Some(entry) = cursors
                        .iter_mut()
                        .find(|(id, ..)| *id == membership.room.id)
                    {
                        entry.1 = cursor;
                    }
                }
            }
            for room_id in resume.keys() {
                if !memberships.iter().any(|m| m.room.id == *room_id) {
                    welcome_and_gaps.push(ServerFrame::RoomRemoved { room_id: *room_id });
                }
            }
        }
        let rooms = memberships.into_iter().map(|m| m.room).collect();
        let presence = match greeting {
            Greeting::Welcome(_) => match welcome_presence(&app, user.info.id).await {
                Ok(presence) => presence,
                Err(error) => {
                    app.hub.unregister(key);
                    return Err(error);
                }
            },
            Greeting::Quiet => Vec::new(),
        };
        let welcome = ServerFrame::Welcome {
            id: match greeting {
                Greeting::Welcome(id) => id,
                Greeting::Quiet => RequestId(0),
            },
            protocol: PROTOCOL_VERSION,
            user: user.info.clone(),
            is_admin: user.is_admin,
            rooms,
            presence,
            limits: app.limits.wire(),
        };
        if let Greeting::Welcome(_) = greeting {
            welcome_and_gaps.insert(0, welcome);
        }
        let first = welcome_and_gaps
            .iter()
            .map(|frame| Arc::from(codec::encode(frame)))
            .collect();
        let stream = SessionStream::new(
            app.clone(),
            key,
            user.info.id,
            outbox.clone(),
            first,
            cursors,
        );
        app.presence.connected(&app, user.info.id);
        let session = Session {
            limiter: std::sync::Mutex::new(RateLimiter::new(
                app.limits.rate_per_sec,
                app.limits.rate_burst,
            )),
            away: AtomicBool::new(false),
            app,
            user,
            key,
            outbox,
        };
        Ok((session, stream))
    }

    /// Ends the connection with `code`: the stream yields it next.
    pub fn close(&self, code: natter_protocol::CloseCode) {
        self.outbox.close(code);
    }

    pub fn user(&self) -> &UserRecord {
        &self.user
    }

    /// Queues a frame for this connection's writer (replies and transport-level errors).
    pub fn queue(&self, frame: &ServerFrame) {
        self.outbox
            .push(Outbound::Frame(Arc::from(codec::encode(frame))));
    }

    /// How many frames this connection's outbox holds before it overflows.
    pub fn outbox_capacity(&self) -> usize {
        self.app.limits.outbox_capacity
    }

    /// True when `request` may start while earlier sends of this connection are still in flight:
    /// it is a send, and the store keeps the order in which sends are submitted. Anything else
    /// waits for what is in flight and runs alone, as if requests were answered one at a time.
    pub fn may_pipeline(&self, request: &Request) -> bool {
        matches!(request, Request::Send { .. }) && self.app.store.keeps_submission_order()
    }

    /// Answers one request. Every request gets exactly one frame back.
    pub async fn handle(&self, frame: ClientFrame) -> ServerFrame {
        let id = frame.id;
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if let Err(retry_after_ms) = admitted {
            return ServerFrame::Error {
                id: Some(id),
                code: ErrorCode::RateLimited,
                message: "too many requests".into(),
                retryable: true,
                retry_after_ms: Some(retry_after_ms),
            };
        }
        answer(&self.app, &self.user, id, frame.request, Some(&self.away)).await
    }
}

/// Answers one request of `user`: the dispatch every transport shares. `away` is the
/// connection's own presence state when the request came over a connection; a plain HTTP request
/// (`POST /api/v1/rpc`) has none, and `set_presence` then changes nothing.
pub async fn answer(
    app: &App,
    user: &UserRecord,
    id: RequestId,
    request: Request,
    away: Option<&AtomicBool>,
) -> ServerFrame {
    match dispatch(app, user, id, request, away).await {
        Ok(reply) => reply,
        Err(error) => ServerFrame::error(Some(id), error.code, error.message),
    }
}

async fn dispatch(
    app: &App,
    user: &UserRecord,
    id: RequestId,
    request: Request,
    away_state: Option<&AtomicBool>,
) -> Result<ServerFrame, ServiceError> {
    match request {
        Request::Ping => Ok(ServerFrame::Pong { id }),
        Request::Send {
            room_id,
            client_msg_id,
            body,
        } => {
            let (message, duplicate) =
                messages::send(app, user, room_id, client_msg_id, body).await?;
            Ok(ServerFrame::Sent {
                id,
                message,
                duplicate,
            })
        }
        // A future is as large as its largest arm. Sends are most of the traffic, and the
        // WebSocket reader boxes each request's future: with the other arms boxed apart, that
        // box stays at or under 1,000 bytes, the largest glibc serves without first merging its
        // fast bins whenever its thread cache has no chunk of that size.
        other => Box::pin(dispatch_other(app, user, id, other, away_state)).await,
    }
}

/// Every request but `ping` and `send` (see `dispatch`).
async fn dispatch_other(
    app: &App,
    user: &UserRecord,
    id: RequestId,
    request: Request,
    away_state: Option<&AtomicBool>,
) -> Result<ServerFrame, ServiceError> {
    let done = |seq: RoomSeq| ServerFrame::Done { id, seq: Some(seq) };
    Ok(match request {
        Request::Hello { .. } => {
            return Err(ServiceError::new(
                ErrorCode::AlreadyAuthenticated,
                "this connection is authenticated already",
            ));
        }
        Request::Ping | Request::Send { .. } => unreachable!("`dispatch` answers these"),
        Request::Edit {
            room_id,
            message_id,
            body,
        } => done(messages::edit(app, user, room_id, message_id, body).await?),
        Request::Delete {
            room_id,
            message_id,
        } => done(messages::delete(app, user, room_id, message_id).await?),
        Request::History {
            room_id,
            before,
            after,
            limit,
        } => {
            let (messages, has_more) =
                messages::history(app, user, room_id, before, after, limit).await?;
            ServerFrame::History {
                id,
                room_id,
                messages,
                has_more,
            }
        }
        Request::ListRooms => ServerFrame::Rooms {
            id,
            rooms: app
                .store
                .rooms_of(user.info.id)
                .await?
                .into_iter()
                .map(|m| m.room)
                .collect(),
        },
        Request::PublicRooms => ServerFrame::Rooms {
            id,
            rooms: app.store.public_rooms(user.info.id).await?,
        },
        Request::CreateRoom {
            name,
            visibility,
            topic,
        } => ServerFrame::Room {
            id,
            room: rooms::create_channel(app, user, &name, visibility, &topic).await?,
        },
        Request::OpenDm { usernames } => ServerFrame::Room {
            id,
            room: rooms::open_dm(app, user, &usernames).await?,
        },
        Request::Join { room_id } => ServerFrame::Room {
            id,
            room: rooms::join(app, user, room_id).await?,
        },
        Request::Leave { room_id } => done(rooms::leave(app, user, room_id).await?),
        Request::Invite { room_id, username } => {
            done(rooms::invite(app, user, room_id, &username).await?)
        }
        Request::Kick { room_id, user_id } => done(rooms::kick(app, user, room_id, user_id).await?),
        Request::SetRole {
            room_id,
            user_id,
            role,
        } => done(rooms::set_role(app, user, room_id, user_id, role).await?),
        Request::UpdateRoom {
            room_id,
            name,
            topic,
        } => done(rooms::update_room(app, user, room_id, name.as_deref(), topic.as_deref()).await?),
        Request::Members { room_id } => ServerFrame::Members {
            id,
            room_id,
            members: rooms::members(app, user, room_id).await?,
        },
        Request::Typing { room_id } => {
            liveness::typing(app, user, room_id).await?;
            ServerFrame::Done { id, seq: None }
        }
        Request::MarkRead { room_id, seq } => {
            done(liveness::advance_receipt(app, user, room_id, Some(seq), Some(seq)).await?)
        }
        Request::MarkDelivered { room_id, seq } => {
            liveness::advance_receipt(app, user, room_id, Some(seq), None).await?;
            ServerFrame::Done { id, seq: None }
        }
        Request::SetPresence { status } => {
            let away = match status {
                PresenceStatus::Online => false,
                PresenceStatus::Away => true,
                PresenceStatus::Offline => {
                    return Err(ServiceError::invalid(
                        "`status` must be `online` or `away`; close the connection to go offline",
                    ));
                }
            };
            if let Some(current) = away_state
                && current.swap(away, Ordering::Relaxed) != away
            {
                app.presence.session_away(app, user.info.id, away);
            }
            ServerFrame::Done { id, seq: None }
        }
    })
}

impl Drop for Session {
    fn drop(&mut self) {
        // Presence first: once the hub counts no sessions, a shutting-down server flushes the
        // presence changes, and this one must be among them.
        self.app.presence.disconnected(
            &self.app,
            self.user.info.id,
            self.away.load(Ordering::Relaxed),
        );
        self.app.hub.unregister(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_says_when_to_retry() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10.0, 3.0);
        for _ in 0..3 {
            assert_eq!(limiter.take(start), Ok(()));
        }
        assert_eq!(limiter.take(start), Err(100));
        assert_eq!(limiter.take(start + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn a_send_future_is_small_enough_for_glibc_to_allocate_without_consolidating() {
        // An allocation of 1,001 bytes or more is a large-bin request for glibc (a chunk of
        // 1,024 bytes or more): when its thread cache has none at hand, it merges every free
        // fast-bin chunk first. The WebSocket reader boxes one of these futures per request;
        // requests other than `send` and `ping` take a second box, which may be larger.
        fn future_size<F>(_: fn(&'static Session, ClientFrame) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(|session, frame| session.handle(frame));
        assert!(size <= 1000, "Session::handle's future is {size} bytes");
    }
}
