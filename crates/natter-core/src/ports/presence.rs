//! `PresenceRegistry`: the cluster-wide view of who is online.
//!
//! Each node knows its own sessions (`presence::PresenceTracker`); the registry combines every
//! node's view of a user into one status (online if any node says online, away if every node that
//! knows them says away, else offline) and says when that status changed, so exactly one node
//! publishes each change. Guarantee: a node that dies stops counting within a bounded time, so its
//! users go offline rather than never.

use async_trait::async_trait;
use natter_protocol::{PresenceStatus, UserId};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("presence registry unavailable: {0}")]
pub struct PresenceError(pub String);

#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Records this node's view of the user. Returns the user's cluster-wide status if it changed
    /// since it was last returned (the caller publishes it), `None` otherwise.
    async fn set_local(
        &self,
        user_id: UserId,
        status: PresenceStatus,
    ) -> Result<Option<PresenceStatus>, PresenceError>;

    /// The cluster-wide status of each user, in order.
    async fn statuses(&self, users: &[UserId]) -> Result<Vec<PresenceStatus>, PresenceError>;
}

/// One node: its own view is the whole truth.
#[derive(Default)]
pub struct InProcessPresence {
    published: Mutex<HashMap<UserId, PresenceStatus>>,
}

#[async_trait]
impl PresenceRegistry for InProcessPresence {
    async fn set_local(
        &self,
        user_id: UserId,
        status: PresenceStatus,
    ) -> Result<Option<PresenceStatus>, PresenceError> {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let before = published
            .get(&user_id)
            .copied()
            .unwrap_or(PresenceStatus::Offline);
        if before == status {
            return Ok(None);
        }
        if status == PresenceStatus::Offline {
            published.remove(&user_id);
        } else {
            published.insert(user_id, status);
        }
        Ok(Some(status))
    }

    async fn statuses(&self, users: &[UserId]) -> Result<Vec<PresenceStatus>, PresenceError> {
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users
            .iter()
            .map(|user| {
                published
                    .get(user)
                    .copied()
                    .unwrap_or(PresenceStatus::Offline)
            })
            .collect())
    }
}
