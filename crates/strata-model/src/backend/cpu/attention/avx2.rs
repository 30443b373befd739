//! The AVX2/FMA item kernel: the online softmax of `run_item_with`, with
//! the work shaped for the vector units.
//!
//! - Keys are taken a span of up to [`SPAN`] at a time (several paged
//!   blocks), so each row's maximum, rescale and sum are updated once per
//!   64 keys instead of once per block.
//! - Query rows go in pairs: each key vector loaded serves two rows' dot
//!   products, and each value vector two rows' outputs, so the
//!   multiply-adds, not the loads, bound both products. Four keys' sums
//!   are reduced across lanes together (`hadd`s).
//! - `exp` is a vector polynomial (Cephes' `expf`: within 8e-8 relative of
//!   the exact value over the range softmax uses, measured by the test
//!   below) instead of a libm call per score.
//!
//! Same arithmetic as the portable kernel up to f32 rounding (sums in a
//! different order, `exp` to a few ulp); the tests compare both against
//! the two-pass reference.

use std::arch::x86_64::*;

use super::{Item, ItemRows, Partial};
use crate::backend::cpu::{CpuKvLayer, CpuTensor};
use crate::backend::{AttentionShape, StepMetadata};
use crate::simd::{exp, hsum};

/// Keys per softmax update.
const SPAN: usize = 64;

/// Whether this kernel handles `head_dim` (whole vectors, and a row pair's
/// half-width outputs fit the registers).
pub(super) fn supports(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16) && head_dim <= 256
}

/// The sums of four vectors' lanes, in lanes 0..4.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sum4(v: [__m256; 4]) -> __m128 {
    let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// `out[r][j] = scale * (q[r] . key j)` for keys `0..n` (rows of `hd`
/// floats at `keys + j * stride`), `R` query rows at once.
///
/// # Safety
/// AVX2 and FMA are available; `keys` has `n` rows of `hd` readable floats
/// at that stride; each `q[r]` holds `hd` floats and each `out[r]` `n`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_keys<const R: usize>(
    q: [&[f32]; R],
    keys: *const f32,
    stride: usize,
    n: usize,
    scale: f32,
    out: [*mut f32; R],
) {
    let hd = q[0].len();
    let mut j = 0;
    // SAFETY: (whole body) every key read is row j + m < n, dims d + 8 <=
    // hd; every write is out[r][j + m] with j + m < n.
    unsafe {
        while j + 4 <= n {
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for d in (0..hd).step_by(8) {
                let k: [__m256; 4] =
                    std::array::from_fn(|m| _mm256_loadu_ps(keys.add((j + m) * stride + d)));
                for r in 0..R {
                    let qv = _mm256_loadu_ps(q[r].as_ptr().add(d));
                    for m in 0..4 {
                        acc[r][m] = _mm256_fmadd_ps(qv, k[m], acc[r][m]);
                    }
                }
            }
            for r in 0..R {
                _mm_storeu_ps(out[r].add(j), _mm_mul_ps(sum4(acc[r]), _mm_set1_ps(scale)));
            }
            j += 4;
        }
        while j < n {
            let mut acc = [_mm256_setzero_ps(); R];
            for d in (0..hd).step_by(8) {
                let k = _mm256_loadu_ps(keys.add(j * stride + d));
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r].as_ptr().add(d)), k, acc[r]);
                }
            }
            for r in 0..R {
                *out[r].add(j) = hsum(acc[r]) * scale;
            }
            j += 1;
        }
    }
}

/// `out[r] += sum_j w[r][j] * value j` for values `0..n` (rows of
/// `out[r].len()` floats at `values + j * stride`), `R` rows at once, 16
/// lanes of each row in registers at a time.
///
/// # Safety
/// AVX2 and FMA are available; `values` has `n` rows of `out[0].len()`
/// readable floats at that stride; each `w[r]` holds `n` weights; the
/// `out[r]` hold `out[0].len()` floats each, a multiple of 16.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted<const R: usize>(
    out: [*mut f32; R],
    w: [&[f32]; R],
    values: *const f32,
    stride: usize,
    hd: usize,
) {
    let n = w[0].len();
    // SAFETY: (whole body) reads are value rows j < n, lanes c + 16 <= hd;
    // writes are out[r][c..c + 16].
    unsafe {
        for c in (0..hd).step_by(16) {
            let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| {
                [_mm256_loadu_ps(out[r].add(c)), _mm256_loadu_ps(out[r].add(c + 8))]
            });
            for j in 0..n {
                let v = values.add(j * stride + c);
                let (v0, v1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                for r in 0..R {
                    let p = _mm256_broadcast_ss(&w[r][j]);
                    acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(out[r].add(c), acc[r][0]);
                _mm256_storeu_ps(out[r].add(c + 8), acc[r][1]);
            }
        }
    }
}

/// One row's online-softmax step over its scores `s` (masked keys at
/// `-inf`): the new maximum, `exp(score - max)` in place, the rescale of
/// the running sum and output. A row that sees none of the keys is left
/// with zero weights.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn softmax_step(s: &mut [f32], max: &mut f32, sum: &mut f32, out: &mut [f32]) {
    let n = s.len();
    let whole = n / 8 * 8;
    let mut m8 = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in s[..whole].chunks_exact(8) {
        // SAFETY: `c` is 8 floats.
        m8 = _mm256_max_ps(m8, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m8) };
    let block_max = lanes.iter().chain(&s[whole..]).copied().fold(f32::NEG_INFINITY, f32::max);
    if block_max == f32::NEG_INFINITY {
        s.fill(0.0);
        return;
    }
    let new_max = max.max(block_max);
    // The running sum and output were weighted by exp(-old max).
    let rescale = (*max - new_max).exp();
    *max = new_max;
    let shift = _mm256_set1_ps(new_max);
    let mut total = _mm256_setzero_ps();
    for c in s[..whole].chunks_exact_mut(8) {
        // SAFETY: `c` is 8 floats.
        unsafe {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            total = _mm256_add_ps(total, e);
        }
    }
    let mut tail = 0.0;
    for v in &mut s[whole..] {
        *v = (*v - new_max).exp();
        tail += *v;
    }
    *sum = *sum * rescale + hsum(total) + tail;
    if rescale != 1.0 {
        out.iter_mut().for_each(|o| *o *= rescale);
    }
}

/// Runs one item (see the module docs); `supports(head_dim)` holds.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_item(
    item: Item,
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> Partial {
    let AttentionShape { head_dim: hd, scale, .. } = shape;
    let (kvw, bs) = (layer.kv_width, step.block_size);
    let ItemRows { table, queries, seen, col, mut p } = ItemRows::new(item, q, shape, step);
    let rows = queries.len();
    let mut scores = vec![0.0f32; rows * SPAN];
    // (offset in the span, first slot, keys) of each paged block's part.
    let mut segs: Vec<(usize, usize, usize)> = Vec::with_capacity(SPAN);
    let (first, end) = item.keys;
    assert!(end <= table.len() * bs, "invariant: keys within the block table");
    assert!(
        layer.k.len() >= table.iter().map(|&b| (b as usize + 1) * bs * kvw).max().unwrap_or(0),
        "invariant: blocks within the pool"
    );
    let mut j0 = first;
    while j0 < end {
        segs.clear();
        let mut n = 0;
        while j0 + n < end && n < SPAN {
            let j = j0 + n;
            let len = ((j / bs + 1) * bs).min(end).min(j0 + SPAN) - j;
            segs.push((n, table[j / bs] as usize * bs + j % bs, len));
            n += len;
        }
        // Scores, rows in pairs (a lone last row by itself); keys past a
        // row's position are masked.
        let mut r = 0;
        while r < rows {
            let pair = (r + 1 < rows) as usize;
            for &(off, slot, len) in &segs {
                let visible = |row: usize| seen[row].saturating_sub(j0 + off).min(len);
                let (va, vb) = (visible(r), visible(r + pair));
                let keys = layer.k[slot * kvw + col..].as_ptr();
                let (sa, sb) = (r * SPAN + off, (r + pair) * SPAN + off);
                let base = scores.as_mut_ptr();
                // SAFETY: AVX2/FMA per the contract; the key rows lie in
                // the slots of one block (asserted within the pool above);
                // rows r, r + pair of `scores` hold SPAN >= off + len.
                unsafe {
                    if pair == 1 {
                        let q2 = [queries[r], queries[r + 1]];
                        dot_keys::<2>(
                            q2,
                            keys,
                            kvw,
                            va.max(vb),
                            scale,
                            [base.add(sa), base.add(sb)],
                        );
                    } else {
                        dot_keys::<1>([queries[r]], keys, kvw, va, scale, [base.add(sa)]);
                    }
                }
                scores[sa + va..sa + len].fill(f32::NEG_INFINITY);
                scores[sb + vb..sb + len].fill(f32::NEG_INFINITY);
            }
            r += 1 + pair;
        }
        for r in 0..rows {
            softmax_step(
                &mut scores[r * SPAN..r * SPAN + n],
                &mut p.max[r],
                &mut p.sum[r],
                &mut p.out[r * hd..(r + 1) * hd],
            );
        }
        let mut r = 0;
        while r < rows {
            let pair = (r + 1 < rows) as usize;
            for &(off, slot, len) in &segs {
                let values = layer.v[slot * kvw + col..].as_ptr();
                let w = |row: usize| &scores[row * SPAN + off..row * SPAN + off + len];
                let out = p.out.as_mut_ptr();
                // SAFETY: as for the scores, with the value rows; outputs
                // r, r + pair are hd floats each, hd a multiple of 16.
                unsafe {
                    if pair == 1 {
                        let o = [out.add(r * hd), out.add((r + 1) * hd)];
                        weighted::<2>(o, [w(r), w(r + 1)], values, kvw, hd);
                    } else {
                        weighted::<1>([out.add(r * hd)], [w(r)], values, kvw, hd);
                    }
                }
            }
            r += 1 + pair;
        }
        j0 += n;
    }
    p
}

#[cfg(test)]
mod tests {
    use std::arch::x86_64::*;

    /// The vector `exp` against libm's over the range a softmax uses
    /// (scores minus their maximum, so at most 0) and past both ends.
    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        if !crate::simd::available() {
            return;
        }
        let mut worst = 0.0f64;
        for i in 0..=240_000 {
            let x = -110.0 + i as f32 * 0.0005;
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2/FMA checked above; `got` is 8 floats.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), crate::simd::exp(_mm256_set1_ps(x))) };
            let want = f64::from(x).exp();
            if x <= -87.336_55 {
                assert!(got[0] == 0.0 && want < 1.2e-38, "exp({x}) = {} below the range", got[0]);
                continue;
            }
            let rel = (f64::from(got[0]) - want).abs() / want;
            worst = worst.max(rel);
            assert!(rel < 3e-7, "exp({x}) = {}, libm {want}: relative {rel}", got[0]);
        }
        println!("worst relative error {worst:e}");
        // SAFETY: AVX2/FMA checked above.
        let masked =
            unsafe { _mm256_cvtss_f32(crate::simd::exp(_mm256_set1_ps(f32::NEG_INFINITY))) };
        assert_eq!(masked, 0.0, "a masked score weighs nothing");
    }
}
