//! Rotary position embedding tables, computed as Hugging Face transformers
//! computes them (f32 inverse frequencies, f32 angles), so that logits match
//! the reference implementation to rounding.

use std::f64::consts::PI;

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies for the even dimensions `0, 2, .., head_dim - 2`.
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .map(|f| f as f32 as f64)
        .collect();
    let scaled: Vec<f64> = match &config.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Factors { factors } => {
            base.iter().zip(factors).map(|(f, &d)| f / f64::from(d)).collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let (factor, low_freq_factor, high_freq_factor, original_max_position) =
                (*factor, *low_freq_factor, *high_freq_factor, *original_max_position);
            let low_freq_wavelen = original_max_position / low_freq_factor;
            let high_freq_wavelen = original_max_position / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

/// `[num_positions, head_dim]`: cosines in the first half of each row,
/// sines in the second.
pub fn rope_table(config: &ModelConfig, num_positions: usize) -> Vec<f32> {
    let inv = inverse_frequencies(config);
    let half = inv.len();
    let mut table = vec![0.0f32; num_positions * 2 * half];
    for (pos, row) in table.chunks_mut(2 * half).enumerate() {
        for (i, &f) in inv.iter().enumerate() {
            let angle = (pos as f32 * f) as f64;
            row[i] = angle.cos() as f32;
            row[half + i] = angle.sin() as f32;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut c = builtin::config();
        c.rope_theta = 500_000.0;
        let plain = inverse_frequencies(&c);
        c.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 64.0,
        };
        let scaled = inverse_frequencies(&c);
        assert_eq!(scaled[0], plain[0], "the highest frequency is untouched");
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12, "the lowest is divided");
    }

    #[test]
    fn position_zero_is_the_identity_rotation() {
        let c = builtin::config();
        let t = rope_table(&c, 4);
        let half = c.head_dim / 2;
        assert!(t[..half].iter().all(|&v| v == 1.0) && t[half..2 * half].iter().all(|&v| v == 0.0));
    }
}
