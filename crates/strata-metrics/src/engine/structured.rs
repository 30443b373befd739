//! Structured outputs' families (docs/metrics.md): constrained requests by
//! kind, and the seconds each token mask took. The server counts requests
//! when it submits them and the grammar engine observes each mask
//! through [`StructuredOutputMetrics`], handles on the same atomics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{histograms, EngineMetrics, HistFamily, Labels};
use crate::buckets;
use crate::names::{label, structured as names};

/// Constraint kinds, the `kind` label's values.
pub const KINDS: [&str; 4] = ["json", "regex", "choice", "grammar"];

#[derive(Debug)]
pub(super) struct StructuredFamilies {
    requests: Family<Labels, Counter>,
    mask_seconds: HistFamily,
}

impl StructuredFamilies {
    pub(super) fn new() -> Self {
        Self { requests: Family::default(), mask_seconds: histograms(buckets::MASK_SECONDS) }
    }
}

/// Handles on the structured-output series (cheap clones).
#[derive(Clone, Debug)]
pub struct StructuredOutputMetrics {
    requests: Vec<(&'static str, Counter)>,
    mask_seconds: Histogram,
}

impl StructuredOutputMetrics {
    /// One constrained request of `kind` (one of [`KINDS`]; others are
    /// not counted).
    pub fn count_request(&self, kind: &str) {
        if let Some((_, c)) = self.requests.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }

    /// One mask's computation time (a non-finite or negative reading is
    /// dropped).
    pub fn observe_mask_seconds(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.mask_seconds.observe(seconds);
        }
    }
}

impl EngineMetrics {
    pub(super) fn register_structured(&self, r: &mut Registry) {
        let f = &self.structured;
        r.register(
            names::REQUESTS,
            "Requests whose output follows a grammar, by kind (json, regex, choice, grammar)",
            f.requests.clone(),
        );
        r.register(
            names::MASK_SECONDS,
            "Seconds to compute one token mask of a constrained request",
            f.mask_seconds.clone(),
        );
    }

    /// Creates the structured-output series (at zero) and returns handles.
    pub fn structured_output_metrics(&self) -> StructuredOutputMetrics {
        let f = &self.structured;
        StructuredOutputMetrics {
            requests: KINDS
                .iter()
                .map(|&k| (k, f.requests.get_or_create(&self.labels(&[(label::KIND, k)])).clone()))
                .collect(),
            mask_seconds: f.mask_seconds.get_or_create(&self.base).clone(),
        }
    }
}
