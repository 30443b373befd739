//! `out[m, n] = x[m, k] @ w[n, k]^T` with `w` in f32, f16, bf16 or a GGUF
//! block format.
//!
//! Quantized matrices whose every row block is a K type (Q4_K, Q5_K,
//! Q6_K: all of a Q4_K_M or Q5_K_M file's K-type matrices) take one path
//! at every `m`: the inputs are quantized per 256 values once, and panels
//! of weight rows are multiplied with them by the integer kernels of
//! [`crate::quant::gemm()`]: from 24 input rows on a panel unpacked once
//! into four-row interleaved bytes, below that on the stored blocks (one
//! weight row against eight input rows). Measured against the f32 product
//! of the same dequantized values (`cargo bench -p strata-model --bench
//! quant_matmul`, 2 threads), Q4_K runs at 1.9-2.8x its speed at 32 rows
//! and 1.9-2.1x at 512, Q6_K at 1.9-2.7x and 1.7-1.8x; batch-1 decode
//! beats the dot-product kernels below by vectorising the per-block work.
//! Q4_0/Q4_1/Q5_0/Q5_1 matrices take the same path from 24 input rows
//! (a packed kernel with the same layout); on the Qwen2.5-0.5B shapes,
//! Q5_0 at 32 rows runs at 72-80 GMAC/s against 38-39 for the f32 path
//! it replaces, and at 114-146 GMAC/s at 512.
//!
//! Other matrices have two regimes:
//! - decode-sized `m` (up to [`GEMV_MAX_ROWS`]): memory-bound, so each
//!   weight row is streamed once and dotted with every input row while it
//!   is in registers. AVX2+FMA kernels widen f16/bf16 on the fly (bf16 is a
//!   16-bit shift, f16 uses F16C), with a portable fallback.
//!   Quantized weights use the integer block dot products of
//!   [`crate::quant`] on inputs quantized once per call.
//! - larger `m` (prefill): compute-bound, so `gemm` does the work, one
//!   panel of weight rows per rayon task: the panel is first copied (and
//!   widened, for 16-bit weights) into a per-task buffer that stays in
//!   cache, then multiplied single-threaded. Measured on the Qwen2.5-0.5B
//!   shape, this runs prefill at about 1.7x the speed of handing the whole
//!   f32 matrix to gemm's own rayon parallelism.
//!
//! Every output element is a dot product accumulated in f32.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{CpuWeight, OutPtr};
use crate::gguf::TensorType;
use crate::quant::{self, ActQuant, QuantType};
use crate::weights::{decode_row, HostData, QuantData};

/// Up to this many input rows use the GEMV kernels.
pub const GEMV_MAX_ROWS: usize = 8;
/// Weight rows per panel in the 16-bit prefill path.
const PANEL_ROWS: usize = 64;
/// Weight rows per task in the quantized batch path. The kernels unpack
/// eight or sixteen rows at a time and fetch the next ones into L2 while
/// they compute; a task's first rows come cold from memory. 64 rows
/// leave that to one panel in four or eight: Llama-3.2-1B Q4_K_M batch-32
/// decode (`strata bench`, 2 threads, AVX-512 VNNI) 139-150 tok/s, against
/// 132-137 with 16 rows a task (no row fetched ahead); 128 rows gave the
/// same as 64.
const QUANT_PANEL_ROWS: usize = 64;

pub fn linear(x: &[f32], m: usize, k: usize, w: &CpuWeight, out: &mut [f32]) {
    assert_eq!(w.cols, k, "invariant: weight in_features match the input");
    assert_eq!(out.len(), m * w.rows, "invariant: output sized m x n");
    if m == 0 {
        return;
    }
    if let Some(q) = tiled_quant(w, m) {
        quant_gemm(x, m, k, q, out);
    } else if m <= GEMV_MAX_ROWS {
        gemv(x, m, k, w, out);
    } else if m <= super::tile::TILE_MAX_ROWS && super::tile::tiled(x, m, k, w, out) {
    } else {
        panel_gemm(x, m, k, w, out);
    }
}

/// The matrix, when every row block is a quantized type with a
/// register-tiled integer kernel for `m` rows ([`quant::has_tiled_gemm`]).
fn tiled_quant(w: &CpuWeight, m: usize) -> Option<&QuantData> {
    match &w.data {
        HostData::Quant(q)
            if q.blocks
                .iter()
                .all(|b| matches!(b.ty, TensorType::Quant(t) if quant::has_tiled_gemm(t, m))) =>
        {
            Some(q)
        }
        _ => None,
    }
}

/// Prefill and decode batches on quantized weights: the inputs are
/// quantized once per block type, then each rayon task multiplies
/// [`QUANT_PANEL_ROWS`] weight rows (one storage type) with every input
/// row in integer arithmetic, and writes its columns of the output.
fn quant_gemm(x: &[f32], m: usize, k: usize, q: &QuantData, out: &mut [f32]) {
    let n = q.rows();
    let acts: Vec<(QuantType, ActQuant)> =
        q.quant_types().into_iter().map(|t| (t, quant::quantize_activations(t, x, m, k))).collect();
    // (first output column, rows, type, bytes) of each panel.
    let mut panels = Vec::new();
    let mut first = 0;
    for b in &q.blocks {
        let TensorType::Quant(t) = b.ty else { unreachable!("invariant: checked by tiled_quant") };
        let row_bytes = b.bytes.len() / b.rows;
        for start in (0..b.rows).step_by(QUANT_PANEL_ROWS) {
            let nr = QUANT_PANEL_ROWS.min(b.rows - start);
            panels.push((
                first + start,
                nr,
                t,
                &b.bytes[start * row_bytes..(start + nr) * row_bytes],
            ));
        }
        first += b.rows;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    panels.into_par_iter().for_each(|(col, nr, t, bytes)| {
        let a = &acts.iter().find(|(at, _)| *at == t).expect("invariant: quantized per type").1;
        // SAFETY: this task writes only columns col..col + nr of the m x n
        // output (row stride n), which no other task writes.
        unsafe { quant::gemm_strided(t, bytes, nr, a, ptr.at(col), n) };
    });
}

fn panel_gemm(x: &[f32], m: usize, k: usize, w: &CpuWeight, out: &mut [f32]) {
    let n = w.rows;
    let ptr = OutPtr(out.as_mut_ptr());
    let panel_rows = PANEL_ROWS;
    (0..n.div_ceil(panel_rows)).into_par_iter().for_each_init(
        || vec![0.0f32; panel_rows * k],
        |buf, p| {
            let rows = p * panel_rows..((p + 1) * panel_rows).min(n);
            let nr = rows.len();
            // Every dtype, f32 included, is first copied (widened) into the
            // task's buffer: gemm packs the weights column-wise, which from
            // main memory means `panel_rows` concurrent strided streams and
            // stalls; from a cache-resident buffer it runs at full speed.
            for (i, r) in rows.clone().enumerate() {
                w.row_to_f32(r, &mut buf[i * k..(i + 1) * k]);
            }
            let panel = &buf[..nr * k];
            // SAFETY: this task writes only columns `rows` of the m x n
            // output (row stride n), which no other task touches; x and
            // the panel are m x k and nr x k row-major as described.
            unsafe {
                gemm::gemm(
                    m,
                    nr,
                    k,
                    ptr.at(rows.start),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        },
    );
}

/// Weight rows per rayon task in the GEMV path: large enough to amortise
/// scheduling, small enough to balance the last tasks.
fn gemv_chunk(n: usize) -> usize {
    (n / (rayon::current_num_threads() * 16)).clamp(8, 256)
}

fn gemv(x: &[f32], m: usize, k: usize, w: &CpuWeight, out: &mut [f32]) {
    let n = w.rows;
    if m == 1 {
        gemv_into(x, 1, k, w, out);
        return;
    }
    // Results are produced weight-row-major ([n, m]) so each task owns a
    // contiguous range, then transposed into `out`.
    let mut tmp = vec![0.0f32; n * m];
    gemv_into(x, m, k, w, &mut tmp);
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = tmp[j * m + i];
        }
    }
}

/// `dst[j * m + i] = x[i, :] . w[j, :]`.
fn gemv_into(x: &[f32], m: usize, k: usize, w: &CpuWeight, dst: &mut [f32]) {
    let chunk = gemv_chunk(w.rows);
    if let HostData::Quant(q) = &w.data {
        // The inputs are quantized once per block type of the matrix (as
        // llama.cpp does: Q8_0/Q8_1/Q8_K blocks), then each weight row is
        // one integer dot product per input row.
        let acts: Vec<(QuantType, ActQuant)> = q
            .quant_types()
            .into_iter()
            .map(|t| (t, quant::quantize_activations(t, x, m, k)))
            .collect();
        dst.par_chunks_mut(chunk * m).enumerate().for_each_init(
            || vec![0.0f32; k],
            |row, (c, d)| {
                let first = c * chunk;
                for (i, dr) in d.chunks_mut(m).enumerate() {
                    match q.row(first + i) {
                        (TensorType::Quant(t), bytes) => {
                            let a = &acts.iter().find(|(at, _)| *at == t).expect("invariant").1;
                            quant::vec_dot(t, bytes, a, dr);
                        }
                        (ty, bytes) => {
                            decode_row(ty, bytes, row);
                            for (o, xr) in dr.iter_mut().zip(x.chunks(k)) {
                                *o = row.iter().zip(xr).map(|(a, b)| a * b).sum();
                            }
                        }
                    }
                }
            },
        );
        return;
    }
    dst.par_chunks_mut(chunk * m).enumerate().for_each(|(c, d)| {
        let first = c * chunk;
        for (i, dr) in d.chunks_mut(m).enumerate() {
            dot_rows(x, m, k, w, first + i, dr);
        }
    });
}

#[cfg(target_arch = "x86_64")]
pub(super) fn simd_available() -> bool {
    simd::available()
}

/// `out[i] = x[i, :] . w[r, :]` for each of the `m` input rows.
fn dot_rows(x: &[f32], m: usize, k: usize, w: &CpuWeight, r: usize, out: &mut [f32]) {
    let range = r * k..(r + 1) * k;
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: AVX2, FMA and F16C were detected at run time; slices
            // have the lengths the kernels read (k per row, m rows).
            unsafe {
                match &w.data {
                    HostData::F32(v) => simd::dot_f32(x, m, k, &v[range], out),
                    HostData::BF16(v) => simd::dot_bf16(x, m, k, &v[range], out),
                    HostData::F16(v) => simd::dot_f16(x, m, k, &v[range], out),
                    HostData::Quant(_) => {
                        unreachable!("invariant: quantized rows take gemv_into's path")
                    }
                }
            }
            return;
        }
    }
    portable_dot(x, m, k, w, r, out);
}

fn portable_dot(x: &[f32], m: usize, k: usize, w: &CpuWeight, r: usize, out: &mut [f32]) {
    let mut row = vec![0.0f32; k];
    w.row_to_f32(r, &mut row);
    for i in 0..m {
        out[i] = row.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, b)| a * b).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::GEMV_MAX_ROWS;

    /// How far ahead of the dot product a 16-bit or f32 weight row is
    /// prefetched: with each thread streaming its own rows, the hardware
    /// prefetcher alone leaves batch-1 decode short of the bandwidth.
    const PREFETCH_BYTES: usize = 2048;
    pub(in crate::backend::cpu) use crate::simd::available;
    use crate::simd::hsum;

    /// One kernel body per weight dtype: `$load(ptr, offset)` yields eight
    /// widened weights, `$widen` one (for the tail). Two accumulators per input row hide FMA latency.
    macro_rules! dot_kernel {
        ($name:ident, $elem:ty, |$b:ident| $widen:expr, |$p:ident, $o:ident| $load:expr) => {
            /// # Safety
            /// The CPU supports AVX2, FMA and F16C; `x` holds `m * k`
            /// values, `w` holds `k`, `out` holds `m`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(x: &[f32], m: usize, k: usize, w: &[$elem], out: &mut [f32]) {
                debug_assert!(m <= GEMV_MAX_ROWS && x.len() >= m * k && w.len() >= k);
                let mut acc0 = [_mm256_setzero_ps(); GEMV_MAX_ROWS];
                let mut acc1 = [_mm256_setzero_ps(); GEMV_MAX_ROWS];
                let wp = w.as_ptr();
                let xp = x.as_ptr();
                let mut j = 0;
                while j + 16 <= k {
                    // The weight stream, PREFETCH_BYTES ahead (past the row's
                    // end is the next row: rows are contiguous). A hint: it
                    // never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(
                        wp.wrapping_add(j).cast::<u8>().wrapping_add(PREFETCH_BYTES).cast(),
                    );
                    // SAFETY: j + 16 <= k keeps every read inside w and
                    // inside each of the m rows of x.
                    unsafe {
                        let w0 = {
                            let ($p, $o) = (wp, j);
                            $load
                        };
                        let w1 = {
                            let ($p, $o) = (wp, j + 8);
                            $load
                        };
                        for i in 0..m {
                            let xr = xp.add(i * k + j);
                            acc0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc0[i]);
                            acc1[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), acc1[i]);
                        }
                    }
                    j += 16;
                }
                let mut wt = [0.0f32; 16];
                let tail = k - j;
                for (t, slot) in wt.iter_mut().enumerate().take(tail) {
                    *slot = {
                        let $b = w[j + t];
                        $widen
                    };
                }
                for i in 0..m {
                    let mut s = hsum(_mm256_add_ps(acc0[i], acc1[i]));
                    for t in 0..tail {
                        s += wt[t] * x[i * k + j + t];
                    }
                    out[i] = s;
                }
            }
        };
    }

    // The loads run inside the kernel's unsafe block, at offsets with
    // eight readable elements after them.
    dot_kernel!(dot_f32, f32, |v| v, |p, o| _mm256_loadu_ps(p.add(o)));
    dot_kernel!(dot_bf16, u16, |b| f32::from_bits((b as u32) << 16), |p, o| {
        let h = _mm_loadu_si128(p.add(o) as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    });
    dot_kernel!(dot_f16, u16, |b| half::f16::from_bits(b).to_f32(), |p, o| {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(o) as *const __m128i))
    });
}
