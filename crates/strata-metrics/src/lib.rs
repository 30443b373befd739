//! strata-metrics: every metric name, label value and bucket, and the
//! periodic log line (docs/metrics.md), fed only by strata-core's records.
//!
//! [`EngineMetrics::observe`] takes a step's [`StepResult`] and updates the
//! Prometheus families; it cannot fail, and it never decreases a counter or
//! sets a negative value: counters only take unsigned increments from
//! records, gauges are set from unsigned counts, and durations are clamped
//! at zero. The connector's float readings (offload transfer seconds, tier
//! usage fractions) are screened first: a non-finite or negative duration
//! adds no time, and a fraction is clamped to 0-1 or, if not finite,
//! ignored. [`LogReporter`] turns the same records into vLLM's log line.

pub mod buckets;
mod engine;
mod exposition;
mod log_line;
pub mod names;

pub use engine::{
    CacheConfigInfo, EngineMetrics, KvEventCounters, StructuredOutputMetrics, STRUCTURED_KINDS,
};
pub use exposition::{to_prometheus_text, MetricsExporter};
pub use log_line::LogReporter;
