//! Register-blocked products for batch-decode sizes (`m` from 9 to 64).
//!
//! Too many rows for the GEMV kernels (which keep every input row's
//! accumulators in registers) and too few for `gemm`'s packing to pay off.
//! Each rayon task widens a tile of weight rows to f32 into a buffer that
//! stays in L2, then a 4 x 2 micro-kernel (four input rows against two
//! weight rows, eight accumulators) sweeps the inputs over it. Every weight
//! byte is read from memory once per step; every output is an f32 dot
//! product.

use rayon::prelude::*;

use super::{CpuWeight, OutPtr};

/// Largest `m` this path is used for.
pub const TILE_MAX_ROWS: usize = 64;

/// Weight rows per tile: about 64 KiB of f32, at least 2, even.
fn tile_rows(k: usize) -> usize {
    ((16_384 / k.max(1)).clamp(2, 32)) & !1
}

pub fn tiled(x: &[f32], m: usize, k: usize, w: &CpuWeight, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::matmul::simd_available() {
            let n = w.rows;
            let nt = tile_rows(k);
            let ptr = OutPtr(out.as_mut_ptr());
            (0..n.div_ceil(nt)).into_par_iter().for_each_init(
                || vec![0.0f32; nt * k],
                |buf, t| {
                    let rows = t * nt..((t + 1) * nt).min(n);
                    for (i, r) in rows.clone().enumerate() {
                        w.row_to_f32(r, &mut buf[i * k..(i + 1) * k]);
                    }
                    // SAFETY: AVX2/FMA detected; x is m x k, buf holds
                    // rows.len() x k, and this task writes only columns
                    // `rows` of the m x n output, which no other task does.
                    unsafe { kernel::tile(x, m, k, buf, rows.len(), ptr.at(rows.start), n) };
                },
            );
            return true;
        }
    }
    false
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use crate::simd::hsum;

    /// `MR` input rows against `NR` weight rows.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `x` points at `MR` rows of `k` floats,
    /// `w` at `NR` rows of `k` floats; `out` at `MR` rows with stride `ldo`
    /// and `NR` writable columns.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro<const MR: usize, const NR: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let mut kk = 0;
        while kk + 8 <= k {
            // SAFETY: kk + 8 <= k keeps every load inside its row.
            unsafe {
                let mut wv = [_mm256_setzero_ps(); NR];
                for c in 0..NR {
                    wv[c] = _mm256_loadu_ps(w.add(c * k + kk));
                }
                for r in 0..MR {
                    let xv = _mm256_loadu_ps(x.add(r * k + kk));
                    for c in 0..NR {
                        acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                    }
                }
            }
            kk += 8;
        }
        for r in 0..MR {
            for c in 0..NR {
                let mut s = hsum(acc[r][c]);
                for t in kk..k {
                    // SAFETY: t < k.
                    s += unsafe { *x.add(r * k + t) * *w.add(c * k + t) };
                }
                // SAFETY: r < MR rows, c < NR columns of `out`.
                unsafe { *out.add(r * ldo + c) = s };
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA are available; `x` holds `m * k` floats, `w` holds
    /// `nt * k`; `out` points at column 0 of an `m`-row matrix with row
    /// stride `ldo` and at least `nt` writable columns.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        nt: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        debug_assert!(x.len() >= m * k && w.len() >= nt * k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut j = 0;
        while j < nt {
            let nr = (nt - j).min(3);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(4);
                // SAFETY: rows i..i+mr of x, j..j+nr of w and the matching
                // block of out are in bounds by the loop conditions.
                unsafe {
                    let (xs, ws, o) = (xp.add(i * k), wp.add(j * k), out.add(i * ldo + j));
                    match (mr, nr) {
                        (4, 3) => micro::<4, 3>(xs, ws, k, o, ldo),
                        (3, 3) => micro::<3, 3>(xs, ws, k, o, ldo),
                        (2, 3) => micro::<2, 3>(xs, ws, k, o, ldo),
                        (1, 3) => micro::<1, 3>(xs, ws, k, o, ldo),
                        (4, 2) => micro::<4, 2>(xs, ws, k, o, ldo),
                        (3, 2) => micro::<3, 2>(xs, ws, k, o, ldo),
                        (2, 2) => micro::<2, 2>(xs, ws, k, o, ldo),
                        (1, 2) => micro::<1, 2>(xs, ws, k, o, ldo),
                        (4, _) => micro::<4, 1>(xs, ws, k, o, ldo),
                        (3, _) => micro::<3, 1>(xs, ws, k, o, ldo),
                        (2, _) => micro::<2, 1>(xs, ws, k, o, ldo),
                        _ => micro::<1, 1>(xs, ws, k, o, ldo),
                    }
                }
                i += mr;
            }
            j += nr;
        }
    }
}
