//! `/metrics` text from the engine's families, without the engine's lock.
//!
//! The families are prometheus-client metrics: atomics (counters, gauges)
//! and per-histogram mutexes behind `Arc`s, shared by [`crate::EngineMetrics`]
//! (which updates them on the engine thread) and the frozen registry held
//! here. Encoding therefore reads current values while a step is being
//! observed, and never waits for or blocks the engine thread on a lock of
//! its own. What a scrape sees:
//!
//! - each value as of the moment it is read: fresh, never older than the
//!   last observed step;
//! - a counter or a histogram's buckets, `_sum` and `_count` never lower
//!   than in an earlier scrape (they only grow, and each histogram is read
//!   under its own lock, so its buckets and count agree);
//! - families from possibly different steps (one step's update can land
//!   between two families), as with any Prometheus client.

use std::collections::HashSet;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// A cheap, cloneable encoder of the engine's registry.
#[derive(Clone, Debug)]
pub struct MetricsExporter {
    registry: Arc<Registry>,
}

impl MetricsExporter {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4 exposition, as vLLM (Python's
    /// prometheus_client) serves it on `/metrics`: counter families are
    /// named with their `_total` suffix and there is no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// OpenMetrics text to Prometheus text 0.0.4 (see `encode_prometheus`).
/// Series of a counter or gauge family are sorted, so the text is the same
/// for the same values (the registry keeps label sets in hash order);
/// histogram lines keep their bucket order.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    let mut samples: Vec<&str> = Vec::new();
    let mut histogram = false;
    let flush = |samples: &mut Vec<&str>, histogram: bool, out: &mut String| {
        if !histogram {
            samples.sort_unstable();
        }
        for s in samples.drain(..) {
            out.push_str(s);
            out.push('\n');
        }
    };
    for line in open_metrics.lines() {
        if !line.starts_with('#') {
            samples.push(line);
            continue;
        }
        flush(&mut samples, histogram, &mut out);
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            histogram = rest.ends_with(" histogram");
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    flush(&mut samples, histogram, &mut out);
    out
}
