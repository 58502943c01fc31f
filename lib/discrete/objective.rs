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
//! L log K: the baseline log2 K bits per token.
//!
//! For uniform noise we train with the plain denoiser cross-entropy, and [`uniform_elbo_terms`]
//! estimates the general CTMC bound: -log p^theta(z) is at most the KL between the path
//! measures of the conditional rates u_t(. | x, z) and the model's rates u^theta_t (both start
//! from p_init and the conditional path ends at delta_z), which per position and with
//! lambda = kappa'/(1 - kappa) and p = p^theta_{1|t}(. | x_t) is
//! ```text
//! int_0^1 lambda_t E_{x_t ~ p_t(.|z)} sum_l [ sum_{y != x^l} (u^theta - u + u log(u / u^theta)) ] dt
//!   = int_0^1 lambda_t E sum_l [ 1[x^l != z^l] (-log p(z^l) - p(x^l)) + 1[x^l = z^l] (1 - p(x^l)) ] dt
//! ```
//! (with masked noise p([MASK]) = 0 and an unmasked token is certain, and the same formula
//! gives the masked bound above).
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

/// The uniform-noise bound of the module docs per sequence, in nats: logits (N, L, K), clean
/// tokens `z` and noised tokens `xt` (N * L), `lambda` = kappa'/(1 - kappa) per sequence -> (N,).
pub fn uniform_elbo_terms(
    logits: &Tensor,
    z: &[u32],
    xt: &[u32],
    lambda: &[f32],
) -> candle_core::Result<Tensor> {
    let (n, len, k) = logits.dims3()?;
    let dev = logits.device();
    let ce = cross_entropy(logits, &one_hot(z, n, len, k, dev)?)?;
    let p = candle_nn::ops::softmax_last_dim(logits)?;
    let p_xt = (p * one_hot(xt, n, len, k, dev)?)?.sum(D::Minus1)?;
    let differs: Vec<f32> = z.iter().zip(xt).map(|(a, b)| f32::from(a != b)).collect();
    let differs = Tensor::from_vec(differs, (n, len), dev)?;
    // 1[x != z] (CE - p(x)) + 1[x = z] (1 - p(x)) = 1[x != z] CE + 1[x = z] - p(x).
    let same = differs.affine(-1.0, 1.0)?;
    let per_position = ((differs * ce)? + same)?.sub(&p_xt)?;
    let lambda = Tensor::from_vec(lambda.to_vec(), (n, 1), dev)?;
    per_position.broadcast_mul(&lambda)?.sum(1)
}

/// The minibatch loss: mean over sequences of [`elbo_terms`] / L (nats per token).
pub fn loss(logits: &Tensor, z: &[u32], weights: &[f32]) -> candle_core::Result<Tensor> {
    let len = logits.dim(1)?;
    (elbo_terms(logits, z, weights)?.mean(0)? / len as f64)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::noise as noise_batch;
    use super::*;
    use crate::discrete::sample::exact_posterior;
    use crate::discrete::sample::tests::tiny;
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

    /// The bound per sequence of [`tiny`] with its exact posterior as the denoiser, each
    /// estimated over `n` draws of (t, x_t): (mean, standard error) in nats.
    fn exact_bounds(noise: Noise, n: usize) -> Vec<(f64, f64)> {
        let (k, len) = (3, 2);
        let path = MixturePath {
            kappa: Kappa::Linear,
            noise,
            symbols: k,
        };
        let data = tiny();
        let mut bounds = Vec::new();
        for (j, (seq, _)) in data.iter().enumerate() {
            let z: Vec<u32> = (0..n).flat_map(|_| seq.clone()).collect();
            let t: Vec<f64> = (0..n).map(|i| (i as f64 + 0.5) / n as f64).collect();
            let mut rngs: Vec<_> = (0..n)
                .map(|i| stream(j as u64, Purpose::Noise, i as u64))
                .collect();
            let b = noise_batch(&path, &z, len, &t, &mut rngs);
            let logits: Vec<f32> =
                b.xt.chunks(len)
                    .zip(&t)
                    .flat_map(|(x, &ti)| exact_posterior(&data, &path, x, ti))
                    .map(|p| p.max(1e-12).ln() as f32)
                    .collect();
            let logits = Tensor::from_vec(logits, (n, len, k), &Device::Cpu).unwrap();
            let terms = match noise {
                Noise::Mask => elbo_terms(&logits, &z, &b.weights),
                Noise::Uniform => {
                    let lambda: Vec<f32> = t.iter().map(|&v| path.kappa.rate(v) as f32).collect();
                    uniform_elbo_terms(&logits, &z, &b.xt, &lambda)
                }
            };
            let per: Vec<f32> = terms.unwrap().to_vec1().unwrap();
            let mean = per.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = per.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            bounds.push((mean, (var / n as f64).sqrt()));
        }
        bounds
    }

    /// With the exact posterior the masked bound is tight (any-order autoregression with exact
    /// conditionals): it equals -log p(z) for every z. The uniform-noise bound lies above
    /// -log p(z) for every z, and on average below L log K, what the masked bound gives a model
    /// that predicts uniformly.
    #[test]
    fn the_exact_posterior_meets_both_bounds() {
        let n = 8000;
        for ((mean, se), (_, p)) in exact_bounds(Noise::Mask, n).into_iter().zip(tiny()) {
            assert!(
                (mean - -p.ln()).abs() < 4.0 * se + 0.01,
                "masked {mean} +- {se} vs -ln p = {}",
                -p.ln()
            );
        }
        let mut average = 0.0;
        for ((mean, se), (_, p)) in exact_bounds(Noise::Uniform, n).into_iter().zip(tiny()) {
            assert!(
                mean > -p.ln() - 4.0 * se,
                "uniform {mean} +- {se} below -ln p = {}",
                -p.ln()
            );
            average += p * mean;
        }
        assert!(average < 2.0 * 3f64.ln(), "uniform average {average}");
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
