//! Mixtures of diagonal Gaussians p(x) = Σ_k w_k N(x; μ_k, diag(s_k²)): the log-density by a
//! max-shifted logsumexp, the score weighted by the responsibilities r_k(x), and the course's
//! `random_2d` and `symmetric_2d` constructors.

use anyhow::bail;
use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use std::f64::consts::PI;

use super::{check_points, row, Density, Gaussian};
use crate::rng::{self, Purpose};
use crate::Result;

/// A mixture of diagonal Gaussians, Σ_k w_k N(μ_k, diag(s_k²)).
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    /// Normalised weights (they sum to 1).
    pub weights: Vec<f64>,
    pub components: Vec<Gaussian>,
}

impl GaussianMixture {
    /// Draws one point into `out` (length D) from `rng` and returns its mode: one uniform picks
    /// the mode by weight, then D normals place the point.
    pub fn draw(&self, rng: &mut impl Rng, out: &mut [f64]) -> usize {
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let k = self
            .weights
            .iter()
            .position(|w| {
                acc += w;
                u < acc
            })
            .unwrap_or(self.weights.len() - 1);
        self.components[k].draw(rng, out);
        k
    }

    /// A mixture from positive weights (normalised here) and components of one dimension.
    pub fn new(weights: Vec<f64>, components: Vec<Gaussian>) -> Result<Self> {
        if components.is_empty() || weights.len() != components.len() {
            bail!(
                "a mixture needs one weight per component and at least one component, got {} \
                 weights and {} components",
                weights.len(),
                components.len()
            );
        }
        let dim = components[0].mean.len();
        if components.iter().any(|c| c.mean.len() != dim) {
            bail!("a mixture's components must all have dimension {dim}");
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            bail!("a mixture's weights must be positive, got {weights:?}");
        }
        let total: f64 = weights.iter().sum();
        let weights = weights.iter().map(|w| w / total).collect();
        Ok(GaussianMixture {
            weights,
            components,
        })
    }

    /// Equal-weight modes N(μ_k, std² I) at `means`.
    pub fn isotropic(means: Vec<Vec<f64>>, std: f64) -> Result<Self> {
        let components = means
            .into_iter()
            .map(|m| {
                let d = m.len();
                Gaussian::new(m, vec![std; d])
            })
            .collect::<Result<Vec<_>>>()?;
        GaussianMixture::new(vec![1.0; components.len()], components)
    }

    /// The course's `GaussianMixture.random_2D(nmodes, std, scale, seed)`: `nmodes` equal-weight
    /// modes N(μ_k, std² I) with μ_k uniform in [-scale/2, scale/2]², as in the course
    /// (`(rand(nmodes, 2) - 0.5) * scale`). The means come from our own stream
    /// (seed, Purpose::Misc, hash of "densities::random_2d"), drawn x then y per mode, so they
    /// are reproducible but not the same numbers as PyTorch's `manual_seed(seed)`.
    pub fn random_2d(nmodes: usize, std: f64, scale: f64, seed: u64) -> Result<Self> {
        if nmodes == 0 {
            bail!("random_2d needs nmodes >= 1");
        }
        let mut r = rng::stream(seed, Purpose::Misc, rng::name_hash("densities::random_2d"));
        let means = (0..nmodes)
            .map(|_| (0..2).map(|_| (r.random::<f64>() - 0.5) * scale).collect())
            .collect();
        GaussianMixture::isotropic(means, std)
    }

    /// The course's `GaussianMixture.symmetric_2D(nmodes, std, scale)`: equal-weight modes at
    /// angles 2πk/nmodes on the circle of radius `scale`.
    pub fn symmetric_2d(nmodes: usize, std: f64, scale: f64) -> Result<Self> {
        if nmodes == 0 {
            bail!("symmetric_2d needs nmodes >= 1");
        }
        let means = (0..nmodes)
            .map(|k| {
                let a = 2.0 * PI * k as f64 / nmodes as f64;
                vec![scale * a.cos(), scale * a.sin()]
            })
            .collect();
        GaussianMixture::isotropic(means, std)
    }

    /// Moves every mean by `offset` (the course's `x_offset` is `[x, 0]`).
    pub fn shift(mut self, offset: &[f64]) -> Self {
        for c in &mut self.components {
            c.mean.iter_mut().zip(offset).for_each(|(m, o)| *m += o);
        }
        self
    }

    /// The most probable component of x (D values), argmax_k w_k N_k(x): the Bayes classifier
    /// when the components are the classes.
    pub fn most_probable(&self, x: &[f64]) -> usize {
        let mut joint = vec![0.0; self.weights.len()];
        self.joint(x, &mut joint);
        (0..joint.len())
            .max_by(|&a, &b| joint[a].total_cmp(&joint[b]))
            .unwrap_or(0)
    }

    /// The guided accuracy of samples `x` (N, D) generated for `labels` (N): the fraction whose
    /// most probable component is their label.
    pub fn accuracy(&self, x: ArrayView2<f64>, labels: &[i64]) -> Result<f64> {
        check_points(&x, self.dim())?;
        if labels.len() != x.nrows() {
            bail!("{} labels for {} samples", labels.len(), x.nrows());
        }
        let right = x
            .rows()
            .into_iter()
            .zip(labels)
            .filter(|(r, &y)| self.most_probable(&row(*r)) as i64 == y)
            .count();
        Ok(right as f64 / labels.len().max(1) as f64)
    }

    /// log w_k + log N_k(x) for every k, into `out`; returns their max.
    fn joint(&self, x: &[f64], out: &mut [f64]) -> f64 {
        let mut max = f64::NEG_INFINITY;
        for ((o, w), c) in out.iter_mut().zip(&self.weights).zip(&self.components) {
            *o = w.ln() + c.log_pdf(x);
            max = max.max(*o);
        }
        max
    }
}

impl Density for GaussianMixture {
    fn dim(&self) -> usize {
        self.components[0].mean.len()
    }

    fn log_density(&self, x: ArrayView2<f64>) -> Result<Array1<f64>> {
        check_points(&x, self.dim())?;
        let mut joint = vec![0.0; self.weights.len()];
        Ok(x.rows()
            .into_iter()
            .map(|r| {
                let max = self.joint(&row(r), &mut joint);
                max + joint.iter().map(|j| (j - max).exp()).sum::<f64>().ln()
            })
            .collect())
    }

    fn score(&self, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        check_points(&x, self.dim())?;
        let mut out = Array2::zeros(x.raw_dim());
        let mut joint = vec![0.0; self.weights.len()];
        for (r, mut o) in x.rows().into_iter().zip(out.rows_mut()) {
            let r = row(r);
            let o = o.as_slice_mut().expect("a fresh array is contiguous");
            let max = self.joint(&r, &mut joint);
            joint.iter_mut().for_each(|j| *j = (*j - max).exp());
            let total: f64 = joint.iter().sum();
            for (j, c) in joint.iter().zip(&self.components) {
                c.add_score(&r, j / total, o);
            }
        }
        Ok(out)
    }

    fn sample(&self, n: usize, seed: u64, first: u64) -> Array2<f64> {
        let mut out = Array2::zeros((n, self.dim()));
        for (i, mut o) in out.rows_mut().into_iter().enumerate() {
            // Per sample: one uniform picks the mode, then D normals place the point.
            let mut rng = rng::stream(seed, Purpose::Data, first + i as u64);
            self.draw(&mut rng, o.as_slice_mut().expect("contiguous"));
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "gaussian mixture ({} modes, {}-D)",
            self.components.len(),
            self.dim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::grid_points;
    use super::super::testing::*;
    use super::*;
    use ndarray::array;

    #[test]
    fn scores_match_the_gradient_of_log_density() {
        let g = Gaussian::new(vec![1.0, -1.0], vec![2.0, 0.5]).unwrap();
        let x = points();
        assert_close(&g.score(x.view()).unwrap(), &numeric_score(&g, &x), 1e-5);
        let m = GaussianMixture::new(
            vec![0.2, 0.5, 0.3],
            vec![
                Gaussian::new(vec![0.0, 0.0], vec![1.0, 1.0]).unwrap(),
                Gaussian::new(vec![3.0, 1.0], vec![0.5, 2.0]).unwrap(),
                Gaussian::new(vec![-4.0, 2.0], vec![1.5, 0.7]).unwrap(),
            ],
        )
        .unwrap();
        assert_close(&m.score(x.view()).unwrap(), &numeric_score(&m, &x), 1e-5);
        let r = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        assert_close(&r.score(x.view()).unwrap(), &numeric_score(&r, &x), 1e-5);
    }

    #[test]
    fn mixture_is_stable_far_away_and_reduces_to_a_gaussian() {
        let g = Gaussian::new(vec![0.5, 0.0], vec![0.3, 0.3]).unwrap();
        let m = GaussianMixture::new(vec![1.0], vec![g.clone()]).unwrap();
        let far = array![[1e3, -1e3]];
        let lp = m.log_density(far.view()).unwrap()[0];
        assert!(lp.is_finite() && (lp - g.log_density(far.view()).unwrap()[0]).abs() < 1e-6);
        let s = m.score(far.view()).unwrap();
        assert!(s.iter().all(|v| v.is_finite()));
        assert_close(&s, &g.score(far.view()).unwrap(), 1e-12);
    }

    #[test]
    fn accuracy_is_that_of_the_bayes_classifier() {
        let m = GaussianMixture::new(
            vec![0.2, 0.8],
            vec![
                Gaussian::new(vec![-1.0, 0.0], vec![1.0, 1.0]).unwrap(),
                Gaussian::new(vec![1.0, 0.0], vec![1.0, 1.0]).unwrap(),
            ],
        )
        .unwrap();
        // The boundary: 0.2 e^{-(x+1)^2/2} = 0.8 e^{-(x-1)^2/2} at x = -ln(4) / 2 = -0.69.
        let x = ndarray::arr2(&[[-0.8, 5.0], [-0.6, -3.0], [3.0, 0.0], [-3.0, 0.0]]);
        assert_eq!(m.most_probable(&[-0.8, 5.0]), 0);
        assert_eq!(m.most_probable(&[-0.6, 5.0]), 1);
        let acc = m.accuracy(x.view(), &[0, 1, 1, 1]).unwrap();
        assert!((acc - 0.75).abs() < 1e-12);
        assert!(m.accuracy(x.view(), &[0, 1]).is_err());
    }

    #[test]
    fn mixture_integrates_to_one() {
        let m = GaussianMixture::symmetric_2d(3, 0.8, 2.0).unwrap();
        let (h, w) = (200, 200);
        let pts = grid_points([-6.0, 6.0, -6.0, 6.0], h, w);
        let cell = (12.0 / w as f64) * (12.0 / h as f64);
        let mass: f64 = m.log_density(pts.view()).unwrap().mapv(f64::exp).sum() * cell;
        assert!((mass - 1.0).abs() < 1e-3, "mass {mass}");
    }

    #[test]
    fn constructors_follow_the_course() {
        let r = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        assert_eq!(r.components.len(), 5);
        for c in &r.components {
            assert!(c.mean.iter().all(|m| m.abs() <= 7.5));
            assert_eq!(c.std, vec![0.75, 0.75]);
        }
        assert_eq!(r, GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap());
        assert_ne!(r, GaussianMixture::random_2d(5, 0.75, 15.0, 4).unwrap());
        let s = GaussianMixture::symmetric_2d(4, 1.0, 10.0).unwrap();
        let m1 = &s.components[1].mean;
        assert!(m1[0].abs() < 1e-12 && (m1[1] - 10.0).abs() < 1e-12);
    }

    #[test]
    fn samples_have_the_right_moments_and_ignore_batching() {
        let m = GaussianMixture::new(
            vec![0.25, 0.75],
            vec![
                Gaussian::new(vec![-2.0], vec![0.5]).unwrap(),
                Gaussian::new(vec![2.0], vec![1.0]).unwrap(),
            ],
        )
        .unwrap();
        let n = 20_000;
        let x = m.sample(n, 5, 0);
        let mean = x.mean().unwrap();
        // E = 0.25*-2 + 0.75*2 = 1; Var = E[x²] - 1 = 0.25*(4.25) + 0.75*(5) - 1 = 3.8125.
        let var = x.mapv(|v| (v - 1.0).powi(2)).mean().unwrap();
        let se_mean = (3.8125 / n as f64).sqrt();
        assert!((mean - 1.0).abs() < 5.0 * se_mean, "mean {mean}");
        assert!((var - 3.8125).abs() < 0.15, "var {var}");
        let part = m.sample(10, 5, 7);
        assert_eq!(part.row(0), x.row(7));
    }
}
