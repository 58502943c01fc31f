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

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor};
use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{Map, Value};
use std::f64::consts::PI;

use crate::rng::{self, Purpose};
use crate::spec::{self, Keys};
use crate::Result;

/// The spec forms a density accepts, for `--help` texts.
pub const SPEC_HELP: &str = "\
Density specs: `gaussian:mean=0;0,std=1` (diagonal: `std=1;2`; `dim=D` broadcasts scalars), \
`random_2d:nmodes=5,std=0.75,scale=15,seed=3` (means uniform in [-scale/2, scale/2]^2), \
`symmetric_2d:nmodes=5,std=1,scale=10` (means on a circle of radius scale), both with an \
optional `offset=X` shifting the means along x; or JSON, inline or in a file: \
{\"density\": \"mixture\", \"weights\": [..], \"means\": [[..], ..], \
\"stds\": s | [s_k] | [[..], ..]} \
or any shorthand above as {\"density\": \"gaussian\", \"mean\": [0, 0], \"std\": 1}.";

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
    fn log_pdf(&self, x: &[f64]) -> f64 {
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
    fn add_score(&self, x: &[f64], weight: f64, out: &mut [f64]) {
        for (((o, &xi), &m), &s) in out.iter_mut().zip(x).zip(&self.mean).zip(&self.std) {
            *o -= weight * (xi - m) / (s * s);
        }
    }

    /// Writes μ + s ⊙ z, with z standard normal drawn from `rng`, into `out`.
    fn draw(&self, rng: &mut impl Rng, out: &mut [f64]) {
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

/// One row as a contiguous slice (rows of a C-order array already are; others are copied).
fn row<'a>(r: ndarray::ArrayView1<'a, f64>) -> std::borrow::Cow<'a, [f64]> {
    match r.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(r.to_vec()),
    }
}

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

/// ∇ log p of points `x` (N, D) given as a candle tensor of any float dtype and device; the
/// result has `x`'s dtype and device. The maths runs in f64 on the CPU.
pub fn score_tensor(density: &dyn Density, x: &Tensor) -> candle_core::Result<Tensor> {
    let points = tensor_points(x, density.dim())?;
    let s = density
        .score(points.view())
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    let (n, d) = s.dim();
    Tensor::from_vec(s.into_raw_vec_and_offset().0, (n, d), x.device())?.to_dtype(x.dtype())
}

/// log p of points `x` (N, D) given as a candle tensor; returns (N,) with `x`'s dtype.
pub fn log_density_tensor(density: &dyn Density, x: &Tensor) -> candle_core::Result<Tensor> {
    let points = tensor_points(x, density.dim())?;
    let l = density
        .log_density(points.view())
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    let n = l.len();
    Tensor::from_vec(l.into_raw_vec_and_offset().0, n, x.device())?.to_dtype(x.dtype())
}

/// A tensor (N, dim) as an f64 ndarray on the CPU.
fn tensor_points(x: &Tensor, dim: usize) -> candle_core::Result<Array2<f64>> {
    let shape = x.dims();
    if shape.len() != 2 || shape[1] != dim {
        return Err(candle_core::Error::Msg(format!(
            "expected points (N, {dim}) for a {dim}-D density, got {}",
            crate::io::npy::shape_str(shape)
        )));
    }
    let data = x
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Array2::from_shape_vec((shape[0], dim), data)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Builds a density from a spec: a shorthand, inline JSON, or a JSON file ([`SPEC_HELP`]).
/// Errors in a spec typed on the command line are usage errors (exit 2).
pub fn from_spec(spec: &str) -> Result<Box<dyn Density>> {
    let built = spec::load_object(spec, "density", None).and_then(|o| from_json(&o));
    spec::blame(spec, built).with_context(|| format!("density spec '{spec}'"))
}

/// The names [`from_json`] knows.
pub const KINDS: &[&str] = &["gaussian", "mixture", "random_2d", "symmetric_2d"];

/// Builds a density from a spec object `{"density": kind, ...}`.
pub fn from_json(obj: &Map<String, Value>) -> Result<Box<dyn Density>> {
    let kind = spec::kind(obj, "density")?;
    let mut k = Keys::new(obj, format!("density {kind}"), "density");
    let density: Box<dyn Density> = match kind {
        "gaussian" => Box::new(gaussian_from(&mut k)?),
        "mixture" => Box::new(mixture_from(&mut k)?),
        "random_2d" | "symmetric_2d" => Box::new(course_mixture(kind, &mut k)?),
        other => bail!("unknown density '{other}' (known: {})", KINDS.join(", ")),
    };
    k.finish()?;
    Ok(density)
}

/// The course's constructors: `random_2d` (nmodes, std, scale, seed) and `symmetric_2d`
/// (nmodes, std, scale), each with an optional x `offset`.
fn course_mixture(kind: &str, k: &mut Keys) -> Result<GaussianMixture> {
    let nmodes = k.count("nmodes", None, 1)? as usize;
    let std = k.num("std", None)?;
    let scale = k.num("scale", Some(10.0))?;
    let mix = if kind == "random_2d" {
        GaussianMixture::random_2d(nmodes, std, scale, k.count("seed", Some(0), 0)?)?
    } else {
        GaussianMixture::symmetric_2d(nmodes, std, scale)?
    };
    Ok(mix.shift(&[k.num("offset", Some(0.0))?, 0.0]))
}

/// A Gaussian mixture from a spec (`mixture`, `random_2d` or `symmetric_2d`, in any spec
/// form), for tools that sample mixtures with their mode labels (sample-data).
pub fn mixture_from_spec(spec: &str) -> Result<GaussianMixture> {
    let built = spec::load_object(spec, "density", None).and_then(|obj| {
        let kind = spec::kind(&obj, "density")?;
        let mut k = Keys::new(&obj, format!("density {kind}"), "density");
        let mix = match kind {
            "mixture" => mixture_from(&mut k)?,
            "random_2d" | "symmetric_2d" => course_mixture(kind, &mut k)?,
            other => {
                bail!("'{other}' is not a Gaussian mixture (mixture, random_2d, symmetric_2d)")
            }
        };
        k.finish()?;
        Ok(mix)
    });
    spec::blame(spec, built).with_context(|| format!("mixture spec '{spec}'"))
}

/// `gaussian`: keys `mean`, `std` (numbers or lists), `dim` (broadcasts scalars).
fn gaussian_from(k: &mut Keys) -> Result<Gaussian> {
    let mean = k.list("mean")?.unwrap_or_else(|| vec![0.0]);
    let std = k.list("std")?.unwrap_or_else(|| vec![1.0]);
    let longest = mean.len().max(std.len());
    let dim = k.count("dim", Some(longest as u64), 1)? as usize;
    let widen = |v: Vec<f64>, what: &str| -> Result<Vec<f64>> {
        match v.len() {
            1 => Ok(vec![v[0]; dim]),
            n if n == dim => Ok(v),
            n => bail!("density gaussian: '{what}' has {n} values for dimension {dim}"),
        }
    };
    Gaussian::new(widen(mean, "mean")?, widen(std, "std")?)
}

/// `mixture`: keys `means` (rows), `weights` (default equal), `stds` or `std`.
fn mixture_from(k: &mut Keys) -> Result<GaussianMixture> {
    let means = k
        .rows("means")?
        .ok_or_else(|| anyhow!("density mixture needs 'means', a list of points"))?;
    let nmodes = means.len();
    let weights = k.list("weights")?.unwrap_or_else(|| vec![1.0; nmodes]);
    let stds: Vec<Vec<f64>> = match (k.raw("stds"), k.raw("std")) {
        (Some(_), Some(_)) => bail!("density mixture: give 'stds' or 'std', not both"),
        (None, None) => bail!("density mixture needs 'stds' (or 'std')"),
        (Some(Value::Array(a)), None) if a.iter().all(Value::is_array) => {
            k.rows("stds")?.unwrap_or_default()
        }
        (Some(_), None) => {
            let s = k.list("stds")?.unwrap_or_default();
            per_mode(&s, &means)?
        }
        (None, Some(_)) => per_mode(&k.list("std")?.unwrap_or_default(), &means)?,
    };
    if stds.len() != nmodes {
        bail!("density mixture: {nmodes} means but {} stds", stds.len());
    }
    let components = means
        .into_iter()
        .zip(stds)
        .map(|(m, s)| Gaussian::new(m, s))
        .collect::<Result<Vec<_>>>()?;
    GaussianMixture::new(weights, components)
}

/// One isotropic std for all modes (a single number) or one per mode, as diagonal rows.
fn per_mode(s: &[f64], means: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let pick = |k: usize| match s.len() {
        1 => Ok(s[0]),
        n if n == means.len() => Ok(s[k]),
        n => bail!(
            "density mixture: {n} stds for {} modes (give 1 or one per mode)",
            means.len()
        ),
    };
    means
        .iter()
        .enumerate()
        .map(|(k, m)| Ok(vec![pick(k)?; m.len()]))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Central differences of log p, to check the written-out scores.
    fn numeric_score(d: &dyn Density, x: &Array2<f64>) -> Array2<f64> {
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

    fn assert_close(a: &Array2<f64>, b: &Array2<f64>, tol: f64) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    fn points() -> Array2<f64> {
        array![
            [0.0, 0.0],
            [1.5, -2.0],
            [-7.0, 3.0],
            [4.0, 4.0],
            [30.0, -25.0]
        ]
    }

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

    #[test]
    fn specs_build_densities_and_name_errors() {
        let g = from_spec("gaussian:mean=0;1,std=2").unwrap();
        assert_eq!(g.dim(), 2);
        let g = from_spec("gaussian:dim=3").unwrap();
        assert_eq!(g.dim(), 3);
        let m = from_spec("random_2d:nmodes=5,std=0.75,scale=15,seed=3").unwrap();
        let direct = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x = points();
        assert_eq!(
            m.log_density(x.view()).unwrap(),
            direct.log_density(x.view()).unwrap()
        );
        let j = from_spec(r#"{"density": "mixture", "means": [[0, 0], [1, 1]], "stds": [1, 2]}"#)
            .unwrap();
        assert_eq!(j.dim(), 2);
        let err = format!("{:#}", from_spec("banana:k=1").err().unwrap());
        assert!(err.contains("unknown density 'banana'"), "{err}");
        let err = format!(
            "{:#}",
            from_spec("gaussian:mean=0;1,std=1;2;3").err().unwrap()
        );
        assert!(err.contains("'mean' has 2 values for dimension 3"), "{err}");
        let err = from_spec("gaussian:mean=0;0")
            .unwrap()
            .score(array![[1.0, 2.0, 3.0]].view());
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("expected points (N, 2)"));
    }

    #[test]
    fn tensor_bridge_keeps_dtype_and_shape() {
        let g = Gaussian::isotropic(2, 2.0).unwrap();
        let x = Tensor::new(&[[2.0f32, -4.0]], &Device::Cpu).unwrap();
        let s = score_tensor(&g, &x).unwrap();
        assert_eq!(s.dtype(), DType::F32);
        assert_eq!(s.to_vec2::<f32>().unwrap(), vec![vec![-0.5, 1.0]]);
        assert!(score_tensor(&g, &x.reshape((2, 1)).unwrap()).is_err());
    }
}
