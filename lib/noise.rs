//! p_init: the simple distribution every flow starts from at t = 0 (notes section 1).
//!
//! Isotropic Gaussian N(0, std^2 I), the course's choice, or uniform on a box. Sample i is
//! drawn from its own stream (seed, Noise, i), so any split of a batch gives the same samples.

use ndarray::ArrayD;

use crate::io::npy;
use crate::rng::{self, Purpose};
use crate::Result;

/// A source distribution p_init (the name of the notes; `discrete::paths::Noise` is its
/// counterpart on tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PInit {
    /// N(0, std^2 I)
    Gaussian { std: f32 },
    /// U[low, high)^d
    Uniform { low: f32, high: f32 },
}

/// `n` samples of `shape` from `noise`, samples `first..first + n` of the seed's sequence.
pub fn sample(
    noise: &PInit,
    n: usize,
    shape: &[usize],
    seed: u64,
    first: u64,
) -> Result<ArrayD<f32>> {
    let dim: usize = shape.iter().product();
    let data = match *noise {
        PInit::Gaussian { std } => {
            let mut d = rng::normal_rows(seed, Purpose::Noise, first, n, dim);
            d.iter_mut().for_each(|v| *v *= std);
            d
        }
        PInit::Uniform { low, high } => {
            rng::uniform_rows(seed, Purpose::Noise, first, n, dim, low, high)
        }
    };
    let mut full = vec![n];
    full.extend_from_slice(shape);
    npy::from_vec(&full, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_std_and_prefix_property() {
        let big = sample(&PInit::Gaussian { std: 2.0 }, 5000, &[2], 4, 0).unwrap();
        let small = sample(&PInit::Gaussian { std: 2.0 }, 10, &[2], 4, 0).unwrap();
        assert_eq!(big.as_slice().unwrap()[..20], small.as_slice().unwrap()[..]);
        let var = big.iter().map(|v| v * v).sum::<f32>() / big.len() as f32;
        assert!((var - 4.0).abs() < 0.25, "var {var}");
    }

    #[test]
    fn uniform_bounds() {
        let x = sample(
            &PInit::Uniform {
                low: -1.0,
                high: 3.0,
            },
            1000,
            &[3],
            0,
            0,
        )
        .unwrap();
        assert!(x.iter().all(|&v| (-1.0..3.0).contains(&v)));
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!((mean - 1.0).abs() < 0.1, "mean {mean}");
    }
}
