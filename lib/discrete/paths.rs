//! The mixture probability path for discrete data and its rates (notes section 8.2; Gat et al.
//! 2024; masked diffusion: Sahoo et al. 2024, Shi et al. 2024).
//!
//! Sequences x = (x^1, ..., x^L) of tokens in {0, ..., K-1} (the data symbols), plus the [MASK]
//! token K for the masked noise. Per position, independently:
//! ```text
//! p_t(x^l | z) = kappa_t delta_{z^l}(x^l) + (1 - kappa_t) p_init(x^l)
//!     p_init = delta_[MASK]          (masked noise; the state space has K + 1 symbols)
//!     p_init = uniform on the K symbols (uniform noise)
//! conditional rate  u_t(y^l | x, z) = kappa'_t / (1 - kappa_t) (delta_{z^l}(y^l) - delta_{x^l}(y^l))
//! marginal rate     u_t(y^l | x)    = kappa'_t / (1 - kappa_t) (p_{1|t}(y^l | x) - delta_{x^l}(y^l))
//! ```
//! The conditional rate generates the conditional path (Kolmogorov forward equation:
//! d/dt p_t(y | z) = sum_x p_t(x | z) u_t(y | x, z) = kappa'_t (delta_z(y) - p_init(y))), and
//! averaging it over the posterior p(z | x_t) gives the marginal rate, which needs only the
//! per-position denoiser posterior p_{1|t}(y^l | x) that a network learns by cross-entropy.
//! With masked noise an unmasked token is already its data value: its posterior is delta_{x^l}
//! and its rate is zero ("carry-over unmasking").

use rand::Rng;
use serde_json::{json, Value};

use super::schedule::Kappa;

/// The noise p_init of the mixture path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Noise {
    /// Every token [MASK] at t = 0
    Mask,
    /// Every token uniform on the vocabulary at t = 0
    Uniform,
}

impl Noise {
    pub fn name(self) -> &'static str {
        match self {
            Noise::Mask => "mask",
            Noise::Uniform => "uniform",
        }
    }

    pub fn parse(s: &str) -> Option<Noise> {
        [Noise::Mask, Noise::Uniform]
            .into_iter()
            .find(|n| n.name() == s)
    }
}

/// The factorised mixture path on sequences of tokens from K data symbols.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixturePath {
    pub kappa: Kappa,
    pub noise: Noise,
    /// K, the number of data symbols; [MASK] is the id K.
    pub symbols: usize,
}

impl MixturePath {
    /// The [MASK] id (K).
    pub fn mask_id(&self) -> u32 {
        self.symbols as u32
    }

    /// The number of states a position can take: K + 1 with masked noise, K with uniform.
    pub fn states(&self) -> usize {
        match self.noise {
            Noise::Mask => self.symbols + 1,
            Noise::Uniform => self.symbols,
        }
    }

    /// `{"kappa", "noise"}` for a model config.
    pub fn to_json(&self) -> Value {
        json!({"kappa": self.kappa.name(), "noise": self.noise.name()})
    }

    /// A token drawn from p_init.
    pub fn init_token(&self, rng: &mut impl Rng) -> u32 {
        match self.noise {
            Noise::Mask => self.mask_id(),
            Noise::Uniform => rng.random_range(0..self.symbols as u32),
        }
    }

    /// x_t ~ p_t(. | z) per position: keep z^l with probability kappa_t, else draw noise.
    pub fn sample_conditional(&self, z: &[u32], t: f64, rng: &mut impl Rng) -> Vec<u32> {
        let keep = self.kappa.value(t);
        z.iter()
            .map(|&zl| {
                let u: f64 = rng.random();
                // Draw the noise token unconditionally so each position uses the same draws.
                let noise = self.init_token(rng);
                if u < keep {
                    zl
                } else {
                    noise
                }
            })
            .collect()
    }

    /// p_t(x^l = y | z^l = z) for one position.
    pub fn conditional_prob(&self, y: u32, z: u32, t: f64) -> f64 {
        let k = self.kappa.value(t);
        let init = match self.noise {
            Noise::Mask => f64::from(y == self.mask_id()),
            Noise::Uniform => 1.0 / self.symbols as f64,
        };
        k * f64::from(y == z) + (1.0 - k) * init
    }

    /// The conditional rate row u_t(. | x^l, z^l) over [`Self::states`] states (sums to zero).
    pub fn conditional_rates(&self, x: u32, z: u32, t: f64) -> Vec<f64> {
        let mut delta_z = vec![0.0; self.states()];
        delta_z[z as usize] = 1.0;
        self.marginal_rates(x, &delta_z, t)
    }

    /// The marginal rate row kappa'/(1 - kappa) (p_{1|t}(. | x) - delta_x) over [`Self::states`]
    /// states, from the posterior over the K data symbols (a longer slice is cut to K).
    pub fn marginal_rates(&self, x: u32, posterior: &[f64], t: f64) -> Vec<f64> {
        let lambda = self.kappa.rate(t);
        let mut rates = vec![0.0; self.states()];
        for (y, &p) in posterior.iter().take(self.symbols).enumerate() {
            rates[y] = lambda * p;
        }
        rates[x as usize] -= lambda;
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    fn paths() -> Vec<MixturePath> {
        let mut v = Vec::new();
        for kappa in Kappa::ALL {
            for noise in [Noise::Mask, Noise::Uniform] {
                v.push(MixturePath {
                    kappa,
                    noise,
                    symbols: 3,
                });
            }
        }
        v
    }

    #[test]
    fn conditional_rate_rows_sum_to_zero_and_solve_the_forward_equation() {
        for path in paths() {
            let s = path.states();
            for z in 0..3u32 {
                for t in [0.1, 0.5, 0.8] {
                    let mut flow = vec![0.0; s];
                    for x in 0..s as u32 {
                        let rates = path.conditional_rates(x, z, t);
                        assert!(rates.iter().sum::<f64>().abs() < 1e-12);
                        for (y, r) in rates.iter().enumerate() {
                            assert!(y == x as usize || *r >= 0.0);
                            flow[y] += path.conditional_prob(x, z, t) * r;
                        }
                    }
                    for y in 0..s as u32 {
                        let h = 1e-6;
                        let dp = (path.conditional_prob(y, z, t + h)
                            - path.conditional_prob(y, z, t - h))
                            / (2.0 * h);
                        assert!(
                            (dp - flow[y as usize]).abs() < 1e-6,
                            "{path:?} z={z} y={y} t={t}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conditional_samples_keep_tokens_with_probability_kappa() {
        for path in paths() {
            let z = vec![1u32; 20_000];
            let t = 0.6;
            let x = path.sample_conditional(&z, t, &mut stream(0, Purpose::Noise, 0));
            for y in 0..path.states() as u32 {
                let p = path.conditional_prob(y, 1, t);
                let f = x.iter().filter(|&&v| v == y).count() as f64 / z.len() as f64;
                let se = (p * (1.0 - p) / z.len() as f64).sqrt();
                assert!(
                    (f - p).abs() < 4.0 * se + 1e-9,
                    "{path:?} y={y}: {f} vs {p}"
                );
            }
        }
    }
}
