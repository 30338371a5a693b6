//! `Outbox`: the bounded queue between the hub (and the session's own replies) and one
//! connection's writer.
//!
//! The hub pushes without waiting. When the queue is full, ephemeral frames (typing, presence)
//! are shed first; if only durable items are left, the outbox closes with `CloseCode::Resume`:
//! the client reconnects and resumes from history, so nothing is lost, and one slow client never
//! holds up the fan-out or grows memory without bound.

use crate::ports::broker::UserNotice;
use natter_protocol::{CloseCode, RoomId, RoomSeq, UserId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One item queued for a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded frame that must not be dropped (a reply).
    Frame(Arc<str>),
    /// An encoded room event; the session orders these by `seq`.
    Event {
        room_id: RoomId,
        seq: RoomSeq,
        frame: Arc<str>,
        /// The member this event removes from the room (`member_left`), if any: their sessions
        /// stop following the room right after it.
        leaving: Option<UserId>,
    },
    /// An encoded frame that may be shed under pressure (typing, presence).
    Ephemeral(Arc<str>),
    /// A change in the user's rooms, handled by the session.
    Notice(UserNotice),
    /// The node may have missed envelopes (its broker reconnected): read every room from the
    /// store after its cursor, and look for rooms joined meanwhile.
    Resync,
}

impl Outbound {
    fn is_ephemeral(&self) -> bool {
        matches!(self, Outbound::Ephemeral(_))
    }
}

struct State {
    queue: VecDeque<Outbound>,
    closed: Option<CloseCode>,
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: None,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item. Returns false when it was not queued: the outbox is closed, the item was
    /// ephemeral and there was no room, or it was durable and overflowed (which closes the outbox).
    pub fn push(&self, item: Outbound) -> bool {
        let mut state = self.lock();
        if state.closed.is_some() {
            return false;
        }
        if state.queue.len() >= self.capacity {
            if item.is_ephemeral() {
                return false;
            }
            match state.queue.iter().position(Outbound::is_ephemeral) {
                Some(index) => {
                    state.queue.remove(index);
                }
                None => {
                    state.closed = Some(CloseCode::Resume);
                    state.queue.clear();
                    drop(state);
                    self.ready.notify_one();
                    return false;
                }
            }
        }
        state.queue.push_back(item);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Ends the connection with `code`. Queued items are discarded: the client resumes.
    pub fn close(&self, code: CloseCode) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(code);
            state.queue.clear();
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Moves every queued item into `out`, or says why the outbox is closed.
    pub fn try_take(&self, out: &mut Vec<Outbound>) -> Result<(), CloseCode> {
        let mut state = self.lock();
        if let Some(code) = state.closed {
            return Err(code);
        }
        // Taken whole when the taker has nothing yet: the queue's buffer moves to the taker,
        // so an idle connection's outbox keeps none (the next push allocates a new one).
        if out.is_empty() {
            *out = Vec::from(std::mem::take(&mut state.queue));
        } else {
            out.extend(state.queue.drain(..));
        }
        Ok(())
    }

    /// Waits until at least one item is queued (or the outbox closes), then takes them all.
    /// One consumer only: the connection's writer.
    pub async fn take(&self, out: &mut Vec<Outbound>) -> Result<(), CloseCode> {
        loop {
            self.try_take(out)?;
            if !out.is_empty() {
                return Ok(());
            }
            self.ready.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    #[test]
    fn ephemeral_frames_are_shed_before_the_outbox_overflows() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(Outbound::Ephemeral(frame("typing"))));
        assert!(outbox.push(Outbound::Frame(frame("reply 1"))));
        // Full: a durable push evicts the ephemeral frame instead of closing.
        assert!(outbox.push(Outbound::Frame(frame("reply 2"))));
        // Full of durable items: an ephemeral push is dropped, the outbox stays open.
        assert!(!outbox.push(Outbound::Ephemeral(frame("typing again"))));
        let mut items = Vec::new();
        outbox.try_take(&mut items).unwrap();
        let texts: Vec<String> = items
            .iter()
            .map(|i| match i {
                Outbound::Frame(f) => f.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(texts, ["reply 1", "reply 2"]);
    }

    #[test]
    fn durable_overflow_closes_the_outbox_with_resume() {
        let outbox = Outbox::new(1);
        assert!(outbox.push(Outbound::Frame(frame("a"))));
        assert!(!outbox.push(Outbound::Frame(frame("b"))));
        let mut items = Vec::new();
        assert_eq!(outbox.try_take(&mut items), Err(CloseCode::Resume));
        assert!(!outbox.push(Outbound::Frame(frame("c"))));
    }

    #[tokio::test]
    async fn take_waits_for_a_push() {
        let outbox = Arc::new(Outbox::new(4));
        let pusher = outbox.clone();
        let task = tokio::spawn(async move {
            let mut items = Vec::new();
            outbox.take(&mut items).await.map(|_| items.len())
        });
        tokio::task::yield_now().await;
        pusher.push(Outbound::Frame(frame("x")));
        assert_eq!(task.await.unwrap(), Ok(1));
    }
}
