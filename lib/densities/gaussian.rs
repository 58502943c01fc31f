//! The diagonal Gaussian N(μ, diag(s²)) with
//! log p(x) = -½ Σ_d ((x_d - μ_d) / s_d)² - Σ_d log s_d - (D/2) log 2π and score -(x - μ) / s²,
//! and its per-sample draws μ + s ⊙ z.

use anyhow::bail;
use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::f64::consts::PI;

use super::{check_points, row, Density};
use crate::rng::{self, Purpose};
use crate::Result;

/// A Gaussian with diagonal covariance diag(std²).
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Gaussian {
    /// N(mean, diag(std²)); `mean` and `std` have the same length D >= 1, std > 0.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            bail!(
                "a Gaussian needs mean and std of the same length >= 1, got {} and {}",
                mean.len(),
                std.len()
            );
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!("a Gaussian's std must be positive, got {s}");
        }
        if mean.iter().any(|m| !m.is_finite()) {
            bail!("a Gaussian's mean must be finite");
        }
        Ok(Gaussian { mean, std })
    }

    /// N(0, std² I) in `dim` dimensions.
    pub fn isotropic(dim: usize, std: f64) -> Result<Self> {
        Gaussian::new(vec![0.0; dim], vec![std; dim])
    }

    /// log N(x; μ, diag(s²)) of one point.
    pub(super) fn log_pdf(&self, x: &[f64]) -> f64 {
        let mut q = 0.0;
        let mut log_det = 0.0;
        for ((&xi, &m), &s) in x.iter().zip(&self.mean).zip(&self.std) {
            let z = (xi - m) / s;
            q += z * z;
            log_det += s.ln();
        }
        -0.5 * q - log_det - 0.5 * self.mean.len() as f64 * (2.0 * PI).ln()
    }

    /// Adds -(x - μ)/s² times `weight` to `out`: the score of one point, scaled.
    pub(super) fn add_score(&self, x: &[f64], weight: f64, out: &mut [f64]) {
        for (((o, &xi), &m), &s) in out.iter_mut().zip(x).zip(&self.mean).zip(&self.std) {
            *o -= weight * (xi - m) / (s * s);
        }
    }

    /// Writes μ + s ⊙ z, with z standard normal drawn from `rng`, into `out`.
    pub(super) fn draw(&self, rng: &mut impl Rng, out: &mut [f64]) {
        for ((o, &m), &s) in out.iter_mut().zip(&self.mean).zip(&self.std) {
            let z: f64 = StandardNormal.sample(rng);
            *o = m + s * z;
        }
    }
}

impl Density for Gaussian {
    fn dim(&self) -> usize {
        self.mean.len()
    }

    fn log_density(&self, x: ArrayView2<f64>) -> Result<Array1<f64>> {
        check_points(&x, self.dim())?;
        Ok(x.rows()
            .into_iter()
            .map(|r| self.log_pdf(&row(r)))
            .collect())
    }

    fn score(&self, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        check_points(&x, self.dim())?;
        let mut out = Array2::zeros(x.raw_dim());
        for (r, mut o) in x.rows().into_iter().zip(out.rows_mut()) {
            let o = o.as_slice_mut().expect("a fresh array is contiguous");
            self.add_score(&row(r), 1.0, o);
        }
        Ok(out)
    }

    fn sample(&self, n: usize, seed: u64, first: u64) -> Array2<f64> {
        let mut out = Array2::zeros((n, self.dim()));
        for (i, mut o) in out.rows_mut().into_iter().enumerate() {
            let mut rng = rng::stream(seed, Purpose::Data, first + i as u64);
            self.draw(&mut rng, o.as_slice_mut().expect("contiguous"));
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "gaussian (mean {:?}, std {:?})",
            self.mean.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            self.std.iter().map(|v| *v as f32).collect::<Vec<_>>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gaussian_log_density_closed_form() {
        let g = Gaussian::new(vec![1.0, -1.0], vec![2.0, 0.5]).unwrap();
        let lp = g
            .log_density(array![[1.0, -1.0], [3.0, -1.5]].view())
            .unwrap();
        let norm = -(2.0 * PI).ln() - (2.0f64 * 0.5).ln();
        assert!((lp[0] - norm).abs() < 1e-12);
        assert!((lp[1] - (norm - 0.5 * (1.0 + 1.0))).abs() < 1e-12);
    }
}
