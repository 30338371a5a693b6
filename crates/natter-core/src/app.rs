//! `App`: the cheap-to-clone handle every session and service works through.

use crate::hub::Hub;
use crate::in_process::InProcessBroker;
use crate::ports::broker::BrokerError;
use crate::ports::store::Appended;
use crate::ports::{Broker, Envelope, EventRecord, InProcessPresence, PresenceRegistry, Store};
use crate::presence::PresenceTracker;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The limits the server enforces. Every one is configurable (the `[limits]` table of the config
/// file, same names); the defaults suit a team server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket frame accepted; a larger one closes the connection (1009).
    pub max_frame_bytes: usize,
    /// Largest message body, in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Longest channel name, in characters.
    pub max_room_name_chars: usize,
    /// Longest channel topic, in characters.
    pub max_topic_chars: usize,
    /// Most members of a group direct message.
    pub max_group_members: usize,
    /// Most messages in one `history` page.
    pub max_history_page: u32,
    /// On resume, a room more than this many events behind gets a `gap` frame and only the newest
    /// this many events.
    pub resume_gap_limit: u32,
    /// Frames queued for one connection before it is closed as a slow consumer.
    pub outbox_capacity: usize,
    /// Sustained requests per second per connection.
    pub rate_per_sec: f64,
    /// Requests a connection may send in a burst above the sustained rate.
    pub rate_burst: f64,
    /// How often the server sends a `heartbeat` frame.
    pub heartbeat_interval_ms: u64,
    /// A connection from which nothing arrives for this long is closed.
    pub heartbeat_timeout_ms: u64,
    /// How long a new connection may take to send `hello`.
    pub auth_timeout_ms: u64,
    /// How long a session holds an out-of-order event, waiting for the missing ones from the
    /// broker, before it reads them from the store.
    pub reorder_wait_ms: u64,
    /// How long a `typing` indication lasts without a refresh (clients expire it).
    pub typing_timeout_ms: u64,
    /// Presence changes of one user within this window are coalesced into one: a connection
    /// that drops and comes back inside it changes nothing for anyone.
    pub presence_coalesce_ms: u64,
    /// Presence is shared through direct and group messages, and through channels of at most
    /// this many members: a welcome in a 1,500-member channel would list 1,499 people (92 KB)
    /// and cost the reconnect three times as much (docs/benchmarks.md).
    pub presence_room_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 16 * 1024,
            max_room_name_chars: 80,
            max_topic_chars: 250,
            max_group_members: 16,
            max_history_page: 200,
            resume_gap_limit: 1000,
            outbox_capacity: 1024,
            rate_per_sec: 20.0,
            rate_burst: 100.0,
            heartbeat_interval_ms: 25_000,
            heartbeat_timeout_ms: 60_000,
            auth_timeout_ms: 10_000,
            reorder_wait_ms: 100,
            typing_timeout_ms: 6_000,
            presence_coalesce_ms: 1_000,
            presence_room_limit: 200,
        }
    }
}

impl Limits {
    /// Checks the values against each other; the error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let rules: [(bool, &str); 10] = [
            (
                self.max_frame_bytes >= 1024,
                "max_frame_bytes must be at least 1024",
            ),
            (
                self.max_message_bytes >= 1 && self.max_message_bytes < self.max_frame_bytes,
                "max_message_bytes must be at least 1 and below max_frame_bytes",
            ),
            (
                self.max_group_members >= 3,
                "max_group_members must be at least 3",
            ),
            (
                self.max_history_page >= 1,
                "max_history_page must be at least 1",
            ),
            (
                self.resume_gap_limit >= 1,
                "resume_gap_limit must be at least 1",
            ),
            (
                self.outbox_capacity >= 16,
                "outbox_capacity must be at least 16",
            ),
            (
                self.rate_per_sec > 0.0 && self.rate_burst >= 1.0,
                "rate_per_sec must be above 0 and rate_burst at least 1",
            ),
            (
                self.heartbeat_interval_ms >= 100
                    && self.heartbeat_timeout_ms > self.heartbeat_interval_ms,
                "heartbeat_interval_ms must be at least 100 and below heartbeat_timeout_ms",
            ),
            (
                self.auth_timeout_ms >= 100,
                "auth_timeout_ms must be at least 100",
            ),
            (
                self.typing_timeout_ms >= 1_000,
                "typing_timeout_ms must be at least 1000",
            ),
        ];
        match rules.iter().find(|(ok, _)| !ok) {
            Some((_, rule)) => Err(format!("limits.{rule}")),
            None => Ok(()),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub fn wire(&self) -> natter_protocol::frame::Limits {
        natter_protocol::frame::Limits {
            max_frame_bytes: self.max_frame_bytes as u32,
            max_message_bytes: self.max_message_bytes as u32,
            max_history_page: self.max_history_page,
            resume_gap_limit: self.resume_gap_limit,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
            typing_timeout_ms: self.typing_timeout_ms,
        }
    }
}

/// Ties the ports, the hub and the limits together. Cloning is one reference count: every
/// session holds an `App`, and thousands of idle sessions should not each hold a copy of it.
#[derive(Clone)]
pub struct App(Arc<AppParts>);

/// What an [`App`] holds; its fields are reached through the `App` itself.
pub struct AppParts {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Hub,
    pub presence: PresenceTracker,
    pub presence_registry: Arc<dyn PresenceRegistry>,
    pub limits: Arc<Limits>,
}

impl std::ops::Deref for App {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl App {
    /// One node on its own: events go straight from the publisher to this process's hub.
    pub fn single_node(store: Arc<dyn Store>, limits: Limits) -> App {
        let hub = Hub::new();
        let broker = Arc::new(InProcessBroker::new(hub.clone()));
        let registry = Arc::new(InProcessPresence::default());
        App::new(store, broker, registry, hub, limits)
    }

    /// A node of a cluster: its broker (built around `hub`, which it delivers to) and the shared
    /// presence registry.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        presence_registry: Arc<dyn PresenceRegistry>,
        hub: Hub,
        limits: Limits,
    ) -> App {
        // Committed events reach this node's sessions from the commit path itself, in commit
        // order; `publish_appended` then tells only the other nodes. A panic here would take the
        // store's writer with it: it is caught, and the sessions read the event from the store
        // at their next gap.
        let listener = hub.clone();
        store.listen(Arc::new(move |record: &EventRecord| {
            let deliver = || listener.deliver_event(record);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver)).is_err() {
                tracing::error!(room_id = %record.room_id, seq = %record.seq, "local delivery panicked");
            }
        }));
        App(Arc::new(AppParts {
            store,
            broker,
            presence_registry,
            hub,
            presence: PresenceTracker::new(std::time::Duration::from_millis(
                limits.presence_coalesce_ms,
            )),
            limits: Arc::new(limits),
        }))
    }

    /// Publishes after a commit. A broker failure is logged, not returned: the event is durable,
    /// and sessions that missed it read it from the store at their next gap or resume.
    pub async fn publish(&self, envelope: Envelope) {
        report_publish(self.broker.publish(envelope).await);
    }

    /// Publishes what `Store::append` returned. This node's hub heard a new event from the
    /// commit listener already, so only the other nodes are told. A retried send is published
    /// everywhere again: the first attempt's caller may have lost its reply before the other
    /// nodes heard of it; sessions drop what they have.
    pub async fn publish_appended(&self, appended: Appended) -> EventRecord {
        let record = Arc::new(appended.record);
        let envelope = Envelope::Room(record.clone());
        report_publish(if appended.duplicate {
            self.broker.publish(envelope).await
        } else {
            self.broker.publish_to_other_nodes(envelope).await
        });
        // The brokers keep no envelope once published: this takes the record back uncopied.
        Arc::unwrap_or_clone(record)
    }
}

/// Logs a failed publish; the caller goes on (see `publish`).
fn report_publish(published: Result<(), BrokerError>) {
    if let Err(error) = published {
        tracing::warn!(%error, "publish failed; subscribers will read the event from the store");
    }
}
