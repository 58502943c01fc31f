//! The timing harness of every figure: repetitions and their median, the JSON line a figure
//! prints, and the fixed seeded inputs the figures time.

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::time::Instant;

use crate::rng::{self, Purpose};
use crate::Result;

/// The number of threads candle's kernels and our loops use.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs `f` `warmup` times untimed, then `runs` times timed: the times in milliseconds.
pub fn time_runs(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f()?;
            Ok(start.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// A figure's JSON line from its times.
pub(super) fn line(figure: &str, config: Value, warmup: usize, times: &[f64]) -> Value {
    json!({
        "figure": figure,
        "config": config,
        "median_ms": (median(times) * 1000.0).round() / 1000.0,
        "runs": times.len(),
        "warmup": warmup,
        "threads": threads(),
        "implementation": "flowpipe",
    })
}

/// A tensor of standard normals of `shape` from stream (seed, Misc, index).
pub(super) fn normal(shape: &[usize], index: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v = rng::normal_rows(0, Purpose::Misc, index, 1, n);
    Ok(Tensor::from_vec(v, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
