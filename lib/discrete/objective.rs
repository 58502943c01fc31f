//! The training objective and the ELBO of discrete diffusion (notes section 8.3; masked
//! diffusion: Sahoo et al. 2024 "MDLM", Shi et al. 2024).
//!
//! The denoiser p^theta_{1|t}(. | x_t) outputs, per position, logits over the K data symbols,
//! and is trained by cross-entropy against the clean token z^l, with t ~ U[0, 1),
//! z ~ p_data, x_t ~ p_t(. | z):
//! ```text
//! masked noise   L = E_t E [ kappa'_t / (1 - kappa_t) sum_{l: x_t^l = [MASK]} -log p^theta_{1|t}(z^l | x_t) ] / L
//! uniform noise  L = E_t E [ sum_l -log p^theta_{1|t}(z^l | x_t) ] / L
//! ```
//! For masked noise the weighted sum is the continuous-time negative ELBO: for every sequence z,
//! ```text
//! -log p^theta(z) <= int_0^1 kappa'_t / (1 - kappa_t) E_{x_t ~ p_t(.|z)} [ sum_{l masked} -log p^theta_{1|t}(z^l | x_t) ] dt,
//! ```
//! so training minimises a likelihood bound and [`elbo_terms`] estimates it on held-out data
//! (in nats; bits per token = nats / (L ln 2)). A model that predicts uniformly scores exactly
//! L log K: the baseline log2 K bits per token. For uniform noise we train with the plain
//! denoiser cross-entropy and report no ELBO (its bound has further terms for the tokens that
//! are noise but look like data).
//!
//! The weight kappa'/(1 - kappa) is infinite at t = 1; times are drawn in [0, 1) and a
//! masked position at t near 1 has probability 1 - kappa_t, so each term is finite.

use candle_core::{DType, Device, Tensor, D};
use rand::Rng;

use super::paths::{MixturePath, Noise};

/// Per-position cross-entropy -log softmax(logits)[target]: logits (N, L, K), targets (N, L)
/// as one-hot (N, L, K) f32 -> (N, L). The max is a detached shift for stability.
pub fn cross_entropy(logits: &Tensor, one_hot: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .broadcast_add(&max)?
        .squeeze(D::Minus1)?;
    lse - (logits * one_hot)?.sum(D::Minus1)?
}

/// One-hot (N * L ids) -> (N, L, K) f32 on `device`.
pub fn one_hot(
    ids: &[u32],
    n: usize,
    len: usize,
    k: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut v = vec![0f32; n * len * k];
    for (i, &id) in ids.iter().enumerate() {
        if (id as usize) < k {
            v[i * k + id as usize] = 1.0;
        }
    }
    Tensor::from_vec(v, (n, len, k), device)
}

/// A noised minibatch: x_t, the times, and the weight of each position's cross-entropy.
#[derive(Clone, Debug)]
pub struct Noised {
    /// (N * L) tokens x_t.
    pub xt: Vec<u32>,
    /// (N,) times.
    pub t: Vec<f32>,
    /// (N * L) weights: kappa'/(1 - kappa) on masked positions (masked noise), 1 (uniform).
    pub weights: Vec<f32>,
}

/// Noises clean sequences `z` (N * L tokens) at times `t` (one per sequence), drawing from
/// `rngs[i]` for sequence i.
pub fn noise<R: Rng>(
    path: &MixturePath,
    z: &[u32],
    len: usize,
    t: &[f64],
    rngs: &mut [R],
) -> Noised {
    let mut xt = Vec::with_capacity(z.len());
    let mut weights = Vec::with_capacity(z.len());
    for ((seq, &ti), r) in z.chunks(len).zip(t).zip(rngs.iter_mut()) {
        let x = path.sample_conditional(seq, ti, r);
        let lambda = path.kappa.rate(ti).min(1e6) as f32;
        for &xl in &x {
            weights.push(match path.noise {
                Noise::Mask => {
                    if xl == path.mask_id() {
                        lambda
                    } else {
                        0.0
                    }
                }
                Noise::Uniform => 1.0,
            });
        }
        xt.extend(x);
    }
    Noised {
        xt,
        t: t.iter().map(|&v| v as f32).collect(),
        weights,
    }
}

/// sum_l weight_l CE_l per sequence: logits (N, L, K), targets (N * L), weights (N * L) -> (N,).
pub fn elbo_terms(logits: &Tensor, z: &[u32], weights: &[f32]) -> candle_core::Result<Tensor> {
    let (n, len, k) = logits.dims3()?;
    let ce = cross_entropy(logits, &one_hot(z, n, len, k, logits.device())?)?;
    let w = Tensor::from_vec(weights.to_vec(), (n, len), logits.device())?;
    (ce * w)?.sum(1)
}

/// The minibatch loss: mean over sequences of [`elbo_terms`] / L (nats per token).
pub fn loss(logits: &Tensor, z: &[u32], weights: &[f32]) -> candle_core::Result<Tensor> {
    let len = logits.dim(1)?;
    (elbo_terms(logits, z, weights)?.mean(0)? / len as f64)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discrete::schedule::Kappa;
    use crate::rng::{stream, Purpose};

    #[test]
    fn cross_entropy_matches_log_softmax() {
        let logits = Tensor::new(&[[[1f32, 2.0, 0.5], [0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let oh = one_hot(&[1, 2], 1, 2, 3, &Device::Cpu).unwrap();
        let ce: Vec<f32> = cross_entropy(&logits, &oh)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        assert!((ce[0] - (lse - 2.0)).abs() < 1e-5);
        assert!((ce[1] - 3f32.ln()).abs() < 1e-5);
    }

    /// A model that predicts uniformly has the ELBO L log K exactly: a Monte Carlo estimate
    /// over t and x_t lands within its standard error.
    #[test]
    fn uniform_prediction_scores_log_k_per_token() {
        let (k, len, n) = (5, 4, 4000);
        for kappa in Kappa::ALL {
            let path = MixturePath {
                kappa,
                noise: Noise::Mask,
                symbols: k,
            };
            let z: Vec<u32> = (0..n * len).map(|i| (i % k) as u32).collect();
            let t: Vec<f64> = (0..n).map(|i| (i as f64 + 0.5) / n as f64).collect();
            let mut rngs: Vec<_> = (0..n)
                .map(|i| stream(1, Purpose::Noise, i as u64))
                .collect();
            let b = noise(&path, &z, len, &t, &mut rngs);
            let logits = Tensor::zeros((n, len, k), DType::F32, &Device::Cpu).unwrap();
            let per: Vec<f32> = elbo_terms(&logits, &z, &b.weights)
                .unwrap()
                .to_vec1()
                .unwrap();
            let mean = per.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = per.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let se = (var / n as f64).sqrt();
            let want = len as f64 * (k as f64).ln();
            assert!(
                (mean - want).abs() < 4.0 * se,
                "{kappa:?}: {mean} vs {want} (se {se})"
            );
        }
    }
}
