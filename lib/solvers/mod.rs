//! Numerical solvers for ODEs dX = u_t(X) dt and SDEs dX = u_t(X) dt + σ_t dW_t
//! (notes section 2), on batches of candle tensors (N, ...) on any device and float dtype.
//!
//! On a time grid t_0 < t_1 < ... (or decreasing), with h = t_{k+1} - t_k:
//! - Euler (notes eq. 4): X_{k+1} = X_k + h u_{t_k}(X_k).                          1 NFE/step
//! - Heun (notes section 2.1): X' = X_k + h u_{t_k}(X_k),
//!   X_{k+1} = X_k + h/2 (u_{t_k}(X_k) + u_{t_{k+1}}(X')).                        2 NFE/step
//! - RK4: the classical fourth-order Runge-Kutta rule.                              4 NFE/step
//! - Euler-Maruyama (notes eq. 9): X_{k+1} = X_k + h u_{t_k}(X_k) + σ_{t_k} √|h| ε_k,
//!   ε_k ~ N(0, I).                                                                  1 NFE/step
//! - Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Nørsett & Wanner, Solving ODEs I,
//!   II.4-5): an embedded pair with FSAL (6 NFE per step after the first), local
//!   extrapolation (the 5th-order solution is kept) and the standard controller
//!   h_new = h · min(5, max(0.2, 0.9 · err^{-1/5})) (no growth right after a rejection).
//!   err is, per sample, the RMS over the sample's elements of
//!   (y5 - y4) / (atol + rtol · max(|y_k|, |y_{k+1}|)), then the maximum over samples: a
//!   batch is N independent ODEs, and each must meet the tolerance (with the RMS over the whole
//!   batch, one bad sample would be diluted by the others). The step is clipped to land exactly
//!   on every grid time, which are its output times.
//!
//! Brownian increments come from per-sample streams (seed, Purpose::Brownian, first + i) held
//! for the whole run, each drawing its sample's ε_k step after step; the paths do not depend on
//! how a batch is split. (Dormand-Prince adapts one step size per batch, so its results depend
//! on the batch split within the tolerance; the fixed-step solvers give identical numbers.)

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, Axis, IxDyn};
use rand_chacha::ChaCha8Rng;

use crate::device::{from_tensor, to_tensor};
use crate::fields::Field;
use crate::progress::Progress;
use crate::rng::{self, Purpose};
use crate::spec::{self, Keys};
use crate::{usage_bail, Result};

/// The integration rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Euler-Maruyama for an SDE, Euler for an ODE (Euler-Maruyama without noise).
    Auto,
    Euler,
    Heun,
    Rk4,
    /// Adaptive Dormand-Prince 5(4), with --rtol/--atol.
    #[value(alias = "dormand-prince")]
    Dopri5,
    EulerMaruyama,
}

impl Method {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Euler => "euler",
            Method::Heun => "heun",
            Method::Rk4 => "rk4",
            Method::Dopri5 => "dopri5",
            Method::EulerMaruyama => "euler-maruyama",
        }
    }

    /// Resolves `auto` and refuses ODE rules for an SDE: `auto` is Euler-Maruyama for an SDE
    /// and Euler for an ODE (the notes' Algorithm 1 and 2; Euler-Maruyama at σ = 0 is Euler).
    pub fn resolve(self, stochastic: bool, field: &str) -> Result<Method> {
        Ok(match self {
            Method::Auto if stochastic => Method::EulerMaruyama,
            Method::Auto => Method::Euler,
            Method::EulerMaruyama => self,
            _ if stochastic => usage_bail!(
                "solver {} integrates ODEs, but {field} has noise (sigma > 0): use \
                 euler-maruyama or auto",
                self.name()
            ),
            _ => self,
        })
    }
}

/// Counts of work done: field evaluations (one per call on a batch) and steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub nfe: u64,
    pub accepted: u64,
    pub rejected: u64,
}

impl Stats {
    /// Adds another batch's counts.
    pub fn add(&mut self, o: Stats) {
        self.nfe += o.nfe;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
    }
}

/// `steps + 1` evenly spaced times from `t0` to `t1` (both included, exactly).
pub fn uniform_grid(t0: f64, t1: f64, steps: usize) -> Vec<f64> {
    let mut g: Vec<f64> = (0..=steps)
        .map(|k| t0 + (t1 - t0) * k as f64 / steps as f64)
        .collect();
    if let Some(last) = g.last_mut() {
        *last = t1;
    }
    g
}

/// Fails unless `grid` has at least two finite times, strictly increasing or decreasing.
pub fn check_grid(grid: &[f64]) -> Result<()> {
    if grid.len() < 2 {
        bail!("a time grid needs at least 2 times, got {}", grid.len());
    }
    if let Some(t) = grid.iter().find(|t| !t.is_finite()) {
        bail!("the time grid holds a non-finite time {t}");
    }
    let up = grid[1] > grid[0];
    if let Some(k) =
        (1..grid.len()).find(|&k| (grid[k] > grid[k - 1]) != up || grid[k] == grid[k - 1])
    {
        bail!(
            "the time grid must be strictly monotone, but t[{}] = {} and t[{k}] = {}",
            k - 1,
            grid[k - 1],
            grid[k]
        );
    }
    Ok(())
}

/// Reads a time grid, a (T,) .npy of strictly monotone times (f32 or f64), naming the file in
/// errors.
pub fn read_grid(path: &str) -> Result<Vec<f64>> {
    let t = crate::io::npy::read_f32(path)?;
    let name = crate::io::display_name(path);
    crate::io::npy::expect_shape(t.shape(), "T", "a time grid", &name)?;
    let grid: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    check_grid(&grid).map_err(|e| anyhow!("{name}: {e}"))?;
    Ok(grid)
}

/// Whether `field` has noise anywhere on `grid` (then it needs an SDE solver).
pub fn is_stochastic(field: &dyn Field, grid: &[f64]) -> bool {
    grid.iter().any(|&t| field.diffusion(t) != 0.0)
}

/// The grid indices whose states a trajectory keeps: 0, k, 2k, ... and always the last.
pub fn saved_indices(points: usize, every: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points).step_by(every.max(1)).collect();
    if idx.last() != Some(&(points - 1)) {
        idx.push(points - 1);
    }
    idx
}

/// Per-sample Brownian streams (seed, Brownian, first + i), held for a whole run.
pub struct BrownianNoise {
    streams: Vec<ChaCha8Rng>,
}

impl BrownianNoise {
    /// Streams for samples `first..first + n`.
    pub fn new(seed: u64, first: u64, n: usize) -> Self {
        let streams = (0..n as u64)
            .map(|i| rng::stream(seed, Purpose::Brownian, first + i))
            .collect();
        BrownianNoise { streams }
    }

    /// The next ε ~ N(0, I) shaped like `like` (N, ...): each sample draws its elements from
    /// its own stream, continuing where its previous draw ended.
    pub fn next(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.streams.len();
        let per = like.elem_count() / n.max(1);
        let mut z = vec![0f32; n * per];
        for (row, s) in z.chunks_mut(per.max(1)).zip(self.streams.iter_mut()) {
            rng::fill_normal(s, row);
        }
        Tensor::from_vec(z, like.shape(), like.device())?.to_dtype(like.dtype())
    }
}

/// One Euler step: x + h u_t(x).
pub fn euler_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    x + f.drift(x, t)?.affine(h, 0.0)?
}

/// One Heun step: the trapezoid rule with an Euler predictor.
pub fn heun_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    let k1 = f.drift(x, t)?;
    let pred = (x + k1.affine(h, 0.0)?)?;
    let k2 = f.drift(&pred, t + h)?;
    x + (k1 + k2)?.affine(h / 2.0, 0.0)?
}

/// One classical Runge-Kutta step of order 4.
pub fn rk4_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    let k1 = f.drift(x, t)?;
    let k2 = f.drift(&(x + k1.affine(h / 2.0, 0.0)?)?, t + h / 2.0)?;
    let k3 = f.drift(&(x + k2.affine(h / 2.0, 0.0)?)?, t + h / 2.0)?;
    let k4 = f.drift(&(x + k3.affine(h, 0.0)?)?, t + h)?;
    let sum = (k1 + k4)?.add(&(k2 + k3)?.affine(2.0, 0.0)?)?;
    x + sum.affine(h / 6.0, 0.0)?
}

/// One Euler-Maruyama step with standard normal `z` shaped like `x`.
pub fn euler_maruyama_step(
    f: &dyn Field,
    x: &Tensor,
    t: f64,
    h: f64,
    z: &Tensor,
) -> candle_core::Result<Tensor> {
    let noise = z.affine(f.diffusion(t) * h.abs().sqrt(), 0.0)?;
    (x + f.drift(x, t)?.affine(h, 0.0)?)? + noise
}

/// How to solve.
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// The rule; `Auto` is resolved by [`solve`] through [`Method::resolve`].
    pub method: Method,
    /// Relative and absolute tolerances of Dormand-Prince.
    pub rtol: f64,
    pub atol: f64,
    /// Dormand-Prince gives up after this many (accepted + rejected) steps.
    pub max_steps: u64,
    /// Seed of the Brownian streams, and the index of the batch's first sample.
    pub seed: u64,
    pub first: u64,
    /// Keep the state at every `k`-th grid time (and the last) when `Some(k)`.
    pub save_every: Option<usize>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            method: Method::Auto,
            rtol: 1e-5,
            atol: 1e-5,
            max_steps: 100_000,
            seed: 0,
            first: 0,
            save_every: None,
        }
    }
}

/// What [`solve`] returns.
pub struct Solution {
    /// The state at the last grid time, shaped like x0.
    pub x: Tensor,
    /// The kept states (N, T', ...) at the times of [`saved_indices`], when asked for.
    pub trajectory: Option<Tensor>,
    pub stats: Stats,
}

/// Integrates `field` from `x0` (N, ...) along `grid` (see the module docs for the rules).
pub fn solve(
    field: &dyn Field,
    x0: &Tensor,
    grid: &[f64],
    opts: &SolveOptions,
    progress: Option<&Progress>,
) -> Result<Solution> {
    check_grid(grid)?;
    let stochastic = is_stochastic(field, grid);
    let method = opts.method.resolve(stochastic, &field.describe())?;
    let keep = opts.save_every.map(|k| saved_indices(grid.len(), k));
    let mut saved = Vec::new();
    let mut save = |k: usize, x: &Tensor| {
        if keep
            .as_ref()
            .is_some_and(|idx| idx.binary_search(&k).is_ok())
        {
            saved.push(x.clone());
        }
    };
    save(0, x0);
    let mut stats = Stats::default();
    let mut x = x0.clone();
    if method == Method::Dopri5 {
        let mut dp = Dopri5::new(field, opts, x0, grid[0], grid[grid.len() - 1], &mut stats)?;
        for (k, &target) in grid.iter().enumerate().skip(1) {
            x = dp.advance_to(target, &mut stats)?;
            save(k, &x);
            if let Some(p) = progress {
                p.inc(1);
            }
        }
    } else {
        let n = x0.dims().first().copied().unwrap_or(1);
        let mut noise = (method == Method::EulerMaruyama && stochastic)
            .then(|| BrownianNoise::new(opts.seed, opts.first, n));
        let per_step = match method {
            Method::Heun => 2,
            Method::Rk4 => 4,
            _ => 1,
        };
        for k in 0..grid.len() - 1 {
            let (t, h) = (grid[k], grid[k + 1] - grid[k]);
            x = match (method, noise.as_mut()) {
                (Method::Heun, _) => heun_step(field, &x, t, h)?,
                (Method::Rk4, _) => rk4_step(field, &x, t, h)?,
                (Method::EulerMaruyama, Some(w)) => {
                    let z = w.next(&x)?;
                    euler_maruyama_step(field, &x, t, h, &z)?
                }
                _ => euler_step(field, &x, t, h)?,
            };
            stats.nfe += per_step;
            stats.accepted += 1;
            save(k + 1, &x);
            if let Some(p) = progress {
                p.inc(1);
            }
        }
    }
    if !all_finite(&x)? {
        bail!(
            "the solution is not finite at t = {}: it blew up (steps too large for {}, or an \
             unstable field)",
            grid[grid.len() - 1],
            field.describe()
        );
    }
    let trajectory = if opts.save_every.is_some() {
        Some(Tensor::stack(&saved, 1)?)
    } else {
        None
    };
    Ok(Solution {
        x,
        trajectory,
        stats,
    })
}

/// [`solve`] on an f32 array x0 (N, ...) in batches of at most `batch` samples on `device`;
/// returns X at the last time, the trajectory (N, T', ...) if asked for, and the summed stats.
/// Each chunk of rows runs the field [`Field::rows`] gives for its sample indices (`first` +
/// row), so per-sample fields (labels) stay aligned. Fixed-step results are identical for every
/// `batch`.
pub fn solve_batched(
    field: &dyn Field,
    x0: &ArrayD<f32>,
    grid: &[f64],
    opts: &SolveOptions,
    batch: usize,
    device: &Device,
    progress: Option<&Progress>,
) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>, Stats)> {
    let n = x0.shape()[0];
    let batch = batch.clamp(1, n.max(1));
    let (mut xs, mut trajs, mut stats) = (Vec::new(), Vec::new(), Stats::default());
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let part = x0.slice_axis(Axis(0), ndarray::Slice::from(start..start + len));
        let x = to_tensor(&part.to_owned(), device)?;
        let o = SolveOptions {
            first: opts.first + start as u64,
            ..opts.clone()
        };
        let chunk = field.rows(o.first, len)?;
        let sol = solve(chunk.as_deref().unwrap_or(field), &x, grid, &o, progress)?;
        xs.push(from_tensor(&sol.x)?);
        if let Some(t) = sol.trajectory {
            trajs.push(from_tensor(&t)?);
        }
        stats.add(sol.stats);
    }
    let join = |parts: Vec<ArrayD<f32>>| -> Result<ArrayD<f32>> {
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        Ok(ndarray::concatenate(Axis(0), &views)?)
    };
    let x = if n == 0 { x0.clone() } else { join(xs)? };
    let traj = match opts.save_every {
        Some(_) if n > 0 => Some(join(trajs)?),
        _ => None,
    };
    Ok((x, traj, stats))
}

/// Dormand-Prince 5(4) tableau (Hairer, Nørsett & Wanner, Table II.5.2).
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [&[f64]; 7] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    // The 5th-order weights: stage 7 is f at the new point, reused as the next stage 1 (FSAL).
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// y5 - y4 weights: b - b*.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// The state of an adaptive Dormand-Prince run.
struct Dopri5<'a> {
    f: &'a dyn Field,
    opts: &'a SolveOptions,
    t: f64,
    x: Tensor,
    /// u_t(x) at the current point (FSAL).
    k1: Tensor,
    /// The proposed next step, signed.
    h: f64,
}

impl<'a> Dopri5<'a> {
    fn new(
        f: &'a dyn Field,
        opts: &'a SolveOptions,
        x0: &Tensor,
        t0: f64,
        t1: f64,
        stats: &mut Stats,
    ) -> Result<Self> {
        if !(opts.rtol > 0.0 && opts.atol > 0.0) {
            usage_bail!(
                "--rtol and --atol must be positive, got {} and {}",
                opts.rtol,
                opts.atol
            );
        }
        let k1 = f.drift(x0, t0)?;
        stats.nfe += 1;
        let h = initial_step(f, x0, &k1, t0, t1, opts, stats)?;
        Ok(Dopri5 {
            f,
            opts,
            t: t0,
            x: x0.clone(),
            k1,
            h,
        })
    }

    /// Steps until exactly `target`; returns the state there.
    fn advance_to(&mut self, target: f64, stats: &mut Stats) -> Result<Tensor> {
        let dir = (target - self.t).signum();
        let mut after_reject = false;
        while (target - self.t) * dir > 0.0 {
            if stats.accepted + stats.rejected >= self.opts.max_steps {
                bail!(
                    "dopri5 took {} steps and reached t = {} of {target}: the solution may \
                     blow up, the problem be stiff or the tolerance too tight (f32 holds about \
                     7 digits; raise --rtol/--atol or use a fixed-step solver)",
                    self.opts.max_steps,
                    self.t
                );
            }
            let remaining = target - self.t;
            let clipped = self.h.abs() >= remaining.abs() * (1.0 - 1e-12);
            let h = if clipped { remaining } else { self.h };
            if h.abs() <= 1e-14 * self.t.abs().max(1.0) {
                bail!(
                    "dopri5's step size underflowed at t = {} (the solution may blow up)",
                    self.t
                );
            }
            let (y, k7, err) = self.try_step(h)?;
            stats.nfe += 6;
            let grow = if err == 0.0 {
                5.0
            } else {
                0.9 * err.powf(-0.2)
            };
            if err <= 1.0 {
                stats.accepted += 1;
                self.t = if clipped { target } else { self.t + h };
                self.x = y;
                self.k1 = k7;
                let factor = grow.clamp(0.2, if after_reject { 1.0 } else { 5.0 });
                // A step clipped to land on a grid time says little about the step size; keep
                // the larger proposal.
                self.h = if clipped {
                    dir * self.h.abs().max(h.abs() * factor)
                } else {
                    h * factor
                };
                after_reject = false;
            } else {
                stats.rejected += 1;
                // NaN errors (a blow-up) shrink the step as much as allowed.
                let factor = if grow.is_finite() {
                    grow.clamp(0.2, 1.0)
                } else {
                    0.2
                };
                self.h = h * factor;
                after_reject = true;
            }
        }
        Ok(self.x.clone())
    }

    /// One trial step of size `h`: the 5th-order solution, u at it, and the error norm.
    fn try_step(&self, h: f64) -> Result<(Tensor, Tensor, f64)> {
        let mut k = vec![self.k1.clone()];
        for s in 1..7 {
            let mut xs = self.x.clone();
            for (j, &a) in A[s].iter().enumerate() {
                if a != 0.0 {
                    xs = (xs + k[j].affine(h * a, 0.0)?)?;
                }
            }
            k.push(self.f.drift(&xs, self.t + C[s] * h)?);
            if s == 6 {
                // xs is y5, the new point; k[6] is u there.
                let mut e = k[0].affine(h * E[0], 0.0)?;
                for (j, &w) in E.iter().enumerate().skip(1) {
                    if w != 0.0 {
                        e = (e + k[j].affine(h * w, 0.0)?)?;
                    }
                }
                let err = error_norm(&e, &self.x, &xs, self.opts)?;
                return Ok((xs, k.pop().expect("seven stages"), err));
            }
        }
        unreachable!("the loop returns at its last stage")
    }
}

/// max over samples of the RMS of `e / (atol + rtol max(|y0|, |y1|))` (see module docs).
fn error_norm(e: &Tensor, y0: &Tensor, y1: &Tensor, opts: &SolveOptions) -> Result<f64> {
    let scale = y0
        .abs()?
        .maximum(&y1.abs()?)?
        .affine(opts.rtol, opts.atol)?;
    rms_max(&(e / scale)?)
}

/// Whether every element of `x` is finite (one reduction: NaN and ±inf poison a sum).
fn all_finite(x: &Tensor) -> Result<bool> {
    let sum = x
        .to_dtype(DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(sum.is_finite())
}

/// max over samples of the RMS of each sample's elements.
fn rms_max(r: &Tensor) -> Result<f64> {
    let n = r.dims().first().copied().unwrap_or(1).max(1);
    let per = r.elem_count() / n;
    if per == 0 {
        return Ok(0.0);
    }
    let ms = r
        .to_dtype(DType::F64)?
        .reshape((n, per))?
        .sqr()?
        .mean(1)?
        .to_vec1::<f64>()?;
    // A NaN (a sample that blew up) must win the max, so that the step is rejected.
    let worst = ms.iter().fold(0.0f64, |m, &v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    });
    Ok(worst.sqrt())
}

/// The starting step size of Hairer, Nørsett & Wanner (II.4): a step that makes an Euler step's
/// change small against the tolerance, corrected by a second-derivative estimate. One NFE.
fn initial_step(
    f: &dyn Field,
    x0: &Tensor,
    f0: &Tensor,
    t0: f64,
    t1: f64,
    opts: &SolveOptions,
    stats: &mut Stats,
) -> Result<f64> {
    let span = (t1 - t0).abs();
    let dir = (t1 - t0).signum();
    let scale = x0.abs()?.affine(opts.rtol, opts.atol)?;
    let d0 = rms_max(&(x0 / &scale)?)?;
    let d1 = rms_max(&(f0 / &scale)?)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
    .min(span);
    let x1 = (x0 + f0.affine(dir * h0, 0.0)?)?;
    let f1 = f.drift(&x1, t0 + dir * h0)?;
    stats.nfe += 1;
    let d2 = rms_max(&((f1 - f0)? / &scale)?)? / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(0.2)
    };
    let h = (100.0 * h0).min(h1).min(span);
    if !h.is_finite() || h <= 0.0 {
        return Err(anyhow!(
            "dopri5 could not choose a first step (is x0 or u(x0) non-finite?)"
        ));
    }
    Ok(dir * h)
}

/// Deterministic initial states X_0 for plots, from a spec:
/// `zeros:n=N,dim=D` (N, D) of zeros; `const:n=N,dim=D,value=V`; `linspace:n=N,from=A,to=B`
/// (N, 1) evenly spaced, both ends included (the course's `torch.linspace(A, B, N)`).
pub fn initial_states(spec_text: &str) -> Result<ArrayD<f32>> {
    let built = spec::load_object(spec_text, "x0", None).and_then(|obj| {
        let kind = spec::kind(&obj, "x0")?;
        let mut k = Keys::new(&obj, format!("initial states {kind}"), "x0");
        let n = k.count("n", None, 1)? as usize;
        let arr = match kind {
            "zeros" | "const" => {
                let dim = k.count("dim", Some(1), 1)? as usize;
                let v = if kind == "const" {
                    k.num("value", None)?
                } else {
                    0.0
                };
                ArrayD::from_elem(IxDyn(&[n, dim]), v as f32)
            }
            "linspace" => {
                let (a, b) = (k.num("from", None)?, k.num("to", None)?);
                let v: Vec<f32> = (0..n)
                    .map(|i| {
                        let s = if n == 1 {
                            0.0
                        } else {
                            i as f64 / (n - 1) as f64
                        };
                        (a + (b - a) * s) as f32
                    })
                    .collect();
                ArrayD::from_shape_vec(IxDyn(&[n, 1]), v)?
            }
            other => bail!("unknown initial states '{other}' (known: zeros, const, linspace)"),
        };
        k.finish()?;
        Ok(arr)
    });
    spec::blame(spec_text, built).with_context(|| format!("initial states '{spec_text}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::densities::Gaussian;
    use crate::fields::{Brownian, Langevin, Linear, Ou};

    fn cpu() -> Device {
        Device::Cpu
    }

    /// |X_1 - x0 e^{-theta}| for dx/dt = -theta x in f64, x0 = 1, with `steps` steps.
    fn linear_error(method: Method, steps: usize) -> f64 {
        let theta = 1.5;
        let x0 = Tensor::new(&[[1.0f64]], &cpu()).unwrap();
        let opts = SolveOptions {
            method,
            ..Default::default()
        };
        let sol = solve(
            &Linear { theta },
            &x0,
            &uniform_grid(0.0, 1.0, steps),
            &opts,
            None,
        )
        .unwrap();
        let x1 = sol.x.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
        (x1 - (-theta).exp()).abs()
    }

    /// The observed order log2(e(h) / e(h/2)), averaged over three halvings.
    fn observed_order(method: Method) -> f64 {
        let errs: Vec<f64> = [8, 16, 32, 64]
            .iter()
            .map(|&s| linear_error(method, s))
            .collect();
        errs.windows(2).map(|w| (w[0] / w[1]).log2()).sum::<f64>() / 3.0
    }

    #[test]
    fn convergence_orders_on_a_linear_ode() {
        let euler = observed_order(Method::Euler);
        let heun = observed_order(Method::Heun);
        let rk4 = observed_order(Method::Rk4);
        assert!((euler - 1.0).abs() < 0.1, "euler order {euler}");
        assert!((heun - 2.0).abs() < 0.1, "heun order {heun}");
        assert!((rk4 - 4.0).abs() < 0.2, "rk4 order {rk4}");
    }

    #[test]
    fn dopri5_meets_its_tolerance_with_fewer_evaluations() {
        let theta = 1.5;
        let x0 = Tensor::new(&[[1.0f64], [-3.0]], &cpu()).unwrap();
        for tol in [1e-4, 1e-6, 1e-8] {
            let opts = SolveOptions {
                method: Method::Dopri5,
                rtol: tol,
                atol: tol,
                ..Default::default()
            };
            let sol = solve(&Linear { theta }, &x0, &[0.0, 2.0], &opts, None).unwrap();
            let x = sol.x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let exact = [(-2.0 * theta).exp(), -3.0 * (-2.0 * theta).exp()];
            let err = x
                .iter()
                .zip(exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            // Global error is a small multiple of the local tolerance on this problem.
            assert!(err < 10.0 * tol * 3.0, "tol {tol}: error {err}");
            // Heun with the same number of field evaluations is far less accurate.
            let heun_steps = (sol.stats.nfe / 2) as usize;
            let heun = solve(
                &Linear { theta },
                &x0,
                &uniform_grid(0.0, 2.0, heun_steps),
                &SolveOptions {
                    method: Method::Heun,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
            let hx = heun.x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let herr = hx
                .iter()
                .zip(exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err < herr,
                "tol {tol}: dopri5 {err} vs heun {herr} at {} NFE",
                sol.stats.nfe
            );
            assert_eq!(
                sol.stats.nfe,
                2 + 6 * (sol.stats.accepted + sol.stats.rejected)
            );
        }
    }

    #[test]
    fn dopri5_lands_on_every_grid_time_and_rejects_too_large_steps() {
        let x0 = Tensor::new(&[[1.0f64]], &cpu()).unwrap();
        let grid = uniform_grid(0.0, 1.0, 4);
        let opts = SolveOptions {
            method: Method::Dopri5,
            rtol: 1e-9,
            atol: 1e-9,
            save_every: Some(1),
            ..Default::default()
        };
        // A stiff-ish decay forces rejections after the first step guess.
        let sol = solve(&Linear { theta: 40.0 }, &x0, &grid, &opts, None).unwrap();
        let traj = sol
            .trajectory
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (x, t) in traj.iter().zip(&grid) {
            let want = (-40.0 * t).exp();
            assert!((x - want).abs() < 1e-7, "t {t}: {x} vs {want}");
        }
        assert!(sol.stats.accepted > 4);
        // A solution that blows up is an error, not a file of infinities.
        let up = Linear { theta: -100.0 };
        let x32 = Tensor::new(&[[1.0f32], [2.0]], &cpu()).unwrap();
        let loose = SolveOptions {
            rtol: 1e-4,
            atol: 1e-4,
            max_steps: 2000,
            ..opts.clone()
        };
        let err = solve(&up, &x32, &[0.0, 2.0], &loose, None).err().unwrap();
        assert!(err.to_string().contains("blow up"), "{err}");
        let euler = SolveOptions {
            method: Method::Euler,
            ..Default::default()
        };
        let err = solve(&up, &x32, &uniform_grid(0.0, 2.0, 100), &euler, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("blew up"), "{err}");
        let tight = SolveOptions {
            max_steps: 3,
            ..opts
        };
        assert!(solve(&Linear { theta: 40.0 }, &x0, &grid, &tight, None).is_err());
    }

    /// Simulates `field` from x0 = `start` for `n` samples, keeping every state.
    fn simulate(
        field: &dyn Field,
        n: usize,
        start: f64,
        t1: f64,
        steps: usize,
        seed: u64,
    ) -> Vec<Vec<f64>> {
        let x0 = Tensor::full(start, (n, 1), &cpu()).unwrap();
        let opts = SolveOptions {
            seed,
            save_every: Some(1),
            ..Default::default()
        };
        let sol = solve(field, &x0, &uniform_grid(0.0, t1, steps), &opts, None).unwrap();
        sol.trajectory
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    }

    fn mean_var(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
        let n = v.clone().count() as f64;
        let mean = v.clone().sum::<f64>() / n;
        let var = v.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn brownian_motion_has_variance_t_and_independent_increments() {
        let n = 4000;
        let paths = simulate(
            &Brownian {
                mu: 0.0,
                sigma: 1.0,
            },
            n,
            0.0,
            1.0,
            20,
            1,
        );
        for k in [5, 10, 20] {
            let t = k as f64 / 20.0;
            let (mean, var) = mean_var(paths.iter().map(|p| p[k]));
            // SE of the mean sqrt(t/n); of the variance t sqrt(2/(n-1)).
            assert!(
                mean.abs() < 4.0 * (t / n as f64).sqrt(),
                "t {t}: mean {mean}"
            );
            assert!(
                (var - t).abs() < 4.0 * t * (2.0 / n as f64).sqrt(),
                "t {t}: var {var}"
            );
        }
        // Corr(W_0.5, W_1 - W_0.5) = 0, SE 1/sqrt(n).
        let a: Vec<f64> = paths.iter().map(|p| p[10]).collect();
        let b: Vec<f64> = paths.iter().map(|p| p[20] - p[10]).collect();
        let cov = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / n as f64;
        let corr = cov / (0.5f64.sqrt() * 0.5f64.sqrt());
        assert!(corr.abs() < 4.0 / (n as f64).sqrt(), "corr {corr}");
    }

    #[test]
    fn ou_mean_and_variance_follow_the_closed_form() {
        let (theta, sigma, x0, n) = (0.8, 0.7, 2.0, 4000);
        let paths = simulate(&Ou { theta, sigma }, n, x0, 3.0, 300, 2);
        for k in [50, 100, 300] {
            let t = k as f64 * 0.01;
            let want_mean = x0 * (-theta * t).exp();
            let want_var = sigma * sigma / (2.0 * theta) * (1.0 - (-2.0 * theta * t).exp());
            let (mean, var) = mean_var(paths.iter().map(|p| p[k]));
            assert!(
                (mean - want_mean).abs() < 4.0 * (want_var / n as f64).sqrt(),
                "t {t}: {mean}"
            );
            assert!(
                (var - want_var).abs() < 4.0 * want_var * (2.0 / n as f64).sqrt() + 0.01 * want_var,
                "t {t}: var {var} vs {want_var}"
            );
        }
    }

    #[test]
    fn langevin_on_a_gaussian_is_the_ou_process() {
        // Remark 20: p = N(0, s²) gives theta = sigma²/(2 s²); same noise, same paths.
        let (sigma, s) = (1.2, 0.8);
        let lang = Langevin {
            sigma,
            density: Box::new(Gaussian::new(vec![0.0], vec![s]).unwrap()),
        };
        let ou = Ou {
            theta: sigma * sigma / (2.0 * s * s),
            sigma,
        };
        let a = simulate(&lang, 2000, 3.0, 6.0, 300, 4);
        let b = simulate(&ou, 2000, 3.0, 6.0, 300, 4);
        for (pa, pb) in a.iter().zip(&b) {
            assert!((pa[300] - pb[300]).abs() < 1e-9);
        }
        // Stationary law N(0, s²), reached by t = 6 (theta t = 6.75).
        let (mean, var) = mean_var(a.iter().map(|p| p[300]));
        assert!(mean.abs() < 4.0 * s / (2000f64).sqrt(), "mean {mean}");
        assert!(
            (var - s * s).abs() < 4.0 * s * s * (2.0 / 2000f64).sqrt(),
            "var {var}"
        );
    }

    #[test]
    fn batch_splitting_gives_identical_paths() {
        let x0 = ArrayD::from_shape_vec(IxDyn(&[7, 2]), (0..14).map(|v| v as f32 * 0.3).collect())
            .unwrap();
        let field = Ou {
            theta: 0.5,
            sigma: 0.9,
        };
        let grid = uniform_grid(0.0, 1.0, 10);
        let opts = SolveOptions {
            seed: 9,
            save_every: Some(3),
            ..Default::default()
        };
        let (whole, tw, sw) = solve_batched(&field, &x0, &grid, &opts, 7, &cpu(), None).unwrap();
        let (parts, tp, _) = solve_batched(&field, &x0, &grid, &opts, 3, &cpu(), None).unwrap();
        assert_eq!(whole, parts);
        assert_eq!(tw, tp);
        assert_eq!(tw.unwrap().shape(), &[7, 5, 2]);
        assert_eq!(sw.nfe, 10);
        let other = SolveOptions { seed: 10, ..opts };
        assert_ne!(
            solve_batched(&field, &x0, &grid, &other, 7, &cpu(), None)
                .unwrap()
                .0,
            whole
        );
    }

    #[test]
    fn grids_and_methods_are_checked() {
        assert!(check_grid(&[0.0]).is_err());
        assert!(check_grid(&[0.0, 0.5, 0.5]).is_err());
        assert!(check_grid(&[1.0, 0.5, 0.0]).is_ok());
        assert!(check_grid(&[0.0, f64::NAN]).is_err());
        assert_eq!(uniform_grid(0.0, 1.0, 3).last(), Some(&1.0));
        assert_eq!(saved_indices(11, 4), vec![0, 4, 8, 10]);
        let err = Method::Heun.resolve(true, "ou").unwrap_err();
        assert!(crate::error::is_usage(&err));
        assert_eq!(
            Method::Auto.resolve(true, "ou").unwrap(),
            Method::EulerMaruyama
        );
        assert_eq!(
            Method::Auto.resolve(false, "linear").unwrap(),
            Method::Euler
        );
    }

    #[test]
    fn initial_state_specs() {
        let x = initial_states("linspace:n=5,from=-10,to=10").unwrap();
        assert_eq!(x.shape(), &[5, 1]);
        assert_eq!(x.as_slice().unwrap(), &[-10.0, -5.0, 0.0, 5.0, 10.0]);
        assert_eq!(initial_states("zeros:n=3,dim=2").unwrap().shape(), &[3, 2]);
        assert!(initial_states("const:n=3,dim=2,value=1.5")
            .unwrap()
            .iter()
            .all(|&v| v == 1.5));
        assert!(crate::error::is_usage(
            &initial_states("ones:n=3").unwrap_err()
        ));
    }

    /// The energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two point sets (N, D), with
    /// unbiased (U-statistic) within-set terms, so that it is 0 on average for equal laws.
    fn energy_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        let dist = |x: &[f64], y: &[f64]| {
            x.iter()
                .zip(y)
                .map(|(u, v)| (u - v).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut cross = 0.0;
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                if i != j {
                    cross += dist(x, y);
                }
            }
        }
        let cross = cross / (a.len() * b.len() - a.len().min(b.len())) as f64;
        let within = |p: &[Vec<f64>]| {
            let mut s = 0.0;
            for i in 0..p.len() {
                for j in i + 1..p.len() {
                    s += dist(&p[i], &p[j]);
                }
            }
            2.0 * s / (p.len() * (p.len() - 1)) as f64
        };
        2.0 * cross - within(a) - within(b)
    }

    /// A Langevin-like field with a scaled drift, to show the test catches wrong drifts.
    struct Scaled(Langevin, f64);
    impl Field for Scaled {
        fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            self.0.drift(x, t)?.affine(self.1, 0.0)
        }
        fn diffusion(&self, t: f64) -> f64 {
            self.0.diffusion(t)
        }
        fn describe(&self) -> String {
            "scaled".into()
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            None
        }
    }

    /// Langevin (sigma 0.6, t from 0 to 5 in 1000 steps) on the lab's mixture, with its drift
    /// multiplied by `scale` (1 is right), from `x0` (N, 2); returns the final particles.
    fn lab_langevin(x0: &ndarray::Array2<f64>, scale: f64) -> Vec<Vec<f64>> {
        let target = crate::densities::GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let f = Scaled(
            Langevin {
                sigma: 0.6,
                density: Box::new(target),
            },
            scale,
        );
        let x0 = Tensor::from_vec(x0.iter().copied().collect(), x0.dim(), &cpu()).unwrap();
        let opts = SolveOptions {
            seed: 5,
            ..Default::default()
        };
        let sol = solve(&f, &x0, &uniform_grid(0.0, 5.0, 1000), &opts, None).unwrap();
        sol.x.to_vec2::<f64>().unwrap()
    }

    fn rows(a: &ndarray::Array2<f64>) -> Vec<Vec<f64>> {
        a.rows().into_iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn langevin_keeps_the_mixture_stationary() {
        // Started at samples of p, Langevin stays at p. Comparing the final particles with
        // their own starting points keeps the mode weights equal in both sets, which removes
        // the multinomial noise that would swamp within-mode errors. Over four seeds the right
        // drift gave |ED| < 0.001, a drift twice or half as large 0.007 to 0.012 (a missing
        // 1/2 narrows every mode), a flipped sign 0.74 to 0.83.
        use crate::densities::{Density, GaussianMixture};
        let target = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x0 = target.sample(1000, 11, 0);
        let start = rows(&x0);
        let ed = |scale| energy_distance(&lab_langevin(&x0, scale), &start);
        let right = ed(1.0);
        assert!(right.abs() < 0.004, "energy distance {right}");
        for wrong in [2.0, 0.5, -1.0] {
            let e = ed(wrong);
            assert!(e > 0.004, "a drift scaled by {wrong} went unnoticed: {e}");
        }
    }

    #[test]
    fn langevin_from_the_labs_broad_start_reaches_the_modes() {
        // The lab's run from N(0, 20 I): particles fall into the modes, but the mode weights
        // follow the basins of attraction, not p (no mode hopping in t = 5), so the distance to
        // p stays about 1.5; with a flipped drift it is about 7.4.
        use crate::densities::{Density, GaussianMixture};
        let target = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x0 = Gaussian::isotropic(2, 20f64.sqrt())
            .unwrap()
            .sample(1000, 1, 0);
        let want = rows(&target.sample(1000, 2, 0));
        let right = energy_distance(&lab_langevin(&x0, 1.0), &want);
        assert!(right < 3.0, "energy distance {right}");
        let flipped = energy_distance(&lab_langevin(&x0, -1.0), &want);
        assert!(flipped > 3.0, "a flipped drift went unnoticed: {flipped}");
    }
}
