//! The Gaussian conditional path p_t(x|z) = N(alpha_t z, beta_t^2 I) (notes eq. 13): sampling
//! x_t, the conditional vector field (eq. 20) and score (eq. 40), and the training targets.

use candle_core::{Result, Tensor};

use super::schedule::Cols;
use super::{time_values, Alpha, Beta, Coefs, Param};

/// A Gaussian conditional probability path p_t(x|z) = N(alpha_t z, beta_t^2 I).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaussianPath {
    pub alpha: Alpha,
    pub beta: Beta,
}

impl GaussianPath {
    /// alpha_t = t, beta_t = 1 - t (CondOT).
    pub const CONDOT: GaussianPath = GaussianPath {
        alpha: Alpha::Linear,
        beta: Beta::Linear,
    };
    /// alpha_t = t, beta_t = sqrt(1 - t) (the lab's path).
    pub const SQRT: GaussianPath = GaussianPath {
        alpha: Alpha::Linear,
        beta: Beta::Sqrt,
    };
    /// alpha_t = sin(pi t / 2), beta_t = cos(pi t / 2) (variance preserving).
    pub const COSINE: GaussianPath = GaussianPath {
        alpha: Alpha::Sin,
        beta: Beta::Cos,
    };
    /// The variance-preserving schedule of DDPM and the VP SDE (beta(tau) from 0.1 to 20).
    pub const VP: GaussianPath = GaussianPath {
        alpha: Alpha::Vp,
        beta: Beta::Vp,
    };

    /// The variance-exploding path of NCSN and the VE SDE: alpha_t = 1, beta_t = sigma(1 - t),
    /// geometric from sigma_max = 50 at t = 0 to sigma_min = 0.01 at t = 1.
    pub const VE: GaussianPath = GaussianPath {
        alpha: Alpha::One,
        beta: Beta::Ve,
    };

    /// The standard deviation of p_init = N(0, std^2 I), where sampling starts at t = 0: 1, or
    /// sigma_max for the VE path ([`Beta::init_std`]).
    pub fn init_std(&self) -> f64 {
        self.beta.init_std()
    }

    /// The schedule values and derivatives at `t`.
    pub fn coefs(&self, t: f64) -> Coefs {
        Coefs {
            alpha: self.alpha.value(t),
            beta: self.beta.value(t),
            d_alpha: self.alpha.deriv(t),
            d_beta: self.beta.deriv(t),
        }
    }

    /// x_t = alpha_t z + beta_t eps. z, eps: (N, ...); t: (N,), (N, 1) or one value.
    pub fn sample_xt(&self, z: &Tensor, eps: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.sample_xt_at(z, eps, &time_values(t, z.dim(0)?)?)
    }

    /// [`Self::sample_xt`] with the times as host values, one per row.
    pub fn sample_xt_at(&self, z: &Tensor, eps: &Tensor, t: &[f64]) -> Result<Tensor> {
        let c = self.cols(t, z)?;
        c.lin(z, |k| k.alpha, eps, |k| k.beta)
    }

    /// The conditional vector field (notes eq. 20) at a point x (N, ...) given z (N, ...):
    /// (d_alpha - d_beta / beta alpha) z + (d_beta / beta) x.
    pub fn conditional_velocity(&self, x: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        let c = self.cols(&time_values(t, x.dim(0)?)?, x)?;
        c.lin(
            z,
            |k| k.d_alpha - k.d_beta * k.inv_beta() * k.alpha,
            x,
            |k| k.d_beta * k.inv_beta(),
        )
    }

    /// The conditional score (notes eq. 40): -(x - alpha z) / beta^2. x, z: (N, ...).
    pub fn conditional_score(&self, x: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        let c = self.cols(&time_values(t, x.dim(0)?)?, x)?;
        c.lin(
            x,
            |k| -k.inv_beta() * k.inv_beta(),
            z,
            |k| k.alpha * k.inv_beta() * k.inv_beta(),
        )
    }

    /// The regression target for `param` at x_t = alpha z + beta eps (z, eps: (N, ...)):
    /// velocity d_alpha z + d_beta eps (eq. 20 at x_t), score -eps / beta (eq. 40 at x_t),
    /// noise eps, denoiser z.
    pub fn target_at(&self, param: Param, z: &Tensor, eps: &Tensor, t: &[f64]) -> Result<Tensor> {
        match param {
            Param::Velocity => self.cols(t, z)?.lin(z, |k| k.d_alpha, eps, |k| k.d_beta),
            Param::Score => eps.broadcast_mul(&self.cols(t, eps)?.col(|k| -k.inv_beta())?),
            Param::Noise => Ok(eps.clone()),
            Param::Denoiser => Ok(z.clone()),
        }
    }

    pub(super) fn cols<'a>(&self, t: &[f64], like: &'a Tensor) -> Result<Cols<'a>> {
        if t.len() != like.dim(0)? {
            candle_core::bail!(
                "{} times for {} rows",
                t.len(),
                like.dim(0).unwrap_or_default()
            );
        }
        Ok(Cols {
            coefs: t.iter().map(|&t| self.coefs(t)).collect(),
            like,
        })
    }

    /// The `--path` name of this path, if it has one.
    pub fn cli_name(&self) -> Option<&'static str> {
        match *self {
            GaussianPath::CONDOT => Some("condot"),
            GaussianPath::SQRT => Some("sqrt"),
            GaussianPath::COSINE => Some("cosine"),
            GaussianPath::VP => Some("vp"),
            GaussianPath::VE => Some("ve"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn conditional_velocity_is_the_time_derivative_of_the_sampling_map() {
        let n = 16;
        let (z, eps) = (normal(1, &[n, 3]), normal(2, &[n, 3]));
        let ts = times(n);
        for p in PATHS {
            let h = 1e-3;
            let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
            let minus: Vec<f64> = ts.iter().map(|t| t - h).collect();
            let fd = (p.sample_xt_at(&z, &eps, &plus).unwrap()
                - p.sample_xt_at(&z, &eps, &minus).unwrap())
            .unwrap()
            .affine(1.0 / (2.0 * h), 0.0)
            .unwrap();
            let x = p.sample_xt_at(&z, &eps, &ts).unwrap();
            let u = p.conditional_velocity(&x, &z, &t_tensor(&ts)).unwrap();
            // Central differences: error ~ h^2 |x'''| / 6, a few 1e-5 here; f32 rounding ~1e-4.
            assert_close(&u, &fd, 2e-3, &format!("{p:?} velocity"));
            let target = p.target_at(Param::Velocity, &z, &eps, &ts).unwrap();
            assert_close(&u, &target, 1e-4, &format!("{p:?} target"));
        }
    }

    #[test]
    fn conditional_velocity_and_score_equal_closed_forms() {
        let n = 12;
        let (x, z) = (normal(3, &[n, 2]), normal(4, &[n, 2]));
        let ts = times(n);
        let t = t_tensor(&ts);
        let xs = vals(&x);
        let zs = vals(&z);
        // CondOT: u = (z - x) / (1 - t) (notes eq. 21).
        let u = vals(
            &GaussianPath::CONDOT
                .conditional_velocity(&x, &z, &t)
                .unwrap(),
        );
        for i in 0..2 * n {
            let ti = ts[i / 2];
            let want = (zs[i] as f64 - xs[i] as f64) / (1.0 - ti);
            assert!((u[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0));
        }
        // Score = gradient of log N(x; alpha z, beta^2 I), by finite differences in f64.
        for p in PATHS {
            let s = vals(&p.conditional_score(&x, &z, &t).unwrap());
            for i in 0..2 * n {
                let k = p.coefs(ts[i / 2]);
                let logp =
                    |xi: f64| -(xi - k.alpha * zs[i] as f64).powi(2) / (2.0 * k.beta * k.beta);
                let h = 1e-5;
                let fd = (logp(xs[i] as f64 + h) - logp(xs[i] as f64 - h)) / (2.0 * h);
                assert!(
                    (s[i] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
                    "{p:?}: {} vs {fd}",
                    s[i]
                );
            }
        }
    }

    #[test]
    fn conditional_fields_at_x_t_are_the_training_targets() {
        let n = 10;
        let (z, eps) = (normal(5, &[n, 1, 2, 2]), normal(6, &[n, 1, 2, 2]));
        let ts = times(n);
        for p in PATHS {
            let x = p.sample_xt_at(&z, &eps, &ts).unwrap();
            let s = p.conditional_score(&x, &z, &t_tensor(&ts)).unwrap();
            let target = p.target_at(Param::Score, &z, &eps, &ts).unwrap();
            assert_close(&s, &target, 1e-4, &format!("{p:?} score"));
            // The conditional velocity is also the conversion of the conditional score.
            let u = p
                .convert_at(Param::Score, Param::Velocity, &s, &x, &ts)
                .unwrap();
            let want = p.target_at(Param::Velocity, &z, &eps, &ts).unwrap();
            assert_close(&u, &want, 1e-4, &format!("{p:?} score->velocity"));
        }
    }

    #[test]
    fn safe_near_the_ends() {
        let n = 4;
        let (a, b) = (normal(11, &[n, 2]), normal(12, &[n, 2]));
        let all = [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser];
        for p in PATHS {
            for t in [0.0, 1e-9, 1.0 - 1e-9, 1.0] {
                let ts = vec![t; n];
                let tt = t_tensor(&ts);
                let mut outs = vec![
                    p.conditional_velocity(&a, &b, &tt).unwrap(),
                    p.conditional_score(&a, &b, &tt).unwrap(),
                    p.target_at(Param::Velocity, &a, &b, &ts).unwrap(),
                    p.target_at(Param::Score, &a, &b, &ts).unwrap(),
                ];
                for from in all {
                    for to in all {
                        outs.push(p.convert_at(from, to, &a, &b, &ts).unwrap());
                    }
                }
                for o in outs {
                    assert!(vals(&o).iter().all(|v| v.is_finite()), "{p:?} at t={t}");
                }
            }
            // x_1 = z + beta_1 eps exactly (beta_1 = 0 but for VE's sigma_min): values are
            // never clamped.
            let x1 = p.sample_xt_at(&a, &b, &[1.0; 4]).unwrap();
            let want = (&a + b.affine(p.beta.value(1.0), 0.0).unwrap()).unwrap();
            assert_close(&x1, &want, 1e-7, "x_1");
        }
    }
}
