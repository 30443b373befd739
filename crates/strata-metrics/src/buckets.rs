//! Histogram bucket bounds of every strata histogram: vLLM's own where
//! vLLM has the family (docs/metrics.md lists which), strata's where not.

pub const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

pub const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

pub const REQUEST_LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

pub const ITERATION_TOKENS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

pub const PREEMPTIONS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0];

pub const PARAMS_N: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];

/// Bytes per offload transfer: vLLM's 1e6 ... 200e6, below which small
/// blocks (a single block of a small model is a few kB) get buckets of
/// their own instead of all landing under the first vLLM bound.
pub const OFFLOAD_SIZE: &[f64] =
    &[1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 5e6, 10e6, 20e6, 40e6, 60e6, 80e6, 100e6, 150e6, 200e6];

/// Bytes per second of one offload transfer: 1-2.5-5 steps from 1 MB/s
/// (a slow disk) to 100 GB/s (beyond any host link today), so both tiers'
/// links land mid-range.
pub const OFFLOAD_THROUGHPUT: &[f64] =
    &[1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10, 2.5e10, 5e10, 1e11];

/// Bytes per KV transfer between engines: 1-2.5-5 steps from 1 kB (one
/// block of a tiny model) to 10 GB (a long prompt of a large model).
pub const KV_TRANSFER_BYTES: &[f64] = &[
    1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8,
    2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10,
];

/// Seconds per KV transfer between engines: 0.1 ms (a few blocks over a
/// fast link) to a minute (about where a transfer times out).
pub const KV_TRANSFER_SECONDS: &[f64] = &[
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    20.0, 30.0, 60.0,
];

/// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's request-token buckets).
pub fn one_two_five(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1u64;
    'outer: loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max.max(1) as u64 {
                break 'outer;
            }
            out.push(v as f64);
        }
        scale *= 10;
    }
    out
}

/// Seconds to compute one structured-output token mask: 10 µs to 100 ms
/// in 1-2.5-5 steps (a mask over a 150k-token vocabulary takes tens to
/// hundreds of microseconds; a pathological grammar, milliseconds).
pub const MASK_SECONDS: &[f64] =
    &[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1];

#[cfg(test)]
mod tests {
    #[test]
    fn one_two_five_stops_at_the_maximum() {
        assert_eq!(super::one_two_five(100), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(super::one_two_five(4096).last(), Some(&2000.0));
    }

    #[test]
    fn offload_buckets_increase_and_keep_vllms_bounds() {
        for b in [super::OFFLOAD_SIZE, super::OFFLOAD_THROUGHPUT] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        let vllm = [1e6, 5e6, 10e6, 20e6, 40e6, 60e6, 80e6, 100e6, 150e6, 200e6];
        assert!(super::OFFLOAD_SIZE.ends_with(&vllm));
    }

    #[test]
    fn kv_transfer_buckets_increase_over_their_span() {
        for (b, first, last) in
            [(super::KV_TRANSFER_BYTES, 1e3, 1e10), (super::KV_TRANSFER_SECONDS, 1e-4, 60.0)]
        {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert_eq!((b[0], b[b.len() - 1]), (first, last));
        }
    }
}
