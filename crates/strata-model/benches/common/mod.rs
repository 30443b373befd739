//! Helpers shared by the benches.

use std::time::Duration;

/// `n` deterministic values in [-1, 1] (a hash of the index and `seed`).
pub fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The shortest of `reps` timings of `f`.
pub fn best(reps: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..reps).map(|_| f()).min().expect("invariant: at least one repetition")
}
