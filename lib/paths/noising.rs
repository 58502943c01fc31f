//! Samples of the conditional probability path p_t(x | z) = N(alpha_t z, beta_t² I) (notes
//! eq. 13) for given data z at chosen times: how the forward process turns images into noise,
//! the first figure of Lab 3.
//!
//! Sample i draws one eps_i ~ N(0, I) from (seed, Noise, i) and is shown at every time,
//! x_t = alpha_t z_i + beta_t eps_i, so a row of the figure follows one noise realisation from
//! t = 0 (pure noise) to t = 1 (the data point itself).

use candle_core::{Device, Tensor};
use ndarray::{ArrayD, Axis, IxDyn};

use crate::paths::{GaussianPath, LinearInterpolant};
use crate::rng::{self, Purpose};
use crate::Result;

/// x_t for each sample z_i of `z` (N, ...) and each time in `times`: (N * T, ...), sample-major
/// (rows i*T .. i*T + T are sample i at every time), so a grid of T columns has a row per
/// sample. Noise of sample i from (seed, Noise, first + i).
pub fn along_path(
    path: &GaussianPath,
    z: &ArrayD<f32>,
    times: &[f64],
    seed: u64,
    first: u64,
) -> Result<ArrayD<f32>> {
    let (n, dim) = (z.shape()[0], z.len() / z.shape()[0].max(1));
    let eps = rng::normal_rows(seed, Purpose::Noise, first, n, dim);
    let eps = ArrayD::from_shape_vec(z.raw_dim(), eps)?;
    at_times(z, &eps, times, |z, eps, t| path.sample_xt_at(z, eps, t))
}

/// The linear interpolant x_t = (1 - t) x0_i + t z_i between sample i of `x0` and of `z`
/// (both (N, ...), the independent coupling by index; notes section 3), laid out as
/// [`along_path`].
pub fn between(x0: &ArrayD<f32>, z: &ArrayD<f32>, times: &[f64]) -> Result<ArrayD<f32>> {
    at_times(z, x0, times, |z, x0, t| {
        LinearInterpolant.sample_xt_at(x0, z, t)
    })
}

/// `sample(z, other, t)` with every sample of `z` (N, ...) and `other` (the same shape)
/// repeated at each time: (N * T, ...), sample-major.
fn at_times(
    z: &ArrayD<f32>,
    other: &ArrayD<f32>,
    times: &[f64],
    sample: impl Fn(&Tensor, &Tensor, &[f64]) -> candle_core::Result<Tensor>,
) -> Result<ArrayD<f32>> {
    let n = z.shape()[0];
    let dim: usize = z.shape()[1..].iter().product();
    let tensor = |a: &ArrayD<f32>| {
        Tensor::from_vec(
            a.iter().copied().collect::<Vec<_>>(),
            (n, dim),
            &Device::Cpu,
        )
    };
    // Row i * T + k: sample i at time k.
    let t_count = times.len();
    let rep = |x: &Tensor| -> Result<Tensor> {
        Ok(x.unsqueeze(1)?
            .broadcast_as((n, t_count, dim))?
            .reshape((n * t_count, dim))?)
    };
    let ts: Vec<f64> = (0..n).flat_map(|_| times.iter().copied()).collect();
    let xt = sample(&rep(&tensor(z)?)?, &rep(&tensor(other)?)?, &ts)?;
    let mut shape = vec![n * t_count];
    shape.extend_from_slice(&z.shape()[1..]);
    let values = xt.flatten_all()?.to_vec1::<f32>()?;
    let out = ArrayD::from_shape_vec(IxDyn(&shape), values)?;
    debug_assert_eq!(out.len_of(Axis(0)), n * t_count);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_noise_and_data() {
        let z = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2, 2]), (0..8).map(|v| v as f32).collect())
            .unwrap();
        let x = along_path(&GaussianPath::CONDOT, &z, &[0.0, 0.5, 1.0], 3, 0).unwrap();
        assert_eq!(x.shape(), &[6, 1, 2, 2]);
        let row = |r: usize| {
            x.index_axis(Axis(0), r)
                .iter()
                .copied()
                .collect::<Vec<f32>>()
        };
        let zi = |i: usize| {
            z.index_axis(Axis(0), i)
                .iter()
                .copied()
                .collect::<Vec<f32>>()
        };
        let eps = rng::normal_rows(3, Purpose::Noise, 0, 2, 4);
        for i in 0..2 {
            assert_eq!(
                row(3 * i),
                eps[4 * i..4 * i + 4].to_vec(),
                "t = 0 is the noise"
            );
            assert_eq!(row(3 * i + 2), zi(i), "t = 1 is the data");
            for j in 0..4 {
                let mid = 0.5 * zi(i)[j] + 0.5 * eps[4 * i + j];
                assert!((row(3 * i + 1)[j] - mid).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn between_is_the_straight_line_from_each_source_sample() {
        let z = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0, 2.0, -3.0, 5.0]).unwrap();
        let x0 = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.0, 4.0, 1.0, -1.0]).unwrap();
        let x = between(&x0, &z, &[0.0, 0.25, 1.0]).unwrap();
        assert_eq!(x.shape(), &[6, 2]);
        // Sample 1 at t = 0.25: 0.75 (1, -1) + 0.25 (-3, 5) = (0, 0.5).
        let want = [
            [0.0, 4.0],
            [0.25, 3.5],
            [1.0, 2.0],
            [1.0, -1.0],
            [0.0, 0.5],
            [-3.0, 5.0],
        ];
        for (r, w) in want.iter().enumerate() {
            assert_eq!([x[[r, 0]], x[[r, 1]]], *w, "row {r}");
        }
    }
}
