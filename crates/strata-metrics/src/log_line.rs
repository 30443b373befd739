//! vLLM's periodic stats line, from the same records as the metrics.
//!
//! Throughputs are interval totals over interval time; the prompt
//! throughput counts `local_compute` tokens only (a decode engine in a P/D
//! pair shows about 0 for transferred prompts). Rates are interval hits
//! over interval queries. Nothing is printed for an idle interval.
//!
//! With offloading, a second line follows (see [`LogReporter::maybe_log`]).
//! Its averages are interval totals over interval totals: milliseconds per
//! block is total transfer time over total blocks and throughput is total
//! bytes over total time, never a mean of per-transfer rates (which would
//! weigh a tiny fast transfer as much as a large slow one).
//!
//! In a prefill/decode pair, a `KV Transfer metrics:` line follows (see
//! [`LogReporter::maybe_log`]), with the same rule: the average time is
//! total seconds over transfers and the throughput total bytes over total
//! seconds. Its p90 is over the interval's transfer times (the latest
//! `MAX_TIME_SAMPLES` of each direction, so a busy interval cannot grow
//! the reporter without bound).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use strata_core::connector::ConnectorStats;
use strata_core::{StepResult, TokenSource};
use strata_offload::{OffloadFailure, OffloadOp, OffloadStats, OffloadTier, TransferType};
use strata_pd::{KvTransferDirection, KvTransferFailure, PdStats};

#[derive(Clone, Debug, Default)]
struct Interval {
    prompt_compute: u64,
    generation: u64,
    preemptions: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    external_queries: u64,
    external_hits: u64,
    sources: [u64; 5],
    recomputed: u64,
    offload: OffloadInterval,
    kv_transfer: KvTransferInterval,
}

/// One transfer direction's totals in an interval.
#[derive(Clone, Copy, Debug, Default)]
struct TransferTotals {
    count: u64,
    bytes: u64,
    /// Only transfers with a usable duration enter the averages, so a
    /// clock glitch neither adds time nor inflates bytes per second.
    timed_seconds: f64,
    timed_bytes: u64,
    timed_blocks: u64,
}

/// Offload connector activity in an interval (deltas summed).
#[derive(Clone, Debug, Default)]
struct OffloadInterval {
    /// Indexed as `TransferType::ALL`.
    transfers: [TransferTotals; 4],
    /// Tokens, indexed as `OffloadTier::ALL`.
    queries: [u64; 2],
    hits: [u64; 2],
    evictions: [u64; 2],
    allocation_failures: u64,
    failures: BTreeMap<(OffloadTier, OffloadOp, OffloadFailure), u64>,
}

impl OffloadInterval {
    /// Anything happened (a usage reading alone is not activity).
    fn is_active(&self) -> bool {
        self.transfers.iter().any(|t| t.count > 0)
            || self.queries.iter().chain(&self.hits).chain(&self.evictions).any(|&n| n > 0)
            || self.allocation_failures > 0
            || !self.failures.is_empty()
    }
}

/// Transfer times kept per direction and interval for the p90.
const MAX_TIME_SAMPLES: usize = 10_000;

/// The directions in the order of the KV transfer line.
const KV_DIRECTIONS: [KvTransferDirection; 2] =
    [KvTransferDirection::Recv, KvTransferDirection::Send];

fn kv_direction_index(d: KvTransferDirection) -> usize {
    match d {
        KvTransferDirection::Recv => 0,
        KvTransferDirection::Send => 1,
    }
}

/// One direction's KV transfers between engines in an interval.
#[derive(Clone, Debug, Default)]
struct KvTransferTotals {
    count: u64,
    bytes: u64,
    /// As for offload transfers, only those with a usable duration enter
    /// the time and throughput figures.
    timed_count: u64,
    timed_seconds: f64,
    timed_bytes: u64,
    /// The latest usable durations (at most `MAX_TIME_SAMPLES`).
    seconds: VecDeque<f64>,
}

/// P/D connector activity in an interval (deltas summed).
#[derive(Clone, Debug, Default)]
struct KvTransferInterval {
    /// Indexed as `KV_DIRECTIONS`.
    directions: [KvTransferTotals; 2],
    failures: BTreeMap<KvTransferFailure, u64>,
    failed_tokens: u64,
    leases_expired: u64,
}

impl KvTransferInterval {
    /// Anything happened (a lease reading alone is not activity).
    fn is_active(&self) -> bool {
        self.directions.iter().any(|d| d.count > 0)
            || !self.failures.is_empty()
            || self.failed_tokens > 0
            || self.leases_expired > 0
    }
}

/// The `q` quantile (0-1) of `samples`, interpolating linearly between
/// the two nearest ranks (numpy's default, which vLLM's line uses).
fn quantile(samples: &VecDeque<f64>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// A number for the KV transfer line, in its fixed unit: one decimal,
/// three below 1 (so sub-millisecond transfers and sub-MB sizes do not all
/// read 0.0); "n/a" for what cannot be computed.
fn fmt_fixed(v: Option<f64>) -> String {
    match v {
        Some(v) if !v.is_finite() => "n/a".to_string(),
        Some(v) if v == 0.0 || v >= 1.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "n/a".to_string(),
    }
}

/// A tier's latest usage reading (kept across intervals, as `kv_usage`).
#[derive(Clone, Copy, Debug, Default)]
struct TierReading {
    residency: Option<f64>,
    inflight: Option<f64>,
}

fn transfer_index(t: TransferType) -> usize {
    match t {
        TransferType::HostToDevice => 0,
        TransferType::DeviceToHost => 1,
        TransferType::DiskToHost => 2,
        TransferType::HostToDisk => 3,
    }
}

fn tier_index(t: OffloadTier) -> usize {
    match t {
        OffloadTier::Host => 0,
        OffloadTier::Disk => 1,
    }
}

/// The tier a transfer touches beyond the device and host memory.
fn tier_of(t: TransferType) -> OffloadTier {
    match t {
        TransferType::HostToDevice | TransferType::DeviceToHost => OffloadTier::Host,
        TransferType::DiskToHost | TransferType::HostToDisk => OffloadTier::Disk,
    }
}

/// A measured duration usable as time (not NaN, infinite or negative).
fn valid_seconds(s: f64) -> Option<f64> {
    (s.is_finite() && s >= 0.0).then_some(s)
}

/// Decimal units, as the size buckets (1 MB = 1e6 bytes).
fn fmt_bytes(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

fn fmt_rate(bytes_per_second: f64) -> String {
    match bytes_per_second {
        r if r >= 1e9 => format!("{:.2} GB/s", r / 1e9),
        r if r >= 1e6 => format!("{:.2} MB/s", r / 1e6),
        r if r >= 1e3 => format!("{:.2} kB/s", r / 1e3),
        r => format!("{r:.0} B/s"),
    }
}

fn fmt_fraction(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

#[derive(Debug)]
pub struct LogReporter {
    engine_index: u32,
    interval_secs: f64,
    last_log: Option<f64>,
    acc: Interval,
    running: u32,
    waiting: u32,
    loading: u32,
    kv_usage: f64,
    /// Print the offload line for every logged interval, not only for
    /// those with offload activity.
    offload_enabled: bool,
    /// Tiers enabled or seen so far; each gets its part of the line.
    offload_tiers: BTreeSet<OffloadTier>,
    tier_readings: [TierReading; 2],
    /// Requests waiting for a remote prefill that has not started.
    kv_fetch_waiting: u32,
    /// Print the KV transfer line for every logged interval, not only for
    /// those with P/D activity.
    kv_transfer_enabled: bool,
    /// The latest lease reading (kept across intervals).
    kv_leases_held_tokens: Option<u64>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl LogReporter {
    pub fn new(engine_index: u32, interval_secs: f64) -> Self {
        Self {
            engine_index,
            interval_secs,
            last_log: None,
            acc: Interval::default(),
            running: 0,
            waiting: 0,
            loading: 0,
            kv_usage: 0.0,
            offload_enabled: false,
            offload_tiers: BTreeSet::new(),
            tier_readings: [TierReading::default(); 2],
            kv_fetch_waiting: 0,
            kv_transfer_enabled: false,
            kv_leases_held_tokens: None,
        }
    }

    /// Prints the KV transfer line with every logged interval, also when
    /// an interval had no P/D activity. Without this call the line appears
    /// only for intervals with P/D activity.
    pub fn enable_kv_transfer_line(&mut self) {
        self.kv_transfer_enabled = true;
    }

    fn observe_kv_transfers(&mut self, all: &ConnectorStats) {
        for stats in all.reports::<PdStats>() {
            self.observe_kv_transfer_report(stats);
        }
    }

    fn observe_kv_transfer_report(&mut self, stats: &PdStats) {
        let x = &mut self.acc.kv_transfer;
        for t in &stats.transfers {
            let d = &mut x.directions[kv_direction_index(t.direction)];
            d.count += 1;
            d.bytes = d.bytes.saturating_add(t.bytes);
            if let Some(seconds) = valid_seconds(t.seconds) {
                d.timed_count += 1;
                d.timed_seconds += seconds;
                d.timed_bytes = d.timed_bytes.saturating_add(t.bytes);
                if d.seconds.len() == MAX_TIME_SAMPLES {
                    d.seconds.pop_front();
                }
                d.seconds.push_back(seconds);
            }
        }
        for &reason in &stats.failures {
            *x.failures.entry(reason).or_default() += 1;
        }
        x.failed_tokens += u64::from(stats.failed_tokens);
        x.leases_expired += u64::from(stats.leases_expired);
        if stats.leases_held_tokens.is_some() {
            self.kv_leases_held_tokens = stats.leases_held_tokens;
        }
    }

    /// The KV transfer line for an interval's activity `x`.
    fn kv_transfer_line(&self, x: &KvTransferInterval) -> String {
        let mut parts: Vec<String> = Vec::new();
        for d in KV_DIRECTIONS {
            let t = &x.directions[kv_direction_index(d)];
            let mut part = format!("{} {} transfers", d.as_str(), t.count);
            if t.count > 0 {
                // Totals over totals (module note).
                let avg_ms =
                    (t.timed_count > 0).then(|| 1e3 * t.timed_seconds / t.timed_count as f64);
                let p90_ms = quantile(&t.seconds, 0.9).map(|s| 1e3 * s);
                let avg_mb = t.bytes as f64 / t.count as f64 / 1e6;
                let mb_per_s =
                    (t.timed_seconds > 0.0).then(|| t.timed_bytes as f64 / t.timed_seconds / 1e6);
                part.push_str(&format!(
                    ", avg {} ms, p90 {} ms, avg {} MB, {} MB/s",
                    fmt_fixed(avg_ms),
                    fmt_fixed(p90_ms),
                    fmt_fixed(Some(avg_mb)),
                    fmt_fixed(mb_per_s),
                ));
            }
            parts.push(part);
        }
        let num_failures: u64 = x.failures.values().sum();
        let mut tail = format!("failures {num_failures}");
        if num_failures > 0 {
            let each: Vec<String> =
                x.failures.iter().map(|(reason, n)| format!("{} {n}", reason.as_str())).collect();
            tail.push_str(&format!(" ({})", each.join(", ")));
        }
        let held =
            self.kv_leases_held_tokens.map_or_else(|| "n/a".to_string(), |n| format!("{n} tokens"));
        tail.push_str(&format!(
            ", failed tokens {}, leases held {held}, expired {}",
            x.failed_tokens, x.leases_expired
        ));
        parts.push(tail);
        format!("Engine {:03}: KV Transfer metrics: {}", self.engine_index, parts.join("; "))
    }

    /// Prints the offload line with every logged interval, with a part
    /// for each of `tiers`, also when an interval had no offload activity
    /// (its usage readings are still news). Without this call the line
    /// appears only for intervals with offload activity.
    pub fn enable_offload_line(&mut self, tiers: &[OffloadTier]) {
        self.offload_enabled = true;
        self.offload_tiers.extend(tiers.iter().copied());
    }

    fn observe_offload(&mut self, all: &ConnectorStats) {
        for stats in all.reports::<OffloadStats>() {
            self.observe_offload_report(stats);
        }
    }

    fn observe_offload_report(&mut self, stats: &OffloadStats) {
        let o = &mut self.acc.offload;
        let tiers = &mut self.offload_tiers;
        for t in &stats.transfers {
            tiers.insert(tier_of(t.transfer_type));
            let totals = &mut o.transfers[transfer_index(t.transfer_type)];
            totals.count += 1;
            totals.bytes = totals.bytes.saturating_add(t.bytes);
            if let Some(seconds) = valid_seconds(t.seconds) {
                totals.timed_seconds += seconds;
                totals.timed_bytes = totals.timed_bytes.saturating_add(t.bytes);
                totals.timed_blocks += u64::from(t.num_blocks);
            }
        }
        for (counts, deltas) in [
            (&mut o.queries, &stats.tier_queries),
            (&mut o.hits, &stats.tier_hits),
            (&mut o.evictions, &stats.evictions),
        ] {
            for (tier, n) in deltas {
                tiers.insert(*tier);
                counts[tier_index(*tier)] += u64::from(*n);
            }
        }
        o.allocation_failures += u64::from(stats.allocation_failures);
        for &(tier, op, reason) in &stats.failures {
            tiers.insert(tier);
            *o.failures.entry((tier, op, reason)).or_default() += 1;
        }
        for u in &stats.usage {
            tiers.insert(u.tier);
            let r = &mut self.tier_readings[tier_index(u.tier)];
            // As the gauges: clamped, -0.0 made 0.0, non-finite ignored.
            let fraction = |v: f64| v.is_finite().then(|| v.clamp(0.0, 1.0) + 0.0);
            r.residency = fraction(u.residency).or(r.residency);
            r.inflight = fraction(u.inflight).or(r.inflight);
        }
    }

    /// The offload line for an interval's activity `o`.
    fn offload_line(&self, o: &OffloadInterval) -> String {
        let mut parts: Vec<String> = Vec::new();
        for t in TransferType::ALL {
            let x = o.transfers[transfer_index(t)];
            if x.count == 0 {
                continue;
            }
            // Totals over totals (module note).
            let per_block = if x.timed_blocks > 0 {
                format!("{:.3} ms/block", 1e3 * x.timed_seconds / x.timed_blocks as f64)
            } else {
                "n/a ms/block".to_string()
            };
            let rate = if x.timed_seconds > 0.0 {
                fmt_rate(x.timed_bytes as f64 / x.timed_seconds)
            } else {
                "n/a B/s".to_string()
            };
            parts.push(format!(
                "{} {} transfers {} ({per_block}, {rate})",
                t.as_str(),
                x.count,
                fmt_bytes(x.bytes as f64),
            ));
        }
        if parts.is_empty() {
            parts.push("no transfers".to_string());
        }
        for &tier in &self.offload_tiers {
            let i = tier_index(tier);
            let r = self.tier_readings[i];
            let name = match tier {
                OffloadTier::Host => "Host",
                OffloadTier::Disk => "Disk",
            };
            parts.push(format!(
                "{name} tier: residency {}, in flight {}, hits {}/{} tokens, evictions {}",
                fmt_fraction(r.residency),
                fmt_fraction(r.inflight),
                o.hits[i],
                o.queries[i],
                o.evictions[i],
            ));
        }
        parts.push(format!("Allocation failures: {}", o.allocation_failures));
        let num_failures: u64 = o.failures.values().sum();
        let mut failures = format!("Failures: {num_failures}");
        if num_failures > 0 {
            let each: Vec<String> = o
                .failures
                .iter()
                .map(|((tier, op, reason), n)| {
                    format!("{} {} {} {n}", tier.as_str(), op.as_str(), reason.as_str())
                })
                .collect();
            failures.push_str(&format!(" ({})", each.join(", ")));
        }
        parts.push(failures);
        format!("Engine {:03}: KV offload: {}", self.engine_index, parts.join(", "))
    }

    pub fn observe(&mut self, result: &StepResult) {
        let a = &mut self.acc;
        if let Some(s) = result.step {
            a.preemptions += u64::from(s.num_preemptions);
            a.prefix_queries += u64::from(s.prefix_cache_queries);
            a.prefix_hits += u64::from(s.prefix_cache_hits);
            a.external_queries += u64::from(s.external_prefix_cache_queries);
            a.external_hits += u64::from(s.external_prefix_cache_hits);
            self.running = s.num_running;
            self.waiting = s.num_waiting;
            self.loading = s.num_waiting_for_remote_kv;
            self.kv_fetch_waiting = s.kv_fetch_waiting_to_start;
            self.kv_usage = if s.num_blocks_total == 0 {
                0.0
            } else {
                s.num_blocks_used as f64 / s.num_blocks_total as f64
            };
        }
        for r in &result.prefill_records {
            a.prompt_compute += u64::from(r.local_compute);
            for (i, s) in TokenSource::ALL.iter().enumerate() {
                a.sources[i] += u64::from(r.tokens(*s));
            }
            a.recomputed +=
                u64::from(r.recomputed.kv_load_failure) + u64::from(r.recomputed.preemption);
        }
        a.generation += result.outputs.iter().filter(|o| o.new_token_id.is_some()).count() as u64;
        self.observe_offload(&result.connector_stats);
        self.observe_kv_transfers(&result.connector_stats);
    }

    /// The line for the interval ending at `now`, if one is due and the
    /// engine was not idle; starts the next interval either way when due.
    ///
    /// Offload activity (transfers, lookups, evictions, failures) counts
    /// as work, so stores that finish after the last request still get
    /// logged. When there was some, or after
    /// [`Self::enable_offload_line`], the offload line follows the main one
    /// after a newline:
    ///
    /// ```text
    /// Engine 000: KV offload: host_to_device 12 transfers 37.2 MB (0.210 ms/block, 2.40 GB/s), Host tier: residency 41.2%, in flight 0.0%, hits 512/1024 tokens, evictions 0, Allocation failures: 0, Failures: 0
    /// ```
    ///
    /// P/D activity (transfers, failures, failed tokens, expired leases)
    /// is work too. When there was some, or after
    /// [`Self::enable_kv_transfer_line`], the KV transfer line comes last:
    ///
    /// ```text
    /// Engine 000: KV Transfer metrics: recv 12 transfers, avg 3.1 ms, p90 5.0 ms, avg 2.4 MB, 780.2 MB/s; send 0 transfers; failures 1 (timeout 1), failed tokens 64, leases held 1024 tokens, expired 0
    /// ```
    pub fn maybe_log(&mut self, now: f64) -> Option<String> {
        let Some(last) = self.last_log else {
            self.last_log = Some(now);
            return None;
        };
        let elapsed = now - last;
        if elapsed < self.interval_secs {
            return None;
        }
        self.last_log = Some(now);
        let a = std::mem::take(&mut self.acc);
        let offload_active = a.offload.is_active();
        let kv_transfer_active = a.kv_transfer.is_active();
        let idle = a.generation == 0
            && a.prompt_compute == 0
            && self.running == 0
            && self.waiting == 0
            && !offload_active
            && !kv_transfer_active;
        if idle {
            return None;
        }
        let total: u64 = a.sources.iter().sum();
        let s = |i: usize| pct(a.sources[i], total);
        let mut line = format!(
            "Engine {:03}: Avg prompt throughput: {:.1} tokens/s, Avg generation throughput: {:.1} tokens/s, \
             Running: {} reqs, Waiting: {} reqs, KV fetch: {} waiting, {} in progress, Preemptions: {}, \
             KV cache usage: {:.1}%, Prefix cache hit rate: {:.1}%, External prefix cache hit rate: {:.1}%, \
             Prompt sources: compute {:.1}%, cache {:.1}%, host {:.1}%, disk {:.1}%, remote {:.1}%, Recomputed: {} tokens",
            self.engine_index,
            a.prompt_compute as f64 / elapsed,
            a.generation as f64 / elapsed,
            self.running,
            self.waiting.saturating_sub(self.loading),
            self.kv_fetch_waiting,
            self.loading,
            a.preemptions,
            100.0 * self.kv_usage,
            pct(a.prefix_hits, a.prefix_queries),
            pct(a.external_hits, a.external_queries),
            s(0),
            s(1),
            s(2),
            s(3),
            s(4),
            a.recomputed,
        );
        if self.offload_enabled || offload_active {
            line.push('\n');
            line.push_str(&self.offload_line(&a.offload));
        }
        if self.kv_transfer_enabled || kv_transfer_active {
            line.push('\n');
            line.push_str(&self.kv_transfer_line(&a.kv_transfer));
        }
        Some(line)
    }
}
