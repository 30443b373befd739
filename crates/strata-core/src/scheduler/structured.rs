//! The scheduler's part of structured outputs (see `crate::structured`):
//! the masks of a step's constrained sampling sequences.

use super::{Scheduler, SchedulerOutput};
use crate::structured::TokenMask;

impl Scheduler {
    /// Asks the matcher of every constrained sequence that samples this
    /// step for its mask; many are computed in parallel (chunks of
    /// matchers, one thread each, up to the machine's parallelism). A matcher that fails
    /// gives an empty mask, which the sampler ignores: the token then
    /// sampled is refused by the matcher and the request ends (`error`).
    pub(super) fn fill_token_masks(&mut self, out: &mut SchedulerOutput) {
        let vocab_size = self.vocab_size;
        // The matchers leave their requests for the computation (each is
        // used by one thread) and go back right after.
        let mut work = Vec::new();
        for (i, s) in out.seqs.iter().enumerate() {
            if !s.samples {
                continue;
            }
            let req =
                self.requests.at_mut(s.slot, &s.request_id).expect("invariant: scheduled requests");
            if let Some(m) = req.grammar.take() {
                work.push((i, s.slot, s.request_id, m, TokenMask::new(vocab_size)));
            }
        }
        if work.is_empty() {
            return;
        }
        // A mask takes microseconds (llguidance), a thread tens of them to
        // start and then competes with the executor's threads: only a large
        // batch of masks is worth splitting, in chunks of at least
        // MIN_PER_THREAD (with one thread per mask, batch-32 decoding ran
        // at 0.93 of unconstrained against 0.97 on one thread: the
        // structured bench).
        const MIN_PER_THREAD: usize = 16;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(work.len() / MIN_PER_THREAD)
            .max(1);
        let fill = |(_, _, _, m, mask): &mut (
            _,
            _,
            _,
            Box<dyn crate::structured::GrammarMatcher>,
            TokenMask,
        )| {
            if m.fill_next_token_mask(mask).is_err() {
                *mask = TokenMask::new(vocab_size);
            }
        };
        if threads <= 1 {
            work.iter_mut().for_each(fill);
        } else {
            let chunk = work.len().div_ceil(threads);
            std::thread::scope(|scope| {
                for part in work.chunks_mut(chunk) {
                    scope.spawn(|| part.iter_mut().for_each(fill));
                }
            });
        }
        out.token_masks = vec![None; out.seqs.len()];
        for (i, slot, id, m, mask) in work {
            let req = self.requests.at_mut(slot, &id).expect("invariant: scheduled requests");
            req.grammar = Some(m);
            out.token_masks[i] = Some(mask);
        }
    }
}

impl Scheduler {
    /// The executor's vocabulary size, the length of the masks
    /// (`EngineCore` sets it from its executor).
    pub fn set_vocab_size(&mut self, vocab_size: usize) {
        self.vocab_size = vocab_size;
    }
}
