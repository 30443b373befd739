//! Batched products on quantized weights (prefill chunks and decode
//! batches) against the f32 product of the same dequantized values, all
//! measured in this run, best of several repetitions, on the machine's
//! thread pool: the Llama-3.2-1B projections (q/k/v, o, gate/up, down) in
//! Q4_K and Q6_K (the types of a Q4_K_M file) and Q8_0, at 32 and 512
//! input rows.
//! The quantized product runs at each instruction-set level the CPU has
//! (`quant::cap_cpu_isa`): AVX2, AVX-VNNI (256-bit `vpdpbusd`) and
//! AVX-512 VNNI (512-bit, K types only: Q8_0 stays on its AVX-VNNI
//! kernel there). Q8_0 has no AVX2 integer GEMM, so its AVX2 column is the
//! f32 path on dequantized panels.
//!
//! Prints GMAC/s for each and the ratios to the level below.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p strata-model --bench quant_matmul`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_model::backend::cpu::{matmul_linear, CpuWeight};
use strata_model::quant::{cap_cpu_isa, CpuIsa, QuantType};
use strata_model::weights::{HostData, QuantData};

mod common;
use common::{best, fill};

fn main() {
    let shapes =
        [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192)];
    let levels: Vec<CpuIsa> = [CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512Vnni]
        .into_iter()
        .filter(|&l| cap_cpu_isa(l) == l)
        .collect();
    println!("levels this CPU has: {levels:?}");
    println!(
        "| type | matrix | rows | f32 GMAC/s | AVX2 GMAC/s | AVX2 / f32 | VNNI GMAC/s | VNNI / AVX2 | AVX-512 VNNI GMAC/s | / VNNI |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
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
                let gmac = |d: Duration| (m * n * k) as f64 / d.as_secs_f64() / 1e9;
                let mut row = format!("| {} | {name} {n}x{k} | {m} ", t.name());
                let mut last = time(&dense);
                row += &format!("| {:.1} ", gmac(last));
                for level in [CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512Vnni] {
                    if !levels.contains(&level) {
                        row += "| - | - ";
                        continue;
                    }
                    cap_cpu_isa(level);
                    let d = time(&quant);
                    row += &format!(
                        "| {:.1} | {:.2}x ",
                        gmac(d),
                        last.as_secs_f64() / d.as_secs_f64()
                    );
                    last = d;
                }
                println!("{row}|");
            }
        }
    }
}
