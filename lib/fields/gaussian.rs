//! The exact marginal field of a Gaussian target: a closed form to test samplers against.
//!
//! For p_data = N(m, s^2 I) and a Gaussian path x_t = alpha_t z + beta_t eps (notes section 3),
//! the marginal is p_t = N(alpha_t m, v_t I) with v_t = alpha_t^2 s^2 + beta_t^2, so
//! - score: grad log p_t(x) = -(x - alpha_t m) / v_t;
//! - posterior means: E[z | x] = m + (alpha_t s^2 / v_t)(x - alpha_t m),
//!   E[eps | x] = (beta_t / v_t)(x - alpha_t m);
//! - marginal velocity (notes eq. 26 solved exactly): u_t(x) = d_alpha E[z|x] + d_beta E[eps|x].
//!
//! With diffusion sigma_t the SDE dX = [u_t + sigma_t^2/2 grad log p_t] dt + sigma_t dW keeps
//! the same marginals (Theorem 17): the test of every sampler built on it.

use candle_core::Tensor;

use super::Field;
use crate::paths::GaussianPath;

/// The exact flow (or SDE of Theorem 17) from p_0 = N(alpha_0 m, v_0 I) (about the path's
/// p_init: N(0, I), or N(0, sigma_max^2 I) for VE) to N(m, s^2 I) along `path`.
pub struct GaussianTarget {
    pub mean: Vec<f64>,
    pub std: f64,
    pub path: GaussianPath,
    /// sigma_t, constant.
    pub sigma: f64,
}

impl GaussianTarget {
    /// (x - alpha_t m) and v_t at time t, for x (N, D).
    fn centred(&self, x: &Tensor, t: f64) -> candle_core::Result<(Tensor, f64)> {
        let c = self.path.coefs(t);
        let m: Vec<f32> = self.mean.iter().map(|&v| (c.alpha * v) as f32).collect();
        let m = Tensor::from_vec(m, (1, self.mean.len()), x.device())?.to_dtype(x.dtype())?;
        let v = c.alpha * c.alpha * self.std * self.std + c.beta * c.beta;
        Ok((x.broadcast_sub(&m)?, v))
    }

    /// grad log p_t(x) = -(x - alpha_t m) / v_t.
    pub fn score(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let (d, v) = self.centred(x, t)?;
        d.affine(-1.0 / v, 0.0)
    }

    /// u_t(x) = d_alpha E[z|x] + d_beta E[eps|x].
    pub fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let c = self.path.coefs(t);
        let (d, v) = self.centred(x, t)?;
        let m: Vec<f32> = self.mean.iter().map(|&v| (c.d_alpha * v) as f32).collect();
        let m = Tensor::from_vec(m, (1, self.mean.len()), x.device())?.to_dtype(x.dtype())?;
        let gain = (c.d_alpha * c.alpha * self.std * self.std + c.d_beta * c.beta) / v;
        d.affine(gain, 0.0)?.broadcast_add(&m)
    }
}

impl Field for GaussianTarget {
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        super::sde_drift(&self.velocity(x, t)?, self.sigma, || self.score(x, t))
    }

    fn diffusion(&self, _t: f64) -> f64 {
        self.sigma
    }
    fn gaussian_path(&self) -> Option<GaussianPath> {
        Some(self.path)
    }

    fn describe(&self) -> String {
        format!(
            "gaussian-target(mean={:?}, std={}, path={}, sigma={})",
            self.mean,
            self.std,
            crate::paths::Path::Gaussian(self.path).name(),
            self.sigma
        )
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.mean.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solvers::{self, Method, SolveOptions};
    use candle_core::Device;

    fn moments(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let v = x.to_vec2::<f32>().unwrap();
        let n = v.len() as f64;
        let d = v[0].len();
        let mean: Vec<f64> = (0..d)
            .map(|j| v.iter().map(|r| r[j] as f64).sum::<f64>() / n)
            .collect();
        let std = (0..d)
            .map(|j| {
                (v.iter()
                    .map(|r| (r[j] as f64 - mean[j]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
            })
            .collect();
        (mean, std)
    }

    /// From N(0, I) the ODE and the SDEs of Theorem 17 all reach N(m, s^2 I), and are
    /// N(alpha m, v_t I) halfway, for several sigma and both paths.
    #[test]
    fn every_sigma_keeps_the_marginals() {
        let n = 4000;
        let x0 = crate::rng::normal_rows(1, crate::rng::Purpose::Noise, 0, n, 2);
        let x0 = Tensor::from_vec(x0, (n, 2), &Device::Cpu).unwrap();
        for path in [GaussianPath::CONDOT, GaussianPath::SQRT] {
            for sigma in [0.0, 0.5, 1.5] {
                let f = GaussianTarget {
                    mean: vec![3.0, -1.0],
                    std: 0.5,
                    path,
                    sigma,
                };
                for t1 in [0.5, 1.0] {
                    let grid = solvers::uniform_grid(0.0, t1, 400);
                    let opts = SolveOptions {
                        method: if sigma == 0.0 {
                            Method::Heun
                        } else {
                            Method::EulerMaruyama
                        },
                        ..Default::default()
                    };
                    let sol = solvers::solve(&f, &x0, &grid, &opts, None).unwrap();
                    let (mean, std) = moments(&sol.x);
                    let c = path.coefs(t1);
                    let want_std = (c.alpha * c.alpha * 0.25 + c.beta * c.beta).sqrt();
                    // Standard errors ~ std/sqrt(n) = 0.016 for the mean, 0.011 for the std;
                    // Euler-Maruyama adds an O(h) bias.
                    for (j, m) in [3.0, -1.0].iter().enumerate() {
                        let what = format!("path {path:?} sigma {sigma} t {t1} axis {j}");
                        assert!(
                            (mean[j] - c.alpha * m).abs() < 0.08,
                            "{what}: mean {}",
                            mean[j]
                        );
                        assert!((std[j] - want_std).abs() < 0.06, "{what}: std {}", std[j]);
                    }
                }
            }
        }
    }

    #[test]
    fn velocity_is_the_posterior_mean_of_the_conditional_velocity() {
        // At t = 0 with alpha = 0, beta = 1 (CondOT): u = d_alpha m + d_beta x = m - x.
        let f = GaussianTarget {
            mean: vec![1.0, 2.0],
            std: 0.3,
            path: GaussianPath::CONDOT,
            sigma: 0.0,
        };
        let x = Tensor::new(&[[0.5f32, -1.0]], &Device::Cpu).unwrap();
        let u = f.velocity(&x, 0.0).unwrap().to_vec2::<f32>().unwrap();
        assert!(
            (u[0][0] - 0.5).abs() < 1e-6 && (u[0][1] - 3.0).abs() < 1e-6,
            "{u:?}"
        );
    }
}
