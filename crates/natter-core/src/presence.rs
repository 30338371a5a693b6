//! Presence on this node: who is online, away or offline, from the sessions they have open.
//!
//! A user is `online` while any session is active, `away` while every session says it is away,
//! and `offline` with none. A change is published only after `presence_coalesce_ms`, and only if
//! the status still differs from what was last published: a connection that flaps (drops and
//! comes back within the window) costs nothing, and a burst of changes costs one publish. The
//! cost is therefore one envelope per real change, fanned out to the rooms the user is in; it
//! never grows with members × connections.
//!
//! This node's view goes to the `PresenceRegistry`, which combines the views of every node and
//! says whether the user's status across the cluster changed; only then is a change published.

use crate::App;
use crate::ports::broker::Envelope;
use natter_protocol::{PresenceInfo, PresenceStatus, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct UserState {
    active: u32,
    away: u32,
    published: Option<PresenceStatus>,
    scheduled: bool,
}

impl UserState {
    fn status(&self) -> PresenceStatus {
        if self.active > 0 {
            PresenceStatus::Online
        } else if self.away > 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Offline
        }
    }

    fn published(&self) -> PresenceStatus {
        self.published.unwrap_or(PresenceStatus::Offline)
    }
}

struct Shared {
    users: Mutex<HashMap<UserId, UserState>>,
    coalesce: Duration,
    /// Held for reading by each publish while it runs, for writing by `flush`: the flush waits
    /// for the publishes under way, and the ones whose window ends meanwhile wait for it.
    publishing: tokio::sync::RwLock<()>,
}

/// A cheap-to-clone handle to this node's presence table. The std `Mutex` guards a few counter
/// updates; publishing happens outside it.
#[derive(Clone)]
pub struct PresenceTracker {
    shared: Arc<Shared>,
}

impl PresenceTracker {
    pub fn new(coalesce: Duration) -> PresenceTracker {
        PresenceTracker {
            shared: Arc::new(Shared {
                users: Mutex::new(HashMap::new()),
                coalesce,
                publishing: tokio::sync::RwLock::new(()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, UserState>> {
        self.shared.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every user with a session on this node and their status here (for re-asserting this
    /// node's view where it was lost).
    pub fn snapshot(&self) -> Vec<(UserId, PresenceStatus)> {
        self.lock()
            .iter()
            .map(|(user, state)| (*user, state.status()))
            .filter(|(_, status)| *status != PresenceStatus::Offline)
            .collect()
    }

    /// A session of the user opened (active).
    pub fn connected(&self, app: &App, user_id: UserId) {
        self.update(app, user_id, |state| state.active += 1);
    }

    /// A session of the user closed; `away` is what it last said.
    pub fn disconnected(&self, app: &App, user_id: UserId, away: bool) {
        self.update(app, user_id, |state| {
            let count = if away {
                &mut state.away
            } else {
                &mut state.active
            };
            *count = count.saturating_sub(1);
        });
    }

    /// A session switched between active and away.
    pub fn session_away(&self, app: &App, user_id: UserId, away: bool) {
        self.update(app, user_id, |state| {
            if away {
                state.active = state.active.saturating_sub(1);
                state.away += 1;
            } else {
                state.away = state.away.saturating_sub(1);
                state.active += 1;
            }
        });
    }

    fn update(&self, app: &App, user_id: UserId, change: impl FnOnce(&mut UserState)) {
        let mut users = self.lock();
        let state = users.entry(user_id).or_default();
        change(state);
        if state.status() == state.published() || state.scheduled {
            return;
        }
        state.scheduled = true;
        drop(users);
        let (tracker, app) = (self.clone(), app.clone());
        tokio::spawn(async move {
            tokio::time::sleep(tracker.shared.coalesce).await;
            let _running = tracker.shared.publishing.read().await;
            tracker.publish_if_changed(&app, user_id).await;
        });
    }

    /// At shutdown, once this node's sessions are gone: records the last-seen time of every user
    /// whose last session here ended within the coalescing window, before the store closes.
    /// Nothing is published: the node's clients are gone, and in a cluster they are reconnecting
    /// elsewhere, where an offline published now would flap to online a window later (the living
    /// nodes drop this node's presence when they find it dead). The writes run concurrently, so a
    /// store that groups commits records them together.
    pub async fn flush(&self, app: &App) {
        let _no_publishes = self.shared.publishing.write().await;
        let left: Vec<UserId> = {
            let mut users = self.lock();
            let left = users
                .iter()
                .filter(|(_, state)| {
                    state.status() == PresenceStatus::Offline
                        && state.published() != PresenceStatus::Offline
                })
                .map(|(user_id, _)| *user_id)
                .collect::<Vec<_>>();
            // Their timers then find nothing to publish.
            for user_id in &left {
                users.remove(user_id);
            }
            left
        };
        let now = crate::now_ms();
        let mut recording = tokio::task::JoinSet::new();
        for user_id in left {
            let app = app.clone();
            recording.spawn(async move {
                if let Err(error) = app.store.set_last_seen(user_id, now).await {
                    tracing::warn!(%error, %user_id, "cannot record last seen at shutdown");
                }
            });
        }
        while recording.join_next().await.is_some() {}
    }

    async fn publish_if_changed(&self, app: &App, user_id: UserId) {
        let local = {
            let mut users = self.lock();
            let Some(state) = users.get_mut(&user_id) else {
                return;
            };
            state.scheduled = false;
            let status = state.status();
            if status == state.published() {
                return;
            }
            state.published = Some(status);
            if status == PresenceStatus::Offline {
                users.remove(&user_id);
            }
            status
        };
        match app.presence_registry.set_local(user_id, local).await {
            Ok(Some(status)) => publish_presence(app, user_id, status).await,
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, %user_id, "presence change not recorded"),
        }
    }
}

/// Tells everyone who shares a presence room with the user (`Store::presence_rooms_of`) that
/// their status is now `status`; going offline records the last-seen time.
pub async fn publish_presence(app: &App, user_id: UserId, status: PresenceStatus) {
    let last_seen = (status == PresenceStatus::Offline).then(crate::now_ms);
    if let Some(at) = last_seen
        && let Err(error) = app.store.set_last_seen(user_id, at).await
    {
        tracing::warn!(%error, %user_id, "cannot record last seen");
    }
    let rooms = match app
        .store
        .presence_rooms_of(user_id, app.limits.presence_room_limit)
        .await
    {
        Ok(rooms) => rooms,
        Err(error) => {
            tracing::warn!(%error, %user_id, "presence change not published");
            return;
        }
    };
    app.publish(Envelope::Presence {
        presence: PresenceInfo {
            user_id,
            status,
            last_seen,
        },
        rooms: rooms.into(),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_online_while_any_session_is_active_and_away_only_when_all_are() {
        let mut state = UserState::default();
        assert_eq!(state.status(), PresenceStatus::Offline);
        state.active = 1;
        state.away = 1;
        assert_eq!(state.status(), PresenceStatus::Online);
        state.active = 0;
        assert_eq!(state.status(), PresenceStatus::Away);
    }
}
