//! Fan-out between nodes over Redis pub/sub. Only this module knows Redis.
//!
//! `RedisBroker` hands every envelope to this node's hub at once, then publishes it on the
//! cluster's channel, where every other node's subscriber hands it to theirs. Redis pub/sub is at
//! most once: a subscriber that lags or reconnects loses messages. That is within the `Broker`
//! contract: sessions fill any gap in a room's sequence from the store, and when the subscriber
//! reconnects the hub tells every session to catch up, so a trailing lost event (one with no
//! successor to reveal the gap) is delivered too.
//!
//! One channel per cluster (`natter:{cluster}:events`, the cluster id stored in the shared
//! database), one subscriber connection per node. Every node sees every envelope and drops those
//! for rooms it has no session in: simple and cheap at team scale; per-room channels are the
//! next step when one Redis channel becomes the limit.

pub mod presence;
mod wire;

use async_trait::async_trait;
use futures_util::StreamExt;
use natter_core::hub::Hub;
use natter_core::ports::broker::{Broker, BrokerError, Envelope};
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

pub struct RedisBroker {
    pub(crate) client: redis::Client,
    channel: String,
    pub(crate) node: String,
    hub: Hub,
    publisher: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisBroker {
    /// Connects (failing fast if Redis cannot be reached at start) and starts the subscriber.
    pub async fn start(
        url: &str,
        cluster: &str,
        hub: Hub,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| BrokerError(e.to_string()))?;
        let publisher = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| BrokerError(format!("cannot reach Redis: {e}")))?;
        let mut node = [0u8; 8];
        getrandom::fill(&mut node).map_err(|e| BrokerError(e.to_string()))?;
        let broker = Arc::new(RedisBroker {
            client,
            channel: format!("natter:{cluster}:events"),
            node: node.iter().map(|b| format!("{b:02x}")).collect(),
            hub,
            publisher: Mutex::new(Some(publisher)),
        });
        tokio::spawn(subscribe(broker.clone()));
        Ok(broker)
    }

    async fn publish_remote(&self, payload: String) -> Result<(), BrokerError> {
        let mut slot = self.publisher.lock().await;
        if slot.is_none() {
            *slot = Some(
                self.client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| BrokerError(e.to_string()))?,
            );
        }
        let Some(connection) = slot.as_mut() else {
            return Err(BrokerError("no connection".into()));
        };
        let published: Result<(), redis::RedisError> =
            connection.publish(&self.channel, payload).await;
        if let Err(error) = published {
            // Reconnect at the next publish.
            *slot = None;
            return Err(BrokerError(error.to_string()));
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, envelope: Envelope) -> Result<(), BrokerError> {
        let payload = wire::encode(&self.node, &envelope);
        self.hub.deliver(envelope);
        self.publish_remote(payload).await
    }
}

/// The node's one subscriber: reconnects with backoff, and after every reconnect asks all local
/// sessions to catch up from the store (what was published meanwhile is lost to pub/sub).
async fn subscribe(broker: Arc<RedisBroker>) {
    let mut delay = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        match broker.client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&broker.channel).await {
                Ok(()) => {
                    if connected_before {
                        tracing::info!(
                            "Redis subscription restored; sessions catch up from the store"
                        );
                        broker.hub.resync_all();
                    }
                    connected_before = true;
                    delay = Duration::from_millis(100);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        match wire::decode(&payload) {
                            Ok((node, _)) if node == broker.node => {}
                            Ok((_, envelope)) => broker.hub.deliver(envelope),
                            Err(error) => tracing::warn!(%error, "ignoring a malformed envelope"),
                        }
                    }
                    tracing::warn!("Redis subscription lost; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "cannot subscribe"),
            },
            Err(error) => tracing::warn!(%error, "cannot reach Redis"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
