//! Plain records a step produces, for the metrics layer and logs
//! (docs/accounting.md, "The record"). The scheduler builds them and never reads
//! them back; once emitted they are immutable (scenario A21).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::RequestId;
use crate::request::FinishReason;

/// Where a prompt token's KV first became usable for its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenSource {
    LocalCompute,
    LocalCacheHit,
    Host,
    Disk,
    Remote,
}

impl TokenSource {
    pub const ALL: [TokenSource; 5] =
        [Self::LocalCompute, Self::LocalCacheHit, Self::Host, Self::Disk, Self::Remote];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalCompute => "local_compute",
            Self::LocalCacheHit => "local_cache_hit",
            Self::Host => "host",
            Self::Disk => "disk",
            Self::Remote => "remote",
        }
    }
}

/// A request's prompt-token attribution, fixed at first admission. Local
/// compute is not stored: it is the rest of the prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub local_cache_hit: u32,
    pub host: u32,
    pub disk: u32,
    pub remote: u32,
    pub recomputed_kv_load_failure: u32,
    pub recomputed_preemption: u32,
}

impl Provenance {
    /// Rule 4: `failed` tokens promised by the connector failed to load and
    /// are computed locally instead. They leave the connector's source and
    /// count as recomputed (`kv_load_failure`); a request's match comes
    /// from one source, so at most one of host, disk, remote is non-zero.
    pub fn fail_external(&mut self, failed: u32) {
        for slot in [&mut self.host, &mut self.disk, &mut self.remote] {
            if *slot > 0 {
                let moved = (*slot).min(failed);
                *slot -= moved;
                self.recomputed_kv_load_failure += moved;
                break;
            }
        }
    }
}

/// Tokens computed a second time, by reason. Not a source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recomputed {
    pub kv_load_failure: u32,
    pub preemption: u32,
}

/// One per request, built at its first output token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillRecord {
    pub request_id: RequestId,
    pub prompt_tokens: u32,
    pub local_compute: u32,
    pub local_cache_hit: u32,
    pub host: u32,
    pub disk: u32,
    pub remote: u32,
    pub recomputed: Recomputed,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{request_id}: prompt of {prompt_tokens} tokens but sources {local_cache_hit} cached + {external} external leave no token computed")]
pub struct AccountingViolation {
    pub request_id: RequestId,
    pub prompt_tokens: u32,
    pub local_cache_hit: u32,
    pub external: u32,
}

impl PrefillRecord {
    /// Builds the record from a request's provenance. The identity
    /// `prompt = compute + cache + host + disk + remote` holds by
    /// construction; the check is that at least one token was computed
    /// (rule 3) and nothing would go negative.
    pub fn new(
        request_id: RequestId,
        prompt_tokens: u32,
        p: &Provenance,
    ) -> Result<Self, AccountingViolation> {
        let external = p.host as u64 + p.disk as u64 + p.remote as u64;
        let not_computed = p.local_cache_hit as u64 + external;
        if not_computed >= prompt_tokens as u64 {
            return Err(AccountingViolation {
                request_id,
                prompt_tokens,
                local_cache_hit: p.local_cache_hit,
                external: external.min(u32::MAX as u64) as u32,
            });
        }
        Ok(Self {
            request_id,
            prompt_tokens,
            local_compute: prompt_tokens - not_computed as u32,
            local_cache_hit: p.local_cache_hit,
            host: p.host,
            disk: p.disk,
            remote: p.remote,
            recomputed: Recomputed {
                kv_load_failure: p.recomputed_kv_load_failure,
                preemption: p.recomputed_preemption,
            },
        })
    }

    pub fn tokens(&self, source: TokenSource) -> u32 {
        match source {
            TokenSource::LocalCompute => self.local_compute,
            TokenSource::LocalCacheHit => self.local_cache_hit,
            TokenSource::Host => self.host,
            TokenSource::Disk => self.disk,
            TokenSource::Remote => self.remote,
        }
    }

    /// `cached_tokens` of the API usage: not computed by anyone in the
    /// fleet for this request (remote is a transfer, not a hit).
    pub fn cached_tokens(&self) -> u32 {
        self.local_cache_hit + self.host + self.disk
    }

    /// Tokens a connector supplied (host + disk + remote): the prompt
    /// tokens this engine neither computed nor found in its device cache.
    pub fn external_tokens(&self) -> u32 {
        self.host + self.disk + self.remote
    }

    /// Prompt tokens computed a second time, whatever the reason (not a
    /// source: they are part of `local_compute` or of a later step).
    pub fn recomputed_tokens(&self) -> u32 {
        self.recomputed.kv_load_failure + self.recomputed.preemption
    }

    /// Tokens whose KV this engine did not compute (device hit or any
    /// connector): `prompt_tokens - local_compute`.
    pub fn not_computed_tokens(&self) -> u32 {
        self.local_cache_hit + self.external_tokens()
    }
}

/// What the scheduler did in one step. Every step has one, also a step in
/// which no token ran (requests only waiting for KV loads); consumers of
/// per-iteration token counts skip those (docs/accounting.md, rule 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// Prompt (and recomputed) tokens the model ran this step.
    pub num_prefill_tokens: u32,
    /// Decode tokens the model ran this step.
    pub num_decode_tokens: u32,
    pub num_running: u32,
    /// Waiting, preempted and waiting-for-remote-KV requests.
    pub num_waiting: u32,
    pub num_waiting_for_remote_kv: u32,
    pub num_preemptions: u32,
    /// Prompt tokens looked up in the device prefix cache at admission
    /// (preempted re-admissions excluded), and those found.
    pub prefix_cache_queries: u32,
    pub prefix_cache_hits: u32,
    /// Tokens looked up beyond the local hit, and those a connector had.
    pub external_prefix_cache_queries: u32,
    pub external_prefix_cache_hits: u32,
    pub num_blocks_used: u32,
    pub num_blocks_total: u32,
    pub num_connector_loads: u32,
    pub num_connector_load_failures: u32,
    /// Prompt tokens re-prefilled this step by requests preempted after
    /// their first token (their PrefillRecord is already out and never
    /// changes, A21; the work is still counted as recomputed).
    pub num_recomputed_preemption_tokens: u32,
    /// `external_prefix_cache_hits` by source (they sum to it).
    pub external_hits_host: u32,
    pub external_hits_disk: u32,
    pub external_hits_remote: u32,
    /// Requests by KV-fetch stage (vLLM's `num_requests_kv_fetch_by_stage`):
    /// waiting with a remote prefill not yet started, loading, and loaded
    /// but not yet running.
    pub kv_fetch_waiting_to_start: u32,
    pub kv_fetch_in_progress: u32,
    pub kv_fetch_completed_waiting: u32,
}

impl StepRecord {
    /// Tokens the model ran (docs/accounting.md, rule 6).
    pub fn num_tokens(&self) -> u32 {
        self.num_prefill_tokens + self.num_decode_tokens
    }
}

/// One per request, when it ends (whatever the reason).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishRecord {
    pub request_id: RequestId,
    pub reason: FinishReason,
    pub num_prompt_tokens: u32,
    pub num_generation_tokens: u32,
    pub max_tokens: u32,
    pub num_preemptions: u32,
    pub arrival_time: f64,
    /// `None` for requests that never ran.
    pub first_scheduled_time: Option<f64>,
    pub first_token_time: Option<f64>,
    pub finished_time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> RequestId {
        RequestId::new(1).unwrap()
    }

    #[test]
    fn record_partitions_the_prompt() {
        let p = Provenance { local_cache_hit: 512, remote: 400, ..Provenance::default() };
        let r = PrefillRecord::new(id(), 1000, &p).unwrap();
        assert_eq!(r.local_compute, 88);
        let sum: u32 = TokenSource::ALL.iter().map(|&s| r.tokens(s)).sum();
        assert_eq!(sum, 1000);
        assert_eq!(r.cached_tokens(), 512);
        assert_eq!(r.external_tokens(), 400);
        assert_eq!(r.not_computed_tokens(), 912);
    }

    #[test]
    fn a_record_without_a_computed_token_is_a_violation() {
        let p = Provenance { local_cache_hit: 500, host: 500, ..Provenance::default() };
        assert!(PrefillRecord::new(id(), 1000, &p).is_err());
        let p = Provenance { remote: u32::MAX, disk: u32::MAX, ..Provenance::default() };
        assert!(PrefillRecord::new(id(), 10, &p).is_err(), "no overflow");
    }
}
