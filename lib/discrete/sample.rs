//! Sampling the learned CTMC (notes section 8.2, Algorithm "discrete flow matching sampling"):
//! from x_0 ~ p_init (all [MASK] or uniform tokens), step t_k = k h, h = 1 / steps, to t = 1 with
//! the factorised marginal rate
//! ```text
//! u_t(y^l | x) = kappa'_t / (1 - kappa_t) (p_{1|t}(y^l | x) - delta_{x^l}(y^l)),
//! ```
//! each position taking one Euler or tau-leaping step ([`super::ctmc::step_position`]) given the
//! whole current sequence. p_{1|t} comes from a callback: a trained denoiser (softmax of its
//! logits, with temperature and guidance applied by the caller) or, for tests, the exact
//! posterior of a known distribution ([`exact_posterior`]). With masked noise, unmasked
//! tokens never change (their rate is zero), and any position still [MASK] after the last step
//! is drawn from p_{1|t} at the last step's time (the rate is infinite at t = 1, so the exact
//! chain has unmasked everything). Prompt positions (`fixed`) are held at their value
//! throughout: infilling.
//!
//! [`sample_denoiser`] drives the chain with a trained denoiser, sample i holding prompt
//! i mod P.
//!
//! Randomness: sample i draws its noise from stream (seed, Noise, i) and its jumps from
//! stream (seed, Jumps, i), so a sample does not depend on how many are drawn with it.

use candle_core::Device;
use rand::Rng;

use super::ctmc::{step_position, Solver};
use super::net::Denoiser;
use super::paths::{MixturePath, Noise};
use crate::progress::Progress;
use crate::rng::{self, Purpose};
use crate::Result;

/// How [`simulate`] steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    pub steps: usize,
    pub solver: Solver,
    pub seed: u64,
}

/// p_{1|t}(. | x) for a batch: x (B * L tokens), t -> (B * L * K) probabilities.
pub type Posterior<'a> = dyn FnMut(&[u32], f64) -> Result<Vec<f32>> + 'a;

/// Initial sequences x_0 ~ p_init for samples first..first + n, (n * len) tokens; positions
/// with `prompt[i * len + l] = Some(v)` start (and stay) at v.
pub fn initial(
    path: &MixturePath,
    n: usize,
    len: usize,
    seed: u64,
    first: u64,
    prompt: Option<&[Option<u32>]>,
) -> Vec<u32> {
    let mut x = Vec::with_capacity(n * len);
    for i in 0..n {
        let mut r = rng::stream(seed, Purpose::Noise, first + i as u64);
        for l in 0..len {
            let noise = path.init_token(&mut r);
            let fixed = prompt.and_then(|p| p[i * len + l]);
            x.push(fixed.unwrap_or(noise));
        }
    }
    x
}

/// Runs the chain from `x` (n * len tokens, changed in place) to t = 1; `fixed[i]` holds
/// position i. Samples are numbered from `first` for their streams.
pub fn simulate(
    path: &MixturePath,
    x: &mut [u32],
    len: usize,
    fixed: Option<&[bool]>,
    opts: &SampleOptions,
    first: u64,
    posterior: &mut Posterior,
) -> Result<()> {
    let k = path.symbols;
    let n = x.len() / len.max(1);
    let mut streams: Vec<_> = (0..n)
        .map(|i| rng::stream(opts.seed, Purpose::Jumps, first + i as u64))
        .collect();
    let h = 1.0 / opts.steps as f64;
    let mask = path.mask_id();
    let mut last_t = 0.0;
    let mut post = Vec::new();
    for step in 0..opts.steps {
        let t = step as f64 * h;
        post = posterior(x, t)?;
        last_t = t;
        let mut row = vec![0f64; k];
        for (i, r) in streams.iter_mut().enumerate() {
            for l in 0..len {
                let p = i * len + l;
                let u: f64 = r.random();
                let held = fixed.is_some_and(|f| f[p]);
                if held || (path.noise == Noise::Mask && x[p] != mask) {
                    continue;
                }
                row.iter_mut()
                    .zip(&post[p * k..(p + 1) * k])
                    .for_each(|(a, &b)| *a = b as f64);
                let rates = path.marginal_rates(x[p], &row, t);
                x[p] = step_position(opts.solver, x[p] as usize, &rates, h, u) as u32;
            }
        }
    }
    if path.noise == Noise::Mask && x.contains(&mask) {
        if opts.steps > 0 {
            post = posterior(x, last_t)?;
        }
        for (i, r) in streams.iter_mut().enumerate() {
            for l in 0..len {
                let p = i * len + l;
                if x[p] == mask {
                    x[p] = draw(&post[p * k..(p + 1) * k], r.random());
                }
            }
        }
    }
    Ok(())
}

/// The prompts of `n` samples, sample i taking prompt i mod P (P = `prompts.len()` >= 1), as
/// (n * len) tokens (`None`: free) and the mask of the held positions.
pub fn tile_prompts(prompts: &[Vec<Option<u32>>], n: usize) -> (Vec<Option<u32>>, Vec<bool>) {
    let prompt: Vec<Option<u32>> = (0..n)
        .flat_map(|i| prompts[i % prompts.len()].clone())
        .collect();
    let fixed = prompt.iter().map(Option::is_some).collect();
    (prompt, fixed)
}

/// How a trained denoiser gives p_{1|t}: the softmax of its guided logits
/// (1 - w) l(x | null) + w l(x | y) (`labels`: one per sample; w = `guidance`) divided by
/// `temperature`, computed for `batch` sequences per network call.
#[derive(Clone, Copy, Debug)]
pub struct DenoiserPosterior<'a> {
    pub labels: Option<&'a [u32]>,
    pub guidance: f64,
    pub temperature: f64,
    pub batch: usize,
}

/// `n` sequences from the denoiser `net` (samples 0..n): x_0 ~ p_init with sample i holding
/// prompt i mod P ([`tile_prompts`]), then [`simulate`] to t = 1 with p_{1|t} from `how`;
/// `progress` advances once per network pass over the whole set. One row of L tokens per
/// sample.
pub fn sample_denoiser(
    net: &Denoiser,
    n: usize,
    prompts: Option<&[Vec<Option<u32>>]>,
    how: &DenoiserPosterior,
    opts: &SampleOptions,
    device: &Device,
    progress: Option<&Progress>,
) -> Result<Vec<Vec<u32>>> {
    let len = net.config.seq_len;
    let (prompt, fixed) = match prompts {
        Some(p) => {
            let (prompt, fixed) = tile_prompts(p, n);
            (Some(prompt), Some(fixed))
        }
        None => (None, None),
    };
    let path = net.config.path();
    let mut x = initial(&path, n, len, opts.seed, 0, prompt.as_deref());
    let mut posterior = |x: &[u32], t: f64| -> Result<Vec<f32>> {
        if let Some(bar) = progress {
            bar.inc(1);
        }
        let p = net.posterior(
            x,
            t,
            how.labels,
            how.guidance,
            how.temperature,
            how.batch,
            device,
        )?;
        Ok(p)
    };
    simulate(
        &path,
        &mut x,
        len,
        fixed.as_deref(),
        opts,
        0,
        &mut posterior,
    )?;
    Ok(x.chunks(len).map(<[u32]>::to_vec).collect())
}

/// Draws an index from probabilities `p` (not necessarily normalised) with the uniform `u`.
pub fn draw(p: &[f32], u: f64) -> u32 {
    let total: f64 = p.iter().map(|&v| v.max(0.0) as f64).sum();
    let mut target = u * total;
    for (i, &v) in p.iter().enumerate() {
        target -= v.max(0.0) as f64;
        if target < 0.0 {
            return i as u32;
        }
    }
    p.iter().rposition(|&v| v > 0.0).unwrap_or(0) as u32
}

/// p_t(x^l | z^l) up to a factor that does not depend on z. With masked noise that is
/// 1[x^l = z^l] for an unmasked token and 1 for [MASK] (the kappa_t and 1 - kappa_t factors
/// cancel), which stays exact at t = 0 for prompt tokens held from the start.
fn likelihood(path: &MixturePath, x: u32, z: u32, t: f64) -> f64 {
    match path.noise {
        Noise::Mask if x == path.mask_id() => 1.0,
        Noise::Mask => f64::from(x == z),
        Noise::Uniform => path.conditional_prob(x, z, t),
    }
}

/// The exact per-position posterior p_{1|t}(z^l = y | x) of a known distribution over
/// sequences (`data`: (sequence, probability) pairs) under `path`, by enumeration:
/// p(z | x) proportional to p_data(z) prod_l p_t(x^l | z^l). Returns (L * K) probabilities;
/// a position whose x is impossible under every z gets the prior marginal.
pub fn exact_posterior(
    data: &[(Vec<u32>, f64)],
    path: &MixturePath,
    x: &[u32],
    t: f64,
) -> Vec<f64> {
    let (len, k) = (x.len(), path.symbols);
    let mut post = vec![0.0; len * k];
    let mut total = 0.0;
    for (z, p) in data {
        let w = p * z
            .iter()
            .zip(x)
            .map(|(&zl, &xl)| likelihood(path, xl, zl, t))
            .product::<f64>();
        total += w;
        for (l, &zl) in z.iter().enumerate() {
            post[l * k + zl as usize] += w;
        }
    }
    if total > 0.0 {
        post.iter_mut().for_each(|v| *v /= total);
    } else {
        for (z, p) in data {
            for (l, &zl) in z.iter().enumerate() {
                post[l * k + zl as usize] += p;
            }
        }
    }
    post
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::discrete::schedule::Kappa;

    /// A distribution over sequences of length 2 on 3 symbols with strong correlations (the
    /// known distribution of the sampler and ELBO tests).
    pub(crate) fn tiny() -> Vec<(Vec<u32>, f64)> {
        vec![
            (vec![0, 1], 0.4),
            (vec![1, 0], 0.3),
            (vec![2, 2], 0.2),
            (vec![0, 0], 0.1),
        ]
    }

    fn run(path: MixturePath, solver: Solver, n: usize, steps: usize) -> Vec<u32> {
        let data = tiny();
        let mut x = initial(&path, n, 2, 3, 0, None);
        let opts = SampleOptions {
            steps,
            solver,
            seed: 3,
        };
        let mut exact = |x: &[u32], t: f64| -> Result<Vec<f32>> {
            Ok(x.chunks(2)
                .flat_map(|s| exact_posterior(&data, &path, s, t))
                .map(|v| v as f32)
                .collect())
        };
        simulate(&path, &mut x, 2, None, &opts, 0, &mut exact).unwrap();
        x
    }

    #[test]
    fn the_sampler_driven_by_the_exact_posterior_reproduces_the_distribution() {
        let n = 4000;
        for noise in [Noise::Mask, Noise::Uniform] {
            for (kappa, solver) in [
                (Kappa::Linear, Solver::Euler),
                (Kappa::Cosine, Solver::TauLeaping),
                (Kappa::Quadratic, Solver::Euler),
            ] {
                let path = MixturePath {
                    kappa,
                    noise,
                    symbols: 3,
                };
                let x = run(path, solver, n, 100);
                let mut counts = [0usize; 9];
                x.chunks(2)
                    .for_each(|s| counts[(s[0] * 3 + s[1]) as usize] += 1);
                let mut want = [0.0; 9];
                tiny()
                    .iter()
                    .for_each(|(z, p)| want[(z[0] * 3 + z[1]) as usize] = *p);
                for c in 0..9 {
                    let f = counts[c] as f64 / n as f64;
                    let se = (want[c] * (1.0 - want[c]) / n as f64).sqrt();
                    // 4 standard errors plus a first-order bias (h = 0.01).
                    assert!(
                        (f - want[c]).abs() < 4.0 * se + 0.02,
                        "{noise:?} {kappa:?} {solver:?}: cell {c} {f} vs {}: {counts:?}",
                        want[c]
                    );
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_samples_however_batched() {
        let path = MixturePath {
            kappa: Kappa::Linear,
            noise: Noise::Uniform,
            symbols: 3,
        };
        let whole = initial(&path, 10, 2, 9, 0, None);
        let mut parts = initial(&path, 4, 2, 9, 0, None);
        parts.extend(initial(&path, 6, 2, 9, 4, None));
        assert_eq!(whole, parts);
    }

    #[test]
    fn prompts_are_laid_out_per_sample() {
        let prompts = vec![vec![Some(1), None], vec![None, Some(2)]];
        let (p, fixed) = tile_prompts(&prompts, 3);
        assert_eq!(p, vec![Some(1), None, None, Some(2), Some(1), None]);
        assert_eq!(fixed, vec![true, false, false, true, true, false]);
    }

    #[test]
    fn prompts_are_held() {
        let path = MixturePath {
            kappa: Kappa::Linear,
            noise: Noise::Mask,
            symbols: 3,
        };
        let data = tiny();
        let prompt: Vec<Option<u32>> = (0..200).map(|i| (i % 2 == 0).then_some(1)).collect();
        let mut x = initial(&path, 100, 2, 1, 0, Some(&prompt));
        let fixed: Vec<bool> = prompt.iter().map(Option::is_some).collect();
        let opts = SampleOptions {
            steps: 20,
            solver: Solver::Euler,
            seed: 1,
        };
        let mut exact = |x: &[u32], t: f64| -> Result<Vec<f32>> {
            Ok(x.chunks(2)
                .flat_map(|s| exact_posterior(&data, &path, s, t))
                .map(|v| v as f32)
                .collect())
        };
        simulate(&path, &mut x, 2, Some(&fixed), &opts, 0, &mut exact).unwrap();
        // Only (1, 0) starts with 1: infilling must complete every prompt to it.
        assert!(x.chunks(2).all(|s| s == [1, 0]), "{x:?}");
    }
}
