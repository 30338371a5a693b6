//! The hub: which sessions on this node are in which room, and the fan-out to them.
//!
//! Delivery encodes a room event once and enqueues the shared bytes into each subscriber's
//! [`Outbox`]. It never waits on a session: a full outbox closes that session (it resumes), and
//! the fan-out goes on. The hub knows nothing of order; sessions restore it.

use crate::ports::broker::{Envelope, UserNotice};
use crate::ports::store::{EventRecord, TokenId};
use crate::session::encode_event;
use crate::session::outbox::{Outbound, Outbox};
use natter_protocol::frame::ServerFrame;
use natter_protocol::{CloseCode, RoomEvent, RoomId, UserId, codec};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The member a `member_left` event removes.
pub(crate) fn leaving_member(event: &RoomEvent) -> Option<UserId> {
    match event {
        RoomEvent::MemberLeft { user_id, .. } => Some(*user_id),
        _ => None,
    }
}

/// About how often the heartbeat timer reaches a slice of the sessions.
const HEARTBEAT_SLICE: std::time::Duration = std::time::Duration::from_millis(250);

/// Identifies one registered session on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(u64);

struct Entry {
    user_id: UserId,
    token: TokenId,
    outbox: Arc<Outbox>,
    /// Sorted. A vector: every connection has an entry, and most follow a few rooms.
    rooms: Vec<RoomId>,
}

#[derive(Default)]
struct State {
    /// Set by `close_all`: no session registers after it.
    closing: Option<CloseCode>,
    next_key: u64,
    sessions: HashMap<SessionKey, Entry>,
    by_room: HashMap<RoomId, HashSet<SessionKey>>,
    by_user: HashMap<UserId, HashSet<SessionKey>>,
}

impl State {
    fn subscribe(&mut self, key: SessionKey, room_id: RoomId) {
        if let Some(entry) = self.sessions.get_mut(&key)
            && let Err(index) = entry.rooms.binary_search(&room_id)
        {
            entry.rooms.insert(index, room_id);
            self.by_room.entry(room_id).or_default().insert(key);
        }
    }

    fn unsubscribe(&mut self, key: SessionKey, room_id: RoomId) {
        if let Some(entry) = self.sessions.get_mut(&key)
            && let Ok(index) = entry.rooms.binary_search(&room_id)
        {
            entry.rooms.remove(index);
        }
        if let Some(keys) = self.by_room.get_mut(&room_id) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_room.remove(&room_id);
            }
        }
    }
}

/// A cheap-to-clone handle to this node's registry of sessions.
///
/// The lock is a std `Mutex`: every critical section is a few map operations and queue pushes,
/// with no await inside, so an async lock would only add cost.
#[derive(Clone, Default)]
pub struct Hub {
    state: Arc<Mutex<State>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent (each operation
        // is a handful of inserts/removes), so recover rather than poison every connection.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session. Refused with the shutdown's close code once `close_all` has run: its
    /// upgrade or `hello` was under way, and the node's store is about to close.
    pub fn register(
        &self,
        user_id: UserId,
        token: TokenId,
        outbox: Arc<Outbox>,
    ) -> Result<SessionKey, CloseCode> {
        let mut state = self.lock();
        if let Some(code) = state.closing {
            return Err(code);
        }
        state.next_key += 1;
        let key = SessionKey(state.next_key);
        state.sessions.insert(
            key,
            Entry {
                user_id,
                token,
                outbox,
                rooms: Vec::new(),
            },
        );
        state.by_user.entry(user_id).or_default().insert(key);
        Ok(key)
    }

    pub fn subscribe(&self, key: SessionKey, rooms: impl IntoIterator<Item = RoomId>) {
        let mut state = self.lock();
        for room_id in rooms {
            state.subscribe(key, room_id);
        }
    }

    /// Stops sending the room's events to the session (it has left the room). A session does this
    /// itself, after the `member_left` event, so a later re-join can subscribe again.
    pub fn unsubscribe(&self, key: SessionKey, room_id: RoomId) {
        self.lock().unsubscribe(key, room_id);
    }

    pub fn unregister(&self, key: SessionKey) {
        let mut state = self.lock();
        let Some(entry) = state.sessions.remove(&key) else {
            return;
        };
        for room_id in &entry.rooms {
            if let Some(keys) = state.by_room.get_mut(room_id) {
                keys.remove(&key);
                if keys.is_empty() {
                    state.by_room.remove(room_id);
                }
            }
        }
        if let Some(keys) = state.by_user.get_mut(&entry.user_id) {
            keys.remove(&key);
            if keys.is_empty() {
                state.by_user.remove(&entry.user_id);
            }
        }
    }

    /// Hands a committed event to the sessions subscribed to its room, encoded once. Never blocks
    /// on a session. (The store's commit listener calls this with the record it committed.)
    pub fn deliver_event(&self, record: &EventRecord) {
        let state = self.lock();
        let Some(keys) = state.by_room.get(&record.room_id) else {
            return;
        };
        let frame = encode_event(record);
        let leaving = leaving_member(&record.event);
        for key in keys {
            if let Some(entry) = state.sessions.get(key) {
                entry.outbox.push(Outbound::Event {
                    room_id: record.room_id,
                    seq: record.seq,
                    frame: frame.clone(),
                    leaving,
                });
            }
        }
    }

    /// Hands an envelope to the local sessions it concerns. Never blocks on a session.
    pub fn deliver(&self, envelope: Envelope) {
        match envelope {
            Envelope::Room(record) => self.deliver_event(&record),
            Envelope::User { user_id, notice } => {
                let mut state = self.lock();
                let keys: Vec<SessionKey> = state
                    .by_user
                    .get(&user_id)
                    .map(|keys| keys.iter().copied().collect())
                    .unwrap_or_default();
                for key in keys {
                    match &notice {
                        UserNotice::RoomAdded { room_id, .. } => state.subscribe(key, *room_id),
                        UserNotice::TokenRevoked { token } => {
                            if let Some(entry) = state.sessions.get(&key)
                                && entry.token == *token
                            {
                                entry.outbox.close(CloseCode::Revoked);
                            }
                            continue;
                        }
                    }
                    if let Some(entry) = state.sessions.get(&key) {
                        entry.outbox.push(Outbound::Notice(notice.clone()));
                    }
                }
            }
            // Liveness frames are encoded once; typing and presence may be shed by a slow
            // session, receipts may not (a user's other devices learn their read position so).
            Envelope::Typing { room_id, user } => {
                let state = self.lock();
                let typist = user.id;
                let frame: Arc<str> =
                    Arc::from(codec::encode(&ServerFrame::Typing { room_id, user }));
                Self::push_to_rooms(&state, &[room_id], Some(typist), || {
                    Outbound::Ephemeral(frame.clone())
                });
            }
            Envelope::Receipt {
                room_id,
                user_id,
                delivered_seq,
                read_seq,
            } => {
                let state = self.lock();
                let frame: Arc<str> = Arc::from(codec::encode(&ServerFrame::Receipt {
                    room_id,
                    user_id,
                    delivered_seq,
                    read_seq,
                }));
                Self::push_to_rooms(&state, &[room_id], None, || Outbound::Frame(frame.clone()));
            }
            Envelope::Presence { presence, rooms } => {
                let state = self.lock();
                let frame: Arc<str> = Arc::from(codec::encode(&ServerFrame::Presence { presence }));
                Self::push_to_rooms(&state, &rooms, None, || Outbound::Ephemeral(frame.clone()));
            }
        }
    }

    /// Pushes one encoded frame to every session in `rooms` (each session once, however many of
    /// the rooms it is in), except the sessions of `except`.
    fn push_to_rooms(
        state: &State,
        rooms: &[RoomId],
        except: Option<UserId>,
        item: impl Fn() -> Outbound,
    ) {
        let mut reached = HashSet::new();
        for room_id in rooms {
            for key in state.by_room.get(room_id).into_iter().flatten() {
                let Some(entry) = state.sessions.get(key) else {
                    continue;
                };
                if Some(entry.user_id) != except && reached.insert(*key) {
                    entry.outbox.push(item());
                }
            }
        }
    }

    /// Tells every session to catch up from the store: the broker may have lost envelopes.
    pub fn resync_all(&self) {
        for entry in self.lock().sessions.values() {
            entry.outbox.push(Outbound::Resync);
        }
    }

    /// Sends every session a `heartbeat` frame every `every`, so that clients on every transport
    /// can tell a quiet server from a dead one. One timer for the node rather than one per
    /// session: thousands of idle sessions would each hold one. Stops when the hub is dropped.
    ///
    /// The sessions take turns: each tick reaches one slice of them (by key), a slice every
    /// `HEARTBEAT_SLICE` or so, and every session once per `every`. All at once, 15,000 idle
    /// connections' heartbeats were one burst of writes that held up live deliveries on the node
    /// for up to half a second (docs/benchmarks.md).
    pub fn spawn_heartbeats(&self, every: std::time::Duration) {
        let state = Arc::downgrade(&self.state);
        let slices = (every.as_millis() / HEARTBEAT_SLICE.as_millis()).clamp(1, 1000) as u64;
        let tick = every / slices as u32;
        tokio::spawn(async move {
            let frame: Arc<str> = Arc::from(codec::encode(&ServerFrame::Heartbeat));
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for slice in (0..slices).cycle() {
                ticks.tick().await;
                let Some(state) = state.upgrade() else {
                    return;
                };
                let state = state.lock().unwrap_or_else(|e| e.into_inner());
                for (key, entry) in &state.sessions {
                    if key.0 % slices == slice {
                        entry.outbox.push(Outbound::Ephemeral(frame.clone()));
                    }
                }
            }
        });
    }

    /// Tells every session to end with `code`, and refuses new ones (used at shutdown).
    pub fn close_all(&self, code: CloseCode) {
        let mut state = self.lock();
        state.closing = Some(code);
        for entry in state.sessions.values() {
            entry.outbox.close(code);
        }
    }

    /// The code `close_all` closed every session with, once it has: the node is shutting down.
    pub fn closing(&self) -> Option<CloseCode> {
        self.lock().closing
    }

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::RoomSeq;

    fn record(room: i64, seq: u64) -> Envelope {
        Envelope::Room(Arc::new(EventRecord {
            room_id: RoomId(room),
            seq: RoomSeq(seq),
            at: 0,
            actor: UserId(1),
            event: RoomEvent::MessageDeleted {
                message_id: natter_protocol::MessageId(1),
            },
        }))
    }

    fn take_now(outbox: &Outbox) -> Vec<Outbound> {
        let mut items = Vec::new();
        outbox.try_take(&mut items).unwrap();
        items
    }

    #[test]
    fn after_close_all_every_session_is_closed_and_none_registers() {
        let hub = Hub::new();
        let before = Arc::new(Outbox::new(8));
        hub.register(UserId(1), TokenId([1; 32]), before.clone())
            .unwrap();
        hub.close_all(CloseCode::ShuttingDown);
        let after = Arc::new(Outbox::new(8));
        assert_eq!(
            hub.register(UserId(2), TokenId([2; 32]), after),
            Err(CloseCode::ShuttingDown)
        );
        assert_eq!(hub.closing(), Some(CloseCode::ShuttingDown));
        assert_eq!(hub.session_count(), 1);
        let mut items = Vec::new();
        assert_eq!(before.try_take(&mut items), Err(CloseCode::ShuttingDown));
    }

    #[test]
    fn a_room_event_reaches_only_the_sessions_subscribed_to_that_room() {
        let hub = Hub::new();
        let inside = Arc::new(Outbox::new(8));
        let outside = Arc::new(Outbox::new(8));
        let a = hub
            .register(UserId(1), TokenId([1; 32]), inside.clone())
            .unwrap();
        let b = hub
            .register(UserId(2), TokenId([2; 32]), outside.clone())
            .unwrap();
        hub.subscribe(a, [RoomId(7)]);
        hub.subscribe(b, [RoomId(8)]);
        hub.deliver(record(7, 1));
        assert_eq!(take_now(&inside).len(), 1);
        assert!(take_now(&outside).is_empty());
    }

    #[test]
    fn the_event_is_encoded_once_and_shared() {
        let hub = Hub::new();
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(8))).collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            let key = hub
                .register(UserId(i as i64), TokenId([0; 32]), outbox.clone())
                .unwrap();
            hub.subscribe(key, [RoomId(1)]);
        }
        hub.deliver(record(1, 1));
        let frames: Vec<Arc<str>> = outboxes
            .iter()
            .map(|o| match take_now(o).pop() {
                Some(Outbound::Event { frame, .. }) => frame,
                other => panic!("expected an event, got {other:?}"),
            })
            .collect();
        assert!(Arc::ptr_eq(&frames[0], &frames[1]) && Arc::ptr_eq(&frames[1], &frames[2]));
    }

    #[test]
    fn an_unsubscribed_session_stops_receiving_and_an_unregistered_one_is_forgotten() {
        let hub = Hub::new();
        let outbox = Arc::new(Outbox::new(8));
        let key = hub
            .register(UserId(1), TokenId([1; 32]), outbox.clone())
            .unwrap();
        hub.subscribe(key, [RoomId(3)]);
        hub.unsubscribe(key, RoomId(3));
        hub.deliver(record(3, 5));
        assert!(take_now(&outbox).is_empty());
        hub.unregister(key);
        assert_eq!(hub.session_count(), 0);
    }

    #[test]
    fn a_room_added_notice_subscribes_every_session_of_the_user() {
        let hub = Hub::new();
        let phone = Arc::new(Outbox::new(8));
        let laptop = Arc::new(Outbox::new(8));
        hub.register(UserId(1), TokenId([1; 32]), phone.clone())
            .unwrap();
        hub.register(UserId(1), TokenId([2; 32]), laptop.clone())
            .unwrap();
        hub.deliver(Envelope::User {
            user_id: UserId(1),
            notice: UserNotice::RoomAdded {
                room_id: RoomId(3),
                from_seq: RoomSeq(4),
            },
        });
        hub.deliver(record(3, 5));
        for outbox in [&phone, &laptop] {
            let items = take_now(outbox);
            assert!(matches!(
                items[..],
                [Outbound::Notice(_), Outbound::Event { .. }]
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_reach_every_session_each_interval_and_stop_with_the_hub() {
        let hub = Hub::new();
        let outboxes: Vec<_> = (0..10).map(|_| Arc::new(Outbox::new(8))).collect();
        for (n, outbox) in outboxes.iter().enumerate() {
            hub.register(UserId(n as i64), TokenId([0; 32]), outbox.clone())
                .unwrap();
        }
        // Four slices of 250 ms: every session once a second, a quarter of them at a time.
        hub.spawn_heartbeats(std::time::Duration::from_secs(1));
        tokio::time::sleep(std::time::Duration::from_millis(260)).await;
        let first_slice = outboxes.iter().filter(|o| !o.is_empty()).count();
        assert!(
            (1..outboxes.len()).contains(&first_slice),
            "a tick reaches a slice of the sessions, not all: {first_slice}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1750)).await;
        for outbox in &outboxes {
            let items = take_now(outbox);
            assert_eq!(items.len(), 2, "one heartbeat per interval, two intervals");
            assert!(items.iter().all(|item| matches!(
                item,
                Outbound::Ephemeral(frame) if frame.contains("heartbeat")
            )));
        }
        drop(hub);
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert!(take_now(&outboxes[0]).is_empty());
    }

    #[test]
    fn revoking_a_token_closes_only_that_tokens_sessions() {
        let hub = Hub::new();
        let revoked = Arc::new(Outbox::new(8));
        let other_device = Arc::new(Outbox::new(8));
        hub.register(UserId(1), TokenId([1; 32]), revoked.clone())
            .unwrap();
        hub.register(UserId(1), TokenId([2; 32]), other_device.clone())
            .unwrap();
        hub.deliver(Envelope::User {
            user_id: UserId(1),
            notice: UserNotice::TokenRevoked {
                token: TokenId([1; 32]),
            },
        });
        let mut items = Vec::new();
        assert_eq!(revoked.try_take(&mut items), Err(CloseCode::Revoked));
        assert_eq!(other_device.try_take(&mut items), Ok(()));
    }
}
