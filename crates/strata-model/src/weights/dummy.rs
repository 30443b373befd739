//! Deterministic random weights for any config (vLLM's `load_format=dummy`).
//!
//! Each tensor's values depend only on the seed, the tensor's name and the
//! element index, so loading order and thread count never change them.
//! Matrices get uniform values with standard deviation `1/sqrt(fan_in)`
//! (activations stay at unit scale through the layers), embeddings unit
//! standard deviation, norms 1.0 plus a little noise, biases small values.

use rayon::prelude::*;

use super::{DType, HostData, HostTensor, WeightSource};
use crate::error::Result;

/// Elements generated per independent random stream; fixed so that the
/// values do not depend on how work is split between threads.
const CHUNK: usize = 1 << 16;

#[derive(Clone, Debug)]
pub struct DummyWeights {
    seed: u64,
    dtype: DType,
    total_bytes: u64,
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl DummyWeights {
    /// `total_bytes` is only used for progress reporting.
    pub fn new(seed: u64, dtype: DType, total_bytes: u64) -> Self {
        Self { seed, dtype, total_bytes }
    }

    fn values(&self, name: &str, len: usize, center: f32, half_width: f32) -> Vec<f32> {
        let key = splitmix64(self.seed ^ name_hash(name));
        let mut out = vec![0.0f32; len];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, slice)| {
            let mut state = splitmix64(key ^ (chunk as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            for v in slice {
                state = splitmix64(state);
                // 24 random bits -> uniform in [-1, 1).
                let unit = (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                *v = center + half_width * unit;
            }
        });
        out
    }
}

impl WeightSource for DummyWeights {
    fn contains(&self, _name: &str) -> bool {
        // A dummy checkpoint has every tensor the model asks for.
        true
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let len: usize = shape.iter().product();
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let sqrt3 = 3f32.sqrt();
        let (center, half_width) = if name.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("embed_tokens") {
            (0.0, sqrt3)
        } else {
            (0.0, sqrt3 / fan_in.sqrt())
        };
        let values = self.values(name, len, center, half_width);
        let data =
            HostData::F32(values).convert(if shape.len() == 2 { self.dtype } else { DType::F32 });
        Ok(HostTensor { name: name.to_owned(), shape: shape.to_vec(), data })
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_and_name_dependent() {
        let w = DummyWeights::new(7, DType::F32, 0);
        let a = w.load("model.layers.0.mlp.up_proj.weight", &[300, 500]).expect("load");
        let b = w.load("model.layers.0.mlp.up_proj.weight", &[300, 500]).expect("load");
        let c = w.load("model.layers.1.mlp.up_proj.weight", &[300, 500]).expect("load");
        assert_eq!(a.data.to_f32(), b.data.to_f32());
        assert_ne!(a.data.to_f32(), c.data.to_f32());
        let v = a.data.to_f32();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(mean.abs() < 0.01 && (std - 1.0 / 500f32.sqrt()).abs() < 0.005, "{mean} {std}");
    }

    #[test]
    fn norms_are_near_one_and_vectors_stay_f32() {
        let w = DummyWeights::new(1, DType::BF16, 0);
        let n = w.load("model.norm.weight", &[64]).expect("load");
        assert_eq!(n.data.dtype(), Some(DType::F32));
        assert!(n.data.to_f32().iter().all(|x| (0.89..=1.11).contains(x)));
        assert_eq!(
            w.load("model.layers.0.self_attn.q_proj.weight", &[8, 8]).expect("load").data.dtype(),
            Some(DType::BF16)
        );
    }
}
