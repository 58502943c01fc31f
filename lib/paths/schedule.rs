//! The schedules alpha_t and beta_t with their exact derivatives, their values at one time
//! ([`Coefs`], with the divisions clamped at [`MIN_DIVISOR`]), and the per-row columns that
//! apply them to a batch.

use candle_core::{Result, Tensor};
use std::f64::consts::FRAC_PI_2;

/// The smallest value alpha_t or beta_t takes when a formula divides by it.
pub const MIN_DIVISOR: f64 = 1e-3;

/// The variance-preserving schedule of DDPM and the score SDE (Ho et al. 2020; Song et al.
/// 2021, the VP SDE with beta(tau) = B_MIN + (B_MAX - B_MIN) tau), in our time t = 1 - tau:
/// alpha_t = exp(-B(1 - t) / 2) with B(tau) = B_MIN tau + (B_MAX - B_MIN) tau^2 / 2.
pub const VP_BETA_MIN: f64 = 0.1;
pub const VP_BETA_MAX: f64 = 20.0;

/// The variance-exploding schedule of NCSN and the VE SDE (Song & Ermon 2019; Song et al. 2021):
/// the geometric noise levels sigma(tau) = sigma_min (sigma_max / sigma_min)^tau of the papers'
/// time tau, in ours beta_t = sigma(1 - t), alpha_t = 1. sigma_max = 50 is Song et al.'s value
/// for CIFAR-10, chosen there by their "technique 1" (Song & Ermon 2020): as large as the largest
/// distance between two training points, so that p_0 forgets the data. Ours: the 2-D toy sets
/// (scale 5) lie within about 15 of each other, standardised points within a few units, and
/// 28x28 images in [-1, 1] within 2 sqrt(784) = 56 at the very most, under 50 in practice.
/// EDM's 80 (Karras et al. 2022) only adds noise levels that carry no information at this scale.
/// sigma_min = 0.01 (both papers use 0.01 or less) leaves p_1 = p_data * N(0, 0.01^2 I): a blur
/// of 1% of the data's scale.
pub const VE_SIGMA_MIN: f64 = 0.01;
pub const VE_SIGMA_MAX: f64 = 50.0;

/// B(tau), the integral of the VP noise rate beta(tau) from 0 to tau.
fn vp_integral(tau: f64) -> f64 {
    VP_BETA_MIN * tau + 0.5 * (VP_BETA_MAX - VP_BETA_MIN) * tau * tau
}

/// The signal schedule alpha_t: 1 at t = 1 (data), and 0 at t = 0 (noise) except for `Vp`
/// (0.0066) and `One` (1: variance exploding, where the noise swamps the data instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpha {
    /// alpha_t = t
    Linear,
    /// alpha_t = sin(pi t / 2)
    Sin,
    /// alpha_t = exp(-B(1 - t) / 2), the VP schedule ([`VP_BETA_MIN`]); alpha_0 = exp(-5.025),
    /// 0.0066, not exactly 0.
    Vp,
    /// alpha_t = 1, the variance-exploding path's: x_t = z + beta_t eps.
    One,
}

impl Alpha {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => t,
            Alpha::Sin => (FRAC_PI_2 * t).sin(),
            Alpha::Vp => (-0.5 * vp_integral(1.0 - t)).exp(),
            Alpha::One => 1.0,
        }
    }

    /// d alpha_t / dt.
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => 1.0,
            Alpha::Sin => FRAC_PI_2 * (FRAC_PI_2 * t).cos(),
            // d/dt exp(-B(1 - t) / 2) = alpha_t beta(1 - t) / 2
            Alpha::Vp => {
                let tau = 1.0 - t;
                0.5 * (VP_BETA_MIN + (VP_BETA_MAX - VP_BETA_MIN) * tau) * self.value(t)
            }
            Alpha::One => 0.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alpha::Linear => "linear",
            Alpha::Sin => "sin",
            Alpha::Vp => "vp",
            Alpha::One => "one",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Alpha::Linear, Alpha::Sin, Alpha::Vp, Alpha::One]
            .into_iter()
            .find(|a| a.name() == s)
    }
}

/// The noise schedule beta_t: 1 at t = 0 and 0 at t = 1, except for `Ve` (sigma_max at t = 0,
/// sigma_min at t = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beta {
    /// beta_t = 1 - t
    Linear,
    /// beta_t = sqrt(1 - t)
    Sqrt,
    /// beta_t = cos(pi t / 2)
    Cos,
    /// beta_t = sqrt(1 - alpha_t^2) of the VP alpha (variance preserving).
    Vp,
    /// beta_t = sigma_min (sigma_max / sigma_min)^(1 - t), variance exploding ([`VE_SIGMA_MAX`]).
    Ve,
}

impl Beta {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Beta::Linear => 1.0 - t,
            Beta::Sqrt => (1.0 - t).max(0.0).sqrt(),
            Beta::Cos => (FRAC_PI_2 * t).cos(),
            Beta::Vp => (1.0 - Alpha::Vp.value(t).powi(2)).max(0.0).sqrt(),
            Beta::Ve => VE_SIGMA_MIN * ve_ratio().powf(1.0 - t),
        }
    }

    /// d beta_t / dt; for `Sqrt` and `Vp` the square root is clamped to [`MIN_DIVISOR`] (finite
    /// at t = 1).
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Beta::Linear => -1.0,
            Beta::Sqrt => -0.5 / (1.0 - t).max(0.0).sqrt().max(MIN_DIVISOR),
            Beta::Cos => -FRAC_PI_2 * (FRAC_PI_2 * t).sin(),
            // -alpha d_alpha / beta, beta clamped as for Sqrt (beta_t ~ sqrt(B_MIN (1 - t)))
            Beta::Vp => {
                let a = Alpha::Vp;
                -a.value(t) * a.deriv(t) / self.value(t).max(MIN_DIVISOR)
            }
            // d/dt sigma_min r^(1 - t) = -ln(r) beta_t, r = sigma_max / sigma_min
            Beta::Ve => -ve_ratio().ln() * self.value(t),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Beta::Linear => "linear",
            Beta::Sqrt => "sqrt",
            Beta::Cos => "cos",
            Beta::Vp => "vp",
            Beta::Ve => "ve",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Beta::Linear, Beta::Sqrt, Beta::Cos, Beta::Vp, Beta::Ve]
            .into_iter()
            .find(|b| b.name() == s)
    }

    /// The standard deviation of p_init = N(0, std^2 I), where samplers start: beta_0 rounded
    /// to the noise the path was built for, 1 for every schedule but `Ve` (sigma_max). p_0 is
    /// alpha_0 p_data convolved with N(0, beta_0^2 I); p_init stands for it since alpha_0 is 0
    /// (or 0.0066 for `Vp`), or, for `Ve`, since sigma_max dwarfs data of unit scale.
    pub fn init_std(self) -> f64 {
        match self {
            Beta::Ve => VE_SIGMA_MAX,
            _ => 1.0,
        }
    }
}

/// sigma_max / sigma_min of the VE schedule.
fn ve_ratio() -> f64 {
    VE_SIGMA_MAX / VE_SIGMA_MIN
}

/// alpha_t, beta_t and their derivatives at one time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefs {
    pub alpha: f64,
    pub beta: f64,
    pub d_alpha: f64,
    pub d_beta: f64,
}

impl Coefs {
    /// 1 / alpha with alpha clamped to [`MIN_DIVISOR`].
    pub fn inv_alpha(&self) -> f64 {
        1.0 / self.alpha.max(MIN_DIVISOR)
    }

    /// 1 / beta with beta clamped to [`MIN_DIVISOR`].
    pub fn inv_beta(&self) -> f64 {
        1.0 / self.beta.max(MIN_DIVISOR)
    }

    /// D = d_alpha beta - alpha d_beta, the determinant that turns a velocity into posterior
    /// means; positive for non-decreasing alpha and decreasing beta (for VE, -d_beta > 0).
    pub fn det(&self) -> f64 {
        self.d_alpha * self.beta - self.alpha * self.d_beta
    }

    /// d_beta - d_alpha beta / alpha: the weight of the noise posterior mean eps^ in the velocity
    /// u = (d_alpha / alpha) x + (d_beta - d_alpha beta / alpha) eps^ (Proposition 1).
    pub fn eps_gain(&self) -> f64 {
        self.d_beta - self.d_alpha * self.beta * self.inv_alpha()
    }

    /// c_t = beta^2 d_alpha / alpha - d_beta beta: the weight of the score in the velocity,
    /// u = c_t s + (d_alpha / alpha) x (Proposition 1, as eps^ = -beta s), so a score term
    /// (classifier guidance's grad log p(y | x)) is the velocity term c_t times it.
    pub fn score_gain(&self) -> f64 {
        -self.beta * self.eps_gain()
    }
}

/// Per-row schedule coefficients, applied as (N, 1, ..., 1) columns broadcast against `like`.
pub(super) struct Cols<'a> {
    pub(super) coefs: Vec<Coefs>,
    pub(super) like: &'a Tensor,
}

impl Cols<'_> {
    /// The column f(coefs_i), shaped (N, 1, ..., 1) with the rank, dtype and device of `like`.
    pub(super) fn col(&self, f: impl Fn(&Coefs) -> f64) -> Result<Tensor> {
        let mut shape = vec![1usize; self.like.rank()];
        shape[0] = self.coefs.len();
        let v: Vec<f32> = self.coefs.iter().map(|k| f(k) as f32).collect();
        Tensor::from_vec(v, shape, self.like.device())?.to_dtype(self.like.dtype())
    }

    /// f(coefs) a + g(coefs) b, row by row.
    pub(super) fn lin(
        &self,
        a: &Tensor,
        f: impl Fn(&Coefs) -> f64,
        b: &Tensor,
        g: impl Fn(&Coefs) -> f64,
    ) -> Result<Tensor> {
        a.broadcast_mul(&self.col(f)?)?
            .add(&b.broadcast_mul(&self.col(g)?)?)
    }
}

/// The times in `t` as host values, one per row: `t` is (N,), (N, 1) or holds one value.
pub fn time_values(t: &Tensor, n: usize) -> Result<Vec<f64>> {
    let v: Vec<f64> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    match v.len() {
        len if len == n => Ok(v),
        1 => Ok(vec![v[0]; n]),
        len => candle_core::bail!("expected {n} times (one per row) or one, got {len}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_hit_their_ends_and_derivatives_match_finite_differences() {
        for p in PATHS {
            // VP starts at alpha_0 = exp(-B(1) / 2), as DDPM's schedule does; VE keeps
            // alpha = 1 and runs beta from sigma_max down to sigma_min.
            let (alpha0, beta0, beta1) = match (p.alpha, p.beta) {
                (Alpha::Vp, _) => {
                    let a0 = (-5.025f64).exp();
                    (a0, (1.0 - a0 * a0).sqrt(), 0.0)
                }
                (Alpha::One, Beta::Ve) => (1.0, 50.0, 0.01),
                _ => (0.0, 1.0, 0.0),
            };
            assert!((p.alpha.value(0.0) - alpha0).abs() < 1e-15, "{p:?}");
            assert!((p.alpha.value(1.0) - 1.0).abs() < 1e-15);
            assert!((p.beta.value(0.0) - beta0).abs() < 1e-12 * beta0, "{p:?}");
            assert!((p.beta.value(1.0) - beta1).abs() < 1e-15, "{p:?}");
            for t in times(20) {
                let h = 1e-6;
                let fa = (p.alpha.value(t + h) - p.alpha.value(t - h)) / (2.0 * h);
                let fb = (p.beta.value(t + h) - p.beta.value(t - h)) / (2.0 * h);
                let tol = |d: f64| 1e-6 * d.abs().max(1.0);
                assert!(
                    (fa - p.alpha.deriv(t)).abs() < tol(fa),
                    "{p:?} alpha' at {t}"
                );
                assert!((fb - p.beta.deriv(t)).abs() < tol(fb), "{p:?} beta' at {t}");
                assert!(p.coefs(t).det() > 0.0);
            }
        }
    }

    /// The VP path preserves variance, alpha_t^2 + beta_t^2 = 1, and its alpha follows the
    /// linear noise rate: d log alpha_t / dt = beta(1 - t) / 2 with beta(tau) = 0.1 + 19.9 tau.
    #[test]
    fn the_vp_path_preserves_variance_and_follows_its_noise_rate() {
        let p = crate::paths::GaussianPath::VP;
        for t in times(50) {
            let c = p.coefs(t);
            assert!(
                (c.alpha.powi(2) + c.beta.powi(2) - 1.0).abs() < 1e-12,
                "t {t}"
            );
            let rate = 0.1 + 19.9 * (1.0 - t);
            assert!((c.d_alpha / c.alpha - rate / 2.0).abs() < 1e-12, "t {t}");
        }
        assert_eq!(Beta::parse("vp"), Some(Beta::Vp));
        assert_eq!(Alpha::parse("vp"), Some(Alpha::Vp));
    }

    /// The VE path is x_t = z + sigma(1 - t) eps with NCSN's geometric noise levels
    /// sigma(tau) = 0.01 * 5000^tau: log beta is linear in t, falling by ln 5000 from t = 0 to
    /// t = 1, and D = -d_beta > 0.
    #[test]
    fn the_ve_path_explodes_geometrically() {
        let p = crate::paths::GaussianPath::VE;
        for t in times(50) {
            let c = p.coefs(t);
            assert_eq!((c.alpha, c.d_alpha), (1.0, 0.0));
            let sigma = 0.01 * 5000f64.powf(1.0 - t);
            assert!((c.beta - sigma).abs() < 1e-12 * sigma, "t {t}");
            assert!((c.d_beta / c.beta + 5000f64.ln()).abs() < 1e-12, "t {t}");
            assert!((c.det() + c.d_beta).abs() < 1e-12 && c.det() > 0.0);
        }
        assert_eq!(p.init_std(), 50.0);
        assert_eq!(crate::paths::GaussianPath::VP.init_std(), 1.0);
        assert_eq!(Beta::parse("ve"), Some(Beta::Ve));
        assert_eq!(Alpha::parse("one"), Some(Alpha::One));
    }

    #[test]
    fn time_tensors_of_any_accepted_shape() {
        let t = Tensor::new(&[[0.5f32], [0.25]], &Device::Cpu).unwrap();
        assert_eq!(time_values(&t, 2).unwrap(), vec![0.5, 0.25]);
        let one = Tensor::new(0.5f32, &Device::Cpu).unwrap();
        assert_eq!(time_values(&one, 3).unwrap(), vec![0.5; 3]);
        assert!(time_values(&t, 3).is_err());
    }
}
