//! The broker: where publications go to reach every node's subscribers.
//!
//! A gateway publishes through its [`Broker`]; the broker gets the publication to every node
//! (just this one for [`MemoryBroker`]; a Redis backplane later) and each node's [`Hub`] fans it
//! out locally. The seam exists now so that multi-node brokers slot in without touching the
//! connection or API code.

use crate::hub::{Delivery, Hub};
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The broker could not take a publication.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backplane cannot be reached now; the publication was not accepted. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// What publishing returns to the caller.
pub type PublishReceipt = Delivery;

pub trait Broker: Send + Sync + 'static {
    /// Publish to every node; resolves once the publication is accepted (and, for the memory
    /// broker, queued to local subscribers).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>>;

    /// Whether publications can be accepted now (`/readyz` will report this).
    fn is_ready(&self) -> bool {
        true
    }

    /// A short name for logs and `--print-config`.
    fn name(&self) -> &'static str;
}

/// Single-node broker: publishing is local fan-out.
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.hub.publish(channel, data))))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
