//! x86-64 SIMD helpers shared by the AVX2 kernels (matmul, tiles,
//! attention, quantized dot products).

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

pub(crate) use crate::quant::CpuIsa as Isa;

/// Whether this CPU has AVX2, FMA and F16C, which the matmul and
/// quantized kernels need (detected once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// The highest level the kernels may use: `STRATA_CPU_ISA` (`avx2`,
/// `avxvnni`, or `auto`, the default) at start, [`cap_isa`] later.
static CAP: AtomicU8 = AtomicU8::new(Isa::Avx512Vnni as u8);

/// What this CPU has: (AVX-VNNI, AVX-512 VNNI), each besides
/// [`available`]. Detected once, when the environment's cap is read.
fn detected() -> (bool, bool) {
    static DETECTED: OnceLock<(bool, bool)> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        let base = available();
        let vnni = base && is_x86_feature_detected!("avxvnni");
        let avx512 = base
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        let cap = match std::env::var("STRATA_CPU_ISA").as_deref() {
            Ok("avx2") => Some(Isa::Avx2),
            Ok("avxvnni") => Some(Isa::AvxVnni),
            Ok("" | "auto") | Err(_) => None,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "STRATA_CPU_ISA is `avx2`, `avxvnni` or `auto`; this value is ignored (auto)"
                );
                None
            }
        };
        if let Some(cap) = cap {
            CAP.store(cap as u8, Ordering::Relaxed);
        }
        (vnni, avx512)
    })
}

/// Whether the batched products may use `vpdpbusd` on 256-bit vectors:
/// the CPU has AVX-VNNI and the cap allows it.
pub(crate) fn vnni() -> bool {
    let (vnni, _) = detected();
    vnni && CAP.load(Ordering::Relaxed) >= Isa::AvxVnni as u8
}

/// Whether the batched K-quant products may use `vpdpbusd` on 512-bit
/// vectors: the CPU has AVX-512 VNNI and the cap allows it.
pub(crate) fn avx512_vnni() -> bool {
    let (_, avx512) = detected();
    avx512 && CAP.load(Ordering::Relaxed) >= Isa::Avx512Vnni as u8
}

/// Caps the levels the kernels use, for this process (benchmarks compare
/// them in one run); returns the level now in use, which needs a CPU that
/// has it. Every level gives the K-quant products' same bits.
pub fn cap_isa(cap: Isa) -> Isa {
    detected();
    CAP.store(cap as u8, Ordering::Relaxed);
    isa()
}

/// The highest level in use.
pub fn isa() -> Isa {
    if avx512_vnni() {
        Isa::Avx512Vnni
    } else if vnni() {
        Isa::AvxVnni
    } else {
        Isa::Avx2
    }
}

/// The sum of the eight lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// `e^x` for each lane (Cephes' `expf` polynomial: within 8e-8 relative
/// of the exact value, as the attention tests measure); lanes at or below `-87.3` (including masked
/// `-inf` scores) are exactly 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n * C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const P: [f32; 6] =
        [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    let low = _mm256_set1_ps(-87.336_55);
    let live = _mm256_cmp_ps::<_CMP_GT_OQ>(x, low);
    let x = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.376_26));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C1), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C2), r);
    let mut p = _mm256_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let pow2 =
        _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(pow2)), live)
}
