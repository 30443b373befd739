//! Quantized dot products against an f64 reference on random blocks, the
//! AVX2 kernels against the portable ones, and round trips.

use proptest::prelude::*;

use super::*;

/// Random values with a spread of magnitudes (outliers, zeros, tiny).
fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            4 => -1.0f32..1.0,
            1 => -20.0f32..20.0,
            1 => Just(0.0f32),
            1 => -1e-3f32..1e-3,
        ],
        n,
    )
}

fn quantized(t: QuantType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; t.row_bytes(x.len()).unwrap()];
    quantize_row(t, x, &mut out);
    out
}

fn dequantized(t: QuantType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    dequantize_row(t, bytes, &mut out);
    out
}

/// The exact dot of the dequantized weights with the inputs as quantized
/// (the integer products are exact; only scales are rounded), in f64.
fn reference(w: &[f32], acts: &ActQuant, row: usize) -> f64 {
    let k = acts.cols();
    let x: Vec<f64> = match acts {
        ActQuant::Q8 { blocks, .. } => blocks[row * k / 32..(row + 1) * k / 32]
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d) * f64::from(q)))
            .collect(),
        ActQuant::Q8K { blocks, .. } => blocks[row * k / 256..(row + 1) * k / 256]
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d) * f64::from(q)))
            .collect(),
    };
    w.iter().zip(&x).map(|(&w, &x)| f64::from(w) * x).sum()
}

/// The bound on a dot product of weights `wd` with inputs `x`: f32
/// rounding of each block's scaled sum, relative to the sum of magnitudes.
fn tolerance(wd: &[f32], x: &[f32]) -> f64 {
    let mag: f64 = wd.iter().zip(x).map(|(&w, &x)| f64::from(w.abs()) * f64::from(x.abs())).sum();
    1e-5 * mag + 1e-6
}

fn check_type(t: QuantType, w: &[f32], x: &[f32], m: usize) -> Result<(), TestCaseError> {
    let k = w.len();
    let bytes = quantized(t, w);
    let wd = dequantized(t, &bytes, k);
    let acts = quantize_activations(t, x, m, k);
    let mut fast = vec![0.0f32; m];
    let mut portable = vec![0.0f32; m];
    vec_dot(t, &bytes, &acts, &mut fast);
    vec_dot_portable(t, &bytes, &acts, &mut portable);
    for r in 0..m {
        let want = reference(&wd, &acts, r);
        let tol = tolerance(&wd, &x[r * k..]);
        prop_assert!(
            (f64::from(fast[r]) - want).abs() <= tol,
            "{} row {r}: simd {} vs {want} (tol {tol})",
            t.name(),
            fast[r]
        );
        prop_assert!(
            (f64::from(portable[r]) - want).abs() <= tol,
            "{} row {r}: portable {} vs {want} (tol {tol})",
            t.name(),
            portable[r]
        );
    }
    Ok(())
}

/// [`gemm`] of `nr` weight rows (`w` is `nr x k`) with `m` input rows
/// against the f64 reference of each pair.
fn check_gemm(
    t: QuantType,
    w: &[f32],
    nr: usize,
    x: &[f32],
    m: usize,
) -> Result<(), TestCaseError> {
    let k = w.len() / nr;
    let bytes: Vec<u8> = w.chunks(k).flat_map(|row| quantized(t, row)).collect();
    let acts = quantize_activations(t, x, m, k);
    let mut out = vec![f32::NAN; m * nr];
    gemm(t, &bytes, nr, &acts, &mut out);
    let row_bytes = bytes.len() / nr;
    for j in 0..nr {
        let wd = dequantized(t, &bytes[j * row_bytes..(j + 1) * row_bytes], k);
        for i in 0..m {
            let want = reference(&wd, &acts, i);
            let tol = tolerance(&wd, &x[i * k..]);
            let got = f64::from(out[i * nr + j]);
            prop_assert!(
                (got - want).abs() <= tol,
                "{} weight row {j} input row {i} of {nr}x{m}: {got} vs {want} (tol {tol})",
                t.name()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every tile shape of the batched product (whole and partial groups
    /// of eight input rows, and from 24 input rows the packed kernel's
    /// four weight rows with the rows and inputs it leaves), each type.
    #[test]
    fn gemm_matches_the_reference(
        w in values(512 * 17),
        x in values(512 * 37),
    ) {
        for t in QuantType::ALL {
            for (nr, m) in [(3, 9), (2, 4), (1, 3), (3, 2), (1, 5), (2, 6), (1, 7), (1, 8), (2, 1), (1, 17), (6, 37), (4, 32), (10, 33), (9, 17), (17, 9)] {
                check_gemm(t, &w[..512 * nr], nr, &x[..512 * m], m)?;
            }
        }
    }

    /// From 24 input rows the K types unpack the weights first
    /// (`vnni_panel` where the CPU has AVX-VNNI, else `avx2_panel`); each
    /// group of eight input rows gets the same bits as when it is
    /// multiplied alone (by the kernel on the stored blocks). Ten weight
    /// rows: a packed group of eight (or two of four) and two left over.
    #[test]
    fn packed_gemm_gives_the_grouped_kernels_bits(
        w in values(512 * 10),
        x in values(512 * 40),
    ) {
        for t in [QuantType::Q4K, QuantType::Q5K, QuantType::Q6K] {
            let (nr, m, k) = (10, 40, 512);
            let bytes: Vec<u8> = w.chunks(k).flat_map(|row| quantized(t, row)).collect();
            let mut whole = vec![f32::NAN; m * nr];
            gemm(t, &bytes, nr, &quantize_activations(t, &x, m, k), &mut whole);
            for (g, rows) in x.chunks(8 * k).enumerate() {
                let mut alone = vec![f32::NAN; 8 * nr];
                gemm(t, &bytes, nr, &quantize_activations(t, rows, 8, k), &mut alone);
                let same = whole[g * 8 * nr..(g + 1) * 8 * nr].iter().zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{} group {g}: {:?} vs {:?}", t.name(),
                    &whole[g * 8 * nr..(g + 1) * 8 * nr], alone);
            }
        }
    }

    /// The packed K-quant kernels give the same bits on every whole tile,
    /// so which one a CPU takes never changes a result. (Each VNNI kernel
    /// is checked where the CPU has its instructions.)
    #[test]
    fn vnni_gemm_gives_the_avx2_kernels_bits(
        w in values(512 * 24),
        x in values(512 * 16),
    ) {
        if !simd_available() {
            return Ok(());
        }
        let vnni = simd_available() && is_x86_feature_detected!("avxvnni");
        let avx512 = simd_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        for t in [QuantType::Q4K, QuantType::Q5K, QuantType::Q6K] {
            // 24 rows: a whole sixteen-row panel and a half one.
            let (nr, m, k) = (24, 16, 512);
            let bytes: Vec<u8> = w.chunks(k).flat_map(|row| quantized(t, row)).collect();
            let ActQuant::Q8K { blocks, groups, .. } = quantize_activations(t, &x, m, k) else {
                unreachable!("K types take Q8_K inputs")
            };
            let mut avx2 = vec![f32::NAN; m * nr];
            // SAFETY: AVX2/FMA/F16C were checked; the output is the whole
            // m x nr result.
            unsafe {
                avx2_panel::gemm_packed(t, &bytes, nr, &blocks, &groups, k / 256, avx2.as_mut_ptr(), nr);
            }
            if vnni {
                let mut out = vec![f32::NAN; m * nr];
                // SAFETY: AVX-VNNI was checked too; the same output.
                unsafe {
                    vnni_panel::gemm_packed(t, &bytes, nr, &blocks, &groups, k / 256, out.as_mut_ptr(), nr);
                }
                let same = avx2.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{} AVX-VNNI: {:?} vs {:?}", t.name(), avx2, out);
            }
            if avx512 {
                let mut out = vec![f32::NAN; m * nr];
                // SAFETY: AVX-512 F, BW and VNNI were checked too; the
                // same output.
                unsafe {
                    vnni_panel::gemm_packed16(t, &bytes, nr, &blocks, &groups, k / 256, out.as_mut_ptr(), nr);
                }
                let same = avx2.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{} AVX-512 VNNI: {:?} vs {:?}", t.name(), avx2, out);
            }
        }
    }

    /// The 256- and 512-bit VNNI kernels of the 32-value types give the
    /// same bits (the same operations lane by lane), so the reference
    /// check of whichever `gemm` takes covers both. 24 weight rows: a
    /// whole sixteen-row panel and a half one; 11 inputs: a partial tile.
    #[test]
    fn vnni_kernels_of_32_value_types_agree(
        w in values(256 * 24),
        x in values(256 * 11),
    ) {
        let vnni = simd_available() && is_x86_feature_detected!("avxvnni");
        let avx512 = simd_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni");
        if !(vnni && avx512) {
            return Ok(());
        }
        for t in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q5_1, QuantType::Q8_0] {
            let (nr, m, k) = (24, 11, 256);
            let bytes: Vec<u8> = w.chunks(k).flat_map(|row| quantized(t, row)).collect();
            let ActQuant::Q8 { blocks, .. } = quantize_activations(t, &x, m, k) else {
                unreachable!("32-value types take Q8 inputs")
            };
            let (mut ymm, mut zmm) = (vec![f32::NAN; m * nr], vec![f32::NAN; m * nr]);
            // SAFETY: AVX2/FMA/F16C, AVX-VNNI and AVX-512 F/VNNI were
            // checked above; each output is the whole m x nr result.
            unsafe {
                vnni_panel32::gemm_packed(t, &bytes, nr, &blocks, k / 32, ymm.as_mut_ptr(), nr);
                vnni_panel32::gemm_packed16(t, &bytes, nr, &blocks, k / 32, zmm.as_mut_ptr(), nr);
            }
            let same = ymm.iter().zip(&zmm).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "{}: {:?} vs {:?}", t.name(), ymm, zmm);
        }
    }

    /// The AVX2 input quantizers give the portable ones' bits: on random
    /// blocks with ties of the extreme, zeros, NaN, infinities and
    /// subnormals among ordinary values.
    #[test]
    fn input_quantizers_agree(
        x in prop::collection::vec(
            prop_oneof![
                8 => -20.0f32..20.0,
                1 => Just(7.5f32),
                1 => Just(-7.5f32),
                1 => Just(0.0f32),
                1 => prop_oneof![
                    Just(f32::NAN),
                    Just(f32::INFINITY),
                    Just(f32::NEG_INFINITY),
                    Just(1e-40f32),
                    Just(-1e-42f32),
                ],
            ],
            256,
        ),
        tiny in any::<bool>(),
    ) {
        if !simd_available() {
            return Ok(());
        }
        // Also all-subnormal blocks, whose Q8_0 scale is subnormal.
        let x: Vec<f32> = if tiny { x.iter().map(|v| v * 1e-39).collect() } else { x };
        // SAFETY: AVX2 was checked above.
        let (v, p) = (unsafe { avx2::quantize_q8k(&x) }, dot::quantize_q8k(&x));
        prop_assert_eq!(v.d.to_bits(), p.d.to_bits());
        prop_assert_eq!(v.qs, p.qs);
        prop_assert_eq!(v.bsums, p.bsums);
        for b in x.chunks(32) {
            // SAFETY: as above.
            let (v, p) = (unsafe { avx2::quantize_q8(b) }, dot::quantize_q8(b));
            prop_assert_eq!((v.d.to_bits(), v.s.to_bits(), v.qs), (p.d.to_bits(), p.s.to_bits(), p.qs));
        }
    }

    #[test]
    fn dot_products_of_32_value_types(
        w in values(96),
        x in values(96 * 5),
    ) {
        for t in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q5_1, QuantType::Q8_0] {
            for m in [1, 5] {
                check_type(t, &w, &x[..96 * m], m)?;
            }
        }
    }

    #[test]
    fn dot_products_of_k_types(
        w in values(512),
        x in values(512 * 5),
    ) {
        for t in [QuantType::Q4K, QuantType::Q5K, QuantType::Q6K] {
            for m in [1, 5] {
                check_type(t, &w, &x[..512 * m], m)?;
            }
        }
    }

    /// Inputs quantized to 8 bits are within half a step of the values.
    #[test]
    fn input_quantization_is_within_half_a_step(x in values(512)) {
        for t in [QuantType::Q8_0, QuantType::Q4K] {
            let acts = quantize_activations(t, &x, 2, 256);
            let back: Vec<(f32, f32)> = match &acts {
                ActQuant::Q8 { blocks, .. } => {
                    blocks.iter().flat_map(|b| b.qs.iter().map(move |&q| (b.d * f32::from(q), b.d))).collect()
                }
                ActQuant::Q8K { blocks, .. } => {
                    blocks.iter().flat_map(|b| b.qs.iter().map(move |&q| (b.d * f32::from(q), b.d))).collect()
                }
            };
            for (&v, (got, d)) in x.iter().zip(back) {
                prop_assert!((v - got).abs() <= 0.5001 * d.abs() + 1e-30, "{v} -> {got} (step {d})");
            }
        }
    }

    /// Quantize then dequantize stays within each type's step.
    #[test]
    fn round_trip_error_is_within_the_step(w in values(256)) {
        for t in QuantType::ALL {
            let back = dequantized(t, &quantized(t, &w), 256);
            for (block, (orig, got)) in w.chunks(32).zip(back.chunks(32)).enumerate() {
                let range = orig.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let levels = match t {
                    QuantType::Q8_0 => 127.0,
                    QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q5K | QuantType::Q6K => 15.0,
                    _ => 7.0,
                };
                // K types share a block scale: a sub-block of small values
                // keeps a step set by the block's largest sub-block.
                let scale_of = if t.block_elems() == 256 { w.iter().fold(0.0f32, |a, v| a.max(v.abs())) } else { range };
                let tol = 1.01 * scale_of / levels + 1e-6;
                for (a, b) in orig.iter().zip(got) {
                    prop_assert!((a - b).abs() <= tol, "{} block {block}: {a} -> {b} (tol {tol})", t.name());
                }
            }
        }
    }
}

/// The type table matches ggml's.
#[test]
fn type_table() {
    for q in QuantType::ALL {
        assert_eq!(QuantType::from_ggml_type(q.ggml_type()), Some(q));
        assert_eq!(QuantType::from_name(&q.name().to_lowercase()), Some(q));
        assert_eq!(q.row_bytes(q.block_elems() * 3), Some(3 * q.block_bytes()));
        assert_eq!(q.row_bytes(q.block_elems() + 16), None);
    }
    assert_eq!(QuantType::from_ggml_type(10), None, "Q2_K is not supported");
    assert_eq!(QuantType::from_name("q4_k_m"), None, "a file mix, not a type");
}

/// ggml's `nearest_int` rounds half to even.
#[test]
fn nearest_int_matches_ggml() {
    assert_eq!(nearest_int(2.5), 2);
    assert_eq!(nearest_int(3.5), 4);
    assert_eq!(nearest_int(-2.5), -2);
    assert_eq!(nearest_int(-0.4), 0);
    assert_eq!(nearest_int(1000.7), 1001);
}

/// A block of all zeros quantizes to zeros and its products are zero.
#[test]
fn zero_blocks() {
    for t in QuantType::ALL {
        let w = vec![0.0f32; 256];
        let bytes = quantized(t, &w);
        assert!(dequantized(t, &bytes, 256).iter().all(|&v| v == 0.0), "{}", t.name());
        let x: Vec<f32> = (0..256).map(|i| i as f32 / 10.0).collect();
        let acts = quantize_activations(t, &x, 1, 256);
        let mut out = [1.0f32];
        vec_dot(t, &bytes, &acts, &mut out);
        assert_eq!(out[0], 0.0, "{}", t.name());
    }
}
