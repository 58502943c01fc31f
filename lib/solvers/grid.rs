//! Time grids t_0 < t_1 < ... (or decreasing) that the solvers step along: building, checking
//! and reading them, and which of their points a trajectory keeps.

use anyhow::{anyhow, bail};

use crate::fields::Field;
use crate::Result;

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

/// The grid of a tool's flags: read from `times` (a .npy), or `steps` uniform intervals from
/// `t0` to `t1` (finite and different; a usage error otherwise).
pub fn grid_from_flags(times: Option<&str>, t0: f64, t1: f64, steps: usize) -> Result<Vec<f64>> {
    match times {
        Some(path) => read_grid(path),
        None if !(t0.is_finite() && t1.is_finite()) || t0 == t1 => {
            crate::usage_bail!("--t0 and --t1 must be finite and different, got {t0} and {t1}")
        }
        None => Ok(uniform_grid(t0, t1, steps)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_checked() {
        assert!(check_grid(&[0.0]).is_err());
        assert!(check_grid(&[0.0, 0.5, 0.5]).is_err());
        assert!(check_grid(&[1.0, 0.5, 0.0]).is_ok());
        assert!(check_grid(&[0.0, f64::NAN]).is_err());
        assert_eq!(uniform_grid(0.0, 1.0, 3).last(), Some(&1.0));
        assert_eq!(saved_indices(11, 4), vec![0, 4, 8, 10]);
    }
}
