//! The linear interpolant x_t = (1 - t) x_0 + t z between two arbitrary distributions, with
//! conditional velocity z - x_0 (notes section 3, Remark on couplings).

use candle_core::{Result, Tensor};

use super::{time_values, GaussianPath};

/// The linear interpolant x_t = (1 - t) x_0 + t z between arbitrary x_0 ~ p_src and z ~ p_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinearInterpolant;

impl LinearInterpolant {
    /// x_t = (1 - t) x0 + t z. x0, z: (N, ...); t: (N,), (N, 1) or one value.
    pub fn sample_xt(&self, x0: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.sample_xt_at(x0, z, &time_values(t, z.dim(0)?)?)
    }

    /// [`Self::sample_xt`] with the times as host values.
    pub fn sample_xt_at(&self, x0: &Tensor, z: &Tensor, t: &[f64]) -> Result<Tensor> {
        let c = GaussianPath::CONDOT.cols(t, z)?;
        c.lin(z, |k| k.alpha, x0, |k| k.beta)
    }

    /// The conditional velocity d/dt x_t = z - x0, the flow matching target.
    pub fn conditional_velocity(&self, x0: &Tensor, z: &Tensor) -> Result<Tensor> {
        z.sub(x0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Path;
    use super::*;

    #[test]
    fn linear_interpolant_is_condot_for_gaussian_source() {
        let n = 6;
        let (x0, z) = (normal(13, &[n, 2]), normal(14, &[n, 2]));
        let ts = times(n);
        let li = LinearInterpolant;
        let a = li.sample_xt_at(&x0, &z, &ts).unwrap();
        let b = GaussianPath::CONDOT.sample_xt_at(&z, &x0, &ts).unwrap();
        assert_close(&a, &b, 1e-7, "x_t");
        let h = 1e-3;
        let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
        let fd = (li.sample_xt_at(&x0, &z, &plus).unwrap() - &a)
            .unwrap()
            .affine(1.0 / h, 0.0)
            .unwrap();
        assert_close(&li.conditional_velocity(&x0, &z).unwrap(), &fd, 1e-3, "u");
        assert_eq!(
            Path::LinearInterpolant.as_gaussian(true),
            Some(GaussianPath::CONDOT)
        );
        assert_eq!(Path::LinearInterpolant.as_gaussian(false), None);
    }
}
