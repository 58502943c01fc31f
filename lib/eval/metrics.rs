//! The image metrics' formulas on feature sets (N, F), apart from the classifier that makes the
//! features and the report around them ([`super::images`], whose module docs give the
//! definitions and papers): the Frechet distance of fitted Gaussians (classifier-FID), KID's
//! unbiased polynomial-kernel MMD^2 over subsets, the class histogram and the guided accuracy.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::linalg::sqrt_psd;
use super::subsample;

/// Index of the first KID subset stream within `Purpose::Misc` (subset s of x: 2s, of y: 2s + 1).
const KID_STREAM: u64 = 1 << 40;

/// A Gaussian fitted to features: mean (F,) and covariance (F, F) with 1/(n - 1), from n rows.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: Array1<f64>,
    pub cov: Array2<f64>,
    pub n: usize,
}

impl Gaussian {
    /// The sample mean and unbiased covariance of `features` (n, F), n >= 2.
    pub fn fit(features: ArrayView2<f32>) -> Gaussian {
        let n = features.nrows();
        assert!(n >= 2, "a Gaussian fit needs at least 2 samples, got {n}");
        let x = features.mapv(f64::from);
        let mean = x.mean_axis(Axis(0)).expect("n >= 2");
        let centred = &x - &mean;
        let cov = centred.t().dot(&centred) / (n - 1) as f64;
        Gaussian { mean, cov, n }
    }
}

/// The Frechet distance d^2 between N(mu1, cov1) and N(mu2, cov2) (see the module doc).
/// `mu`: (F,), `cov`: (F, F) symmetric positive semi-definite.
pub fn frechet_distance(
    mu1: &Array1<f64>,
    cov1: &Array2<f64>,
    mu2: &Array1<f64>,
    cov2: &Array2<f64>,
) -> f64 {
    let diff = mu1 - mu2;
    let s1 = sqrt_psd(cov1);
    let cross = sqrt_psd(&s1.dot(cov2).dot(&s1));
    let d = diff.dot(&diff) + cov1.diag().sum() + cov2.diag().sum() - 2.0 * cross.diag().sum();
    d.max(0.0)
}

/// KID: the mean over subsets of the unbiased MMD^2, and its spread.
#[derive(Clone, Debug, PartialEq)]
pub struct Kid {
    pub mean: f64,
    /// Standard deviation of the subset values (with 1/(S - 1); 0 for one subset).
    pub std: f64,
    /// std / sqrt(S).
    pub standard_error: f64,
    pub subsets: usize,
    /// m, the samples of each set per subset.
    pub subset_size: usize,
}

/// (a.b / F + 1)^3 summed over the pairs of rows of `a` (m, F) and `b` (m', F); `skip_diagonal`
/// leaves out the pairs (i, i) (a and b the same set).
fn poly_kernel_sum(a: ArrayView2<f32>, b: ArrayView2<f32>, skip_diagonal: bool) -> f64 {
    let dim = a.ncols() as f64;
    let gram = a.dot(&b.t());
    let mut sum = 0.0;
    for ((i, j), &g) in gram.indexed_iter() {
        if !(skip_diagonal && i == j) {
            sum += (g as f64 / dim + 1.0).powi(3);
        }
    }
    sum
}

/// Unbiased MMD^2 with the polynomial kernel between `x` (m, F) and `y` (m', F), m, m' >= 2.
pub fn mmd2_poly(x: ArrayView2<f32>, y: ArrayView2<f32>) -> f64 {
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    poly_kernel_sum(x, x, true) / (m * (m - 1.0)) + poly_kernel_sum(y, y, true) / (n * (n - 1.0))
        - 2.0 * poly_kernel_sum(x, y, false) / (m * n)
}

/// KID over `subsets` seeded random subsets of min(`subset_size`, n, m) samples of each of
/// `x` (n, F) and `y` (m, F); subset s of x from stream (seed, Misc, 2^40 + 2 s), of y + 1.
pub fn kid(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Kid {
    assert!(subsets >= 1, "KID needs at least one subset");
    let m = subset_size.min(x.nrows()).min(y.nrows());
    assert!(m >= 2, "KID needs subsets of at least 2 samples");
    let values: Vec<f64> = (0..subsets)
        .into_par_iter()
        .map(|s| {
            let xs = subsample(x, m, seed, KID_STREAM + 2 * s as u64);
            let ys = subsample(y, m, seed, KID_STREAM + 2 * s as u64 + 1);
            mmd2_poly(xs.view(), ys.view())
        })
        .collect();
    let k = subsets as f64;
    let mean = values.iter().sum::<f64>() / k;
    let std = if subsets > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt()
    } else {
        0.0
    };
    Kid {
        mean,
        std,
        standard_error: std / k.sqrt(),
        subsets,
        subset_size: m,
    }
}

/// How many of `predicted` fall in each class 0..num_classes.
pub fn class_histogram(predicted: &[u32], num_classes: usize) -> Vec<u64> {
    let mut counts = vec![0u64; num_classes];
    for &p in predicted {
        if let Some(c) = counts.get_mut(p as usize) {
            *c += 1;
        }
    }
    counts
}

/// The fraction of `predicted` equal to the requested `labels` (same length).
pub fn guided_accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    crate::train::classify::accuracy(predicted, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{self, Purpose};

    fn gauss(n: usize, d: usize, seed: u64, scale: f32, shift: f32) -> Array2<f32> {
        let v = rng::normal_rows(seed, Purpose::Noise, 0, n, d);
        Array2::from_shape_vec((n, d), v)
            .unwrap()
            .mapv(|x| scale * x + shift)
    }

    #[test]
    fn frechet_distance_matches_closed_forms() {
        // Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
        let a = [1.0, 4.0, 0.5, 2.0];
        let b = [9.0, 1.0, 0.5, 0.1];
        let mu1 = Array1::from(vec![0.0, 1.0, 0.0, -1.0]);
        let mu2 = Array1::from(vec![1.0, 1.0, 2.0, -1.0]);
        let c1 = Array2::from_diag(&Array1::from(a.to_vec()));
        let c2 = Array2::from_diag(&Array1::from(b.to_vec()));
        let want = 5.0
            + a.iter()
                .zip(&b)
                .map(|(x, y): (&f64, &f64)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        assert!((frechet_distance(&mu1, &c1, &mu2, &c2) - want).abs() < 1e-10);
        // Identical Gaussians (a full covariance): 0.
        let g = Gaussian::fit(gauss(500, 16, 1, 1.0, 0.0).view());
        let self_d = frechet_distance(&g.mean, &g.cov, &g.mean, &g.cov);
        assert!(self_d.abs() < 1e-8, "{self_d}");
        // Commuting covariances C and 4C: tr(C + 4C - 2 * 2C) = tr C.
        let c4 = &g.cov * 4.0;
        let d = frechet_distance(&g.mean, &g.cov, &g.mean, &c4);
        assert!((d - g.cov.diag().sum()).abs() < 1e-8, "{d}");
    }

    #[test]
    fn kid_is_about_zero_for_one_distribution_and_positive_for_two() {
        // Two copies of one set: the subsets of x and y share about half their points, whose
        // k(x_i, x_i) ~ (|x|^2 / F + 1)^3 ~ 8 enter the cross term, so the value is O(1/m)
        // below 0: about -(8 - 1.4) / m = -0.03 here; far below the shifted set's 1.4.
        let x = gauss(400, 8, 1, 1.0, 0.0);
        let same = kid(x.view(), x.view(), 20, 200, 0);
        assert!(same.mean.abs() < 0.1, "{same:?}");
        let y = gauss(400, 8, 2, 1.0, 0.0);
        let indep = kid(x.view(), y.view(), 20, 200, 0);
        assert!(indep.mean.abs() < 0.05, "{indep:?}");
        let z = gauss(400, 8, 3, 1.0, 1.0);
        let far = kid(x.view(), z.view(), 20, 200, 0);
        assert!(
            far.mean > 10.0 * far.standard_error && far.mean > 0.5,
            "{far:?}"
        );
        assert_eq!(far.subset_size, 200);
        assert_eq!(kid(x.view(), z.view(), 20, 200, 0), far, "not seeded");
    }

    #[test]
    fn histogram_and_accuracy_count() {
        assert_eq!(class_histogram(&[0, 2, 2, 1, 2], 3), vec![1, 1, 3]);
        assert_eq!(guided_accuracy(&[0, 2, 2, 1], &[0, 2, 1, 1]), 0.75);
    }
}
