//! Densities p(x) on R^D that know their exact score ∇ log p(x): the targets of Langevin
//! dynamics (notes section 2.2, eq. 10-11 and Remark 20) and the toy data of Lab 1.
//!
//! - Diagonal Gaussian N(μ, diag(s²)):
//!   log p(x) = -½ Σ_d ((x_d - μ_d) / s_d)² - Σ_d log s_d - (D/2) log 2π,
//!   ∇ log p(x) = -(x - μ) / s².
//! - Mixture p(x) = Σ_k w_k N(x; μ_k, diag(s_k²)):
//!   log p(x) = logsumexp_k (log w_k + log N_k(x))  (subtracting the max, so far-away points
//!   do not underflow to log 0), and
//!   ∇ log p(x) = Σ_k r_k(x) · (-(x - μ_k) / s_k²), with responsibilities
//!   r_k(x) = softmax_k(log w_k + log N_k(x)).
//!
//! Scores are written out, not finite differences; the tests check them against differences of
//! `log_density`. The maths runs in f64 on the CPU (ndarray); [`score_tensor`] bridges to the
//! candle tensors that fields and solvers use. Sample i is drawn from the stream
//! (seed, Purpose::Data, first + i), so samples do not depend on how a batch is split.
//!
//! Specs ([`from_spec`]): a shorthand, inline JSON, or a JSON file (see [`SPEC_HELP`]).

mod gaussian;
mod mixture;
mod specs;
mod tensor;

pub use gaussian::Gaussian;
pub use mixture::GaussianMixture;
pub use specs::{from_json, from_spec, mixture_from_spec, KINDS, SPEC_HELP};
pub use tensor::{log_density_tensor, score_tensor};

use anyhow::bail;
use ndarray::{Array1, Array2, ArrayView2};

use crate::Result;

/// A probability density on R^D with its exact score.
pub trait Density: Send + Sync {
    /// D, the dimension of one point.
    fn dim(&self) -> usize;
    /// log p(x) of each row of `x` (N, D) -> (N,).
    fn log_density(&self, x: ArrayView2<f64>) -> Result<Array1<f64>>;
    /// ∇_x log p(x) of each row of `x` (N, D) -> (N, D).
    fn score(&self, x: ArrayView2<f64>) -> Result<Array2<f64>>;
    /// `n` samples (n, D): samples `first..first + n` of the seed's sequence.
    fn sample(&self, n: usize, seed: u64, first: u64) -> Array2<f64>;
    /// A short human description, e.g. `gaussian mixture (5 modes, 2-D)`.
    fn describe(&self) -> String;
}

/// Fails unless `x` holds points (N, dim).
fn check_points(x: &ArrayView2<f64>, dim: usize) -> Result<()> {
    if x.ncols() != dim {
        bail!(
            "expected points (N, {dim}) for a {dim}-D density, got ({}, {})",
            x.nrows(),
            x.ncols()
        );
    }
    Ok(())
}

/// One row as a contiguous slice (rows of a C-order array already are; others are copied).
fn row<'a>(r: ndarray::ArrayView1<'a, f64>) -> std::borrow::Cow<'a, [f64]> {
    match r.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(r.to_vec()),
    }
}

/// Points (N, 2) at the centres of an (h, w) grid of cells over [xmin, xmax] x [ymin, ymax],
/// in row-major order with row 0 at the top (y = ymax), as images and heat maps are drawn.
pub fn grid_points(bounds: [f64; 4], h: usize, w: usize) -> Array2<f64> {
    let [xmin, xmax, ymin, ymax] = bounds;
    let mut out = Array2::zeros((h * w, 2));
    for i in 0..h {
        let y = ymax - (i as f64 + 0.5) * (ymax - ymin) / h as f64;
        for j in 0..w {
            let x = xmin + (j as f64 + 0.5) * (xmax - xmin) / w as f64;
            out[[i * w + j, 0]] = x;
            out[[i * w + j, 1]] = y;
        }
    }
    out
}

/// Score checks and test points for the tests of every part.
#[cfg(test)]
mod testing {
    use super::Density;
    use ndarray::{array, Array2};

    /// Central differences of log p, to check the written-out scores.
    pub(super) fn numeric_score(d: &dyn Density, x: &Array2<f64>) -> Array2<f64> {
        let eps = 1e-5;
        let mut out = Array2::zeros(x.raw_dim());
        for j in 0..x.ncols() {
            let (mut hi, mut lo) = (x.clone(), x.clone());
            hi.column_mut(j).mapv_inplace(|v| v + eps);
            lo.column_mut(j).mapv_inplace(|v| v - eps);
            let diff = d.log_density(hi.view()).unwrap() - d.log_density(lo.view()).unwrap();
            out.column_mut(j).assign(&(diff / (2.0 * eps)));
        }
        out
    }

    pub(super) fn assert_close(a: &Array2<f64>, b: &Array2<f64>, tol: f64) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    pub(super) fn points() -> Array2<f64> {
        array![
            [0.0, 0.0],
            [1.5, -2.0],
            [-7.0, 3.0],
            [4.0, 4.0],
            [30.0, -25.0]
        ]
    }
}
