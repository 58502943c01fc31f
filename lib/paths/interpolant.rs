//! The linear interpolant x_t = (1 - t) x_0 + t z between two arbitrary distributions, with
//! conditional velocity z - x_0 (notes section 3, Remark on couplings), and its stochastic
//! version.
//!
//! **The stochastic interpolant** (Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic
//! interpolants: a unifying framework for flows and diffusions", arXiv 2303.08797, section 2) adds
//! a latent noise term that vanishes at both ends:
//!
//! ```text
//!     x_t = (1 - t) x_0 + t z + gamma_t xi,   xi ~ N(0, I) independent of (x_0, z),
//!     d/dt x_t = z - x_0 + gamma'_t xi        (the conditional velocity, the regression target)
//! ```
//! Any gamma with gamma_0 = gamma_1 = 0 and gamma_t > 0 inside keeps the end points p_src and
//! p_data, and the velocity learned by regression still carries p_src to p_data along the
//! interpolant's marginals, now smoothed by the noise. We take
//! gamma_t = a t (1 - t) (`--interpolant-noise a`): the paper's other usual choice,
//! sqrt(a t (1 - t)), has a derivative that is unbounded at both ends, and so regression targets
//! whose variance a (1 - 2t)^2 / (4 t (1 - t)) has no finite integral over t.

use candle_core::{Result, Tensor};

use super::{time_values, GaussianPath};

/// The linear interpolant x_t = (1 - t) x_0 + t z between arbitrary x_0 ~ p_src and z ~ p_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinearInterpolant;

impl LinearInterpolant {
    /// x_t = (1 - t) x0 + t z. x0, z: (N, ...); t: (N,), (N, 1) or one value.
    pub fn sample_xt(&self, x0: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.sample_xt_at(x0, z, &time_values(t, z.dim(0)?)?)
    }

    /// [`Self::sample_xt`] with the times as host values.
    pub fn sample_xt_at(&self, x0: &Tensor, z: &Tensor, t: &[f64]) -> Result<Tensor> {
        let c = GaussianPath::CONDOT.cols(t, z)?;
        c.lin(z, |k| k.alpha, x0, |k| k.beta)
    }

    /// The conditional velocity d/dt x_t = z - x0, the flow matching target.
    pub fn conditional_velocity(&self, x0: &Tensor, z: &Tensor) -> Result<Tensor> {
        z.sub(x0)
    }

    /// The stochastic interpolant's x_t and its conditional velocity (see the module docs) for
    /// noise scale `a`: x_t = (1 - t) x0 + t z + gamma_t xi and z - x0 + gamma'_t xi. x0, z and
    /// xi (N, ...), times as host values, one per row.
    pub fn sample_noisy_at(
        &self,
        x0: &Tensor,
        z: &Tensor,
        xi: &Tensor,
        t: &[f64],
        a: f64,
    ) -> Result<(Tensor, Tensor)> {
        let col = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = t.iter().map(|&t| f(t) as f32).collect();
            let mut shape = vec![t.len()];
            shape.extend(std::iter::repeat_n(1, z.rank() - 1));
            Tensor::from_vec(v, shape, z.device())?.to_dtype(z.dtype())
        };
        let gamma = col(&|t| noise_gamma(a, t))?;
        let d_gamma = col(&|t| noise_gamma_deriv(a, t))?;
        let x = (self.sample_xt_at(x0, z, t)? + xi.broadcast_mul(&gamma)?)?;
        let u = (self.conditional_velocity(x0, z)? + xi.broadcast_mul(&d_gamma)?)?;
        Ok((x, u))
    }
}

/// gamma_t = a t (1 - t), the stochastic interpolant's noise scale.
pub fn noise_gamma(a: f64, t: f64) -> f64 {
    a * t * (1.0 - t)
}

/// d gamma_t / dt = a (1 - 2t).
pub fn noise_gamma_deriv(a: f64, t: f64) -> f64 {
    a * (1.0 - 2.0 * t)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Path;
    use super::*;

    #[test]
    fn linear_interpolant_is_condot_for_gaussian_source() {
        let n = 6;
        let (x0, z) = (normal(13, &[n, 2]), normal(14, &[n, 2]));
        let ts = times(n);
        let li = LinearInterpolant;
        let a = li.sample_xt_at(&x0, &z, &ts).unwrap();
        let b = GaussianPath::CONDOT.sample_xt_at(&z, &x0, &ts).unwrap();
        assert_close(&a, &b, 1e-7, "x_t");
        let h = 1e-3;
        let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
        let fd = (li.sample_xt_at(&x0, &z, &plus).unwrap() - &a)
            .unwrap()
            .affine(1.0 / h, 0.0)
            .unwrap();
        assert_close(&li.conditional_velocity(&x0, &z).unwrap(), &fd, 1e-3, "u");
        assert_eq!(
            Path::LinearInterpolant.as_gaussian(true),
            Some(GaussianPath::CONDOT)
        );
        assert_eq!(Path::LinearInterpolant.as_gaussian(false), None);
    }

    #[test]
    fn the_stochastic_interpolants_target_is_the_time_derivative_of_x_t() {
        let n = 6;
        let (x0, z, xi) = (
            normal(15, &[n, 3]),
            normal(16, &[n, 3]),
            normal(17, &[n, 3]),
        );
        let ts = times(n);
        let li = LinearInterpolant;
        let a = 1.7;
        let (x, u) = li.sample_noisy_at(&x0, &z, &xi, &ts, a).unwrap();
        // The noise term is really there: x_t moves away from the straight line by gamma_t xi.
        let plain = li.sample_xt_at(&x0, &z, &ts).unwrap();
        let dev = (&x - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(dev.to_scalar::<f32>().unwrap() > 0.1);
        let h = 1e-3;
        let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
        let minus: Vec<f64> = ts.iter().map(|t| t - h).collect();
        let (xp, _) = li.sample_noisy_at(&x0, &z, &xi, &plus, a).unwrap();
        let (xm, _) = li.sample_noisy_at(&x0, &z, &xi, &minus, a).unwrap();
        let fd = (xp - xm).unwrap().affine(1.0 / (2.0 * h), 0.0).unwrap();
        assert_close(&u, &fd, 1e-3, "u");
        // Both ends are the plain interpolant's: gamma_0 = gamma_1 = 0.
        for t in [0.0, 1.0] {
            let (xe, _) = li.sample_noisy_at(&x0, &z, &xi, &[t; 6], a).unwrap();
            assert_close(
                &xe,
                &li.sample_xt_at(&x0, &z, &[t; 6]).unwrap(),
                1e-7,
                "end",
            );
        }
    }
}
