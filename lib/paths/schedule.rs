//! The schedules alpha_t and beta_t with their exact derivatives, their values at one time
//! ([`Coefs`], with the divisions clamped at [`MIN_DIVISOR`]), and the per-row columns that
//! apply them to a batch.

use candle_core::{Result, Tensor};
use std::f64::consts::FRAC_PI_2;

/// The smallest value alpha_t or beta_t takes when a formula divides by it.
pub const MIN_DIVISOR: f64 = 1e-3;

/// The signal schedule alpha_t: 0 at t = 0 (noise), 1 at t = 1 (data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpha {
    /// alpha_t = t
    Linear,
    /// alpha_t = sin(pi t / 2)
    Sin,
}

impl Alpha {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => t,
            Alpha::Sin => (FRAC_PI_2 * t).sin(),
        }
    }

    /// d alpha_t / dt.
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => 1.0,
            Alpha::Sin => FRAC_PI_2 * (FRAC_PI_2 * t).cos(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alpha::Linear => "linear",
            Alpha::Sin => "sin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Alpha::Linear, Alpha::Sin]
            .into_iter()
            .find(|a| a.name() == s)
    }
}

/// The noise schedule beta_t: 1 at t = 0, 0 at t = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beta {
    /// beta_t = 1 - t
    Linear,
    /// beta_t = sqrt(1 - t)
    Sqrt,
    /// beta_t = cos(pi t / 2)
    Cos,
}

impl Beta {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Beta::Linear => 1.0 - t,
            Beta::Sqrt => (1.0 - t).max(0.0).sqrt(),
            Beta::Cos => (FRAC_PI_2 * t).cos(),
        }
    }

    /// d beta_t / dt; for `Sqrt` the square root is clamped to [`MIN_DIVISOR`] (finite at t = 1).
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Beta::Linear => -1.0,
            Beta::Sqrt => -0.5 / (1.0 - t).max(0.0).sqrt().max(MIN_DIVISOR),
            Beta::Cos => -FRAC_PI_2 * (FRAC_PI_2 * t).sin(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Beta::Linear => "linear",
            Beta::Sqrt => "sqrt",
            Beta::Cos => "cos",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Beta::Linear, Beta::Sqrt, Beta::Cos]
            .into_iter()
            .find(|b| b.name() == s)
    }
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
    /// means; positive for increasing alpha and decreasing beta.
    pub fn det(&self) -> f64 {
        self.d_alpha * self.beta - self.alpha * self.d_beta
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
            assert_eq!(p.alpha.value(0.0), 0.0);
            assert!((p.alpha.value(1.0) - 1.0).abs() < 1e-15);
            assert!((p.beta.value(0.0) - 1.0).abs() < 1e-15);
            assert!(p.beta.value(1.0).abs() < 1e-15);
            for t in times(20) {
                let h = 1e-6;
                let fa = (p.alpha.value(t + h) - p.alpha.value(t - h)) / (2.0 * h);
                let fb = (p.beta.value(t + h) - p.beta.value(t - h)) / (2.0 * h);
                assert!((fa - p.alpha.deriv(t)).abs() < 1e-6, "{p:?} alpha' at {t}");
                assert!((fb - p.beta.deriv(t)).abs() < 1e-6, "{p:?} beta' at {t}");
                assert!(p.coefs(t).det() > 0.0);
            }
        }
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
