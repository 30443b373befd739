//! Block layouts (ggml's `block_q4_0` ... `block_q6_K`), dequantization and
//! ggml's reference quantizers. All multi-byte fields are little-endian.
//!
//! | type | bytes | layout |
//! | --- | --- | --- |
//! | Q4_0 | 18 | d f16, qs[16]: value j low nibble, j+16 high |
//! | Q4_1 | 20 | d f16, m f16, qs[16] |
//! | Q5_0 | 22 | d f16, qh u32 (bit j: 5th bit of value j), qs[16] |
//! | Q5_1 | 24 | d f16, m f16, qh u32, qs[16] |
//! | Q8_0 | 34 | d f16, qs[32] i8 |
//! | Q4_K | 144 | d f16, dmin f16, scales[12] (8 6-bit scales + 8 mins), qs[128] |
//! | Q5_K | 176 | d, dmin, scales[12], qh[32] (bit i: sub-block i), qs[128] |
//! | Q6_K | 210 | ql[128], qh[64], scales[16] i8, d f16 |
//!
//! In the K types, each 32 bytes of `qs` hold two 32-value sub-blocks: low
//! nibbles the first, high nibbles the second.

use half::f16;

use super::{f16_at, nearest_int, QuantType};

/// Widens one row of `t` blocks to f32, bit for bit as ggml does.
pub fn dequantize_row(t: QuantType, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        t.row_bytes(out.len()),
        Some(bytes.len()),
        "invariant: a {} row of {} values",
        t.name(),
        out.len()
    );
    let blocks = bytes.chunks_exact(t.block_bytes()).zip(out.chunks_exact_mut(t.block_elems()));
    for (b, y) in blocks {
        match t {
            QuantType::Q4_0 => {
                let d = f16_at(b);
                for (j, &q) in b[2..18].iter().enumerate() {
                    y[j] = d * f32::from(i8::try_from(q & 0xF).expect("nibble") - 8);
                    y[j + 16] = d * f32::from(i8::try_from(q >> 4).expect("nibble") - 8);
                }
            }
            QuantType::Q4_1 => {
                let (d, m) = (f16_at(b), f16_at(&b[2..]));
                for (j, &q) in b[4..20].iter().enumerate() {
                    y[j] = d * f32::from(q & 0xF) + m;
                    y[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
            QuantType::Q5_0 => {
                let d = f16_at(b);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for (j, &q) in b[6..22].iter().enumerate() {
                    let (lo, hi) = five_bits(q, qh, j);
                    y[j] = d * f32::from(lo as i8 - 16);
                    y[j + 16] = d * f32::from(hi as i8 - 16);
                }
            }
            QuantType::Q5_1 => {
                let (d, m) = (f16_at(b), f16_at(&b[2..]));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                for (j, &q) in b[8..24].iter().enumerate() {
                    let (lo, hi) = five_bits(q, qh, j);
                    y[j] = d * f32::from(lo) + m;
                    y[j + 16] = d * f32::from(hi) + m;
                }
            }
            QuantType::Q8_0 => {
                let d = f16_at(b);
                for (o, &q) in y.iter_mut().zip(&b[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            QuantType::Q4K | QuantType::Q5K => {
                let KBlock { d, dmin, scales, qh, qs } = KBlock::of(t, b);
                for c in 0..4 {
                    for half in 0..2 {
                        let sub = 2 * c + half;
                        let (sc, m) = scale_min_k4(sub, scales);
                        let d1 = d * f32::from(sc);
                        let m1 = dmin * f32::from(m);
                        for l in 0..32 {
                            let mut q = (qs[32 * c + l] >> (4 * half)) & 0xF;
                            if let Some(qh) = qh {
                                q |= ((qh[l] >> sub) & 1) << 4;
                            }
                            y[32 * sub + l] = d1 * f32::from(q) - m1;
                        }
                    }
                }
            }
            QuantType::Q6K => {
                let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
                let d = f16_at(&b[208..]);
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (s, q) in q.into_iter().enumerate() {
                            let e = 32 * s + l;
                            let scale = f32::from(sc[8 * half + e / 16] as i8);
                            y[e] = d * scale * f32::from(q as i8 - 32);
                        }
                    }
                }
            }
        }
    }
}

/// The fields of a Q4_K (no `qh`) or Q5_K block.
pub(super) struct KBlock<'a> {
    pub d: f32,
    pub dmin: f32,
    pub scales: &'a [u8],
    pub qh: Option<&'a [u8]>,
    pub qs: &'a [u8],
}

impl<'a> KBlock<'a> {
    pub fn of(t: QuantType, b: &'a [u8]) -> Self {
        let (qh, qs) =
            if t == QuantType::Q4K { (None, &b[16..144]) } else { (Some(&b[16..48]), &b[48..176]) };
        Self { d: f16_at(b), dmin: f16_at(&b[2..]), scales: &b[4..16], qh, qs }
    }
}

/// Values `j` and `j + 16` of a Q5 block: nibbles plus their bits of `qh`.
#[inline]
fn five_bits(q: u8, qh: u32, j: usize) -> (u8, u8) {
    let bit = |i: usize| (((qh >> i) & 1) as u8) << 4;
    ((q & 0xF) | bit(j), (q >> 4) | bit(j + 16))
}

/// Sub-block `j`'s 6-bit scale and minimum in a Q4_K/Q5_K `scales` field
/// (ggml's `get_scale_min_k4`).
#[inline]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The eight 6-bit scales and minimums of a Q4_K/Q5_K block from its 12
/// packed bytes `q` (ggml's `get_scale_min_k4` for every sub-block at
/// once, as llama.cpp's kernels unpack them): the scales in the bytes of
/// the first word, the minimums in the second.
pub(super) fn scales_mins_k4(q: &[u8]) -> (u64, u64) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes(q[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let scales_hi = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mins_hi = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    (join(u0 & LOW6, scales_hi), join(u1 & LOW6, mins_hi))
}

fn put_f16(out: &mut [u8], v: f32) {
    out[..2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Quantizes one row with ggml's reference quantizer of `t`
/// (`quantize_row_*_ref`), the one llama.cpp uses without an importance
/// matrix.
pub fn quantize_row(t: QuantType, x: &[f32], out: &mut [u8]) {
    assert_eq!(
        t.row_bytes(x.len()),
        Some(out.len()),
        "invariant: a {} row of {} values",
        t.name(),
        x.len()
    );
    for (x, y) in x.chunks_exact(t.block_elems()).zip(out.chunks_exact_mut(t.block_bytes())) {
        match t {
            QuantType::Q4_0 | QuantType::Q5_0 => quantize_symmetric(t == QuantType::Q5_0, x, y),
            QuantType::Q4_1 | QuantType::Q5_1 => quantize_offset(t == QuantType::Q5_1, x, y),
            QuantType::Q8_0 => {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(y, d);
                for (q, v) in y[2..].iter_mut().zip(x) {
                    *q = (v * id).round() as i8 as u8;
                }
            }
            QuantType::Q4K | QuantType::Q5K => quantize_k_asym(t == QuantType::Q5K, x, y),
            QuantType::Q6K => quantize_q6k(x, y),
        }
    }
}

/// Q4_0 / Q5_0: `d = max / -8` (or -16) with the signed extreme, values
/// offset by 8 (16) and truncated.
fn quantize_symmetric(five: bool, x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let (levels, top) = if five { (-16.0f32, 31i8) } else { (-8.0f32, 15i8) };
    let d = max / levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    let q = |v: f32| ((v * id + (0.5 - levels)) as i8).min(top) as u8;
    if five {
        let mut qh = 0u32;
        for j in 0..16 {
            let (a, b) = (q(x[j]), q(x[j + 16]));
            y[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
            qh |= u32::from((a & 0x10) >> 4) << j;
            qh |= u32::from((b & 0x10) >> 4) << (j + 16);
        }
        y[2..6].copy_from_slice(&qh.to_le_bytes());
    } else {
        for j in 0..16 {
            y[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

/// Q4_1 / Q5_1: `x ≈ d * q + min` over the block's range.
fn quantize_offset(five: bool, x: &[f32], y: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / if five { 31.0 } else { 15.0 };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    put_f16(&mut y[2..], min);
    if five {
        let q = |v: f32| ((v - min) * id + 0.5) as u8;
        let mut qh = 0u32;
        for j in 0..16 {
            let (a, b) = (q(x[j]), q(x[j + 16]));
            y[8 + j] = (a & 0xF) | ((b & 0xF) << 4);
            qh |= u32::from((a & 0x10) >> 4) << j;
            qh |= u32::from((b & 0x10) >> 4) << (j + 16);
        }
        y[4..8].copy_from_slice(&qh.to_le_bytes());
    } else {
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        for j in 0..16 {
            y[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

/// ggml's `make_qkx2_quants`: a scale and minimum for `x` (levels
/// `0..=nmax`) minimizing the weighted squared error over a small search.
/// Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K / Q5_K (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`).
fn quantize_k_asym(five: bool, x: &[f32], y: &mut [u8]) {
    let nmax = if five { 31 } else { 15 };
    let mut levels = [0u8; 256];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |a, v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (rmin, nstep) = if five { (-0.5, 15) } else { (-1.0, 20) };
        let l = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, l, &mut laux, rmin, 0.1, nstep);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(y, max_scale / 63.0);
    put_f16(&mut y[2..], max_min / 63.0);
    y[4..16].copy_from_slice(&packed);
    let (d_all, dmin_all) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    if five {
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for j in 0..32 {
                let (mut l1, mut l2) = (levels[64 * c + j], levels[64 * c + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= 2 << (2 * c);
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
        }
    } else {
        for c in 0..4 {
            for l in 0..32 {
                y[16 + 32 * c + l] = levels[64 * c + l] | (levels[64 * c + l + 32] << 4);
            }
        }
    }
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights:
/// a signed scale for `x` (levels `-nmax..nmax-1`, stored offset by nmax).
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        levels.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (quant(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in levels.iter_mut().zip(x) {
                *l = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K (`quantize_row_q6_K_ref`).
fn quantize_q6k(x: &[f32], y: &mut [u8]) {
    let mut levels = [0i8; 256];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    y.fill(0);
    if max_abs_scale < 1e-15 {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(&mut y[208..], 1.0 / iscale);
    let d_all = f16_round(1.0 / iscale);
    for ib in 0..16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = d_all * f32::from(y[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let lv = &levels[128 * h..];
        for l in 0..32 {
            let q = |o: usize| lv[l + o] as u8;
            ql[64 * h + l] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[64 * h + l + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[32 * h + l] =
                (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
}
