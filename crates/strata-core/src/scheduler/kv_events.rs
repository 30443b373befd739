//! The scheduler's KV events: the device pool's and its connector's
//! (see `kv::events`).

use super::Scheduler;
use crate::kv::KvCacheEvent;

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
    pub fn take_kv_events(&mut self) -> Vec<KvCacheEvent> {
        let mut events = self.kv.take_events();
        if let Some(c) = &mut self.connector {
            events.extend(c.take_events());
        }
        events
    }
}
