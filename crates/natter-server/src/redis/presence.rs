//! `RedisPresence`: every node's view of every user, combined in Redis.
//!
//! Keys (under `natter:{cluster}:`):
//! - `presence:{user}`: a hash, node → `online` | `away`, for the nodes that have the user;
//! - `published:{user}`: the cluster-wide status last published for the user;
//! - `node:{node}`: exists while the node lives (refreshed every `NODE_REFRESH`, expires after
//!   `NODE_TTL`);
//! - `node-users:{node}` and `nodes`: what a node holds, so another can clean up after it.
//!
//! A Lua script updates a node's field and compares the combined status (ignoring dead nodes)
//! with the published one atomically, so concurrent changes on two nodes publish once. When a
//! node dies, the first live node to notice takes a lock and removes its fields user by user,
//! publishing the users who went offline: within `NODE_TTL` plus one sweep, not never.

use async_trait::async_trait;
use natter_core::App;
use natter_core::ports::presence::{PresenceError, PresenceRegistry};
use natter_protocol::{PresenceStatus, UserId};
use std::time::Duration;
use tokio::sync::Mutex;

const NODE_TTL_SECS: u64 = 15;
const NODE_REFRESH: Duration = Duration::from_secs(5);

/// Sets one node's field for a user and returns the new combined status if it changed.
const SET_LOCAL: &str = r#"
local hash, published, node_users = KEYS[1], KEYS[2], KEYS[3]
local node, status, node_prefix, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if status == 'offline' then
  redis.call('HDEL', hash, node)
  redis.call('SREM', node_users, user)
else
  redis.call('HSET', hash, node, status)
  redis.call('SADD', node_users, user)
end
local best = 'offline'
local fields = redis.call('HGETALL', hash)
for i = 1, #fields, 2 do
  if redis.call('EXISTS', node_prefix .. fields[i]) == 1 then
    if fields[i + 1] == 'online' then best = 'online' elseif best == 'offline' then best = 'away' end
  end
end
local previous = redis.call('GET', published) or 'offline'
if previous == best then return false end
if best == 'offline' then redis.call('DEL', published) else redis.call('SET', published, best) end
return best
"#;

/// The published status of each user (KEYS are the `published:` keys).
const STATUSES: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('GET', key) or 'offline' end
return out
"#;

pub struct RedisPresence {
    client: redis::Client,
    prefix: String,
    node: String,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    set_local: redis::Script,
    statuses: redis::Script,
}

fn parse(status: &str) -> PresenceStatus {
    match status {
        "online" => PresenceStatus::Online,
        "away" => PresenceStatus::Away,
        _ => PresenceStatus::Offline,
    }
}

fn name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

fn unavailable(error: impl std::fmt::Display) -> PresenceError {
    PresenceError(error.to_string())
}

impl RedisPresence {
    pub fn new(client: redis::Client, cluster: &str, node: &str) -> RedisPresence {
        RedisPresence {
            client,
            prefix: format!("natter:{cluster}:"),
            node: node.to_owned(),
            connection: Mutex::new(None),
            set_local: redis::Script::new(SET_LOCAL),
            statuses: redis::Script::new(STATUSES),
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, PresenceError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(unavailable)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    async fn set_for(
        &self,
        node: &str,
        user_id: UserId,
        status: PresenceStatus,
    ) -> Result<Option<PresenceStatus>, PresenceError> {
        let mut connection = self.connection().await?;
        let p = &self.prefix;
        let result: Result<Option<String>, _> = self
            .set_local
            .key(format!("{p}presence:{user_id}"))
            .key(format!("{p}published:{user_id}"))
            .key(format!("{p}node-users:{node}"))
            .arg(node)
            .arg(name(status))
            .arg(format!("{p}node:"))
            .arg(user_id.0)
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok(changed) => Ok(changed.map(|s| parse(&s))),
            Err(error) => {
                self.forget_connection().await;
                Err(unavailable(error))
            }
        }
    }

    /// Marks this node alive and known; called every `NODE_REFRESH`. Returns false when the node
    /// was not known as alive (first refresh, Redis restarted, or another node reaped it): its
    /// view must then be written again.
    async fn refresh_node(&self) -> Result<bool, PresenceError> {
        let mut connection = self.connection().await?;
        let p = &self.prefix;
        let result: Result<(bool, (), ()), _> = redis::pipe()
            .exists(format!("{p}node:{}", self.node))
            .set_ex(format!("{p}node:{}", self.node), 1, NODE_TTL_SECS)
            .sadd(format!("{p}nodes"), &self.node)
            .query_async(&mut connection)
            .await;
        match result {
            Ok((known, (), ())) => Ok(known),
            Err(error) => {
                self.forget_connection().await;
                Err(unavailable(error))
            }
        }
    }

    /// Writes this node's whole view again: `local` as it is now, and offline for the users Redis
    /// still has from this node but the node no longer does. Returns the changes to publish.
    async fn reassert(
        &self,
        local: &[(UserId, PresenceStatus)],
    ) -> Result<Vec<(UserId, PresenceStatus)>, PresenceError> {
        let mut connection = self.connection().await?;
        let recorded: Vec<i64> = redis::cmd("SMEMBERS")
            .arg(format!("{}node-users:{}", self.prefix, self.node))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let node = self.node.clone();
        let gone = recorded
            .into_iter()
            .map(UserId)
            .filter(|user| !local.iter().any(|(u, _)| u == user))
            .map(|user| (user, PresenceStatus::Offline));
        let mut changed = Vec::new();
        for (user, status) in gone.chain(local.iter().copied()) {
            if let Some(now) = self.set_for(&node, user, status).await? {
                changed.push((user, now));
            }
        }
        Ok(changed)
    }

    /// Cleans up after nodes whose liveness key expired; returns the users whose status changed.
    async fn reap(&self) -> Result<Vec<(UserId, PresenceStatus)>, PresenceError> {
        let mut connection = self.connection().await?;
        let p = self.prefix.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{p}nodes"))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut changed = Vec::new();
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(format!("{p}node:{node}"))
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if alive {
                continue;
            }
            let locked: Option<String> = redis::cmd("SET")
                .arg(format!("{p}reap:{node}"))
                .arg(&self.node)
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if locked.is_none() {
                continue;
            }
            let users: Vec<i64> = redis::cmd("SMEMBERS")
                .arg(format!("{p}node-users:{node}"))
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            for user in users {
                if let Some(status) = self
                    .set_for(&node, UserId(user), PresenceStatus::Offline)
                    .await?
                {
                    changed.push((UserId(user), status));
                }
            }
            let _: Result<(), _> = redis::pipe()
                .del(format!("{p}node-users:{node}"))
                .srem(format!("{p}nodes"), &node)
                .query_async(&mut connection)
                .await;
            tracing::info!(%node, users = changed.len(), "cleaned up after a dead node");
        }
        Ok(changed)
    }
}

#[async_trait]
impl PresenceRegistry for RedisPresence {
    async fn set_local(
        &self,
        user_id: UserId,
        status: PresenceStatus,
    ) -> Result<Option<PresenceStatus>, PresenceError> {
        self.set_for(&self.node.clone(), user_id, status).await
    }

    async fn statuses(&self, users: &[UserId]) -> Result<Vec<PresenceStatus>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let mut invocation = self.statuses.prepare_invoke();
        for user in users {
            invocation.key(format!("{}published:{user}", self.prefix));
        }
        let statuses: Vec<String> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(statuses.iter().map(|s| parse(s)).collect())
    }
}

/// How often a node writes its whole view again even when nothing seemed lost (a write that
/// failed during a Redis blip is repaired by then).
const REASSERT_EVERY: u32 = 12;

/// Keeps this node alive in the registry, writes its view again when it was lost, and (on a
/// task of its own, so a long cleanup never starves the refresh) cleans up after dead nodes.
pub fn spawn_upkeep(app: App, presence: std::sync::Arc<RedisPresence>) {
    let (refresher, reaper) = (presence.clone(), presence);
    let reaper_app = app.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(NODE_REFRESH);
        let mut count: u32 = 0;
        loop {
            ticks.tick().await;
            count = count.wrapping_add(1);
            let known = match refresher.refresh_node().await {
                Ok(known) => known,
                Err(error) => {
                    tracing::warn!(%error, "cannot refresh this node's presence");
                    continue;
                }
            };
            if known && !count.is_multiple_of(REASSERT_EVERY) {
                continue;
            }
            match refresher.reassert(&app.presence.snapshot()).await {
                Ok(changed) => {
                    for (user_id, status) in changed {
                        natter_core::presence::publish_presence(&app, user_id, status).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot write this node's presence"),
            }
        }
    });
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(NODE_REFRESH);
        loop {
            ticks.tick().await;
            match reaper.reap().await {
                Ok(changed) => {
                    for (user_id, status) in changed {
                        natter_core::presence::publish_presence(&reaper_app, user_id, status).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot clean up after dead nodes"),
            }
        }
    });
}
