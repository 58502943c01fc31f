//! The bridge from candle tensors (N, D) of any float dtype and device to the f64 maths of a
//! [`Density`], and back.

use candle_core::{DType, Device, Tensor};
use ndarray::Array2;

use super::Density;

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

#[cfg(test)]
mod tests {
    use super::super::Gaussian;
    use super::*;

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
