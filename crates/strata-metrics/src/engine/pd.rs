//! The prefill/decode families (docs/metrics.md, "P/D families"): KV
//! transfers between engines by direction, their failures by reason, the
//! prompt tokens those failures cost, and the leases a prefill engine holds
//! for pulls. Fed by the P/D part of the step's [`ConnectorStats`].
//!
//! As with offloading, the stats are deltas taken once by the scheduler,
//! so observing the same stats twice counts them twice; the one reading is
//! `kv_leases_held_tokens`, where `None` means "no new reading" and the
//! gauge keeps its last value.
//!
//! Transfer durations come from clocks on two machines' worth of code, so a
//! non-finite or negative one adds no seconds sample; its bytes still count
//! (they moved), so `kv_transfer_bytes_count` is the number of transfers.

use crate::names::{label, pd};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use strata_core::connector::ConnectorStats;
use strata_pd::{KvTransferDirection, KvTransferFailure, PdStats};

use super::offload::valid_seconds;
use super::{histograms, EngineMetrics, HistFamily, Labels};
use crate::buckets;

const DIRECTIONS: [KvTransferDirection; 2] = [KvTransferDirection::Send, KvTransferDirection::Recv];

#[derive(Debug)]
pub(super) struct PdFamilies {
    transfer_bytes: HistFamily,
    transfer_seconds: HistFamily,
    failures: Family<Labels, Counter>,
    failed_tokens: Family<Labels, Counter>,
    leases_held_tokens: Family<Labels, Gauge>,
    leases_expired: Family<Labels, Counter>,
    /// Set by [`EngineMetrics::enable_pd_series`].
    enabled: bool,
}

impl PdFamilies {
    pub(super) fn new() -> Self {
        Self {
            transfer_bytes: histograms(buckets::KV_TRANSFER_BYTES),
            transfer_seconds: histograms(buckets::KV_TRANSFER_SECONDS),
            failures: Family::default(),
            failed_tokens: Family::default(),
            leases_held_tokens: Family::default(),
            leases_expired: Family::default(),
            enabled: false,
        }
    }
}

impl EngineMetrics {
    /// Registers the P/D families without any series: an engine outside a
    /// P/D pair exports none of them (the encoder skips a family with no
    /// series), and a series appears on its first event (or in
    /// [`Self::enable_pd_series`]).
    pub(super) fn register_pd(&self, r: &mut Registry) {
        let p = &self.pd;
        r.register(
            pd::KV_TRANSFER_BYTES,
            "Bytes per KV transfer between engines, by direction",
            p.transfer_bytes.clone(),
        );
        r.register(
            pd::KV_TRANSFER_SECONDS,
            "Seconds per KV transfer between engines, by direction",
            p.transfer_seconds.clone(),
        );
        r.register(
            pd::KV_TRANSFER_FAILURES,
            "Failed KV transfers between engines, by reason",
            p.failures.clone(),
        );
        r.register(
            pd::KV_TRANSFER_FAILED_TOKENS,
            "Prompt tokens whose KV transfer failed",
            p.failed_tokens.clone(),
        );
        r.register(
            pd::KV_LEASES_HELD_TOKENS,
            "Tokens of KV held on this engine for peers to pull",
            p.leases_held_tokens.clone(),
        );
        r.register(
            pd::KV_LEASES_EXPIRED,
            "Leases that expired without a pull",
            p.leases_expired.clone(),
        );
    }

    /// Creates every P/D series at zero (both directions, every failure
    /// reason), so dashboards and `rate()` see them before the first
    /// transfer. Only for an engine in a P/D pair. Observing P/D stats
    /// works without this call (series then appear on their first event);
    /// calling it again, or after events, changes no value.
    pub fn enable_pd_series(&mut self) {
        self.pd.enabled = true;
        let p = &self.pd;
        for d in DIRECTIONS {
            let labels = self.labels(&[(label::DIRECTION, d.as_str())]);
            let _ = p.transfer_bytes.get_or_create(&labels);
            let _ = p.transfer_seconds.get_or_create(&labels);
        }
        for reason in KvTransferFailure::ALL {
            let _ = p.failures.get_or_create(&self.labels(&[(label::REASON, reason.as_str())]));
        }
        let _ = p.failed_tokens.get_or_create(&self.base);
        let _ = p.leases_held_tokens.get_or_create(&self.base);
        let _ = p.leases_expired.get_or_create(&self.base);
    }

    /// Whether [`Self::enable_pd_series`] was called (the driver then
    /// enables the log line's KV transfer part).
    pub fn pd_enabled(&self) -> bool {
        self.pd.enabled
    }

    /// Adds one step's P/D reports (deltas) and takes their lease reading.
    pub(super) fn observe_pd(&self, all: &ConnectorStats) {
        for stats in all.reports::<PdStats>() {
            self.observe_pd_report(stats);
        }
    }

    fn observe_pd_report(&self, stats: &PdStats) {
        let p = &self.pd;
        let inc = |f: &Family<Labels, Counter>, labels: &Labels, v: u64| {
            if v > 0 {
                f.get_or_create(labels).inc_by(v);
            }
        };
        for t in &stats.transfers {
            let labels = self.labels(&[(label::DIRECTION, t.direction.as_str())]);
            p.transfer_bytes.get_or_create(&labels).observe(t.bytes as f64);
            if let Some(seconds) = valid_seconds(t.seconds) {
                p.transfer_seconds.get_or_create(&labels).observe(seconds);
            }
        }
        for reason in &stats.failures {
            inc(&p.failures, &self.labels(&[(label::REASON, reason.as_str())]), 1);
        }
        inc(&p.failed_tokens, &self.base, stats.failed_tokens.into());
        inc(&p.leases_expired, &self.base, stats.leases_expired.into());
        if let Some(tokens) = stats.leases_held_tokens {
            let v = i64::try_from(tokens).unwrap_or(i64::MAX);
            p.leases_held_tokens.get_or_create(&self.base).set(v);
        }
    }
}
