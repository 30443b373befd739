//! The scheduler's KV events: the device pool's and its connector's
//! (see `kv::events`).

use super::Scheduler;
use crate::kv::KvEventBatch;

impl Scheduler {
    /// Records KV events from now on, in the device pool and the connector.
    pub fn enable_kv_events(&mut self) {
        self.kv.enable_events();
        if let Some(c) = &mut self.connector {
            c.enable_events();
        }
    }

    /// The events since the last call: the device pool's in the order they
    /// happened, then the connector's tiers'.
    pub fn take_kv_events(&mut self) -> KvEventBatch {
        let mut events = self.kv.take_events();
        if let Some(c) = &mut self.connector {
            let tiers = c.take_events();
            if !tiers.is_empty() {
                events.append(&tiers);
            }
        }
        events
    }

    /// Takes back a batch from [`Self::take_kv_events`] whose consumer is
    /// done with it, so the next steps record into its buffers.
    pub fn recycle_kv_events(&mut self, batch: KvEventBatch) {
        self.kv.recycle_events(batch);
    }
}
