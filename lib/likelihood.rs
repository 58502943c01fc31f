//! The likelihood of a flow model: log p_1(x) of data under the ODE of a velocity field, by the
//! instantaneous change of variables.
//!
//! Along dX_t = u_t(X_t) dt the density of the marginals changes as (the continuity equation,
//! with which the notes prove the marginalisation trick in section 3, read along a trajectory;
//! Chen et al. 2018, "Neural ordinary differential equations", Theorem 1):
//!
//! ```text
//!     d/dt log p_t(X_t) = -div u_t(X_t),   so   log p_1(x) = log p_0(X_0) - ∫_0^1 div u_t(X_t) dt
//! ```
//!
//! where X_t is the ODE's solution through X_1 = x. We integrate the augmented state (X_t, L_t)
//! backwards from t = 1, with L_1 = 0 and dL/dt = div u_t(X_t), to t = 0: then
//! log p_1(x) = log p_0(X_0) + L_0. p_0 is the model's p_init, N(0, s^2 I) for a field along a
//! Gaussian path, s = [`crate::paths::GaussianPath::init_std`] (1, or sigma_max for `ve`, whose
//! p_0 is the data blurred by N(0, sigma_max^2 I) and is taken to be that Gaussian, as its
//! samplers do). Any solver of
//! [`crate::solvers`] steps the augmented state, so a fixed grid and Dormand-Prince both serve.
//!
//! **The divergence.** `Exact`: div u = sum_i e_i^T J e_i, one vector-Jacobian product
//! (a backward pass) per dimension; for points. `Hutchinson` (Hutchinson 1989; Grathwohl et al.
//! 2019, "FFJORD"): div u = E[v^T J v] for any probe v with E[v v^T] = I (Rademacher signs or
//! standard normals), one vector-Jacobian product per probe. As in FFJORD, each sample keeps its
//! probes for the whole trajectory, so the estimate of the integral ∫ div u dt is unbiased. With
//! P probes the state carries P log-density channels, one per probe: each is an unbiased
//! estimate of log p_1(x), and their spread gives the standard error due to the probes.
//! Probe p of sample i comes from the stream (seed, Probe, i) (P * D draws per sample), so the
//! numbers do not depend on how a batch is split.
//!
//! **Discrete data.** For 8-bit images scaled to [-1, 1] (`--dequantize 256`), the density of a
//! continuous model is turned into a probability of the pixel values by uniform dequantisation
//! (Theis et al. 2016; Uria et al. 2013): with the level spacing Delta = 2 / (B - 1), the data are
//! x~ = x + Delta (u - 1/2), u ~ U[0, 1)^D from (seed, Dequantize, i), and
//! log P(x) >= E_u[log p(x~)] + D log Delta. The report gives -(log p(x~) + D log Delta), the
//! usual negative log-likelihood of the discrete data, and bits per dimension
//! bpd = NLL / (D ln 2). Without dequantisation bpd is the continuous density's (it can be
//! negative: a density is not a probability).

use anyhow::{bail, Context};
use candle_core::{Device, Tensor, Var};
use ndarray::{ArrayD, Axis, IxDyn};

use crate::fields::Field;
use crate::progress::Progress;
use crate::rng::{self, Purpose};
use crate::solvers::{self, SolveOptions, Stats};
use crate::Result;

/// How div u is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// The trace of the Jacobian, one backward pass per dimension.
    Exact,
    /// Hutchinson's estimator with `probes` probes per sample.
    Hutchinson { probes: usize, probe: Probe },
}

/// The distribution of Hutchinson's probes: both have E[v v^T] = I.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// Entries +1 or -1 with equal probability (the lower-variance choice).
    Rademacher,
    /// Standard normal entries.
    Gaussian,
}

impl Divergence {
    /// The log-density channels the augmented state carries.
    pub fn channels(self) -> usize {
        match self {
            Divergence::Exact => 1,
            Divergence::Hutchinson { probes, .. } => probes,
        }
    }

    /// `exact`, `hutchinson-rademacher` or `hutchinson-gaussian`, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Divergence::Exact => "exact",
            Divergence::Hutchinson {
                probe: Probe::Rademacher,
                ..
            } => "hutchinson-rademacher",
            Divergence::Hutchinson {
                probe: Probe::Gaussian,
                ..
            } => "hutchinson-gaussian",
        }
    }
}

/// The probes of samples `first..first + n`: (P, n, D) row-major, probe p of sample i from the
/// stream (seed, Probe, first + i).
fn probes(seed: u64, first: u64, n: usize, dim: usize, count: usize, kind: Probe) -> Vec<f32> {
    let mut out = vec![0f32; count * n * dim];
    for i in 0..n {
        let mut s = rng::stream(seed, Purpose::Probe, first + i as u64);
        let mut row = vec![0f32; count * dim];
        match kind {
            Probe::Gaussian => rng::fill_normal(&mut s, &mut row),
            Probe::Rademacher => {
                rng::fill_uniform(&mut s, &mut row, 0.0, 1.0);
                row.iter_mut()
                    .for_each(|v| *v = if *v < 0.5 { -1.0 } else { 1.0 });
            }
        }
        for p in 0..count {
            let dst = (p * n + i) * dim;
            out[dst..dst + dim].copy_from_slice(&row[p * dim..(p + 1) * dim]);
        }
    }
    out
}

/// The inner field, borrowed or made for a chunk of rows by [`Field::rows`].
enum Inner<'a> {
    Borrowed(&'a dyn Field),
    Owned(Box<dyn Field + 'a>),
}

impl Inner<'_> {
    fn get(&self) -> &dyn Field {
        match self {
            Inner::Borrowed(f) => *f,
            Inner::Owned(f) => f.as_ref(),
        }
    }
}

/// The augmented ODE d(X, L)/dt = (u_t(X), div u_t(X)) on states (N, D + C): the sample
/// flattened to D values, then C log-density channels (see the module docs).
pub struct ChangeOfVariables<'a> {
    inner: Inner<'a>,
    /// The shape of one sample of the inner field.
    shape: Vec<usize>,
    divergence: Divergence,
    seed: u64,
    /// The sample index of row 0.
    first: u64,
}

impl<'a> ChangeOfVariables<'a> {
    pub fn new(inner: &'a dyn Field, shape: &[usize], divergence: Divergence, seed: u64) -> Self {
        ChangeOfVariables {
            inner: Inner::Borrowed(inner),
            shape: shape.to_vec(),
            divergence,
            seed,
            first: 0,
        }
    }

    fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// u_t(x) (n, D) and the C divergence estimates (n, C) at the flattened states `x` (n, D).
    pub fn velocity_and_divergence(
        &self,
        x: &Tensor,
        t: f64,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, d) = x.dims2()?;
        let mut dims = vec![n];
        dims.extend(&self.shape);
        let xv = Var::from_tensor(&x.detach().reshape(dims.as_slice())?)?;
        let u = self.inner.get().drift(xv.as_tensor(), t)?;
        // The gradient of sum(u * v) with respect to x is J^T v, row by row.
        let vjp = |v: &Tensor| -> candle_core::Result<Tensor> {
            let grads = (&u * v)?.sum_all()?.backward()?;
            // No gradient: u does not depend on x here (a closed form whose coefficient of x
            // vanishes at this t). A network evaluated off candle's graph would also land here;
            // loaded models keep their graph for x (`Params::frozen`), and the tests of
            // `likelihood` check a trained model's divergence against finite differences.
            match grads.get(xv.as_tensor()) {
                Some(g) => g.reshape((n, d)),
                None => Tensor::zeros((n, d), x.dtype(), x.device()),
            }
        };
        let est = match self.divergence {
            Divergence::Exact => {
                let mut trace = Tensor::zeros((n, 1), x.dtype(), x.device())?;
                for i in 0..d {
                    let mut e = vec![0f32; d];
                    e[i] = 1.0;
                    let e = Tensor::from_vec(e, (1, d), x.device())?
                        .to_dtype(x.dtype())?
                        .broadcast_as((n, d))?
                        .reshape(dims.as_slice())?;
                    trace = (trace + vjp(&e)?.narrow(1, i, 1)?)?;
                }
                trace
            }
            Divergence::Hutchinson { probes: p, probe } => {
                let v = probes(self.seed, self.first, n, d, p, probe);
                let v = Tensor::from_vec(v, (p, n, d), x.device())?.to_dtype(x.dtype())?;
                let mut cols = Vec::with_capacity(p);
                for k in 0..p {
                    let vk = v.get(k)?;
                    let g = vjp(&vk.reshape(dims.as_slice())?)?;
                    cols.push((g * vk)?.sum_keepdim(1)?);
                }
                Tensor::cat(&cols, 1)?
            }
        };
        Ok((u.detach().reshape((n, d))?, est))
    }
}

impl Field for ChangeOfVariables<'_> {
    fn drift(&self, state: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let d = self.dim();
        let x = state.narrow(1, 0, d)?;
        let (u, div) = self.velocity_and_divergence(&x, t)?;
        Tensor::cat(&[u, div], 1)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        0.0
    }
    fn describe(&self) -> String {
        format!(
            "change of variables ({} divergence) of {}",
            self.divergence.name(),
            self.inner.get().describe()
        )
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.dim() + self.divergence.channels()])
    }
    fn rows(&self, start: u64, len: usize) -> Result<Option<Box<dyn Field + '_>>> {
        let inner = match self.inner.get().rows(start, len)? {
            Some(f) => Inner::Owned(f),
            None => Inner::Borrowed(self.inner.get()),
        };
        Ok(Some(Box::new(ChangeOfVariables {
            inner,
            shape: self.shape.clone(),
            divergence: self.divergence,
            seed: self.seed,
            first: start,
        })))
    }
}

/// How to compute log-likelihoods.
#[derive(Clone, Debug)]
pub struct Options {
    pub divergence: Divergence,
    /// The solver (an ODE rule), its tolerances, `seed` (of the probes and dequantisation) and
    /// `first` (the index of the first sample).
    pub solve: SolveOptions,
    /// Grid intervals from t = 1 to t = 0 (dopri5 picks its own steps within them).
    pub steps: usize,
    /// Samples integrated at once.
    pub batch: usize,
    /// Dequantise data of this many levels on [-1, 1] (see the module docs).
    pub dequantize: Option<u32>,
}

/// What [`log_likelihood`] finds.
pub struct Estimates {
    /// log p_1(x) of each sample by each channel (N, C), in nats (with dequantisation, the
    /// discrete data's log-probability bound, D log Delta included).
    pub log_p: ArrayD<f32>,
    /// The dimension D of one sample.
    pub dim: usize,
    pub stats: Stats,
}

/// log N(x; 0, s^2 I) of each row of `x` (N, D).
fn gaussian_log_density(x: &ArrayD<f32>, std: f64) -> Vec<f64> {
    let d = x.shape()[1] as f64;
    let norm = -0.5 * d * (2.0 * std::f64::consts::PI * std * std).ln();
    x.axis_iter(Axis(0))
        .map(|row| norm - row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (2.0 * std * std))
        .collect()
}

/// log p_1 of each sample of `x` (N, ...) under the ODE of `field` (see the module docs).
pub fn log_likelihood(
    field: &dyn Field,
    x: &ArrayD<f32>,
    opts: &Options,
    device: &Device,
    progress: Option<&Progress>,
) -> Result<Estimates> {
    let path = field.gaussian_path().with_context(|| {
        format!(
            "a likelihood needs a model along a Gaussian path, whose p_init is a Gaussian; {} \
             has none",
            field.describe()
        )
    })?;
    if !field.differentiable() {
        bail!(
            "{} is not differentiable through candle's graph (classifier guidance takes its \
             classifier's gradient as a constant): its divergence cannot be computed",
            field.describe()
        );
    }
    if field.diffusion(1.0) != 0.0 || field.diffusion(0.0) != 0.0 {
        bail!(
            "a likelihood is the ODE's: give the model with sigma 0, not {}",
            field.describe()
        );
    }
    let n = x.shape()[0];
    let shape = x.shape()[1..].to_vec();
    let dim: usize = shape.iter().product();
    let mut flat = x.to_shape(IxDyn(&[n, dim]))?.to_owned();
    let mut offset = 0.0;
    if let Some(levels) = opts.dequantize {
        let delta = 2.0 / (levels as f64 - 1.0);
        let u = rng::uniform_rows(
            opts.solve.seed,
            Purpose::Dequantize,
            opts.solve.first,
            n,
            dim,
            -0.5,
            0.5,
        );
        flat.iter_mut()
            .zip(u)
            .for_each(|(v, u)| *v += (delta * u as f64) as f32);
        offset = dim as f64 * delta.ln();
    }
    let channels = opts.divergence.channels();
    let mut state = ArrayD::<f32>::zeros(IxDyn(&[n, dim + channels]));
    state
        .slice_axis_mut(Axis(1), ndarray::Slice::from(0..dim))
        .assign(&flat);
    let cov = ChangeOfVariables::new(field, &shape, opts.divergence, opts.solve.seed);
    let grid = solvers::uniform_grid(1.0, 0.0, opts.steps);
    let (end, _, stats) = solvers::solve_batched(
        &cov,
        &state,
        &grid,
        &opts.solve,
        opts.batch,
        device,
        progress,
    )?;
    let x0 = end
        .slice_axis(Axis(1), ndarray::Slice::from(0..dim))
        .to_owned();
    let log_p0 = gaussian_log_density(&x0, path.init_std());
    let mut log_p = ArrayD::<f32>::zeros(IxDyn(&[n, channels]));
    for i in 0..n {
        for c in 0..channels {
            log_p[[i, c]] = (log_p0[i] + end[[i, dim + c]] as f64 + offset) as f32;
        }
    }
    Ok(Estimates { log_p, dim, stats })
}

/// The summary of [`Estimates`]: the mean negative log-likelihood per sample (nats) and per
/// dimension in bits, the standard error of that mean due to the probes (0 for the exact
/// divergence) and due to the finite data set (the spread of the per-sample values).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub nll: f64,
    pub bpd: f64,
    pub se_probes: f64,
    pub se_data: f64,
}

impl Estimates {
    pub fn summary(&self) -> Summary {
        let (n, c) = (self.log_p.shape()[0], self.log_p.shape()[1]);
        let rows: Vec<(f64, f64)> = self
            .log_p
            .axis_iter(Axis(0))
            .map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = if c > 1 {
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (c - 1) as f64
                } else {
                    0.0
                };
                (mean, var)
            })
            .collect();
        let nf = n as f64;
        let mean = rows.iter().map(|r| r.0).sum::<f64>() / nf;
        // The probe error of each sample's mean is var / C; the mean over N samples divides
        // the summed variances by N^2.
        let se_probes = (rows.iter().map(|r| r.1 / c as f64).sum::<f64>()).sqrt() / nf;
        let se_data = if n > 1 {
            (rows.iter().map(|r| (r.0 - mean).powi(2)).sum::<f64>() / (nf - 1.0) / nf).sqrt()
        } else {
            0.0
        };
        Summary {
            nll: -mean,
            bpd: -mean / (self.dim as f64 * std::f64::consts::LN_2),
            se_probes,
            se_data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::GaussianTarget;
    use crate::paths::GaussianPath;
    use crate::solvers::Method;

    fn opts(divergence: Divergence, batch: usize) -> Options {
        Options {
            divergence,
            solve: SolveOptions {
                method: Method::Dopri5,
                rtol: 1e-7,
                atol: 1e-7,
                seed: 5,
                ..Default::default()
            },
            steps: 1,
            batch,
            dequantize: None,
        }
    }

    fn points(rows: &[[f32; 3]]) -> ArrayD<f32> {
        let v: Vec<f32> = rows.iter().flatten().copied().collect();
        ArrayD::from_shape_vec(IxDyn(&[rows.len(), 3]), v).unwrap()
    }

    /// log N(x; m, s^2 I).
    fn target_log_density(x: &[f32; 3], m: &[f64], s: f64) -> f64 {
        let q: f64 = x.iter().zip(m).map(|(&v, &m)| (v as f64 - m).powi(2)).sum();
        -1.5 * (2.0 * std::f64::consts::PI * s * s).ln() - q / (2.0 * s * s)
    }

    #[test]
    fn the_flow_to_a_gaussian_gives_its_log_density() {
        // The exact field from N(0, I) to N(m, s^2 I): log p_1 must be the target's density, not
        // p_init's (a wrong sign of the divergence term, or a missing log p_0, shows at once:
        // s = 0.4 makes log p_1 and log p_0 differ by D log(1 / s) = 2.7 nats at the mean).
        let mean = vec![1.5, -0.5, 0.3];
        let rows = [
            [1.5, -0.5, 0.3],
            [1.9, -0.1, 0.0],
            [0.0, 0.0, 0.0],
            [2.5, -1.0, 1.0],
        ];
        for path in [GaussianPath::CONDOT, GaussianPath::COSINE] {
            let field = GaussianTarget {
                mean: mean.clone(),
                std: 0.4,
                path,
                sigma: 0.0,
            };
            let est = log_likelihood(
                &field,
                &points(&rows),
                &opts(Divergence::Exact, 4),
                &Device::Cpu,
                None,
            )
            .unwrap();
            for (i, x) in rows.iter().enumerate() {
                let want = target_log_density(x, &mean, 0.4);
                let got = est.log_p[[i, 0]] as f64;
                assert!(
                    (got - want).abs() < 2e-3,
                    "{path:?} row {i}: {got} vs {want}"
                );
            }
            // A diagonal Jacobian: Rademacher probes give the trace exactly, in every channel.
            let div = Divergence::Hutchinson {
                probes: 3,
                probe: Probe::Rademacher,
            };
            let hutch =
                log_likelihood(&field, &points(&rows), &opts(div, 4), &Device::Cpu, None).unwrap();
            for i in 0..rows.len() {
                for c in 0..3 {
                    let (h, e) = (hutch.log_p[[i, c]], est.log_p[[i, 0]]);
                    assert!((h - e).abs() < 1e-3, "row {i} probe {c}: {h} vs {e}");
                }
            }
        }
    }

    /// u = tanh(A x) with a non-symmetric A: div u = sum_i A_ii (1 - tanh^2((A x)_i)).
    struct Tanh {
        a: Tensor,
    }

    impl Field for Tanh {
        fn drift(&self, x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
            x.matmul(&self.a.t()?)?.tanh()
        }
        fn diffusion(&self, _t: f64) -> f64 {
            0.0
        }
        fn describe(&self) -> String {
            "tanh(Ax)".into()
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            Some(vec![3])
        }
    }

    #[test]
    fn hutchinsons_estimate_is_unbiased_and_exact_is_exact() {
        let a = [0.9f32, -1.3, 0.4, 2.0, -0.7, 0.5, -0.2, 1.1, 0.3];
        let field = Tanh {
            a: Tensor::from_vec(a.to_vec(), (3, 3), &Device::Cpu).unwrap(),
        };
        let xs = [0.3f32, -0.8, 0.5];
        let x = Tensor::from_vec(xs.to_vec(), (1, 3), &Device::Cpu).unwrap();
        // The closed form.
        let ax: Vec<f64> = (0..3)
            .map(|i| (0..3).map(|j| (a[3 * i + j] * xs[j]) as f64).sum())
            .collect();
        let want: f64 = (0..3)
            .map(|i| a[4 * i] as f64 * (1.0 - ax[i].tanh().powi(2)))
            .sum();
        let exact = ChangeOfVariables::new(&field, &[3], Divergence::Exact, 0);
        let (u, div) = exact.velocity_and_divergence(&x, 0.5).unwrap();
        let got = div.to_vec2::<f32>().unwrap()[0][0] as f64;
        assert!((got - want).abs() < 1e-5, "exact {got} vs {want}");
        assert_eq!(u.dims(), &[1, 3]);
        for probe in [Probe::Rademacher, Probe::Gaussian] {
            let p = 4000;
            let div = Divergence::Hutchinson { probes: p, probe };
            let est = ChangeOfVariables::new(&field, &[3], div, 11);
            let (_, d) = est.velocity_and_divergence(&x, 0.5).unwrap();
            let v: Vec<f64> = d.to_vec2::<f32>().unwrap()[0]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / p as f64;
            let var = v.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (p - 1) as f64;
            let se = (var / p as f64).sqrt();
            // A real spread (the off-diagonal terms), and the mean within 4 standard errors.
            assert!(var > 0.05, "{probe:?}: variance {var}");
            assert!(
                (mean - want).abs() < 4.0 * se,
                "{probe:?}: {mean} +- {se} vs {want}"
            );
        }
    }

    #[test]
    fn splitting_the_batch_changes_nothing() {
        let field = GaussianTarget {
            mean: vec![1.0, 0.0, -1.0],
            std: 0.7,
            path: GaussianPath::CONDOT,
            sigma: 0.0,
        };
        let rows = [
            [1.0, 0.2, -1.0],
            [0.1, 0.2, 0.3],
            [-0.5, 1.0, 0.0],
            [2.0, -1.0, 0.5],
            [0.0; 3],
        ];
        let div = Divergence::Hutchinson {
            probes: 2,
            probe: Probe::Gaussian,
        };
        let mut o = opts(div, 5);
        o.solve.method = Method::Heun;
        o.steps = 8;
        o.dequantize = Some(256);
        let whole = log_likelihood(&field, &points(&rows), &o, &Device::Cpu, None).unwrap();
        o.batch = 2;
        let parts = log_likelihood(&field, &points(&rows), &o, &Device::Cpu, None).unwrap();
        assert_eq!(whole.log_p, parts.log_p);
        assert_eq!(whole.stats.nfe, 16);
    }

    #[test]
    fn the_summary_separates_probe_and_data_errors() {
        // Two samples, two probes each: per-sample means -1 and -3, probe variances 2 and 0.
        let log_p = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.0, -2.0, -3.0, -3.0]).unwrap();
        let s = Estimates {
            log_p,
            dim: 4,
            stats: Stats::default(),
        }
        .summary();
        assert!((s.nll - 2.0).abs() < 1e-12);
        assert!((s.bpd - 2.0 / (4.0 * std::f64::consts::LN_2)).abs() < 1e-12);
        // sqrt(2 / 2 + 0) / 2
        assert!((s.se_probes - 0.5).abs() < 1e-12);
        // the sample std of (-1, -3) is sqrt(2), over sqrt(2)
        assert!((s.se_data - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_loaded_networks_divergence_matches_finite_differences() {
        // A random MLP velocity model, saved and loaded as the tools load it: its graph must
        // reach x (a detached output would give a divergence of 0 and a wrong likelihood).
        use crate::io::model;
        use crate::nn::{build, MlpConfig, Params};
        let cfg = MlpConfig {
            dim: 3,
            hidden: vec![16, 16],
            activation: crate::nn::Activation::Silu,
            time_features: 4,
        };
        let mut config = cfg.to_json();
        config["kind"] = serde_json::json!("velocity");
        config["parametrisation"] = serde_json::json!("velocity");
        config["path"] = crate::paths::Path::Gaussian(GaussianPath::CONDOT).to_json();
        config["source"] = serde_json::json!("gaussian");
        let params = Params::new(3, &Device::Cpu);
        build(&config, &params).unwrap();
        let bytes = model::encode(&config, &params.tensors()).unwrap();
        let file = model::decode(&bytes, "m.safetensors", &Device::Cpu).unwrap();
        let field = crate::fields::from_model(file, &Default::default(), &Device::Cpu).unwrap();
        let xs = [0.4f32, -1.1, 0.7];
        let x = Tensor::from_vec(xs.to_vec(), (1, 3), &Device::Cpu).unwrap();
        let c = ChangeOfVariables::new(field.as_ref(), &[3], Divergence::Exact, 0);
        let (_, div) = c.velocity_and_divergence(&x, 0.3).unwrap();
        let got = div.to_vec2::<f32>().unwrap()[0][0] as f64;
        let h = 1e-2f32;
        let mut want = 0.0;
        for i in 0..3 {
            let at = |s: f32| {
                let mut v = xs;
                v[i] += s;
                let v = Tensor::from_vec(v.to_vec(), (1, 3), &Device::Cpu).unwrap();
                field.drift(&v, 0.3).unwrap().to_vec2::<f32>().unwrap()[0][i] as f64
            };
            want += (at(h) - at(-h)) / (2.0 * h as f64);
        }
        assert!(want.abs() > 0.05, "a degenerate test network: {want}");
        assert!(
            (got - want).abs() < 2e-3,
            "{got} vs finite differences {want}"
        );
    }
}
