//! `SessionStream`: the frames one connection must write, in the order it must write them.
//!
//! Per room it keeps the last sequence delivered and delivers `seq` n+1 right after n:
//! - an event at or below the cursor is a duplicate and is dropped;
//! - an event beyond the next one is held for up to `reorder_wait` (the missing ones are usually
//!   an instant behind, published by another task), then the gap is read from the store;
//! - after `hello` and after a `room_added` notice, everything after the cursor is read from the
//!   store ("catch-up"), while live events are held and then deduplicated.
//!
//! This is what makes a broker that drops or reorders safe: completeness comes from the store.

use super::encode_event;
use super::outbox::{Outbound, Outbox};
use crate::App;
use crate::ports::broker::UserNotice;
use natter_protocol::frame::ServerFrame;
use natter_protocol::{CloseCode, RoomId, RoomSeq, UserId, codec};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// Events read from the store per catch-up step; larger gaps take several steps, so that live
/// frames and replies are not held behind one huge read.
const CATCH_UP_PAGE: u32 = 500;
/// Out-of-order events held per room before the gap is read from the store without waiting.
const MAX_HELD: usize = 256;

struct RoomCursor {
    delivered: RoomSeq,
    /// Set when the user left: the last event they see.
    until: Option<RoomSeq>,
    held: BTreeMap<RoomSeq, Arc<str>>,
    gap_since: Option<Instant>,
}

impl RoomCursor {
    fn new(delivered: RoomSeq) -> RoomCursor {
        RoomCursor {
            delivered,
            until: None,
            held: BTreeMap::new(),
            gap_since: None,
        }
    }

    fn finished(&self) -> bool {
        self.until.is_some_and(|until| self.delivered >= until)
    }

    /// Delivers held events that are next in line; drops held duplicates.
    fn release_held(&mut self, out: &mut Vec<Arc<str>>) {
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= self.delivered {
                entry.remove();
            } else if seq == self.delivered.next() && self.until.is_none_or(|u| seq <= u) {
                out.push(entry.remove());
                self.delivered = seq;
            } else {
                break;
            }
        }
        if self.until.is_some_and(|u| self.delivered >= u) {
            self.held.clear();
        }
        self.gap_since = if self.held.is_empty() {
            None
        } else {
            self.gap_since.or(Some(Instant::now()))
        };
    }
}

/// Why a stream ended: the close code to send the client.
pub type Closed = CloseCode;

pub struct SessionStream {
    app: App,
    user_id: UserId,
    outbox: Arc<Outbox>,
    first: Vec<Arc<str>>,
    rooms: HashMap<RoomId, RoomCursor>,
    catch_up: VecDeque<RoomId>,
    items: Vec<Outbound>,
}

impl SessionStream {
    pub(crate) fn new(
        app: App,
        user_id: UserId,
        outbox: Arc<Outbox>,
        first: Vec<Arc<str>>,
        cursors: Vec<(RoomId, RoomSeq)>,
    ) -> SessionStream {
        let catch_up = cursors.iter().map(|(room_id, _)| *room_id).collect();
        let rooms = cursors
            .into_iter()
            .map(|(room_id, seq)| (room_id, RoomCursor::new(seq)))
            .collect();
        SessionStream {
            app,
            user_id,
            outbox,
            first,
            rooms,
            catch_up,
            items: Vec::new(),
        }
    }

    /// Waits for the next frames to write and appends them to `out` (at least one on `Ok`). An
    /// `Err` ends the connection with that close code.
    pub async fn next(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        if !self.first.is_empty() {
            out.append(&mut self.first);
            return Ok(());
        }
        loop {
            // Live frames first: take whatever is queued without waiting.
            self.outbox.try_take(&mut self.items)?;
            self.apply_items(out).await?;
            if let Some(room_id) = self.catch_up.pop_front() {
                self.catch_up_room(room_id, out).await?;
            }
            if !out.is_empty() {
                return Ok(());
            }
            if !self.catch_up.is_empty() {
                continue;
            }
            let wait = std::time::Duration::from_millis(self.app.limits.reorder_wait_ms);
            let deadline = self
                .rooms
                .values()
                .filter_map(|cursor| cursor.gap_since)
                .min()
                .map(|since| since + wait);
            match deadline {
                None => self.outbox.take(&mut self.items).await?,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.outbox.take(&mut self.items)).await
                    {
                        Ok(taken) => taken?,
                        Err(_elapsed) => self.schedule_expired_gaps(wait),
                    }
                }
            }
        }
    }

    fn schedule_expired_gaps(&mut self, wait: std::time::Duration) {
        let now = Instant::now();
        for (room_id, cursor) in &mut self.rooms {
            if cursor.gap_since.is_some_and(|since| since + wait <= now) {
                cursor.gap_since = None;
                if !self.catch_up.contains(room_id) {
                    self.catch_up.push_back(*room_id);
                }
            }
        }
    }

    async fn apply_items(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Closed> {
        let mut items = std::mem::take(&mut self.items);
        for item in items.drain(..) {
            match item {
                Outbound::Frame(frame) | Outbound::Ephemeral(frame) => out.push(frame),
                Outbound::Event {
                    room_id,
                    seq,
                    frame,
                } => self.apply_event(room_id, seq, frame, out),
                Outbound::Notice(notice) => self.apply_notice(notice, out).await?,
            }
        }
        self.items = items;
        Ok(())
    }

    fn apply_event(
        &mut self,
        room_id: RoomId,
        seq: RoomSeq,
        frame: Arc<str>,
        out: &mut Vec<Arc<str>>,
    ) {
        let Some(cursor) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if seq <= cursor.delivered || cursor.until.is_some_and(|until| seq > until) {
            return;
        }
        cursor.held.insert(seq, frame);
        cursor.release_held(out);
        if cursor.finished() {
            self.remove_room(room_id, out);
        } else if cursor.held.len() > MAX_HELD && !self.catch_up.contains(&room_id) {
            self.catch_up.push_back(room_id);
        }
    }

    async fn apply_notice(
        &mut self,
        notice: UserNotice,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        match notice {
            UserNotice::RoomAdded { room_id, from_seq } => {
                // Re-added before the removal finished: finish it, so that the events between
                // leaving and coming back stay unseen.
                while self.rooms.get(&room_id).is_some_and(|c| c.until.is_some()) {
                    self.catch_up_room(room_id, out).await?;
                }
                if self.rooms.contains_key(&room_id) {
                    return Ok(());
                }
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
                self.catch_up.push_back(room_id);
            }
            UserNotice::RoomRemoved { room_id, at_seq } => {
                let Some(cursor) = self.rooms.get_mut(&room_id) else {
                    return Ok(());
                };
                cursor.until = Some(at_seq);
                cursor.release_held(out);
                if cursor.finished() {
                    self.remove_room(room_id, out);
                } else if !self.catch_up.contains(&room_id) {
                    self.catch_up.push_back(room_id);
                }
            }
            // The hub closes the revoked sessions' outboxes itself.
            UserNotice::TokenRevoked { .. } => {}
        }
        Ok(())
    }

    fn remove_room(&mut self, room_id: RoomId, out: &mut Vec<Arc<str>>) {
        self.rooms.remove(&room_id);
        self.catch_up.retain(|id| *id != room_id);
        out.push(Arc::from(codec::encode(&ServerFrame::RoomRemoved {
            room_id,
        })));
    }

    /// Reads one page of the room's events after its cursor from the store.
    async fn catch_up_room(
        &mut self,
        room_id: RoomId,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), Closed> {
        let Some(cursor) = self.rooms.get(&room_id) else {
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
        let Some(cursor) = self.rooms.get_mut(&room_id) else {
            return Ok(());
        };
        let full_page = events.len() as u32 == CATCH_UP_PAGE;
        for record in &events {
            if record.seq > cursor.delivered {
                out.push(encode_event(record));
                cursor.delivered = record.seq;
            }
        }
        cursor.release_held(out);
        if cursor.finished() {
            self.remove_room(room_id, out);
        } else if full_page {
            self.catch_up.push_front(room_id);
        }
        Ok(())
    }
}
