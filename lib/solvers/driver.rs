//! Driving a batch of samples along a time grid: [`solve`] picks the rule and steps every grid
//! interval (keeping the trajectory when asked), [`solve_batched`] runs an array of many samples
//! through it in chunks.

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, Axis};

use super::adaptive::Dopri5;
use super::ddim::ddim_step;
use super::fixed::{euler_maruyama_step, euler_step, heun_step, rk4_step, BrownianNoise};
use super::grid::{check_grid, is_stochastic, saved_indices};
use super::{Method, Solution, SolveOptions, Stats};
use crate::device::{from_tensor, to_tensor};
use crate::fields::Field;
use crate::progress::Progress;
use crate::Result;

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
        let ddim_path = match method {
            Method::Ddim => Some(ddim_path(field, grid, opts.eta)?),
            _ => None,
        };
        let noisy = (method == Method::EulerMaruyama && stochastic)
            || (method == Method::Ddim && opts.eta > 0.0);
        let mut noise = noisy.then(|| BrownianNoise::new(opts.seed, opts.first, n));
        let per_step = match method {
            Method::Heun => 2,
            Method::Rk4 => 4,
            _ => 1,
        };
        for k in 0..grid.len() - 1 {
            let (t, h) = (grid[k], grid[k + 1] - grid[k]);
            let before = (!noisy).then(|| x.clone());
            x = match (method, noise.as_mut()) {
                (Method::Heun, _) => heun_step(field, &x, t, h)?,
                (Method::Rk4, _) => rk4_step(field, &x, t, h)?,
                (Method::EulerMaruyama, Some(w)) => {
                    let z = w.next(&x)?;
                    euler_maruyama_step(field, &x, t, h, &z)?
                }
                (Method::Ddim, w) => {
                    let xi = match w {
                        Some(w) => Some(w.next(&x)?),
                        None => None,
                    };
                    let path = ddim_path.as_ref().expect("checked above");
                    ddim_step(field, path, &x, t, t + h, opts.eta, xi.as_ref())?
                }
                _ => euler_step(field, &x, t, h)?,
            };
            if let Some(before) = before {
                stats.path_energy += sq_sum(&x, &before)? / h.abs();
            }
            stats.nfe += per_step;
            stats.accepted += 1;
            save(k + 1, &x);
            if let Some(p) = progress {
                p.inc(1);
            }
        }
        if !noisy {
            let span = (grid[grid.len() - 1] - grid[0]).abs();
            stats.chord_energy = sq_sum(&x, x0)? / span;
            stats.measured = x0.elem_count() as u64;
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

/// The Gaussian path DDIM needs, with its grid (increasing, within [0, 1]) and eta checked.
fn ddim_path(field: &dyn Field, grid: &[f64], eta: f64) -> Result<crate::paths::GaussianPath> {
    if !(0.0..=1.0).contains(&eta) {
        crate::usage_bail!("--eta must be in [0, 1], got {eta}");
    }
    let (t0, t1) = (grid[0], grid[grid.len() - 1]);
    if !(0.0 <= t0 && t0 < t1 && t1 <= 1.0) {
        crate::usage_bail!(
            "solver ddim steps from noise (t = 0) towards data (t = 1): the grid must increase \
             within [0, 1], got {t0} to {t1}"
        );
    }
    field.gaussian_path().ok_or_else(|| {
        anyhow::anyhow!(
            "solver ddim needs a field along a Gaussian path (a trained or guided model, or a \
             Gaussian target); {} has none",
            field.describe()
        )
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

/// sum (a - b)^2 over every element, in f64.
fn sq_sum(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?.to_dtype(DType::F64)?;
    Ok(d.sqr()?.sum_all()?.to_scalar::<f64>()?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::Ou;
    use crate::solvers::uniform_grid;
    use ndarray::IxDyn;

    fn cpu() -> Device {
        Device::Cpu
    }

    /// Straightness (Liu et al. 2022): 0 for a constant velocity; for dX = -theta X dt, X_t =
    /// X_0 e^{-theta t}, S = E[X_0^2] (theta (1 - e^{-2 theta}) / 2 - (1 - e^{-theta})^2); not
    /// measured for an SDE. The sums add over batches as one run.
    #[test]
    fn straightness_of_straight_and_curved_flows() {
        use crate::fields::{Brownian, LinearOde};
        let x0 = ArrayD::from_shape_vec(
            IxDyn(&[4, 2]),
            vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.0, 2.0, 2.0],
        )
        .unwrap();
        let grid = uniform_grid(0.0, 1.0, 64);
        let heun = SolveOptions {
            method: Method::Heun,
            ..Default::default()
        };
        let run = |f: &dyn Field, o: &SolveOptions, batch: usize| {
            solve_batched(f, &x0, &grid, o, batch, &cpu(), None)
                .unwrap()
                .2
        };
        let drift = Brownian {
            mu: 1.5,
            sigma: 0.0,
        };
        let s = run(&drift, &heun, 4).straightness().unwrap();
        assert!(s.abs() < 1e-6, "constant velocity: {s}");
        let theta: f64 = 2.0;
        let mean_sq = x0.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 8.0;
        let want =
            mean_sq * (theta * (1.0 - (-2.0 * theta).exp()) / 2.0 - (1.0 - (-theta).exp()).powi(2));
        let curved = LinearOde { theta };
        let (whole, parts) = (run(&curved, &heun, 4), run(&curved, &heun, 3));
        let s = whole.straightness().unwrap();
        // Heun's steps, 64 of them: chords of the exact path to about 1e-4.
        assert!((s - want).abs() < 2e-3 * want, "{s} vs {want}");
        assert!((parts.straightness().unwrap() - s).abs() < 1e-9);
        let noisy = Brownian {
            mu: 0.0,
            sigma: 1.0,
        };
        assert_eq!(
            run(&noisy, &SolveOptions::default(), 4).straightness(),
            None
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
}
