//! vLLM's periodic stats line, from the same records as the metrics.
//!
//! Throughputs are interval totals over interval time; the prompt
//! throughput counts `local_compute` tokens only (a decode engine in a P/D
//! pair shows about 0 for transferred prompts). Rates are interval hits
//! over interval queries. Nothing is printed for an idle interval.

use strata_core::{StepResult, TokenSource};

#[derive(Clone, Copy, Debug, Default)]
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
        }
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
    }

    /// The line for the interval ending at `now`, if one is due and the
    /// engine was not idle; starts the next interval either way when due.
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
        let idle =
            a.generation == 0 && a.prompt_compute == 0 && self.running == 0 && self.waiting == 0;
        if idle {
            return None;
        }
        let total: u64 = a.sources.iter().sum();
        let s = |i: usize| pct(a.sources[i], total);
        Some(format!(
            "Engine {:03}: Avg prompt throughput: {:.1} tokens/s, Avg generation throughput: {:.1} tokens/s, \
             Running: {} reqs, Waiting: {} reqs, KV fetch: 0 waiting, {} in progress, Preemptions: {}, \
             KV cache usage: {:.1}%, Prefix cache hit rate: {:.1}%, External prefix cache hit rate: {:.1}%, \
             Prompt sources: compute {:.1}%, cache {:.1}%, host {:.1}%, disk {:.1}%, remote {:.1}%, Recomputed: {} tokens",
            self.engine_index,
            a.prompt_compute as f64 / elapsed,
            a.generation as f64 / elapsed,
            self.running,
            self.waiting.saturating_sub(self.loading),
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
        ))
    }
}
