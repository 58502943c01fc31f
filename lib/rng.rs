//! Reproducible randomness that does not depend on batching or threads.
//!
//! Every random draw comes from a ChaCha8 stream chosen by three numbers:
//! the user's `--seed`, a [`Purpose`] (noise, time, Brownian increments, ...), and an index
//! (the sample number, the training step, or the hash of a parameter name). ChaCha's 64-bit
//! stream id makes the index free: sample i's stream is the same whether it is drawn in one
//! batch of 10,000 or in batches of 7, on any number of threads. A new purpose never shifts the
//! draws of another. candle's own CPU random functions cannot be seeded and are never used.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a stream is used for; each purpose is an independent family of streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Samples from p_init (sample-noise, the source of training pairs).
    Noise = 1,
    /// Training times t ~ U[0, 1].
    Time = 2,
    /// Label dropout for classifier-free guidance training.
    LabelDropout = 3,
    /// Brownian increments of SDE simulation.
    Brownian = 4,
    /// Minibatch selection and shuffling.
    Shuffle = 5,
    /// Weight initialisation, indexed by the hash of the parameter name.
    Init = 6,
    /// Toy data sets (sample-data) and densities' samplers.
    Data = 7,
    /// Posterior sampling in a VAE encoder.
    Latent = 8,
    /// Anything a tool needs besides the above (evaluation subsets, projections).
    Misc = 9,
    /// Jumps of CTMC simulation (discrete diffusion samplers).
    Jumps = 10,
    /// Pairs drawn from an entropic OT plan (minibatch couplings, `train::coupling`).
    Coupling = 11,
    /// Hutchinson's probes of a divergence estimate (`likelihood`).
    Probe = 12,
    /// Uniform dequantisation noise of discrete data (`likelihood`).
    Dequantize = 13,
    /// The phrasing of each caption (`text::captions`, make-captions).
    Captions = 14,
}

/// SplitMix64 finaliser: a fixed, portable mixing function (never Rust's DefaultHasher).
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a name, used to key weight initialisation by parameter name.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The stream for (seed, purpose, index).
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    let mut state = mix64(seed ^ mix64(purpose as u64));
    for chunk in key.chunks_mut(8) {
        state = mix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// Fills `out` with standard normal draws from `rng`.
pub fn fill_normal(rng: &mut impl Rng, out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = StandardNormal.sample(rng);
    }
}

/// Fills `out` with uniform draws in [low, high).
pub fn fill_uniform(rng: &mut impl Rng, out: &mut [f32], low: f32, high: f32) {
    for v in out.iter_mut() {
        *v = low + (high - low) * rng.random::<f32>();
    }
}

/// `n` rows of `dim` standard normals, row i drawn from stream (seed, purpose, first + i).
/// Row-major (n, dim); the same rows come out however `first`/`n` split a larger batch.
pub fn normal_rows(seed: u64, purpose: Purpose, first: u64, n: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * dim];
    for (i, row) in out.chunks_mut(dim.max(1)).enumerate().take(n) {
        fill_normal(&mut stream(seed, purpose, first + i as u64), row);
    }
    out
}

/// Like [`normal_rows`] but uniform on [low, high).
pub fn uniform_rows(
    seed: u64,
    purpose: Purpose,
    first: u64,
    n: usize,
    dim: usize,
    low: f32,
    high: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; n * dim];
    for (i, row) in out.chunks_mut(dim.max(1)).enumerate().take(n) {
        fill_uniform(&mut stream(seed, purpose, first + i as u64), row, low, high);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_do_not_depend_on_batching() {
        let whole = normal_rows(7, Purpose::Noise, 0, 20, 3);
        let mut parts = Vec::new();
        for first in (0..20).step_by(7) {
            let n = 7.min(20 - first);
            parts.extend(normal_rows(7, Purpose::Noise, first as u64, n, 3));
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn purposes_and_seeds_give_different_streams() {
        let a = normal_rows(1, Purpose::Noise, 0, 1, 8);
        let b = normal_rows(1, Purpose::Time, 0, 1, 8);
        let c = normal_rows(2, Purpose::Noise, 0, 1, 8);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normal_moments_are_standard() {
        let x = normal_rows(3, Purpose::Noise, 0, 20_000, 2);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard errors: 1/sqrt(n) ~ 0.005 for the mean, sqrt(2/n) ~ 0.007 for the variance.
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.04, "var {var}");
    }

    #[test]
    fn name_hash_is_fixed() {
        // FNV-1a of "" is the offset basis; any change to the hash would move every weight.
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(name_hash("a.weight"), name_hash("a.bias"));
    }
}
