//! Fan-out between nodes over Redis pub/sub. Only this module knows Redis.
//!
//! `RedisBroker` hands every envelope to this node's hub at once, then publishes it on the
//! cluster's channel, where every other node's subscriber hands it to theirs. Redis pub/sub is at
//! most once: a subscriber that lags or reconnects loses messages. That is within the `Broker`
//! contract: sessions fill any gap in a room's sequence from the store, and when the subscriber
//! reconnects the hub tells every session to catch up, so a trailing lost event (one with no
//! successor to reveal the gap) is delivered too.
//!
//! A publish that fails is not retried (the event is durable); instead the node announces a
//! resync once Redis takes its publishes again, and every node's sessions catch up from the store.
//! Each node also publishes a ping to itself every few seconds: a subscription that stops hearing
//! its own pings is dead even if its TCP connection looks open, and is replaced (then resynced).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often a node pings itself through Redis, and how long its subscription may go without
/// hearing one before it is replaced.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_LOST_AFTER: Duration = Duration::from_secs(15);
/// A subscription that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub struct RedisBroker {
    pub(crate) client: redis::Client,
    channel: String,
    pub(crate) node: String,
    hub: Hub,
    publisher: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// A publish failed: the other nodes may have missed envelopes.
    lost: AtomicBool,
    /// Milliseconds since `started` when this node last heard its own ping.
    last_ping: AtomicU64,
    started: Instant,
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
            lost: AtomicBool::new(false),
            last_ping: AtomicU64::new(0),
            started: Instant::now(),
        });
        tokio::spawn(subscribe(broker.clone()));
        tokio::spawn(ping(broker.clone()));
        Ok(broker)
    }

    /// A connection to publish on: the shared one, or a new one if it broke. The lock is held
    /// only to take a clone; the multiplexed connection pipelines concurrent publishes.
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, BrokerError> {
        if let Some(connection) = self.publisher.lock().await.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        *self.publisher.lock().await = Some(connection.clone());
        Ok(connection)
    }

    async fn send(&self, payload: String) -> Result<(), BrokerError> {
        let mut connection = self.connection().await?;
        let published: Result<(), redis::RedisError> =
            connection.publish(&self.channel, payload).await;
        if let Err(error) = published {
            *self.publisher.lock().await = None;
            return Err(BrokerError(error.to_string()));
        }
        Ok(())
    }

    async fn publish_remote(&self, payload: String) -> Result<(), BrokerError> {
        if self.lost.load(Ordering::SeqCst) && self.send(wire::resync(&self.node)).await.is_ok() {
            self.lost.store(false, Ordering::SeqCst);
        }
        let sent = self.send(payload).await;
        if sent.is_err() {
            self.lost.store(true, Ordering::SeqCst);
        }
        sent
    }
}

/// Pings this node through Redis; also announces a pending resync when Redis is quiet.
async fn ping(broker: Arc<RedisBroker>) {
    let mut ticks = tokio::time::interval(PING_EVERY);
    loop {
        ticks.tick().await;
        if broker.lost.load(Ordering::SeqCst)
            && broker.send(wire::resync(&broker.node)).await.is_ok()
        {
            broker.lost.store(false, Ordering::SeqCst);
        }
        let _ = broker.send(wire::ping(&broker.node)).await;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, envelope: Envelope) -> Result<(), BrokerError> {
        let payload = wire::encode(&self.node, &envelope);
        self.hub.deliver(envelope);
        self.publish_remote(payload).await
    }

    async fn publish_to_other_nodes(&self, envelope: Envelope) -> Result<(), BrokerError> {
        self.publish_remote(wire::encode(&self.node, &envelope))
            .await
    }
}

/// The node's one subscriber: reconnects with backoff, and after every (re)subscription asks all
/// local sessions to catch up from the store (what was published meanwhile is lost to pub/sub).
async fn subscribe(broker: Arc<RedisBroker>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let since = Instant::now();
        match broker.client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&broker.channel).await {
                Ok(()) => {
                    broker.hub.resync_all();
                    listen(&broker, pubsub).await;
                    tracing::warn!("Redis subscription lost; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "cannot subscribe"),
            },
            Err(error) => tracing::warn!(%error, "cannot reach Redis"),
        }
        if since.elapsed() > STABLE_AFTER {
            delay = Duration::from_millis(100);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Delivers what the subscription brings until it ends or stops hearing this node's pings.
async fn listen(broker: &RedisBroker, pubsub: redis::aio::PubSub) {
    let millis = |at: Instant| at.duration_since(broker.started).as_millis() as u64;
    broker
        .last_ping
        .store(millis(Instant::now()), Ordering::SeqCst);
    let mut messages = pubsub.into_on_message();
    let mut check = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                match wire::decode(&payload) {
                    Ok((node, wire::Decoded::Ping)) => {
                        if node == broker.node {
                            broker.last_ping.store(millis(Instant::now()), Ordering::SeqCst);
                        }
                    }
                    Ok((node, wire::Decoded::Resync)) => {
                        if node != broker.node {
                            broker.hub.resync_all();
                        }
                    }
                    Ok((node, wire::Decoded::Envelope(envelope))) => {
                        if node != broker.node {
                            broker.hub.deliver(envelope);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "ignoring a malformed envelope"),
                }
            }
            _ = check.tick() => {
                let silent = millis(Instant::now()).saturating_sub(broker.last_ping.load(Ordering::SeqCst));
                if silent > PING_LOST_AFTER.as_millis() as u64 {
                    tracing::warn!("no ping through Redis for {silent} ms: replacing the subscription");
                    return;
                }
            }
        }
    }
}
