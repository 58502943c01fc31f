//! Sample-based distances between generated samples X ~ p and reference samples Y ~ q in R^D:
//! the 2D yardstick of Lab 2 (how close is the learned p_1 to p_data?).
//!
//! With x_1..x_n, y_1..y_m the (possibly subsampled) sets:
//!
//! - **Energy distance** (Szekely & Rizzo 2013, "Energy statistics"):
//!   D^2(p, q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, zero iff p = q. Estimated by the unbiased
//!   U-statistic 2/(nm) sum_ij |x_i - y_j| - 1/(n(n-1)) sum_{i != j} |x_i - x_j| -
//!   1/(m(m-1)) sum_{i != j} |y_i - y_j| (can be slightly negative when p = q).
//! - **MMD^2 with an RBF kernel** (Gretton et al. 2012, "A kernel two-sample test", eq. 3):
//!   k(a, b) = exp(-|a - b|^2 / (2 h^2)), MMD^2_u = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) +
//!   1/(m(m-1)) sum_{i != j} k(y_i, y_j) - 2/(nm) sum_ij k(x_i, y_j) (unbiased). The
//!   bandwidth h is the median heuristic: the median of |z_i - z_j| over all pairs i < j of the
//!   pooled sample z = (x, y); if that median is 0 (more than half the pairs coincide) the
//!   median of the positive distances is used, and 1 when every point is the same.
//! - **Sliced Wasserstein-2** (Bonneel et al. 2015): SW_2(p, q) = (E_theta W_2^2(theta.X,
//!   theta.Y))^(1/2) with theta uniform on the unit sphere S^(D-1), estimated with K directions
//!   theta_k (normalised standard normals from stream (seed, Misc, 2^32 + k)). In 1D,
//!   W_2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du; for empirical measures the quantile functions are
//!   step functions, and the integral is computed exactly over the merged breakpoints i/n, j/m
//!   (equal counts: the mean squared difference of the sorted values). For Y = X + mu,
//!   W_2^2(theta) = (theta.mu)^2 and its mean over the sphere is |mu|^2 / D.
//!
//! Distances use f64 accumulation; pairwise loops run on rayon's pool, each row summed in order,
//! so results do not depend on the number of threads. The pairwise terms cost O((n + m)^2 D);
//! [`compare`] bounds n, m by a seeded random subset (stream (seed, Misc, 0) for X, 1 for Y).
//!
//! Image metrics in a classifier's feature space (classifier-FID, KID, guided accuracy) live in
//! [`images`]; the eigendecomposition they need in [`linalg`]; the `evaluate` tool's reports,
//! read from files, in [`report`].

pub mod images;
pub mod linalg;
pub mod metrics;
pub mod report;

use anyhow::bail;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde_json::json;

use crate::io::npy::shape_str;
use crate::rng::{self, Purpose};
use crate::Result;

/// Index of the first projection direction's stream within `Purpose::Misc`; subsets use 0, 1.
const DIRECTION_STREAM: u64 = 1 << 32;

/// Settings of [`compare`].
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Use at most this many samples of each set (a seeded random subset); 0 uses all.
    /// Must be 0 or at least 2.
    pub max_n: usize,
    /// Number K of random directions of the sliced Wasserstein distance (at least 1).
    pub projections: usize,
    /// Seed of the subsets and the directions.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_n: 2000,
            projections: 256,
            seed: 0,
        }
    }
}

/// Checks that two sample sets of shapes (N, ...) can be compared: at least 2 samples each,
/// the same shape of one sample. Errors name both sets as `x_name` and `y_name`.
pub fn check_pair(x_shape: &[usize], y_shape: &[usize], x_name: &str, y_name: &str) -> Result<()> {
    for (shape, name) in [(x_shape, x_name), (y_shape, y_name)] {
        match shape.first() {
            None => bail!("{name} holds a scalar, expected samples (N, D)"),
            Some(0) => bail!("{name} holds no samples: shape {}", shape_str(shape)),
            Some(1) => bail!("{name} holds 1 sample, at least 2 are needed"),
            _ => {}
        }
    }
    if x_shape[1..] != y_shape[1..] {
        bail!(
            "the two sets have different sample shapes: {x_name} is {} but {y_name} is {}",
            shape_str(x_shape),
            shape_str(y_shape)
        );
    }
    Ok(())
}

/// |a - b|^2 accumulated in f64. `a`, `b`: (D,).
fn sq_dist(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(&u, &v)| {
            let d = u as f64 - v as f64;
            d * d
        })
        .sum()
}

/// sum_{i < j} f(|a_i - a_j|^2) for `a`: (n, D), rows in parallel, summed in order.
fn within_sum(a: ArrayView2<f32>, f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let n = a.nrows();
    let rows: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let ai = a.row(i);
            (i + 1..n).map(|j| f(sq_dist(ai, a.row(j)))).sum::<f64>()
        })
        .collect();
    rows.iter().sum()
}

/// sum_{i, j} f(|a_i - b_j|^2) for `a`: (n, D), `b`: (m, D).
fn cross_sum(a: ArrayView2<f32>, b: ArrayView2<f32>, f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let rows: Vec<f64> = (0..a.nrows())
        .into_par_iter()
        .map(|i| {
            let ai = a.row(i);
            b.rows()
                .into_iter()
                .map(|bj| f(sq_dist(ai, bj)))
                .sum::<f64>()
        })
        .collect();
    rows.iter().sum()
}

/// The three unbiased means `[xx, yy, xy]` of f(squared distance) that energy distance and
/// MMD^2 combine: 1/(n(n-1)) sum_{i != j} f(|x_i - x_j|^2), the same over y, and
/// 1/(nm) sum_ij f(|x_i - y_j|^2).
fn u_terms(x: ArrayView2<f32>, y: ArrayView2<f32>, f: impl Fn(f64) -> f64 + Sync) -> [f64; 3] {
    assert_pair(x, y);
    let (n, m) = (x.nrows() as f64, y.nrows() as f64);
    let xx = 2.0 * within_sum(x, &f) / (n * (n - 1.0));
    let yy = 2.0 * within_sum(y, &f) / (m * (m - 1.0));
    let xy = cross_sum(x, y, &f) / (n * m);
    [xx, yy, xy]
}

fn assert_pair(x: ArrayView2<f32>, y: ArrayView2<f32>) {
    assert!(
        x.nrows() >= 2 && y.nrows() >= 2,
        "eval needs at least 2 samples per set, got {} and {}",
        x.nrows(),
        y.nrows()
    );
    assert_eq!(x.ncols(), y.ncols(), "eval: the sets' dimensions differ");
}

/// Energy distance D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, unbiased U-statistic.
/// `x`: (n, D), `y`: (m, D).
///
/// # Panics
/// When n < 2, m < 2, or the dimensions differ (see [`check_pair`]).
pub fn energy_distance(x: ArrayView2<f32>, y: ArrayView2<f32>) -> f64 {
    let [xx, yy, xy] = u_terms(x, y, f64::sqrt);
    2.0 * xy - xx - yy
}

/// The median heuristic bandwidth h on the pooled sample (see the module doc).
/// `x`: (n, D), `y`: (m, D).
pub fn median_heuristic(x: ArrayView2<f32>, y: ArrayView2<f32>) -> f64 {
    let z = ndarray::concatenate(Axis(0), &[x, y]).expect("same dimension");
    let p = z.nrows();
    let mut d2: Vec<f64> = (0..p)
        .into_par_iter()
        .flat_map_iter(|i| {
            let z = &z;
            (i + 1..p).map(move |j| sq_dist(z.row(i), z.row(j)))
        })
        .collect();
    let h = median(&mut d2).sqrt();
    if h > 0.0 {
        return h;
    }
    d2.retain(|&v| v > 0.0);
    if d2.is_empty() {
        1.0
    } else {
        median(&mut d2).sqrt()
    }
}

/// The median of `v` (mean of the two middle values for an even count); reorders `v`.
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let cmp = |a: &f64, b: &f64| a.total_cmp(b);
    let (lower, mid, _) = v.select_nth_unstable_by(n / 2, cmp);
    let mid = *mid;
    if n % 2 == 1 {
        mid
    } else {
        let below = lower.iter().copied().max_by(cmp).expect("n >= 2");
        0.5 * (below + mid)
    }
}

/// Unbiased MMD^2 with the RBF kernel of bandwidth `h`. `x`: (n, D), `y`: (m, D).
pub fn mmd_rbf_with(x: ArrayView2<f32>, y: ArrayView2<f32>, h: f64) -> f64 {
    let g = 1.0 / (2.0 * h * h);
    let [xx, yy, xy] = u_terms(x, y, |d2| (-g * d2).exp());
    xx + yy - 2.0 * xy
}

/// Unbiased MMD^2 with the RBF kernel and the median-heuristic bandwidth: `(mmd2, h)`.
/// `x`: (n, D), `y`: (m, D).
///
/// # Panics
/// When n < 2, m < 2, or the dimensions differ (see [`check_pair`]).
pub fn mmd_rbf(x: ArrayView2<f32>, y: ArrayView2<f32>) -> (f64, f64) {
    assert_pair(x, y);
    let h = median_heuristic(x, y);
    (mmd_rbf_with(x, y, h), h)
}

/// Exact W_2^2 between the empirical measures of `a` and `b` (1D, any counts >= 1).
pub fn w2_squared_1d(a: &[f64], b: &[f64]) -> f64 {
    assert!(!a.is_empty() && !b.is_empty(), "W2 of an empty set");
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (n, m) = (a.len() as u64, b.len() as u64);
    // Quantile levels in units of 1/(nm): a's step i ends at (i+1) m, b's step j at (j+1) n.
    let (mut i, mut j, mut prev, mut acc) = (0usize, 0usize, 0u64, 0f64);
    while i < a.len() && j < b.len() {
        let (ea, eb) = ((i as u64 + 1) * m, (j as u64 + 1) * n);
        let next = ea.min(eb);
        acc += (next - prev) as f64 * (a[i] - b[j]).powi(2);
        prev = next;
        if ea == next {
            i += 1;
        }
        if eb == next {
            j += 1;
        }
    }
    acc / (n * m) as f64
}

/// Direction k of the sliced distance: a uniform unit vector in R^dim.
fn direction(dim: usize, seed: u64, k: usize) -> Vec<f64> {
    let mut rng = rng::stream(seed, Purpose::Misc, DIRECTION_STREAM + k as u64);
    loop {
        let v: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-12 {
            return v.into_iter().map(|a| a / norm).collect();
        }
    }
}

/// theta . a_i for every row. `a`: (n, D), `theta`: (D,).
fn project(a: ArrayView2<f32>, theta: &[f64]) -> Vec<f64> {
    a.rows()
        .into_iter()
        .map(|r| r.iter().zip(theta).map(|(&v, t)| v as f64 * t).sum())
        .collect()
}

/// Sliced Wasserstein-2 distance (E_theta W_2^2)^(1/2) over `projections` seeded directions.
/// `x`: (n, D), `y`: (m, D), n, m >= 1.
pub fn sliced_w2(x: ArrayView2<f32>, y: ArrayView2<f32>, projections: usize, seed: u64) -> f64 {
    assert!(projections >= 1, "sliced W2 needs at least one direction");
    assert_eq!(x.ncols(), y.ncols(), "eval: the sets' dimensions differ");
    let per: Vec<f64> = (0..projections)
        .into_par_iter()
        .map(|k| {
            let theta = direction(x.ncols(), seed, k);
            w2_squared_1d(&project(x, &theta), &project(y, &theta))
        })
        .collect();
    (per.iter().sum::<f64>() / projections as f64).sqrt()
}

/// At most `max_n` rows of `a` (all when `max_n` is 0 or n <= max_n), chosen without
/// replacement from stream (seed, Misc, which), kept in their original order. `a`: (n, D).
pub fn subsample(a: ArrayView2<f32>, max_n: usize, seed: u64, which: u64) -> Array2<f32> {
    let n = a.nrows();
    if max_n == 0 || n <= max_n {
        return a.to_owned();
    }
    let mut rng = rng::stream(seed, Purpose::Misc, which);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..max_n {
        let j = rng.random_range(i..n);
        idx.swap(i, j);
    }
    idx.truncate(max_n);
    idx.sort_unstable();
    a.select(Axis(0), &idx)
}

/// Every metric between generated `x`: (n, D) and reference `y`: (m, D), as one JSON object:
/// counts (`n_x`, `n_y` in the files, `*_used` after `max_n`), and per metric its value, the
/// estimator and the counts it used.
///
/// # Panics
/// When the inputs fail [`check_pair`] or `opts.max_n == 1`; callers check first.
pub fn compare(x: ArrayView2<f32>, y: ArrayView2<f32>, opts: &Options) -> serde_json::Value {
    assert!(opts.max_n != 1, "max_n must be 0 or at least 2");
    let xs = subsample(x, opts.max_n, opts.seed, 0);
    let ys = subsample(y, opts.max_n, opts.seed, 1);
    let (xv, yv) = (xs.view(), ys.view());
    let (nx, ny) = (xs.nrows(), ys.nrows());
    let energy = energy_distance(xv, yv);
    let (mmd2, h) = mmd_rbf(xv, yv);
    let sw = sliced_w2(xv, yv, opts.projections, opts.seed);
    json!({
        "dim": x.ncols(),
        "n_x": x.nrows(),
        "n_y": y.nrows(),
        "n_x_used": nx,
        "n_y_used": ny,
        "max_n": opts.max_n,
        "seed": opts.seed,
        "energy_distance": {
            "value": energy,
            "definition": "2E|X-Y| - E|X-X'| - E|Y-Y'|",
            "estimator": "U-statistic (unbiased; may be slightly negative)",
            "n_x": nx,
            "n_y": ny,
        },
        "mmd2_rbf": {
            "value": mmd2,
            "bandwidth": h,
            "kernel": "exp(-|a-b|^2 / (2 h^2)), h = median pairwise distance of the pooled sample",
            "estimator": "U-statistic (unbiased; may be slightly negative)",
            "n_x": nx,
            "n_y": ny,
        },
        "sliced_w2": {
            "value": sw,
            "squared": sw * sw,
            "definition": "sqrt(mean over K random unit directions of W2^2 of the projections)",
            "projections": opts.projections,
            "n_x": nx,
            "n_y": ny,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// `n` samples of N(mean, I) in R^D, row i from stream (seed, Noise, i).
    fn gauss(n: usize, mean: &[f32], seed: u64) -> Array2<f32> {
        let d = mean.len();
        let mut a = Array2::from_shape_vec((n, d), rng::normal_rows(seed, Purpose::Noise, 0, n, d))
            .unwrap();
        for mut r in a.rows_mut() {
            r.iter_mut().zip(mean).for_each(|(v, m)| *v += m);
        }
        a
    }

    fn shifted(a: &Array2<f32>, by: &[f32]) -> Array2<f32> {
        let mut b = a.clone();
        for mut r in b.rows_mut() {
            r.iter_mut().zip(by).for_each(|(v, m)| *v += m);
        }
        b
    }

    /// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        (1.0 - poly * (-x * x).exp()).copysign(x)
    }

    #[test]
    fn identical_distributions_give_about_zero() {
        // Two independent sets of 400 from N(0, I_2). Under p = q the U-statistics have mean 0
        // and a spread of order 1/n: over 20 seeds sd 0.0047 (energy) and 0.0013 (MMD^2).
        // Sliced W2 is biased upwards by the sampling noise: mean 0.12, sd 0.022 (64 dirs).
        // Tolerances are about 4 sd (mean + 4 sd for sliced W2).
        let (x, y) = (gauss(400, &[0.0, 0.0], 1), gauss(400, &[0.0, 0.0], 2));
        let e = energy_distance(x.view(), y.view());
        let (mmd2, h) = mmd_rbf(x.view(), y.view());
        let sw = sliced_w2(x.view(), y.view(), 64, 0);
        assert!(e.abs() < 0.02, "energy {e}");
        assert!(mmd2.abs() < 0.006, "mmd2 {mmd2}");
        // Median distance between two N(0, 2 I_2) draws: sqrt(2) * sqrt(2 ln 2) ~ 1.665.
        assert!((h - 1.665).abs() < 0.1, "bandwidth {h}");
        assert!(sw < 0.21, "sliced w2 {sw}");
    }

    #[test]
    fn every_metric_grows_with_a_shift() {
        let x = gauss(300, &[0.0, 0.0], 1);
        let base = gauss(300, &[0.0, 0.0], 2);
        let mut last = [f64::NEG_INFINITY; 3];
        for s in [0.0, 0.5, 1.0, 2.0] {
            let y = shifted(&base, &[s, 0.0]);
            let now = [
                energy_distance(x.view(), y.view()),
                mmd_rbf(x.view(), y.view()).0,
                sliced_w2(x.view(), y.view(), 64, 0),
            ];
            for k in 0..3 {
                assert!(
                    now[k] > last[k],
                    "metric {k} at shift {s}: {} <= {}",
                    now[k],
                    last[k]
                );
            }
            last = now;
        }
    }

    #[test]
    fn point_masses_have_closed_forms() {
        // X = n copies of a, Y = m copies of b: D^2 = 2|a - b| (the self terms vanish).
        let x = Array2::from_shape_fn((5, 3), |(_, j)| [1.0f32, 2.0, 3.0][j]);
        let y = Array2::from_shape_fn((7, 3), |(_, j)| [1.0f32, -2.0, 0.0][j]);
        let dist = 5.0f64;
        assert!((energy_distance(x.view(), y.view()) - 2.0 * dist).abs() < 1e-12);
        // Equal counts: fewer than half the pooled pairs are 0, so h = |a - b| and
        // MMD^2 = 1 + 1 - 2 exp(-1/2).
        let y5 = y.slice(ndarray::s![..5, ..]);
        let (mmd2, h) = mmd_rbf(x.view(), y5);
        assert!((h - dist).abs() < 1e-12, "h {h}");
        assert!(
            (mmd2 - (2.0 - 2.0 * (-0.5f64).exp())).abs() < 1e-12,
            "mmd2 {mmd2}"
        );
        // Every direction sees two point masses (theta . (a - b))^2 apart; the mean over the
        // sphere is |a - b|^2 / D, within the Monte Carlo error of K directions.
        let sw2 = sliced_w2(x.view(), y.view(), 4096, 3).powi(2);
        let want = dist * dist / 3.0;
        // Var((theta.u)^2) = 2(D-1)/(D^2(D+2)) |a-b|^4 = 0.089 * 625: sd of the mean ~ 0.116.
        assert!((sw2 - want).abs() < 0.5, "sw2 {sw2} vs {want}");
    }

    #[test]
    fn energy_distance_between_gaussians_matches_its_closed_form() {
        // X ~ N(0, 1), Y ~ N(mu, 1): X - Y ~ N(-mu, 2), whose folded-normal mean is
        // E|X - Y| = 2/sqrt(pi) exp(-mu^2 / 4) + mu erf(mu / 2), and E|X - X'| = 2/sqrt(pi).
        let mu = 1.0f64;
        let c = 2.0 / std::f64::consts::PI.sqrt();
        let want = 2.0 * (c * (-mu * mu / 4.0).exp() + mu * erf(mu / 2.0)) - 2.0 * c;
        assert!((want - 0.5418).abs() < 1e-3, "closed form {want}");
        let x = gauss(1500, &[0.0], 11);
        let y = gauss(1500, &[mu as f32], 12);
        let e = energy_distance(x.view(), y.view());
        // Over 20 seeds at n = m = 1500: mean 0.524, sd 0.039; tolerance 4 sd.
        assert!((e - want).abs() < 0.16, "energy {e} vs {want}");
    }

    #[test]
    fn sliced_w2_of_shifted_gaussians_is_mean_over_sphere() {
        // Y = X + mu exactly: every projection is shifted by theta.mu, so W2^2(theta) =
        // (theta.mu)^2 and SW2^2 -> |mu|^2 / D = 5 / 3 (sd of the K = 2048 mean ~ 0.033).
        let x = gauss(200, &[0.0, 0.0, 0.0], 4);
        let y = shifted(&x, &[1.0, 2.0, 0.0]);
        let sw2 = sliced_w2(x.view(), y.view(), 2048, 5).powi(2);
        assert!((sw2 - 5.0 / 3.0).abs() < 0.15, "sw2 {sw2}");
        // Independent samples add sampling noise: over 20 seeds mean 1.66, sd 0.09 (4 sd).
        let y = gauss(1000, &[1.0, 2.0, 0.0], 6);
        let x = gauss(1000, &[0.0, 0.0, 0.0], 7);
        let sw2 = sliced_w2(x.view(), y.view(), 2048, 5).powi(2);
        assert!((sw2 - 5.0 / 3.0).abs() < 0.36, "sw2 {sw2}");
    }

    #[test]
    fn w2_1d_handles_unequal_counts_exactly() {
        // Quantile steps {0 | 1} at 1/2 against {0 | 0.5 | 1} at 1/3, 2/3:
        // (1/2 - 1/3) 0.5^2 + (2/3 - 1/2) 0.5^2 = 1/12.
        assert!((w2_squared_1d(&[1.0, 0.0], &[0.5, 1.0, 0.0]) - 1.0 / 12.0).abs() < 1e-15);
        // Equal counts: the mean squared difference of the sorted values.
        assert!((w2_squared_1d(&[3.0, 1.0], &[0.0, 2.0]) - 1.0).abs() < 1e-15);
        // A set and itself repeated are the same empirical measure.
        assert_eq!(
            w2_squared_1d(&[0.3, -1.0, 2.0], &[2.0, 0.3, -1.0, -1.0, 2.0, 0.3]),
            0.0
        );
    }

    #[test]
    fn subsample_is_seeded_and_bounded() {
        let x = gauss(50, &[0.0, 0.0], 1);
        let a = subsample(x.view(), 20, 3, 0);
        assert_eq!(a.shape(), &[20, 2]);
        assert_eq!(a, subsample(x.view(), 20, 3, 0));
        assert_ne!(a, subsample(x.view(), 20, 3, 1));
        assert_eq!(subsample(x.view(), 0, 3, 0), x);
        assert_eq!(subsample(x.view(), 80, 3, 0), x);
        // Distinct rows of x, in their original order.
        let rows: Vec<usize> = a
            .rows()
            .into_iter()
            .map(|r| x.rows().into_iter().position(|q| q == r).unwrap())
            .collect();
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
    }

    #[test]
    fn compare_reports_counts_and_metrics() {
        let x = gauss(60, &[0.0, 0.0], 1);
        let y = gauss(40, &[1.0, 0.0], 2);
        let opts = Options {
            max_n: 50,
            projections: 16,
            seed: 0,
        };
        let v = compare(x.view(), y.view(), &opts);
        assert_eq!(v["n_x"], 60);
        assert_eq!(v["n_x_used"], 50);
        assert_eq!(v["n_y_used"], 40);
        assert_eq!(v["dim"], 2);
        let xs = subsample(x.view(), 50, 0, 0);
        let e = energy_distance(xs.view(), y.view());
        assert_eq!(v["energy_distance"]["value"].as_f64().unwrap(), e);
        assert!(v["mmd2_rbf"]["bandwidth"].as_f64().unwrap() > 0.0);
        assert!(v["sliced_w2"]["value"].as_f64().unwrap() > 0.0);
        assert_eq!(compare(x.view(), y.view(), &opts), v, "not deterministic");
    }

    #[test]
    fn check_pair_names_files_and_shapes() {
        let err = check_pair(&[10, 2], &[5, 3], "gen.npy", "ref.npy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gen.npy is (10, 2)") && err.contains("ref.npy is (5, 3)"),
            "{err}"
        );
        let err = check_pair(&[0, 2], &[5, 2], "stdin", "ref.npy")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stdin holds no samples"), "{err}");
        assert!(check_pair(&[3, 1, 4, 4], &[2, 1, 4, 4], "a", "b").is_ok());
        assert!(check_pair(&[1, 2], &[5, 2], "a", "b").is_err());
    }
}
