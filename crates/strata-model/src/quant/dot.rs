//! Input quantization and the portable dot products of quantized weight
//! rows with quantized inputs.

use super::formats::{scale_min_k4, KBlock};
use super::{f16_at, nearest_int, ActQuant, Q8Block, Q8KBlock, QuantType};

/// 32 values to 8 bits: `d = max|x| / 127`, `q = round(x / d)`.
pub(super) fn quantize_q8(x: &[f32]) -> Q8Block {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    Q8Block { d, s: d * sum as f32, qs }
}

/// 256 values to 8 bits as ggml's `quantize_row_q8_K_ref` (scale from the
/// signed extreme), with the sums of each 16.
pub(super) fn quantize_q8k(x: &[f32]) -> Q8KBlock {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut b = Q8KBlock { d: 0.0, qs: [0; 256], bsums: [0; 16] };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = qs.iter().map(|&q| i16::from(q)).sum();
    }
    b.d = 1.0 / iscale;
    b
}

pub(super) fn vec_dot(t: QuantType, w: &[u8], acts: &ActQuant, out: &mut [f32]) {
    match acts {
        ActQuant::Q8 { cols, blocks, .. } => {
            let nb = cols / 32;
            for (o, a) in out.iter_mut().zip(blocks.chunks_exact(nb)) {
                *o = w.chunks_exact(t.block_bytes()).zip(a).map(|(wb, ab)| dot_32(t, wb, ab)).sum();
            }
        }
        ActQuant::Q8K { cols, blocks, .. } => {
            let nb = cols / 256;
            for (o, a) in out.iter_mut().zip(blocks.chunks_exact(nb)) {
                *o =
                    w.chunks_exact(t.block_bytes()).zip(a).map(|(wb, ab)| dot_256(t, wb, ab)).sum();
            }
        }
    }
}

fn idot(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
    w.zip(a).map(|(w, &a)| w * i32::from(a)).sum()
}

/// One 32-value block of `t` with one input block.
fn dot_32(t: QuantType, b: &[u8], a: &Q8Block) -> f32 {
    let nibbles = |qs: &[u8]| {
        let lo = qs.iter().map(|q| i32::from(q & 0xF));
        lo.chain(qs.iter().map(|q| i32::from(q >> 4))).collect::<Vec<_>>()
    };
    let with_high = |qs: &[u8], qh: &[u8]| {
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        let mut v = nibbles(qs);
        for (j, v) in v.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as i32;
        }
        v
    };
    match t {
        QuantType::Q4_0 => {
            f16_at(b) * a.d * idot(nibbles(&b[2..18]).into_iter().map(|q| q - 8), &a.qs) as f32
        }
        QuantType::Q4_1 => {
            f16_at(b) * a.d * idot(nibbles(&b[4..20]).into_iter(), &a.qs) as f32
                + f16_at(&b[2..]) * a.s
        }
        QuantType::Q5_0 => {
            f16_at(b)
                * a.d
                * idot(with_high(&b[6..22], &b[2..6]).into_iter().map(|q| q - 16), &a.qs) as f32
        }
        QuantType::Q5_1 => {
            f16_at(b) * a.d * idot(with_high(&b[8..24], &b[4..8]).into_iter(), &a.qs) as f32
                + f16_at(&b[2..]) * a.s
        }
        QuantType::Q8_0 => {
            f16_at(b) * a.d * idot(b[2..34].iter().map(|&q| i32::from(q as i8)), &a.qs) as f32
        }
        QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => {
            unreachable!("invariant: K types use Q8_K inputs")
        }
    }
}

/// One 256-value K block of `t` with one input block.
fn dot_256(t: QuantType, b: &[u8], a: &Q8KBlock) -> f32 {
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let KBlock { d, dmin, scales, qh, qs } = KBlock::of(t, b);
            let (mut isum, mut msum) = (0i32, 0i32);
            for sub in 0..8 {
                let (sc, m) = scale_min_k4(sub, scales);
                let chunk = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
                let q = chunk.iter().enumerate().map(|(l, &q)| {
                    let mut v = (q >> (4 * (sub % 2))) & 0xF;
                    if let Some(qh) = qh {
                        v |= ((qh[l] >> sub) & 1) << 4;
                    }
                    i32::from(v)
                });
                isum += i32::from(sc) * idot(q, &a.qs[32 * sub..32 * sub + 32]);
                msum +=
                    i32::from(m) * (i32::from(a.bsums[2 * sub]) + i32::from(a.bsums[2 * sub + 1]));
            }
            a.d * d * isum as f32 - a.d * dmin * msum as f32
        }
        QuantType::Q6K => {
            let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
            let d = f16_at(&b[208..]);
            let mut isum = 0i32;
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                for s in 0..4 {
                    for g in 0..2 {
                        let q = (16 * g..16 * g + 16).map(|l| {
                            let byte = ql[l + 32 * (s % 2)];
                            let lo = if s < 2 { byte & 0xF } else { byte >> 4 };
                            i32::from(lo | (((qh[l] >> (2 * s)) & 3) << 4)) - 32
                        });
                        let e = 128 * half + 32 * s + 16 * g;
                        isum += i32::from(sc[e / 16] as i8) * idot(q, &a.qs[e..e + 16]);
                    }
                }
            }
            a.d * d * isum as f32
        }
        _ => unreachable!("invariant: 32-value types use Q8 inputs"),
    }
}
