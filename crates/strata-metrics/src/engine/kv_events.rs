//! The KV-event publisher's families (docs/metrics.md, "KV events"):
//! batches and events published and dropped, and batches queued for the
//! publisher thread. The publisher (strata-server) updates them through
//! [`KvEventCounters`], handles on the same atomics, so no lock is taken on
//! its path; an engine that publishes no events exports none of them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{EngineMetrics, Labels};
use crate::names::kv_events as names;

#[derive(Debug, Default)]
pub(super) struct KvEventFamilies {
    published_batches: Family<Labels, Counter>,
    published_events: Family<Labels, Counter>,
    dropped_batches: Family<Labels, Counter>,
    dropped_events: Family<Labels, Counter>,
    queued_batches: Family<Labels, Gauge>,
}

/// Handles on the publisher's series (cheap clones sharing the atomics).
#[derive(Clone, Debug, Default)]
pub struct KvEventCounters {
    /// Batches sent on the PUB socket, and the events in them.
    pub published_batches: Counter,
    pub published_events: Counter,
    /// Batches dropped because the publisher's queue was full, and their
    /// events.
    pub dropped_batches: Counter,
    pub dropped_events: Counter,
    /// Batches handed to the publisher and not yet published.
    pub queued_batches: Gauge,
}

impl EngineMetrics {
    pub(super) fn register_kv_events(&self, r: &mut Registry) {
        let f = &self.kv_events;
        r.register(
            names::PUBLISHED_BATCHES,
            "KV event batches published (one per engine step with events)",
            f.published_batches.clone(),
        );
        r.register(names::PUBLISHED, "KV events published", f.published_events.clone());
        r.register(
            names::DROPPED_BATCHES,
            "KV event batches dropped because the publisher's queue was full",
            f.dropped_batches.clone(),
        );
        r.register(names::DROPPED, "KV events in dropped batches", f.dropped_events.clone());
        r.register(
            names::QUEUED_BATCHES,
            "KV event batches waiting for the publisher thread",
            f.queued_batches.clone(),
        );
    }

    /// Creates the publisher's series (at zero) and returns handles on them.
    pub fn kv_event_counters(&self) -> KvEventCounters {
        let f = &self.kv_events;
        let l = &self.base;
        KvEventCounters {
            published_batches: f.published_batches.get_or_create(l).clone(),
            published_events: f.published_events.get_or_create(l).clone(),
            dropped_batches: f.dropped_batches.get_or_create(l).clone(),
            dropped_events: f.dropped_events.get_or_create(l).clone(),
            queued_batches: f.queued_batches.get_or_create(l).clone(),
        }
    }
}
