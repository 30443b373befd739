//! Every matmul path (GEMV, tiled, panel gemm) in every weight dtype
//! equals a plain f64 product, at sizes that hit each path and odd widths
//! that exercise the SIMD tails.

#![allow(clippy::unwrap_used)]

mod common;

use common::values;
use proptest::prelude::*;
use strata_model::backend::cpu::{matmul_linear, CpuWeight};
use strata_model::weights::{DType, HostData};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn linear_matches_reference(
        m in prop::sample::select(vec![1usize, 2, 3, 5, 8, 9, 13, 32, 64, 65, 100]),
        k in 1usize..300,
        n in 1usize..150,
        dtype in prop::sample::select(vec![DType::F32, DType::BF16, DType::F16]),
        seed in any::<u64>(),
    ) {
        let x = values(seed, m * k);
        let data = HostData::F32(values(seed ^ 1, n * k)).convert(dtype);
        // The reference uses the weights as stored (after rounding).
        let wf = data.to_f32();
        let w = CpuWeight { rows: n, cols: k, data };
        let mut out = vec![0.0f32; m * n];
        matmul_linear(&x, m, k, &w, &mut out);
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k).map(|t| x[i * k + t] as f64 * wf[j * k + t] as f64).sum();
                let got = out[i * n + j] as f64;
                prop_assert!((got - r).abs() <= 1e-4 * (1.0 + r.abs()), "m {m} k {k} n {n} [{i},{j}]: {got} vs {r}");
            }
        }
    }
}
