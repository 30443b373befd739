//! AVX2 products of Q4_0/Q4_1/Q5_0/Q5_1 weight panels with many input
//! rows: the prefill kernel of the 32-value types whose values are
//! unsigned once their offset is set apart.
//!
//! As in [`super::avx2_panel`], a panel is unpacked once into 32-byte
//! vectors holding eight consecutive values of four weight rows
//! ([`Packed4x32`]); a `maddubs` with eight input bytes broadcast four
//! times covers four rows, and the four of a block are summed as i16
//! (at most `8 * 31 * 127` a lane) before one `madd` to i32. Each block is
//! then scaled in f32: `d_w d_a Σ q a` plus the offset term `m_w s_a`,
//! where `s_a = d_a Σ a` comes with the input block and `m_w` is the
//! block's minimum (Q4_1/Q5_1) or `-8 d_w` / `-16 d_w` (Q4_0/Q5_0).
//! Q8_0 is not here: its weights are signed, and without AVX-VNNI a
//! signed-by-signed byte product costs a `psign` and a `madd` per chunk,
//! no cheaper than the f32 product it would replace.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{f16_at, Q8Block, QuantType};

pub(super) use super::avx2_panel::ROWS;
use super::avx2_panel::{bcast8, pack, store_tile, TILE};

/// Whether `t` has a packed kernel here.
pub(super) fn packs(t: QuantType) -> bool {
    matches!(t, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1)
}

/// One 32-value block of four weight rows, unpacked.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Packed4x32 {
    /// `qs[q][8 r + t]`: value `8 q + t` of row `r`, unsigned.
    qs: [[u8; 32]; 4],
    /// Lanes `2r`, `2r + 1`: row `r`'s scale.
    d: [f32; 8],
    /// Lane `2r`: row `r`'s offset factor (the other lanes 0).
    m: [f32; 8],
}

impl Packed4x32 {
    const ZERO: Packed4x32 = Packed4x32 { qs: [[0; 32]; 4], d: [0.0; 8], m: [0.0; 8] };

    /// Row `r` of this block from the stored block `b` of type `t`.
    fn set_row(&mut self, t: QuantType, r: usize, b: &[u8]) {
        let d = f16_at(b);
        let (m, qh, qs) = match t {
            QuantType::Q4_0 => (-8.0 * d, None, &b[2..18]),
            QuantType::Q4_1 => (f16_at(&b[2..]), None, &b[4..20]),
            QuantType::Q5_0 => (-16.0 * d, Some(&b[2..6]), &b[6..22]),
            QuantType::Q5_1 => (f16_at(&b[2..]), Some(&b[4..8]), &b[8..24]),
            _ => unreachable!("invariant: only Q4_0/Q4_1/Q5_0/Q5_1 are packed here"),
        };
        let qh = qh.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
        let mut vals = [0u8; 32];
        for (j, q) in qs.iter().enumerate() {
            let bit = |i: usize| (((qh >> i) & 1) as u8) << 4;
            vals[j] = (q & 0xF) | bit(j);
            vals[j + 16] = (q >> 4) | bit(j + 16);
        }
        for (q, chunk) in self.qs.iter_mut().enumerate() {
            chunk[8 * r..8 * r + 8].copy_from_slice(&vals[8 * q..8 * q + 8]);
        }
        self.d[2 * r..2 * r + 2].fill(d);
        self.m[2 * r] = m;
        self.m[2 * r + 1] = 0.0;
    }
}

thread_local! {
    /// Each thread's packed panel, reused from call to call.
    static PANEL: RefCell<Vec<Packed4x32>> = const { RefCell::new(Vec::new()) };
}

/// Four packed weight rows (`nb` blocks at `w`) against the `TILE` input
/// rows `a`: lane `c` of `out[r]` is the product of weight row `r` and
/// input row `c`.
///
/// # Safety
/// `w` and each `a[c]` point at `nb` readable blocks.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(w: *const Packed4x32, a: [*const Q8Block; TILE], nb: usize) -> [__m256; ROWS] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); TILE];
    for b in 0..nb {
        // SAFETY: b < nb keeps every read inside block b of w and a[c].
        unsafe {
            let pb = &*w.add(b);
            let wv: [__m256i; 4] =
                std::array::from_fn(|q| _mm256_loadu_si256(pb.qs[q].as_ptr().cast()));
            let d = _mm256_loadu_ps(pb.d.as_ptr());
            let m = _mm256_loadu_ps(pb.m.as_ptr());
            for c in 0..TILE {
                let x = &*a[c].add(b);
                let xp = x.qs.as_ptr();
                let mut sum = _mm256_maddubs_epi16(wv[0], bcast8(xp));
                for q in 1..4 {
                    let xq = bcast8(xp.add(8 * q));
                    sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wv[q], xq));
                }
                let isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones));
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
                acc[c] = _mm256_fmadd_ps(isum, scale, acc[c]);
                acc[c] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), acc[c]);
            }
        }
    }
    transpose(&acc)
}

/// Lane `c` of vector `r`: lanes `2r` and `2r + 1` of `acc[c]` summed.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(acc: &[__m256; TILE]) -> [__m256; ROWS] {
    // Each hadd: (c r0, c r1, c' r0, c' r1 | c r2, c r3, c' r2, c' r3);
    // reordered to the 64-bit pairs r0 (c, c'), r1, r2, r3.
    let order = _mm256_setr_epi32(0, 2, 1, 3, 4, 6, 5, 7);
    let p: [__m256d; 4] = std::array::from_fn(|i| {
        let h = _mm256_hadd_ps(acc[2 * i], acc[2 * i + 1]);
        _mm256_castps_pd(_mm256_permutevar8x32_ps(h, order))
    });
    let (lo01, lo23) = (_mm256_unpacklo_pd(p[0], p[1]), _mm256_unpacklo_pd(p[2], p[3]));
    let (hi01, hi23) = (_mm256_unpackhi_pd(p[0], p[1]), _mm256_unpackhi_pd(p[2], p[3]));
    [
        _mm256_castpd_ps(_mm256_permute2f128_pd::<0x20>(lo01, lo23)),
        _mm256_castpd_ps(_mm256_permute2f128_pd::<0x20>(hi01, hi23)),
        _mm256_castpd_ps(_mm256_permute2f128_pd::<0x31>(lo01, lo23)),
        _mm256_castpd_ps(_mm256_permute2f128_pd::<0x31>(hi01, hi23)),
    ]
}

/// `out + i * ld + j` receives `w_j . x_i` for the rows `j < nr / 4 * 4`
/// of the `nr` consecutive rows of type `t` ([`packs`]) in `w` and every
/// input row `i` of `a` (`nb` blocks each; a last partial group of inputs
/// is padded with copies of its last row, whose results are not stored).
/// The other weight rows are the caller's.
///
/// # Safety
/// The CPU has AVX2 and FMA; for every such `i` and `j`, `out + i * ld + j`
/// is valid for writes and nobody else's during the call.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_packed(
    t: QuantType,
    w: &[u8],
    nr: usize,
    a: &[Q8Block],
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let bb = t.block_bytes();
    let m = a.len() / nb;
    assert!(packs(t), "invariant: a type with a packed kernel");
    assert_eq!(w.len(), nr * nb * bb, "invariant: nr weight rows of nb blocks");
    assert_eq!(a.len(), m * nb, "invariant: m input rows of nb blocks");
    PANEL.with_borrow_mut(|panel| {
        pack(panel, Packed4x32::ZERO, w, nr, nb, bb, |p, r, b| p.set_row(t, r, b));
        for i in (0..m).step_by(TILE) {
            let valid = TILE.min(m - i);
            let inputs: [*const Q8Block; TILE] =
                std::array::from_fn(|c| a[(i + c.min(valid - 1)) * nb..].as_ptr());
            for (x, packed) in panel.chunks_exact(nb).enumerate() {
                // SAFETY: packed and each input row (all below m) have nb
                // blocks (the lengths asserted above).
                let lanes = unsafe { tile(packed.as_ptr(), inputs, nb) };
                // SAFETY: inputs i..i + valid are below m and rows
                // 4 x..4 x + 4 below nr / 4 * 4: the caller's contract.
                unsafe { store_tile(&lanes, valid, out.add(i * ld + ROWS * x), ld) };
            }
        }
    });
}
