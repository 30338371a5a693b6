//! The single-node broker: publishing is a direct call into this process's hub.
//!
//! It never drops or reorders by itself, but callers publish from many tasks after their commits
//! complete, so envelopes may still reach the hub out of sequence order; sessions reorder.

use crate::hub::Hub;
use crate::ports::broker::{Broker, BrokerError, Envelope};
use async_trait::async_trait;

pub struct InProcessBroker {
    hub: Hub,
}

impl InProcessBroker {
    pub fn new(hub: Hub) -> Self {
        InProcessBroker { hub }
    }
}

#[async_trait]
impl Broker for InProcessBroker {
    async fn publish(&self, envelope: Envelope) -> Result<(), BrokerError> {
        self.hub.deliver(envelope);
        Ok(())
    }

    async fn publish_to_other_nodes(&self, _envelope: Envelope) -> Result<(), BrokerError> {
        // A single node has no others.
        Ok(())
    }
}
