//! `SessionStream`: the frames one connection must write, in the order it must write them.
//!
//! Per room it keeps the last sequence delivered and delivers `seq` n+1 right after n:
//! - an event at or below the cursor is a duplicate and is dropped;
//! - an event beyond the next one is held for up to `reorder_wait` (the missing ones are usually
//!   an instant behind, published by another task), then the gap is read from the store;
//! - after `hello` and after a `room_added` notice, everything after the cursor is read from the
//!   store ("catch-up"), while live events are held and then deduplicated.
//!
//! Membership ends with the event log itself: when the `member_left` event that removes this
//! user is delivered, nothing after it is, and `room_removed` follows. A `room_added` notice that
//! overtakes that event (a kick and a re-invite in quick succession) is remembered as a re-join:
//! after the leave, the room starts again at the join, and the events in between stay unseen.
//!
//! This is what makes a broker that drops or reorders safe: completeness comes from the store.

use super::encode_event;
use super::outbox::{Outbound, Outbox};
use crate::App;
use crate::hub::{SessionKey, leaving_member};
use crate::ports::broker::UserNotice;
use natter_protocol::frame::ServerFrame;
use natter_protocol::{CloseCode, RoomId, RoomSeq, UserId, codec};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// Events read from the store per catch-up step; larger gaps take several steps, so that live
/// frames and replies are not held behind one huge read.
const CATCH_UP_PAGE: u32 = 500;
/// Out-of-order events held per room before the gap is read from the store without waiting.
const MAX_HELD: usize = 256;

struct Held {
    frame: Arc<str>,
    /// This event removes the session's user from the room.
    leaves: bool,
}

struct RoomCursor {
    delivered: RoomSeq,
    /// Set once the user's `member_left` is known: the last event they see.
    until: Option<RoomSeq>,
    /// A `room_added` notice for a join after `delivered`: if a leave comes first, the room
    /// starts again here.
    rejoin: Option<RoomSeq>,
    held: BTreeMap<RoomSeq, Held>,
    gap_since: Option<Instant>,
}

impl RoomCursor {
    fn new(delivered: RoomSeq) -> RoomCursor {
        RoomCursor {
            delivered,
            until: None,
            rejoin: None,
            held: BTreeMap::new(),
            gap_since: None,
        }
    }

    fn finished(&self) -> bool {
        self.until.is_some_and(|until| self.delivered >= until)
    }

    /// Delivers one event that is next in line.
    fn deliver(&mut self, seq: RoomSeq, frame: Arc<str>, leaves: bool, out: &mut Vec<Arc<str>>) {
        out.push(frame);
        self.delivered = seq;
        if self.rejoin.is_some_and(|rejoin| seq >= rejoin) {
            self.rejoin = None;
        }
        if leaves {
            self.until = Some(seq);
        }
    }

    /// Delivers held events that are next in line and drops held duplicates.
    fn release_held(&mut self, out: &mut Vec<Arc<str>>) {
        while !self.finished() {
            let Some(entry) = self.held.first_entry() else {
                break;
            };
            let seq = *entry.key();
            if seq <= self.delivered {
                entry.remove();
            } else if seq == self.delivered.next() {
                let held = entry.remove();
                self.deliver(seq, held.frame, held.leaves, out);
            } else {
                break;
            }
        }
        if self.finished() {
            self.held.clear();
        }
        self.gap_since = if self.held.is_empty() {
            None
        } else {
            self.gap_since.or(Some(Instant::now()))
        };
    }
}

/// A session's room cursors, sorted by room: a vector, not a hash map, because most sessions
/// follow a few rooms and every idle connection keeps its map (a one-room hash map took 370
/// bytes, this one 90). Lookups are binary searches; rooms are added and removed rarely.
#[derive(Default)]
struct Cursors(Vec<(RoomId, RoomCursor)>);

impl Cursors {
    fn position(&self, room_id: RoomId) -> Result<usize, usize> {
        self.0.binary_search_by_key(&room_id, |(id, _)| *id)
    }

    fn get(&self, room_id: RoomId) -> Option<&RoomCursor> {
        let index = self.position(room_id).ok()?;
        Some(&self.0[index].1)
    }

    fn get_mut(&mut self, room_id: RoomId) -> Option<&mut RoomCursor> {
        let index = self.position(room_id).ok()?;
        Some(&mut self.0[index].1)
    }

    fn contains(&self, room_id: RoomId) -> bool {
        self.position(room_id).is_ok()
    }

    fn insert(&mut self, room_id: RoomId, cursor: RoomCursor) {
        match self.position(room_id) {
            Ok(index) => self.0[index].1 = cursor,
            Err(index) => self.0.insert(index, (room_id, cursor)),
        }
    }

    fn remove(&mut self, room_id: RoomId) {
        if let Ok(index) = self.position(room_id) {
            self.0.remove(index);
        }
    }

    fn room_ids(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.0.iter().map(|(id, _)| *id)
    }

    fn iter(&self) -> impl Iterator<Item = &RoomCursor> {
        self.0.iter().map(|(_, cursor)| cursor)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (RoomId, &mut RoomCursor)> {
        self.0.iter_mut().map(|(id, cursor)| (*id, cursor))
    }
}

/// Why a stream ended: the close code to send the client.
pub type Closed = CloseCode;

pub struct SessionStream {
    app: App,
    key: SessionKey,
    user_id: UserId,
    outbox: Arc<Outbox>,
    first: Vec<Arc<str>>,
    rooms: Cursors,
    catch_up: VecDeque<RoomId>,
    items: Vec<Outbound>,
}

impl SessionStream {
    pub(crate) fn new(
        app: App,
        key: SessionKey,
        user_id: UserId,
        outbox: Arc<Outbox>,
        first: Vec<Arc<str>>,
        cursors: Vec<(RoomId, RoomSeq, Option<RoomSeq>)>,
    ) -> SessionStream {
        let catch_up = cursors.iter().map(|(room_id, ..)| *room_id).collect();
        let mut rooms: Vec<(RoomId, RoomCursor)> = cursors
            .into_iter()
            .map(|(room_id, seq, rejoin)| {
                let mut cursor = RoomCursor::new(seq);
                cursor.rejoin = rejoin;
                (room_id, cursor)
            })
            .collect();
        rooms.sort_unstable_by_key(|(room_id, _)| *room_id);
        rooms.dedup_by_key(|(room_id, _)| *room_id);
        let rooms = Cursors(rooms);
        SessionStream {
            key,
            user_id,
            outbox,
            first,
            rooms,
            catch_up,
            items: Vec::new(),
            app,
        }
    }

    /// Waits for the next frames to write and appends them to `out` (at least one on `Ok`). An
    /// `Err` ends the connection with that close code.
    pub async fn next(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        if !self.first.is_empty() {
            out.extend(std::mem::take(&mut self.first));
            return Ok(());
        }
        loop {
            // Live frames first: take whatever is queued without waiting. (Heartbeats come
            // through the outbox too, from the hub's one timer for every session.)
            self.take_ready(out).await?;
            if let Some(room_id) = self.catch_up.pop_front() {
                // The rare, large futures are boxed: an idle session waiting in `take` then holds
                // only what waiting needs (thousands of idle connections add up).
                Box::pin(self.catch_up_room(room_id, out)).await?;
            }
            if !out.is_empty() {
                return Ok(());
            }
            if !self.catch_up.is_empty() {
                continue;
            }
            let wait = std::time::Duration::from_millis(self.app.limits.reorder_wait_ms);
            let gap_deadline = self
                .rooms
                .iter()
                .filter_map(|cursor| cursor.gap_since)
                .min()
                .map(|since| since + wait);
            // Waiting without a timer unless a gap needs one: an idle session then holds no
            // timer, and a busy one arms none per wake.
            match gap_deadline {
                None => self.outbox.take(&mut self.items).await?,
                Some(deadline) => {
                    let wait_for_items = self.outbox.take(&mut self.items);
                    match Box::pin(tokio::time::timeout_at(deadline, wait_for_items)).await {
                        Ok(taken) => taken?,
                        Err(_elapsed) => self.schedule_expired_gaps(wait),
                    }
                }
            }
        }
    }

    /// Appends to `out` what is queued now, without waiting for more to come (it may still read
    /// the store for a notice or a resync). Outside `next`, only after it: `next` yields the
    /// greeting first. A writer that expects a reply any moment takes it so into the batch it is
    /// about to write. An `Err` leaves what `out` holds: those frames left the outbox and go out
    /// before the close.
    pub async fn take_ready(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        self.outbox.try_take(&mut self.items)?;
        self.apply_items(out).await
    }

    fn schedule(&mut self, room_id: RoomId) {
        if !self.catch_up.contains(&room_id) {
            self.catch_up.push_back(room_id);
        }
    }

    fn schedule_expired_gaps(&mut self, wait: std::time::Duration) {
        let now = Instant::now();
        let expired: Vec<RoomId> = self
            .rooms
            .iter_mut()
            .filter(|(_, cursor)| cursor.gap_since.is_some_and(|since| since + wait <= now))
            .map(|(room_id, cursor)| {
                cursor.gap_since = None;
                room_id
            })
            .collect();
        for room_id in expired {
            self.schedule(room_id);
        }
    }

    async fn apply_items(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        // Taken whole, buffer and all: an idle session keeps no buffer.
        for item in std::mem::take(&mut self.items) {
            match item {
                Outbound::Frame(frame) | Outbound::Ephemeral(frame) => out.push(frame),
                Outbound::Event {
                    room_id,
                    seq,
                    frame,
                    leaving,
                } => {
                    let leaves = leaving == Some(self.user_id);
                    // Delivering is synchronous; only a re-join after a leave reads the store.
                    self.apply_event(room_id, seq, Held { frame, leaves }, out);
                    self.after_progress(room_id, out).await?;
                }
                Outbound::Notice(notice) => Box::pin(self.apply_notice(notice, out)).await?,
                Outbound::Resync => Box::pin(self.resync(out)).await?,
            }
        }
        Ok(())
    }

    /// Delivers or holds one live event (the caller then runs `after_progress`).
    fn apply_event(&mut self, room_id: RoomId, seq: RoomSeq, held: Held, out: &mut Vec<Arc<str>>) {
        let Some(cursor) = self.rooms.get_mut(room_id) else {
            return;
        };
        if seq <= cursor.delivered || cursor.until.is_some_and(|until| seq > until) {
            return;
        }
        if cursor.held.is_empty() && seq == cursor.delivered.next() {
            // The common case, in order with nothing held: no map work per delivery.
            cursor.deliver(seq, held.frame, held.leaves, out);
        } else {
            cursor.held.insert(seq, held);
            cursor.release_held(out);
        }
        if cursor.held.len() > MAX_HELD {
            self.schedule(room_id);
        }
    }

    async fn apply_notice(
        &mut self,
        notice: UserNotice,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        let UserNotice::RoomAdded { room_id, from_seq } = notice else {
            // TokenRevoked: the hub closes the revoked sessions' outboxes itself.
            return Ok(());
        };
        // Subscribe again in case this session unsubscribed after an earlier leave that the
        // hub processed after this notice (idempotent otherwise).
        self.app.hub.subscribe(self.key, [room_id]);
        match self.rooms.get_mut(room_id) {
            Some(cursor) => {
                // Already following the room: this join lies ahead of the cursor, behind a leave
                // not yet seen, or it is the join the cursor already passed.
                if from_seq > cursor.delivered {
                    cursor.rejoin = Some(cursor.rejoin.map_or(from_seq, |r| r.max(from_seq)));
                    self.schedule(room_id);
                }
                self.after_progress(room_id, out).await
            }
            None => self.start_room(room_id, from_seq, out).await,
        }
    }

    /// Catches up every room, and starts following rooms joined while notices may have been lost.
    async fn resync(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        let rooms: Vec<RoomId> = self.rooms.room_ids().collect();
        for room_id in rooms {
            self.schedule(room_id);
        }
        let memberships = self
            .app
            .store
            .rooms_of(self.user_id)
            .await
            .map_err(|_| CloseCode::Resume)?;
        for membership in memberships {
            let room_id = membership.room.id;
            if !self.rooms.contains(room_id) {
                self.app.hub.subscribe(self.key, [room_id]);
                self.start_room(room_id, membership.joined_seq, out).await?;
            }
        }
        Ok(())
    }

    /// Begins following a room from its join event `from_seq`: `room_added`, then catch-up.
    async fn start_room(
        &mut self,
        room_id: RoomId,
        from_seq: RoomSeq,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        let cursor = RoomSeq(from_seq.0.saturating_sub(1));
        let room = self
            .app
            .store
            .room(room_id, self.user_id)
            .await
            .map_err(|_| CloseCode::Resume)?;
        let Some(mut room) = room else {
            return Ok(());
        };
        room.last_seq = cursor;
        self.rooms.insert(room_id, RoomCursor::new(cursor));
        out.push(Arc::from(codec::encode(&ServerFrame::RoomAdded { room })));
        self.schedule(room_id);
        Ok(())
    }

    /// After a room's cursor moved: if the user's leave was delivered, end the room (or start it
    /// again at a known re-join).
    async fn after_progress(
        &mut self,
        room_id: RoomId,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        let Some(cursor) = self.rooms.get(room_id) else {
            return Ok(());
        };
        if !cursor.finished() {
            return Ok(());
        }
        let rejoin = cursor.rejoin;
        self.rooms.remove(room_id);
        self.catch_up.retain(|id| *id != room_id);
        out.push(Arc::from(codec::encode(&ServerFrame::RoomRemoved {
            room_id,
        })));
        match rejoin {
            Some(from_seq) => Box::pin(self.start_room(room_id, from_seq, out)).await,
            None => {
                self.app.hub.unsubscribe(self.key, room_id);
                Ok(())
            }
        }
    }

    /// Reads one page of the room's events after its cursor from the store.
    async fn catch_up_room(
        &mut self,
        room_id: RoomId,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        let Some(cursor) = self.rooms.get(room_id) else {
            return Ok(());
        };
        let events = self
            .app
            .store
            .events_after(room_id, cursor.delivered, cursor.until, CATCH_UP_PAGE)
            .await
            .map_err(|error| {
                // The client resumes later from where it got to; nothing is skipped.
                tracing::warn!(%error, %room_id, "catch-up read failed; closing the session");
                CloseCode::Resume
            })?;
        let Some(cursor) = self.rooms.get_mut(room_id) else {
            return Ok(());
        };
        let full_page = events.len() as u32 == CATCH_UP_PAGE;
        for record in &events {
            if cursor.finished() {
                break;
            }
            if record.seq == cursor.delivered.next() {
                let leaves = leaving_member(&record.event) == Some(self.user_id);
                cursor.deliver(record.seq, encode_event(record), leaves, out);
            }
        }
        cursor.release_held(out);
        if full_page && !cursor.finished() {
            self.catch_up.push_front(room_id);
        }
        self.after_progress(room_id, out).await
    }
}
