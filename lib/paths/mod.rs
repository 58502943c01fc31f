//! Probability paths: how noise at t = 0 becomes data at t = 1 (notes section 3).
//!
//! **Gaussian conditional paths** (notes eq. 13): p_t(x|z) = N(alpha_t z, beta_t^2 I), sampled as
//! x_t = alpha_t z + beta_t eps with eps ~ N(0, I), where alpha_0 = 0, alpha_1 = 1 and
//! beta_0 = 1, beta_1 = 0, except for `vp` and `ve` (below). The schedules, each with its exact
//! time derivative:
//!
//! | `--path`  | alpha_t         | beta_t           | name in the notes / lab          |
//! |-----------|-----------------|------------------|----------------------------------|
//! | `condot`  | t               | 1 - t            | CondOT path (notes eq. 15)       |
//! | `sqrt`    | t               | sqrt(1 - t)      | the lab's path (`SquareRootBeta`)|
//! | `cosine`  | sin(pi t / 2)   | cos(pi t / 2)    | variance preserving, cosine      |
//! | `vp`      | exp(-B(1-t)/2)  | sqrt(1 - alpha^2)| DDPM / VP SDE, beta 0.1 to 20    |
//! | `ve`      | 1               | sigma(1 - t)     | NCSN / VE SDE, sigma 50 to 0.01  |
//!
//! `vp` and `ve` come from papers whose time tau runs the other way (tau = 0 data, tau = 1
//! noise); in ours t = 1 - tau, so their x_tau is our x_{1 - tau} and their noise level at tau is
//! our beta at 1 - tau. `vp` is DDPM's linear noise rate beta(tau) = 0.1 + 19.9 tau, B(tau) its
//! integral (`VP_BETA_MIN`, `VP_BETA_MAX`); its alpha_0 is 0.0066, not 0, as in the papers (p_0
//! is N(0, I) to within that). `ve` is x_t = z + sigma(1 - t) eps with the geometric noise levels
//! sigma(tau) = sigma_min (sigma_max / sigma_min)^tau of NCSN and the VE SDE (Song & Ermon 2019;
//! Song et al. 2021, the VE SDE), sigma_min = 0.01 and sigma_max = 50 (`VE_SIGMA_MIN`,
//! `VE_SIGMA_MAX`, why these in `schedule.rs`): alpha_t = 1 throughout, so p_0 is the data blurred
//! by N(0, 50^2 I) and p_init = N(0, sigma_max^2 I) stands for it ([`Path::init_std`]: every
//! sampler of a VE model starts there, not at N(0, I)); beta_1 = sigma_min, so p_1 is the data
//! blurred by N(0, 0.01^2 I). Its d_beta = -ln(sigma_max / sigma_min) beta_t.
//!
//! For each path:
//! - the conditional vector field (notes eq. 20):
//!   u_t(x|z) = (d_alpha - d_beta / beta * alpha) z + (d_beta / beta) x, which at x = x_t equals
//!   d_alpha z + d_beta eps, the time derivative of the sampling map;
//! - the conditional score (notes eq. 40): grad log p_t(x|z) = -(x - alpha z) / beta^2.
//!
//! **Parametrisations** ([`Param`]): a network may predict the velocity u, the score s, the noise
//! eps (DDPM) or the clean data z (denoiser). All four are functions of the two posterior means
//! z^ = E[z | x_t = x] and eps^ = E[eps | x_t = x], since x = alpha z^ + beta eps^:
//! - score:    s = -eps^ / beta                         (notes eq. 40 averaged over z; Remark 16)
//! - velocity: u = d_alpha z^ + d_beta eps^              (notes eq. 20 averaged; Proposition 1:
//!   u = (beta^2 d_alpha / alpha - d_beta beta) s + (d_alpha / alpha) x)
//! - from u:   eps^ = (d_alpha x - alpha u) / D,  z^ = (beta u - d_beta x) / D,
//!   with D = d_alpha beta - alpha d_beta > 0 for every schedule here (for `ve`, D = -d_beta).
//!
//! [`GaussianPath::convert`] writes these once for every pair.
//!
//! **Numerical safety near the ends.** beta_t -> 0 as t -> 1 and alpha_t -> 0 as t -> 0 (neither
//! for `ve`, whose alpha is 1 and beta at least 0.01). Where a formula divides by alpha or beta,
//! the divisor is clamped to at least [`MIN_DIVISOR`]; the derivative of sqrt(1 - t),
//! -1 / (2 sqrt(1 - t)), uses the same clamp. Values themselves are never clamped, so x_1 = z
//! exactly (z + 0.01 eps on `ve`). The clamp only matters within about 1e-3 of an end (1e-6
//! for the sqrt schedule near t = 1), where score and noise are exchanged at a bounded factor
//! instead of an infinite one. Converting to a velocity from a score or noise at t ~ 0 is
//! ill-posed (the score of p_0 says nothing about the data), as the clamp makes visible.
//!
//! **Linear interpolant** between two arbitrary distributions (notes section 3, Remark on
//! couplings): x_t = (1 - t) x_0 + t z with x_0 ~ p_src and z ~ p_data drawn independently; the
//! conditional velocity is z - x_0. With p_src = N(0, I) it is the CondOT path; with a data source
//! it bridges, say, circles to a checkerboard. It has no closed-form score.
//!
//! Time tensors `t` may be shaped (N,), (N, 1) or hold a single value for all rows. Schedule
//! coefficients are computed in f64 on the host, then applied as (N, 1, ..., 1) columns.

mod config;
mod gaussian;
mod interpolant;
pub mod noising;
mod param;
mod schedule;
mod time;

pub use config::Path;
pub use gaussian::GaussianPath;
pub use interpolant::{noise_gamma, noise_gamma_deriv, LinearInterpolant};
pub use param::Param;
pub use schedule::{time_values, Alpha, Beta, Coefs, MIN_DIVISOR, VE_SIGMA_MAX, VE_SIGMA_MIN};
pub use time::{TimeDensity, MODE_MAX};

/// Random tensors, times and comparisons for the tests of every part.
#[cfg(test)]
mod testing {
    use super::GaussianPath;
    use crate::rng::{self, Purpose};
    use candle_core::{Device, Tensor};

    pub(super) const PATHS: [GaussianPath; 5] = [
        GaussianPath::CONDOT,
        GaussianPath::SQRT,
        GaussianPath::COSINE,
        GaussianPath::VP,
        GaussianPath::VE,
    ];

    pub(super) fn normal(seed: u64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v = rng::normal_rows(seed, Purpose::Misc, 0, 1, n);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(super) fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    pub(super) fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        for (i, (x, y)) in vals(a).iter().zip(vals(b)).enumerate() {
            let scale = 1.0f32.max(x.abs()).max(y.abs());
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Times on a grid strictly inside (0, 1), one per row.
    pub(super) fn times(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 0.03 + 0.94 * i as f64 / (n - 1) as f64)
            .collect()
    }

    pub(super) fn t_tensor(t: &[f64]) -> Tensor {
        Tensor::from_vec(t.to_vec(), t.len(), &Device::Cpu).unwrap()
    }
}
