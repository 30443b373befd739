//! The KV offload tier families (docs/metrics.md, "Offload families"), fed by the
//! connector's per-step [`ConnectorStats`].
//!
//! The stats are deltas, taken once by the scheduler, so every event is
//! added exactly once and nothing here keeps cumulative state of its own:
//! observing the same stats twice counts them twice. `usage` is the one
//! exception, a reading: an empty list means "no new reading" and the
//! gauges keep their last value.
//!
//! Connector numbers come from clocks and file systems rather than from
//! the scheduler's integer bookkeeping, so they are screened before they
//! reach a family: a non-finite or negative duration adds no time and no
//! throughput sample (its bytes still count, they moved), and a usage
//! fraction outside 0-1 is clamped, a non-finite one ignored.
//!
//! Each transfer direction is its own `transfer_type` series, so a
//! dashboard that adds `host_to_device` and `device_to_host` adds two
//! disjoint sets of transfers (A15).

use crate::names::{label, offload};
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use strata_core::connector::ConnectorStats;
use strata_offload::{OffloadFailure, OffloadOp, OffloadStats, OffloadTier, TransferType};

use super::{histograms, EngineMetrics, F64Gauge, HistFamily, Labels};
use crate::buckets;

/// Every [`OffloadFailure`], for series created before the first failure
/// (strata-core has no `ALL` for it).
const FAILURES: [OffloadFailure; 5] = [
    OffloadFailure::Corrupt,
    OffloadFailure::Truncated,
    OffloadFailure::Foreign,
    OffloadFailure::Io,
    OffloadFailure::NoSpace,
];

// A new failure variant must be added to `FAILURES`: this match stops
// compiling until someone looks.
const _: () = match OffloadFailure::Io {
    OffloadFailure::Corrupt
    | OffloadFailure::Truncated
    | OffloadFailure::Foreign
    | OffloadFailure::Io
    | OffloadFailure::NoSpace => {}
};

const OPS: [OffloadOp; 2] = [OffloadOp::Load, OffloadOp::Store];

/// The tier a transfer needs configured: the disk tier's transfers all
/// go through host memory, but they exist only when there is a disk tier.
fn tier_of(t: TransferType) -> OffloadTier {
    match t {
        TransferType::HostToDevice | TransferType::DeviceToHost => OffloadTier::Host,
        TransferType::DiskToHost | TransferType::HostToDisk => OffloadTier::Disk,
    }
}

/// A usage reading as a gauge value, or `None` to keep the last one.
/// Adding 0.0 turns -0.0 (which `clamp` keeps) into 0.0, so the text
/// never shows a minus sign.
fn fraction(v: f64) -> Option<f64> {
    v.is_finite().then(|| v.clamp(0.0, 1.0) + 0.0)
}

/// A measured duration usable as time, or `None` (NaN, infinite,
/// negative: a clock bug, which must not move a counter).
pub(super) fn valid_seconds(s: f64) -> Option<f64> {
    (s.is_finite() && s >= 0.0).then_some(s)
}

#[derive(Debug)]
pub(super) struct OffloadFamilies {
    total_bytes: Family<Labels, Counter>,
    total_time: Family<Labels, Counter<f64, AtomicU64>>,
    size: HistFamily,
    throughput: HistFamily,
    queries: Family<Labels, Counter>,
    hits: Family<Labels, Counter>,
    residency: Family<Labels, F64Gauge>,
    inflight: Family<Labels, F64Gauge>,
    allocation_failure: Family<Labels, Counter>,
    evictions: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
}

impl OffloadFamilies {
    pub(super) fn new() -> Self {
        Self {
            total_bytes: Family::default(),
            total_time: Family::default(),
            size: histograms(buckets::OFFLOAD_SIZE),
            throughput: histograms(buckets::OFFLOAD_THROUGHPUT),
            queries: Family::default(),
            hits: Family::default(),
            residency: Family::default(),
            inflight: Family::default(),
            allocation_failure: Family::default(),
            evictions: Family::default(),
            failures: Family::default(),
        }
    }
}

impl EngineMetrics {
    /// Registers the offload families without any series: an engine
    /// without offloading exports none of them (the encoder skips a family
    /// with no series), and a series appears on its first event (or in
    /// [`Self::enable_offload_series`]).
    pub(super) fn register_offload(&self, r: &mut Registry) {
        let o = &self.offload;
        r.register(
            offload::KV_OFFLOAD_TOTAL_BYTES,
            "Bytes moved by offload transfers, by direction",
            o.total_bytes.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_TOTAL_TIME,
            "Seconds spent in offload transfers, by direction",
            o.total_time.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_SIZE,
            "Bytes per offload transfer, by direction",
            o.size.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_THROUGHPUT_BYTES_PER_SECOND,
            "Bytes per second of each offload transfer, by direction",
            o.throughput.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_QUERIES,
            "Tokens looked up in an offload tier at admission",
            o.queries.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_HITS,
            "Tokens found in an offload tier at admission",
            o.hits.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_RESIDENCY_PERC,
            "Fraction of an offload tier holding data (0-1)",
            o.residency.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_INFLIGHT_PERC,
            "Fraction of an offload tier pinned by transfers in flight (0-1)",
            o.inflight.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_ALLOCATION_FAILURE,
            "Stores skipped because no offload slot could be freed",
            o.allocation_failure.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_EVICTIONS,
            "Evictions from an offload tier",
            o.evictions.clone(),
        );
        r.register(
            offload::KV_OFFLOAD_FAILURES,
            "Failed offload loads and stores, by tier, operation and reason",
            o.failures.clone(),
        );
    }

    /// Creates every offload series of `tiers` at zero, so dashboards and
    /// `rate()` see them before the first transfer. Only for an engine that
    /// offloads: one that does not would otherwise export a page of zeros
    /// for tiers it does not have. Observing offload stats works without
    /// this call (series are then created on their first event).
    /// Calling it again, or after events, changes no value.
    pub fn enable_offload_series(&mut self, tiers: &[OffloadTier]) {
        for t in tiers {
            if !self.offload_tiers.contains(t) {
                self.offload_tiers.push(*t);
            }
        }
        let o = &self.offload;
        let base = self.base.clone();
        if !tiers.is_empty() {
            let _ = o.allocation_failure.get_or_create(&base);
        }
        for t in TransferType::ALL.into_iter().filter(|t| tiers.contains(&tier_of(*t))) {
            let labels = self.labels(&[(label::TRANSFER_TYPE, t.as_str())]);
            let _ = o.total_bytes.get_or_create(&labels);
            let _ = o.total_time.get_or_create(&labels);
            let _ = o.size.get_or_create(&labels);
            let _ = o.throughput.get_or_create(&labels);
        }
        for tier in OffloadTier::ALL.into_iter().filter(|t| tiers.contains(t)) {
            let labels = self.labels(&[(label::TIER, tier.as_str())]);
            let _ = o.queries.get_or_create(&labels);
            let _ = o.hits.get_or_create(&labels);
            let _ = o.residency.get_or_create(&labels);
            let _ = o.inflight.get_or_create(&labels);
            let _ = o.evictions.get_or_create(&labels);
            for op in OPS {
                for reason in FAILURES {
                    let _ = o.failures.get_or_create(&self.labels(&[
                        (label::TIER, tier.as_str()),
                        (label::OP, op.as_str()),
                        (label::REASON, reason.as_str()),
                    ]));
                }
            }
        }
    }

    /// The tiers enabled with [`Self::enable_offload_series`].
    pub fn offload_tiers(&self) -> &[OffloadTier] {
        &self.offload_tiers
    }

    /// Adds one step's offload reports (deltas) and takes their latest
    /// usage reading.
    pub(super) fn observe_offload(&self, all: &ConnectorStats) {
        for stats in all.reports::<OffloadStats>() {
            self.observe_offload_report(stats);
        }
    }

    fn observe_offload_report(&self, stats: &OffloadStats) {
        let o = &self.offload;
        let inc = |f: &Family<Labels, Counter>, labels: &Labels, v: u64| {
            if v > 0 {
                f.get_or_create(labels).inc_by(v);
            }
        };
        for t in &stats.transfers {
            let labels = self.labels(&[(label::TRANSFER_TYPE, t.transfer_type.as_str())]);
            // A zero-byte transfer is still a transfer: the size histogram
            // counts it, so its `_count` is the number of transfers.
            o.total_bytes.get_or_create(&labels).inc_by(t.bytes);
            o.size.get_or_create(&labels).observe(t.bytes as f64);
            let Some(seconds) = valid_seconds(t.seconds) else { continue };
            o.total_time.get_or_create(&labels).inc_by(seconds);
            // A zero duration has no rate; a tiny one may overflow to inf.
            let rate = t.bytes as f64 / seconds;
            if seconds > 0.0 && rate.is_finite() {
                o.throughput.get_or_create(&labels).observe(rate);
            }
        }
        for (tier, tokens) in &stats.tier_queries {
            inc(&o.queries, &self.labels(&[(label::TIER, tier.as_str())]), (*tokens).into());
        }
        for (tier, tokens) in &stats.tier_hits {
            inc(&o.hits, &self.labels(&[(label::TIER, tier.as_str())]), (*tokens).into());
        }
        for (tier, blocks) in &stats.evictions {
            inc(&o.evictions, &self.labels(&[(label::TIER, tier.as_str())]), (*blocks).into());
        }
        inc(&o.allocation_failure, &self.base, stats.allocation_failures.into());
        for (tier, op, reason) in &stats.failures {
            let labels = self.labels(&[
                (label::TIER, tier.as_str()),
                (label::OP, op.as_str()),
                (label::REASON, reason.as_str()),
            ]);
            inc(&o.failures, &labels, 1);
        }
        // In order, so a later reading of the same tier wins.
        for u in &stats.usage {
            let labels = self.labels(&[(label::TIER, u.tier.as_str())]);
            if let Some(v) = fraction(u.residency) {
                o.residency.get_or_create(&labels).set(v);
            }
            if let Some(v) = fraction(u.inflight) {
                o.inflight.get_or_create(&labels).set(v);
            }
        }
    }
}
