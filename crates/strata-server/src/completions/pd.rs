//! P/D on the API side, for routers that drive the engines with plain
//! OpenAI requests (llm-d's routing sidecar as much as `strata router`).
//!
//! Prefill (`do_remote_decode`): the `n` choices a client asked for are one
//! engine request, because their prompt is one prompt: it is computed once
//! and its KV leased for `n` pulls (or the `num_pulls` given). The answer
//! has one choice and the params; its usage counts the prompt once per
//! choice the decode engine will run (A18), so the `cached_tokens` a
//! router copies from it equal the ones the decode engine reports.
//!
//! Decode (`do_remote_prefill` with the prefill's record in the params):
//! each choice's usage is the prefill's record rather than this engine's
//! transfer (A18). The engine's own record still feeds `/metrics` and the
//! accounting log, which count what this engine did.

use strata_core::{KvTransferParams, PrefillRecord};

use super::{Choice, MAX_N};
use crate::error::ApiError;
use crate::openai::Usage;

/// How a request's choices become engine requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Engine requests per prompt.
    pub engine_n: u32,
    /// Choices each engine request's prompt counts for in the usage.
    pub usage_scale: u32,
    pub kv_transfer_params: Option<KvTransferParams>,
}

/// The plan for `n` choices of `num_prompts` prompts with `kv`.
pub fn plan(
    kv: Option<&KvTransferParams>,
    n: u32,
    stream: bool,
    num_prompts: usize,
) -> Result<Plan, ApiError> {
    let Some(p) = kv.filter(|p| p.do_remote_decode) else {
        return Ok(Plan { engine_n: n, usage_scale: 1, kv_transfer_params: kv.cloned() });
    };
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}")));
    }
    // The params come in the JSON answer, for one prompt: a stream or a
    // batch would hold leases nobody learns about until they expire.
    if stream {
        return Err(ApiError::invalid(
            "stream",
            "kv_transfer_params.do_remote_decode needs stream: false (the params come in the answer)",
        ));
    }
    if num_prompts != 1 {
        return Err(ApiError::invalid(
            "prompt",
            "kv_transfer_params.do_remote_decode takes a single prompt",
        ));
    }
    let pulls = p.num_pulls.unwrap_or(n).max(1);
    Ok(Plan {
        engine_n: 1,
        usage_scale: n,
        kv_transfer_params: Some(KvTransferParams { num_pulls: Some(pulls), ..p.clone() }),
    })
}

impl Choice {
    /// The record this choice's usage reports: the prefill engine's when
    /// the params carried one of this prompt (a P/D decode), else this
    /// engine's. A decode whose pull failed reports its own: it computed
    /// the prompt again (`recomputed_tokens`), and the prefill's work was
    /// lost. `None` until the choice has a record of its own (it never
    /// reached its first token).
    pub fn usage_record(&self) -> Option<&PrefillRecord> {
        let own = self.record.as_ref()?;
        let arrived = own.recomputed.kv_load_failure == 0;
        let remote = self.remote_prefill.as_ref();
        Some(remote.filter(|r| arrived && r.prompt_tokens == own.prompt_tokens).unwrap_or(own))
    }
}

/// The usage of finished `choices` whose prompts each count `scale` times.
pub fn usage(choices: &[Choice], scale: u32) -> Usage {
    let mut usage = Usage::default();
    for c in choices {
        for _ in 0..scale {
            usage.add(c.usage_record(), 0);
        }
        usage.add(None, c.completion_tokens);
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pulls: Option<u32>) -> KvTransferParams {
        KvTransferParams { do_remote_decode: true, num_pulls: pulls, ..Default::default() }
    }

    #[test]
    fn a_prefill_for_n_choices_is_one_request_leased_for_n_pulls() {
        let p = plan(Some(&ask(None)), 3, false, 1).unwrap();
        assert_eq!((p.engine_n, p.usage_scale), (1, 3));
        assert_eq!(p.kv_transfer_params.unwrap().num_pulls, Some(3));
        // strata's router asks with n = 1 and num_pulls = n: unchanged.
        let p = plan(Some(&ask(Some(4))), 1, false, 1).unwrap();
        assert_eq!((p.engine_n, p.usage_scale), (1, 1));
        assert_eq!(p.kv_transfer_params.unwrap().num_pulls, Some(4));
    }

    #[test]
    fn other_requests_keep_their_choices() {
        let pull = KvTransferParams { do_remote_prefill: true, ..Default::default() };
        for kv in [None, Some(&pull)] {
            let p = plan(kv, 2, true, 2).unwrap();
            assert_eq!((p.engine_n, p.usage_scale), (2, 1));
            assert_eq!(p.kv_transfer_params.as_ref(), kv);
        }
    }

    #[test]
    fn a_prefill_that_would_leak_its_lease_is_refused() {
        let status = |r: Result<Plan, ApiError>| r.unwrap_err().status().as_u16();
        assert_eq!(status(plan(Some(&ask(None)), 2, true, 1)), 400);
        assert_eq!(status(plan(Some(&ask(None)), 1, false, 2)), 400);
        assert_eq!(status(plan(Some(&ask(None)), 0, false, 1)), 400);
        assert_eq!(status(plan(Some(&ask(None)), MAX_N + 1, false, 1)), 400);
    }
}
