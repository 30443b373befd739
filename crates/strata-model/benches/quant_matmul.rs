//! Batched products on quantized weights (prefill chunks and decode
//! batches) against the f32 product of the same dequantized values, all
//! measured in this run, best of several repetitions, on the machine's
//! thread pool: the Llama-3.2-1B projections (q/k/v, o, gate/up, down) in
//! Q4_K and Q6_K (the types of a Q4_K_M file) and Q8_0, at 32 and 512
//! input rows.
//! The quantized product runs with the AVX2 kernels and, where the CPU has
//! AVX-VNNI, with those too (`quant::set_vnni`); Q8_0 has no AVX2 integer
//! GEMM, so its AVX2 column is the f32 path on dequantized panels.
//!
//! Prints GMAC/s for each and the ratios (AVX2 / f32, VNNI / AVX2).
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p strata-model --bench quant_matmul`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_model::backend::cpu::{matmul_linear, CpuWeight};
use strata_model::quant::{set_vnni, QuantType};
use strata_model::weights::{HostData, QuantData};

mod common;
use common::{best, fill};

fn main() {
    let shapes =
        [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192)];
    let vnni = set_vnni(true);
    println!("AVX-VNNI kernels: {}", if vnni { "yes" } else { "no (this CPU lacks them)" });
    println!("| type | matrix | rows | f32 GMAC/s | AVX2 GMAC/s | AVX2 / f32 | VNNI GMAC/s | VNNI / AVX2 |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for t in [QuantType::Q4K, QuantType::Q6K, QuantType::Q8_0] {
        for (name, n, k) in shapes {
            let q = QuantData::quantize(t, &fill(n * k, 7), n, k);
            let dense = CpuWeight { rows: n, cols: k, data: HostData::F32(q.to_f32()) };
            let quant = CpuWeight { rows: n, cols: k, data: HostData::Quant(q) };
            for m in [32, 512] {
                let x = fill(m * k, 11);
                let mut out = vec![0.0f32; m * n];
                let reps = if m * n * k > 4_000_000_000 { 3 } else { 5 };
                let mut time = |w: &CpuWeight| {
                    best(reps, || {
                        let start = Instant::now();
                        matmul_linear(&x, m, k, w, &mut out);
                        start.elapsed()
                    })
                };
                let base = time(&dense);
                set_vnni(false);
                let avx2 = time(&quant);
                let with_vnni = vnni.then(|| {
                    set_vnni(true);
                    time(&quant)
                });
                let gmac = |d: Duration| (m * n * k) as f64 / d.as_secs_f64() / 1e9;
                let (v, ratio) = with_vnni.map_or(("-".into(), "-".into()), |d| {
                    (
                        format!("{:.1}", gmac(d)),
                        format!("{:.2}x", avx2.as_secs_f64() / d.as_secs_f64()),
                    )
                });
                println!(
                    "| {} | {name} {n}x{k} | {m} | {:.1} | {:.1} | {:.2}x | {v} | {ratio} |",
                    t.name(),
                    gmac(base),
                    gmac(avx2),
                    base.as_secs_f64() / avx2.as_secs_f64()
                );
            }
        }
    }
}
